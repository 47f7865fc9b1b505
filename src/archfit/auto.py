"""target="auto" and precision="auto": compile on every real target this machine runs (and, for
precision="auto", each precision a target computes in here), measure the whole model with each
on the example inputs, keep the fastest. Which backend wins depends on the model and the CPU
(OpenVINO on BERT, ONNX Runtime on DLRM fp32 in BENCHMARKS.md), so it is measured, not guessed.

Every candidate passes the same validation as a plain trace (a precision that fails its
tolerance is not a candidate); the report lists every alternative with its time or the reason
it was left out."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from .core.capture import normalize_inputs
from .core.module import ArchfitModule
from .core.options import TraceOptions
from .core.timing import fastest
from .errors import ArchfitError, first_line
from .report.fit import FitReport
from .targets.registry import get_target, list_targets

AUTO = "auto"


@dataclass(frozen=True)
class Alternative:
    """One (target, precision) tried: its median time on the example inputs, or why it is out."""

    target: str
    precision: str
    ms: float | None = None
    why: str | None = None
    chosen: bool = False


def candidates(target, precision: str | None, calibration: bool = False,
               judged: bool = False) -> tuple[list[tuple[str, str]], list[Alternative]]:
    """(target, precision) pairs to compile, and those left out with the reason (with
    precision="auto": int8 only when calibration data is given, int8w only when a task gate and
    a validation set can judge it: `judged`)."""
    targets = [t for t in list_targets() if not t.emulated] if target == AUTO else [get_target(target)]
    pairs, out = [], []
    for t in targets:
        name, why_not = t.name, t.unavailable()
        if why_not is not None:
            out.append(Alternative(name, precision or t.default_precision, why=why_not))
            continue
        wanted = t.precisions if precision == AUTO else (precision or t.default_precision,)
        for p in wanted:
            if p not in t.precisions:
                out.append(Alternative(name, p, why=f"not offered by {name}"))
            elif p == "int8" and precision == AUTO and not calibration:
                out.append(Alternative(name, p, why="no calibration data (calibration=...)"))
            elif p == "int8w" and precision == AUTO and not judged:
                out.append(Alternative(name, p, why="no task gate and validation set to judge it (accuracy=, "
                                                    "validation_inputs=)"))
            elif (why := t.precision_unavailable(p)) is not None:
                out.append(Alternative(name, p, why=why))
            else:
                pairs.append((name, p))
    return pairs, out


def _whole_graph_on_one_engine(module: ArchfitModule) -> bool:
    """Every op of the model in one partition: mixing per partition would only time each target's
    engine on the whole model again, which the candidates' measurement just did. Asked twice,
    this host's noise answered differently (ResNet-50, 2026-12-03: openvino chosen at 24.20 vs
    25.58 ms, then its one partition moved to onnxruntime), so the first answer stands."""
    report = module.report
    return (isinstance(report, FitReport) and len(report.partitions) == 1
            and report.supported_ops == report.total_ops)


def trace_auto(trace: Callable[[Any, Any, TraceOptions], ArchfitModule], model, example_inputs: Any,
               options: TraceOptions, seconds: float = 1.0) -> ArchfitModule:
    """Compile every candidate with trace(model, example_inputs, options for it), measure them,
    return the fastest with the alternatives in its report."""
    pairs, left_out = candidates(options.target, options.precision, options.calibration is not None,
                                 options.accuracy is not None and options.validation_inputs is not None)
    # per_partition runs once, on the winner: on every candidate it would also try the others'
    # engines per partition, so candidates would stop being the targets they are named after
    plain = replace(options, per_partition=False)
    built: dict[tuple[str, str], ArchfitModule] = {}
    for name, p in pairs:
        try:
            built[(name, p)] = trace(model, example_inputs, replace(plain, target=name, precision=p))
        except ArchfitError as e:  # a candidate that fails to compile or validate is out, with why
            left_out.append(Alternative(name, p, why=first_line(e, 200)))
        except Exception as e:  # noqa: BLE001 - a plug-in target's own bug costs only that candidate, named
            left_out.append(Alternative(name, p, why=f"{type(e).__name__}: {first_line(e, 200)}"))
    if not built:
        raise ArchfitError(f"target={options.target!r}, precision={options.precision!r}: no candidate compiled: "
                           + "; ".join(f"{a.target} {a.precision}: {a.why}" for a in left_out))
    args, kwargs = normalize_inputs(example_inputs)
    chosen = fastest({k: (lambda m=m: m(*args, **kwargs)) for k, m in built.items()}, seconds, settle=True)
    ms, best = chosen.ms, chosen.best
    alternatives = tuple(sorted((Alternative(t, p, ms[(t, p)], chosen=(t, p) == best) for t, p in built),
                                key=lambda a: a.ms) + left_out)
    if options.per_partition and not _whole_graph_on_one_engine(built[best]):
        # the engines come from the compile cache (unless cache=False): this re-plans, not re-compiles
        built.clear()  # every candidate's engines freed first (DLRM's hold 2 GB each)
        module = trace(model, example_inputs, replace(options, target=best[0], precision=best[1]))
    else:
        module = built[best]
    module.alternatives = alternatives
    if isinstance(module.report, FitReport):
        module.report = replace(module.report, alternatives=alternatives)
    return module
