"""The fit report: how well a model fits a target, before (analyze) or after (trace) compiling."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from ..core.compile import PartitionTiming
from ..core.partition import Partition, PartitionPlan
from ..core.quantize import Quantization
from ..core.support import Reason
from ..core.validate import Validation
from .estimate import LatencyEstimate
from .graph import GraphView, graph_view

# Verdict thresholds, stated so users can argue with them.
FITS_WITH_FALLBACK_MIN_FLOP_SHARE = 0.80  # below this share of FLOPs on the target: poor fit
MAX_PARTITIONS_FOR_GOOD_FIT = 4  # more target partitions than this means many host crossings


@dataclass(frozen=True)
class FallbackGroup:
    """Nodes of one op that run on the CPU for one reason."""

    op: str
    reason: str
    detail: str
    count: int
    flops: int
    nodes: tuple[str, ...]
    sources: tuple[str, ...]  # distinct user source lines


@dataclass(frozen=True)
class SourceOp:
    """An op of the user's framework (imported models): how many of its nodes, how many run
    wholly on the target, and their FLOPs."""

    op: str  # 'TF Conv2D', 'ONNX MatMul'
    count: int
    on_target: int
    flops: int
    flops_on_target: int


@dataclass(frozen=True)
class FitReport:
    model: str
    target: str
    precision: str
    emulated: bool
    total_ops: int
    supported_ops: int
    total_flops: int
    supported_flops: int
    partitions: tuple[Partition, ...]
    fallback: tuple[FallbackGroup, ...]
    verdict: str
    verdict_reason: str
    timings: dict[int, PartitionTiming] = field(default_factory=dict)
    validation: Validation | None = None
    compile_seconds: float | None = None
    estimate: LatencyEstimate | None = None  # roofline, for accelerator profiles; not a measurement
    # target/precision="auto": every candidate measured (choose.Alternative), the chosen one marked
    alternatives: tuple = ()
    # imported models (ONNX, TensorFlow): coverage by the ops the user's framework names
    source_ops: tuple[SourceOp, ...] = ()
    # int8: the calibration set, the layers quantized and those kept in float (core.quantize.Quantization)
    quantization: Quantization | None = None
    # every node and where it runs, for the HTML page; left out of to_dict (it is the graph, not the fit)
    graph: GraphView | None = field(default=None, compare=False, repr=False)

    @property
    def op_share(self) -> float:
        return self.supported_ops / self.total_ops if self.total_ops else 1.0

    @property
    def flop_share(self) -> float:
        return self.supported_flops / self.total_flops if self.total_flops else 1.0

    def to_dict(self) -> dict:
        d = asdict(replace(self, graph=None))
        del d["graph"]
        d["op_share"], d["flop_share"] = self.op_share, self.flop_share
        d["timings"] = {str(k): asdict(v) | {"pays_off": v.pays_off} for k, v in self.timings.items()}
        if self.validation is not None:
            d["validation"]["ok"] = self.validation.ok
        if self.estimate is not None:
            e = self.estimate
            d["estimate"] |= {"total_ms": e.total_ms, "device_ms": e.device_ms, "transfer_ms": e.transfer_ms,
                              "is_estimate": True}
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_text(self) -> str:
        from .render import render_report

        return render_report(self)

    def to_html(self) -> str:
        """One self-contained HTML page: the fit, the graph by module coloured by where each node runs."""
        from .html import render_page

        return render_page(f"{self.model} on {self.target}", [(self.model, [self])])

    def __str__(self) -> str:
        return self.to_text()


def _verdict(plan: PartitionPlan, flop_share: float) -> tuple[str, str]:
    n = len(plan.partitions)
    if not plan.fallback and n == 1:
        return "fits", "every op runs on the target in one partition"
    if n == 0:
        return "poor fit", "nothing runs on the target"
    if flop_share < FITS_WITH_FALLBACK_MIN_FLOP_SHARE:
        return "poor fit", f"{flop_share:.0%} of FLOPs on the target (< {FITS_WITH_FALLBACK_MIN_FLOP_SHARE:.0%})"
    if n > MAX_PARTITIONS_FOR_GOOD_FIT:
        return "poor fit", f"{n} partitions (> {MAX_PARTITIONS_FOR_GOOD_FIT}): many host crossings"
    return "fits with fallback", (
        f"{flop_share:.0%} of FLOPs on the target (>= {FITS_WITH_FALLBACK_MIN_FLOP_SHARE:.0%}) "
        f"in {n} partition(s) (<= {MAX_PARTITIONS_FOR_GOOD_FIT})"
    )


def _fallback_groups(plan: PartitionPlan) -> tuple[FallbackGroup, ...]:
    groups: dict[tuple, list] = {}
    tagalong = (Reason.TOO_SMALL, Reason.NO_PAYOFF)  # free views that merely followed their partition
    for n in plan.fallback:
        if not n.compute and (n.reason in tagalong or n.op == "getitem"):  # getitem follows its producer
            continue
        groups.setdefault((n.op, n.reason.value, n.detail), []).append(n)
    out = [
        FallbackGroup(op, reason, detail, len(ns), sum(n.flops for n in ns), tuple(n.name for n in ns),
                      tuple(dict.fromkeys(n.source for n in ns if n.source)))
        for (op, reason, detail), ns in groups.items()
    ]
    return tuple(sorted(out, key=lambda g: (-g.flops, -g.count, g.op)))


def _source_ops(plan: PartitionPlan) -> tuple[SourceOp, ...]:
    """Group ATen nodes by the source-framework node they came from; a source node is on the
    target when every computing ATen node of it is."""
    nodes: dict[str, list] = {}
    kinds: dict[str, str] = {}
    for n in plan.table.nodes:
        if n.origin is not None:
            nodes.setdefault(n.origin[0], []).append(n)
            framework = n.origin[0].split(" ", 1)[0]
            kinds[n.origin[0]] = f"{framework} {n.origin[1]}"
    ops: dict[str, list[int]] = {}
    for label, ns in nodes.items():
        compute = [n for n in ns if n.compute] or ns
        on = all(n.supported for n in compute)
        flops = sum(n.flops for n in ns)
        row = ops.setdefault(kinds[label], [0, 0, 0, 0])
        row[0] += 1
        row[1] += on
        row[2] += flops
        row[3] += flops if on else 0
    out = [SourceOp(op, *row) for op, row in ops.items()]
    return tuple(sorted(out, key=lambda s: (-s.flops, -s.count, s.op)))


def build_report(model_name: str, plan: PartitionPlan, precision: str, emulated: bool = False,
                 timings=None, validation=None, compile_seconds=None, estimate=None, graph_module=None) -> FitReport:
    # Views and getitems are free and would inflate coverage; count ops that compute.
    nodes = [n for n in plan.table.nodes if n.compute]
    supported = [n for n in nodes if n.supported]
    total_flops = sum(n.flops for n in nodes)
    supported_flops = sum(n.flops for n in supported)
    share = supported_flops / total_flops if total_flops else 1.0
    verdict, why = _verdict(plan, share)
    return FitReport(
        model=model_name, target=plan.target, precision=precision, emulated=emulated,
        total_ops=len(nodes), supported_ops=len(supported), total_flops=total_flops,
        supported_flops=supported_flops, partitions=plan.partitions, fallback=_fallback_groups(plan),
        verdict=verdict, verdict_reason=why, timings=dict(timings or {}), validation=validation,
        compile_seconds=compile_seconds, estimate=estimate, source_ops=_source_ops(plan),
        graph=graph_view(graph_module, plan) if graph_module is not None else None,
    )
