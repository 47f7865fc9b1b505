"""archfit against its peers on one model, side by side in one process: the same inputs, the same
thread count, arms interleaved over rounds so that drift (turbo, other load) hits all alike.

Peers: eager PyTorch (fp32 and bf16 autocast), torch.compile (Inductor), ONNX Runtime and OpenVINO
used directly on the whole model, OpenVINO's own torch.compile backend; archfit on each target and
precision. Each arm is built lazily and an arm that fails to build is reported, not fatal."""
from __future__ import annotations

import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..core.capture import capture, normalize_inputs
from ..core.cost import is_compute, node_flops
from ..core.timing import interleaved_rounds
from ..errors import CaptureError, first_line


@dataclass
class ArmResult:
    name: str
    precision: str
    build_seconds: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    rounds_ms: list[float] = field(default_factory=list)  # each round's median: arms pair up round by round
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50)) if self.samples_ms else float("nan")

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples_ms, 90)) if self.samples_ms else float("nan")


def model_flops(model: torch.nn.Module, inputs: Any) -> int:
    """FLOPs of one forward pass, by archfit's own per-node count (torch's flop formulas); for
    models that cannot be captured whole, torch's FLOP counter over an eager run."""
    try:
        gm = capture(model, inputs).graph_module
    except CaptureError:
        from torch.utils.flop_counter import FlopCounterMode

        args, kwargs = normalize_inputs(inputs)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
        return int(counter.get_total_flops())
    return int(sum(node_flops(n) for n in gm.graph.nodes if is_compute(n)))


def _call(fn: Callable, inputs: Any) -> Callable[[], object]:
    args, kwargs = normalize_inputs(inputs)
    return lambda: fn(*args, **kwargs)


def _flat_numpy(inputs: Any) -> list[np.ndarray]:
    args, kwargs = normalize_inputs(inputs)
    return [t.numpy() for t in torch.utils._pytree.tree_flatten((args, kwargs))[0]]


def _onnxruntime_direct(model, inputs):
    """The whole model through torch.onnx into one session with ONNX Runtime's default options."""
    import onnxruntime as ort

    from ..targets.onnxruntime import OnnxRuntimeEngine, externalize, quiet

    args, kwargs = normalize_inputs(inputs)
    with quiet():
        program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, optimize=True, verbose=False)
    # externalize: models over protobuf's 2 GB (DLRM) cannot be serialised whole
    # ONNX Runtime's defaults, every graph optimization on: archfit's engines turn SkipLayerNormFusion
    # off (targets/onnxruntime.py), which is archfit's choice, not the peer's (until 2026-12-03's last
    # tables it leaked into this peer through the shared engine class)
    engine = OnnxRuntimeEngine(externalize(program.model_proto), ort.SessionOptions(), disabled_optimizers=())
    flat = torch.utils._pytree.tree_flatten((args, kwargs))[0]
    run = lambda: engine.run(flat)  # noqa: E731
    run.engine = engine
    return run


def _openvino_direct(model, inputs, precision: str):
    import openvino as ov

    args, kwargs = normalize_inputs(inputs)
    example = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16", "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()
    feeds = _flat_numpy(inputs)
    return lambda: request.infer(feeds, share_inputs=True)


def _torch_compile(model, inputs, backend: str, precision: str = "fp32"):
    options = None
    if backend == "openvino":
        import openvino.torch  # noqa: F401 - registers the backend

        # OpenVINO's default is bf16 on CPUs with bf16 units: say which precision is meant
        options = {"device": "CPU", "config": {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}}
    compiled = torch.compile(model, backend=backend, options=options)
    fn = _call(compiled, inputs)
    with torch.no_grad():
        fn()  # compile now, not in the first timed call
    return fn


def _eager_bf16(model, inputs):
    fn = _call(model, inputs)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def _archfit(model, inputs, target: str, precision: str, force_cpu=(), **options):
    from .. import trace

    compiled = trace(model, inputs, target, precision=precision, force_cpu=force_cpu, **options)
    fn = _call(compiled, inputs)
    report = getattr(compiled, "report", None)
    validation = getattr(compiled, "validation", None) or getattr(report, "validation", None)
    if validation is not None and validation.gate:  # what the task gate measured goes in the row
        fn.extra = {"gate": "; ".join(validation.gate_lines())}
    return fn, compiled


