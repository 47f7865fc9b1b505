"""The fit report as one self-contained HTML page: the data as JSON, the script and style inlined
(assets/, written here: no library, nothing fetched when the page opens)."""
from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import TYPE_CHECKING, Sequence

from .._version import __version__

if TYPE_CHECKING:
    from .fit import FitReport

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="archfit {version}">
<title>{title}</title>
<style>{css}</style></head>
<body><header><h1>{title}</h1><div class="sub">archfit {version} fit report: where each part of the model runs, and why</div></header>
<main></main>
<script type="application/json" id="archfit-data">{data}</script>
<script>{js}</script>
</body></html>
"""


def _asset(name: str) -> str:
    return (resources.files("archfit.report") / "assets" / name).read_text(encoding="utf-8")


def _finite(x):
    """NaN and infinity (timings not measured) as null: JSON has no NaN, and JSON.parse refuses it."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def report_data(r: "FitReport") -> dict:
    d = r.to_dict()
    # partition node lists are in the graph already; the cards need sizes only
    d["partitions"] = [{"index": p.index, "nodes": len(p.nodes), "compute_ops": p.compute_ops, "flops": p.flops,
                        "boundary_bytes": p.boundary_bytes} for p in r.partitions]
    d["graph"] = r.graph.to_dict() if r.graph is not None else None
    return d


def render_page(title: str, sections: Sequence[tuple[str, Sequence["FitReport"]]], *, regions: dict | None = None,
                buckets: dict | None = None, latency: str | None = None) -> str:
    """sections: (label, reports side by side); regions: regions.plan.regions_page; buckets: see BucketedModule.page_data."""
    data = {"title": title, "version": __version__, "latency": latency, "regions": regions, "buckets": buckets,
            "sections": [{"label": label, "reports": [report_data(r) for r in reports]} for label, reports in sections]}
    # '<' escaped inside the JSON so no string in it can close the script element
    payload = json.dumps(_finite(data), default=str, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return _TEMPLATE.format(title=html.escape(title), version=__version__, css=_asset("page.css"), js=_asset("page.js"),
                            data=payload)


def module_page(module, latency: str | None = None) -> str:
    """A compiled module (any kind: its page() says what is particular to it: bucket table,
    regions, the generator's parts) as one self-contained HTML page."""
    page = module.page()
    title = page["sections"][0][0] if page["sections"] else type(module).__name__
    return render_page(f"{title} on {module.target}", latency=latency, **page)
