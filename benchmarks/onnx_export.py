"""What the onnxruntime target's export of a partition costs, with torch.onnx.export (which builds
its table of ATen-to-ONNX functions from onnxscript's torchlib on every call) and with
`targets.onnxruntime.onnx_export` (the same exporter, the table built once per process). Both
arms export the same ExportedProgram, alternating within each round; the ONNX files must be
byte-identical, or the run stops.

    .venv/bin/python benchmarks/onnx_export.py [--rounds 5]

Per compile, the onnxruntime target exports each partition (and each bucket) once; the table's
cost is fixed, so it weighs most on small partitions."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.utils._pytree as pytree

from archfit import zoo
from archfit.cli.bench import cpu_model
from archfit.core.capture import capture, normalize_inputs
from archfit.targets import onnxruntime as ort_target
from archfit.targets.base import export_partition

MODELS = [("bert-base", True), ("dlrm", True), ("resnet18", True), ("bert-base", False), ("resnet50", False)]


def public_export(ep):
    """The onnxruntime target's export through the public API (compile_time.py uses it too)."""
    return torch.onnx.export(ep, dynamo=True, optimize=True, verbose=False, opset_version=ort_target.OPSET)


def one(name: str, tiny: bool, rounds: int) -> dict:
    model, inputs = zoo.build(name, tiny=tiny)
    captured = capture(model, inputs)
    args, kwargs = normalize_inputs(inputs)
    flat = pytree.tree_flatten((args, kwargs))[0]
    ep = export_partition(captured.graph_module, flat, contiguous_reshapes=True)
    arms = {"torch.onnx.export": public_export, "archfit onnx_export": ort_target.onnx_export}
    seconds = {arm: [] for arm in arms}
    with ort_target.quiet():
        ort_target.onnx_export(ep)  # the table is built once per process, before either arm is timed
        for r in range(rounds):
            protos = {}
            for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                t = time.perf_counter()
                protos[arm] = arms[arm](ep).model_proto.SerializeToString()
                seconds[arm].append(time.perf_counter() - t)
            if len(set(protos.values())) != 1:
                raise SystemExit(f"{name}: the two exports differ")
    return {arm: statistics.median(s) for arm, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    print(f"host: {cpu_model()}, {torch.get_num_threads()} torch threads; median of {rounds} rounds\n")
    print("| model | torch.onnx.export s | archfit onnx_export s | saved s |")
    print("|---|---:|---:|---:|")
    for name, tiny in MODELS:
        r = one(name, tiny, rounds)
        a, b = r["torch.onnx.export"], r["archfit onnx_export"]
        print(f"| {name}{' (tiny)' if tiny else ''} | {a:.2f} | {b:.2f} | {a - b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