def _auto(model, inputs, precision: str, **options):
    """archfit's target="auto" with per_partition; the call carries what was chosen over what."""
    from ..core.engines import EngineModule

    fn, compiled = _archfit(model, inputs, "auto", precision, per_partition=True, **options)
    alts = getattr(compiled, "alternatives", ()) or ()
    engines = sorted({m.target for m in compiled.modules() if isinstance(m, EngineModule)})
    fn.extra = getattr(fn, "extra", {}) | {"chosen": next((f"{a.target} {a.precision}" for a in alts if a.chosen), "?"),
                "engines_on": ", ".join(engines),
                "alternatives": ", ".join(f"{a.target} {a.ms:.2f} ms" if a.ms is not None else f"{a.target}: {a.why}"
                                          for a in alts)}
    return fn


def arms(model: torch.nn.Module, inputs: Any, targets=("openvino", "onnxruntime"),
         precisions=("fp32", "bf16"), peers: bool = True, auto: bool = True,
         accuracy: str | None = None) -> dict[str, tuple[str, Callable[[], Callable]]]:
    """name -> (precision, builder returning a zero-argument call). bf16 arms only on a CPU with
    bf16 units: elsewhere they would time fp32 (OpenVINO) or a slow emulation (PyTorch).
    accuracy: the task gate archfit's arms validate with (a detector's "detection")."""
    precisions = tuple(p for p in precisions if p != "bf16" or bf16_units())
    out: dict[str, tuple[str, Callable]] = {"eager PyTorch": ("fp32", lambda: _call(model, inputs))}
    if peers:
        if "bf16" in precisions:
            out["eager PyTorch bf16 autocast"] = ("bf16", lambda: _eager_bf16(model, inputs))
        out["torch.compile (Inductor)"] = ("fp32", lambda: _torch_compile(model, inputs, "inductor"))
        out["ONNX Runtime direct"] = ("fp32", lambda: _onnxruntime_direct(model, inputs))
        out["OpenVINO direct"] = ("fp32", lambda: _openvino_direct(model, inputs, "fp32"))
        if "bf16" in precisions:
            out["OpenVINO direct bf16"] = ("bf16", lambda: _openvino_direct(model, inputs, "bf16"))
        out["torch.compile (OpenVINO backend)"] = ("fp32", lambda: _torch_compile(model, inputs, "openvino"))
        if "bf16" in precisions:
            out["torch.compile (OpenVINO backend) bf16"] = (
                "bf16", lambda: _torch_compile(model, inputs, "openvino", "bf16"))
    from ..targets import get_target

    for t in targets:
        for p in precisions:
            if get_target(t).precision_unavailable(p) is None:  # a target refusing a precision here has no arm
                out[f"archfit {t} {p}"] = (p, lambda t=t, p=p: _archfit(model, inputs, t, p, accuracy=accuracy)[0])
    if auto:  # what a user who does not know which target wins gets: every target measured, per partition
        for p in precisions:
            out[f"archfit auto {p}"] = (p, lambda p=p: _auto(model, inputs, p, accuracy=accuracy))
    return out


def run_arms(builders: dict[str, tuple[str, Callable]], rounds: int = 5, seconds_per_round: float = 1.0,
             log: Callable[[str], None] | None = None) -> list[ArmResult]:
    """Build every arm, then time them interleaved (core.timing.interleaved_rounds: each round
    runs each arm for about `seconds_per_round`, at least 3 timed calls after an untimed one,
    starting one arm later each round) and keep every call's latency."""
    results, calls = [], []
    for name, (precision, build) in builders.items():
        r = ArmResult(name, precision)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                fn = build()
                fn()  # first call (lazy initialisation) is not timed
            r.build_seconds = time.perf_counter() - t0
            r.extra.update(getattr(fn, "extra", {}))
            calls.append((r, fn))
        except Exception as e:  # noqa: BLE001 - a peer that cannot handle the model is a result
            r.error = f"{type(e).__name__}: {first_line(e, 400)}"
        if log:
            log(f"built {name}: {r.error or f'{r.build_seconds:.1f} s'}")
        results.append(r)
    with torch.no_grad():
        # one round at a time, so that each arm's rounds pair with the others'
        for samples in interleaved_rounds({i: fn for i, (_, fn) in enumerate(calls)}, seconds_per_round, rounds):
            for i, (r, _) in enumerate(calls):
                r.samples_ms += [1e3 * t for t in samples[i]]
                r.rounds_ms.append(1e3 * statistics.median(samples[i]))
    return results


