"""The fit report: one data model (fit.py) rendered for terminals (render.py) and as one HTML
page (html.py), with roofline latency estimates for accelerator profiles (estimate.py)."""
from .estimate import LatencyEstimate, estimate_latency, measure_host_ms
from .fit import FallbackGroup, FitReport, build_report


def to_html(obj, latency: str | None = None) -> str:
    """One self-contained HTML page of an analysis, a report or a compiled module of any kind."""
    from .html import module_page

    if hasattr(obj, "page"):  # a compiled module: its report and what is particular to its kind
        return module_page(obj, latency)
    return obj.to_html()


__all__ = ["FallbackGroup", "FitReport", "LatencyEstimate", "build_report", "estimate_latency", "measure_host_ms",
           "to_html"]
