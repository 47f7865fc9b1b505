"""The fit report: one data model (fit.py) rendered for terminals (render.py), with roofline
latency estimates for accelerator profiles (estimate.py)."""
from .estimate import LatencyEstimate, estimate_latency, measure_host_ms
from .fit import FallbackGroup, FitReport, build_report

__all__ = ["FallbackGroup", "FitReport", "LatencyEstimate", "build_report", "estimate_latency", "measure_host_ms"]