def cpu_model() -> str:
    """The CPU's model name, which every benchmark table prints (hosts differ, figures are not mixed)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec, so a
    child started by a large parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bf16_units() -> bool:
    from ..targets.openvino import bf16_units as units

    return units()


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best square matmul rate PyTorch (oneDNN / MKL) reaches here, in GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def openvino_matmul_peak_gflops(precision: str, n: int = 2048, seconds: float = 2.0) -> float:
    """The same for OpenVINO's CPU plugin (a one-MatMul model with a constant weight)."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([n, n], np.float32)
    w = ops.constant(np.random.rand(n, n).astype(np.float32))
    model = ov.Model([ops.matmul(x, w, False, False)], [x])
    config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16", "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    feed = [np.random.rand(n, n).astype(np.float32)]
    for _ in range(3):
        request.infer(feed)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        request.infer(feed)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def table(results: list[ArmResult], flops: int, peaks: dict[str, float]) -> list[dict]:
    """Rows with p50/p90, ratios to eager and to the best peer at the same precision, and the
    achieved FLOP rate as a share of the machine's matmul peak at that precision."""
    eager = next((r.p50 for r in results if r.name == "eager PyTorch" and r.samples_ms), float("nan"))
    ok = [r for r in results if r.samples_ms]
    rows = []
    for r in results:
        peer = min((p for p in ok if not p.name.startswith("archfit") and p.precision == r.precision),
                   key=lambda p: p.p50, default=None)
        best_peer = peer.p50 if peer is not None else float("nan")
        gflops = flops / (r.p50 / 1e3) / 1e9 if r.samples_ms else float("nan")
        rows.append({"arm": r.name, "precision": r.precision, "p50_ms": r.p50, "p90_ms": r.p90,
                     "vs_eager": eager / r.p50 if r.samples_ms else float("nan"),
                     "vs_best_peer": best_peer / r.p50 if r.samples_ms else float("nan"),
                     "gflops": gflops, "share_of_peak": gflops / peaks[r.precision] if r.samples_ms else float("nan"),
                     "paired_vs_best_peer": paired_ratio(peer, r), "build_s": r.build_seconds, "error": r.error,
                     **r.extra})
    return rows


def paired_ratio(peer: ArmResult | None, arm: ArmResult) -> float:
    """The median over rounds of peer / arm, each round's medians: both met the same host within a
    round, and this VM's speed moves between rounds by more than the gaps measured (the ratio of
    the overall medians mixes rounds). NaN without rounds on both sides."""
    pairs = [p / a for p, a in zip(peer.rounds_ms, arm.rounds_ms)] if peer is not None and arm.samples_ms else []
    return statistics.median(pairs) if pairs else float("nan")


def render(rows: list[dict]) -> str:
    lines = ["| arm | prec | p50 ms | p90 ms | vs eager | vs best peer (same prec) | GFLOP/s | of matmul peak | build s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['arm']} | {r['precision']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['arm']} | {r['precision']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {_x(r['vs_eager'])} "
                     f"| {_x(r['vs_best_peer'])} | {_num(r['gflops'], '.0f')} | {_num(r['share_of_peak'], '.0%')} "
                     f"| {r['build_s']:.1f} |")
    return "\n".join(lines)


def _num(v: float, fmt: str) -> str:
    return "-" if v != v or v in (float("inf"), 0.0) else format(v, fmt)  # v != v: NaN


def _x(v: float) -> str:
    return "-" if v != v else f"{v:.2f}x"
