"""Keras models through archfit against TensorFlow's own ways of running them, in one process.

    .venv/bin/python benchmarks/frameworks.py                    # keras-resnet50 and keras-bert-base
    .venv/bin/python benchmarks/frameworks.py keras-resnet50     # one of them

Per model (full size, batch 1, random weights): p50/p90 latency of TensorFlow eager, tf.function
with XLA (jit_compile=True), OpenVINO reading the Keras model's SavedModel directly, ONNX Runtime
on the ONNX file Keras exports (model.export(format="onnx")), and archfit on each target, arms
interleaved over rounds (archfit.cli.bench.run_arms); every arm's output checked against
TensorFlow eager first. Writes benchmarks/results/frameworks-MODEL.json and
benchmarks/results/frameworks.md. Floor (#13): archfit's best target within 3% of the best peer
and ahead of TensorFlow's best."""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

import archfit  # before TensorFlow: archfit hides triton beside it (see archfit._hide_triton...)
from archfit.frontends.tensorflow import _tf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("keras-resnet50", "keras-bert-base")
THREADS = 2
TF_ARMS = ("TensorFlow eager", "tf.function XLA")


def _as_list(inputs):
    return list(inputs.values()) if isinstance(inputs, dict) else [inputs]


def arms(model, inputs, workdir: Path) -> dict:
    """name -> (precision, builder returning a zero-argument call)."""
    tf = _tf()
    feed = _as_list(inputs)
    tensors = [tf.constant(v) for v in feed]
    arg = tensors if len(tensors) > 1 else tensors[0]

    def eager():
        return lambda: model(arg, training=False)

    def xla():
        fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False), jit_compile=True)
        return lambda: fn(*tensors)

    def openvino_direct():
        import openvino as ov

        saved = workdir / "saved_model"
        if not saved.exists():
            model.export(str(saved), verbose=False)
        compiled = ov.Core().compile_model(ov.convert_model(str(saved)), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        # by name: the SavedModel's inputs need not come in the Keras model's order
        names = list(inputs) if isinstance(inputs, dict) else None
        if names:
            order = [next(n for n in names if n in port.get_names() or f"{n}:0" in port.get_names())
                     for port in compiled.inputs]
            ordered = [inputs[n] for n in order]
            return lambda: request.infer(ordered, share_inputs=True)
        return lambda: request.infer(feed, share_inputs=True)

    def onnxruntime_direct():
        import onnxruntime as ort

        path = workdir / "model.onnx"
        model.export(str(path), format="onnx", verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda: session.run(None, dict(zip(names, feed)))

    def archfit_on(target):
        def build():
            compiled = archfit.trace(model, inputs, target)
            return lambda: compiled(*feed)
        return build

    return {"TensorFlow eager": ("fp32", eager), "tf.function XLA": ("fp32", xla),
            "OpenVINO direct (SavedModel)": ("fp32", openvino_direct),
            "ONNX Runtime on Keras's ONNX export": ("fp32", onnxruntime_direct),
            "archfit openvino": ("fp32", archfit_on("openvino")),
            "archfit onnxruntime": ("fp32", archfit_on("onnxruntime"))}


def _first(out):
    """The first output of any arm as numpy (Keras list, TF tensor, OpenVINO result, ORT list)."""
    if hasattr(out, "to_tuple"):  # OpenVINO OVDict
        out = out.to_tuple()
    if isinstance(out, (list, tuple)):
        out = out[0]
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out)


def one_model(name: str) -> dict:
    import torch

    from archfit import zoo
    from archfit.cli import bench

    tf = _tf()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(THREADS)
    model, inputs = zoo.build(name)
    log = lambda msg: print(f"[{name}] {msg}", flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        builders = arms(model, inputs, Path(tmp))
        # every arm's answer against TensorFlow eager's, before any timing
        want = _first(builders["TensorFlow eager"][1]()())
        checked = {}
        for arm, (precision, build) in builders.items():
            def checked_build(build=build, arm=arm):
                fn = build()
                got = _first(fn())
                err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-12)
                checked[arm] = err
                if err > 1e-3:
                    raise AssertionError(f"{arm} differs from TensorFlow eager: max rel error {err:.2e}")
                return fn
            builders[arm] = (precision, checked_build)
        results = bench.run_arms(builders, rounds=5, seconds_per_round=2.0, log=log)
    rows = [{"arm": r.name, "p50_ms": r.p50 if r.samples_ms else None, "p90_ms": r.p90 if r.samples_ms else None,
             "max_rel_err_vs_tf": checked.get(r.name), "build_s": r.build_seconds, "error": r.error}
            for r in results]
    ok = [r for r in rows if r["p50_ms"]]
    best_peer = min((r for r in ok if not r["arm"].startswith("archfit")), key=lambda r: r["p50_ms"])
    best_tf = min((r for r in ok if r["arm"] in TF_ARMS), key=lambda r: r["p50_ms"])
    best_archfit = min((r for r in ok if r["arm"].startswith("archfit")), key=lambda r: r["p50_ms"])
    return {"model": name, "rows": rows, "best_peer": best_peer["arm"], "best_tf": best_tf["arm"],
            "best_archfit": best_archfit["arm"],
            "archfit_vs_best_peer": best_peer["p50_ms"] / best_archfit["p50_ms"],
            "archfit_vs_best_tf": best_tf["p50_ms"] / best_archfit["p50_ms"],
            "floor_met": best_archfit["p50_ms"] <= best_peer["p50_ms"] * 1.03
            and best_archfit["p50_ms"] < best_tf["p50_ms"]}


def render(result: dict) -> str:
    lines = [f"**{result['model']}** (batch 1): archfit's best ({result['best_archfit']}) is "
             f"{result['archfit_vs_best_peer']:.2f}x the best peer ({result['best_peer']}) and "
             f"{result['archfit_vs_best_tf']:.2f}x TensorFlow's best ({result['best_tf']}); floor "
             f"{'met' if result['floor_met'] else 'NOT met'}.", "",
             "| arm | p50 ms | p90 ms | max rel err vs TF eager | build s |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["error"]:
            lines.append(f"| {r['arm']} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r['arm']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['max_rel_err_vs_tf']:.1e} | "
                         f"{r['build_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or list(MODELS):
        result = one_model(name)
        result["host"] = {"cpu": platform.processor() or platform.machine(), "threads": THREADS}
        (RESULTS / f"frameworks-{name}.json").write_text(json.dumps(result, indent=2))
        print(render(result), flush=True)
    # the tables of every model run so far, so one model can be re-run alone
    done = [json.loads(p.read_text()) for name in MODELS if (p := RESULTS / f"frameworks-{name}.json").exists()]
    (RESULTS / "frameworks.md").write_text("\n\n".join(render(r) for r in done) + "\n")


if __name__ == "__main__":
    main()
