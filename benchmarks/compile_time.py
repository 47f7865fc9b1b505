"""How long `archfit.trace` takes to compile BERT-base into three length buckets, with and without
two of archfit's own compile-path choices, toggled in this one process (arms alternate within each
round, the compile cache off):

- openvino: OpenVINO's usage reports on (its telemetry package bound back into the converter, as
  without archfit) or off (archfit's default: `import archfit` hides the package). Each report
  forks this process; with no network here, the child waits 3 s and is killed, and meanwhile every
  page this process writes takes a copy-on-write fault.
- onnxruntime: torch.onnx.export (its function table rebuilt per export) or
  `targets.onnxruntime.onnx_export` (built once per process).
- openvino: each partition exported and decomposed again before conversion (torch.export, then
  run_decompositions with OpenVINO's table: what ov.convert_model(ExportedProgram) does) or
  converted as captured, decomposed node by node (archfit's default).

    .venv/bin/python benchmarks/compile_time.py [--rounds 3] [--tiny] [--arms SUBSTRING]
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

os.environ["ARCHFIT_CACHE"] = "0"  # every compile is cold

import torch  # noqa: E402

import archfit  # noqa: E402
from archfit import zoo  # noqa: E402
from archfit.cli.bench import cpu_model  # noqa: E402
from archfit.targets import onnxruntime as ort_target  # noqa: E402
from archfit.targets import openvino as ov_target  # noqa: E402
from onnx_export import public_export  # noqa: E402 - benchmarks/ is on sys.path when run as a script

SIZES = (64, 128, 256)
TINY_SIZES = (32, 64, 128)  # the tiny BERT has 130 positions


def _reports(on: bool) -> None:
    """Bind OpenVINO's real telemetry package (on) or its stand-in (off) into the converter."""
    if on:
        sys.modules.pop("openvino_telemetry", None)  # archfit hid it; import it as OpenVINO would
        tm = importlib.import_module("openvino_telemetry")
    else:
        tm = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    archfit._bind_openvino_telemetry(tm)


_ONNX_EXPORT = ort_target.onnx_export
_AS_CAPTURED = ov_target._converted_as_captured


def _defaults() -> None:
    """archfit's own choices, before each arm changes one."""
    _reports(False)
    ort_target.onnx_export = _ONNX_EXPORT
    ov_target._converted_as_captured = _AS_CAPTURED


ARMS = {
    ("openvino", "usage reports on (OpenVINO's default)"): lambda: _reports(True),
    ("openvino", "usage reports off (archfit)"): lambda: None,
    ("openvino", "each partition exported and decomposed again"):
        lambda: setattr(ov_target, "_converted_as_captured", lambda gm, precision: None),
    ("openvino", "converted as captured (archfit)"): lambda: None,
    ("onnxruntime", "torch.onnx.export"): lambda: setattr(ort_target, "onnx_export", public_export),
    ("onnxruntime", "function table built once (archfit)"): lambda: None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tiny BERT (a smoke run)")
    parser.add_argument("--arms", default="", help="only the arms whose target or name contains this")
    a = parser.parse_args()
    arms = {arm: ARMS[arm] for arm in ARMS if any(a.arms in part for part in arm)}
    model, inputs = zoo.build("bert-base", tiny=a.tiny)
    sizes = TINY_SIZES if a.tiny else SIZES
    buckets = archfit.Buckets({"input_ids": 1, "attention_mask": 1}, sizes=sizes)
    import openvino.tools.ovc  # noqa: F401 - the converter loaded, so its modules can be rebound

    ort_target._torchlib_registry(ort_target.OPSET)  # built before timing, as in a process that exported before
    for target in ("openvino", "onnxruntime"):  # first compiles in the process (imports, kernels): untimed
        archfit.trace(model, inputs, target, check_payoff=False)
    forks = [0]
    os.register_at_fork(before=lambda: forks.__setitem__(0, forks[0] + 1))
    seconds, forked = {arm: [] for arm in arms}, {arm: 0 for arm in arms}
    for r in range(a.rounds):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for arm in order:
            _defaults()
            arms[arm]()
            before, t = forks[0], time.perf_counter()
            archfit.trace(model, inputs, arm[0], buckets=buckets, check_payoff=False)
            seconds[arm].append(time.perf_counter() - t)
            forked[arm] += forks[0] - before
            print(f"round {r + 1}: {arm[0]}, {arm[1]}: {seconds[arm][-1]:.1f} s", flush=True)
        time.sleep(4)  # the last arm's report children (3 s) end before the next round
    _defaults()
    print(f"\nhost: {cpu_model()}, {torch.get_num_threads()} torch threads; BERT-base{' (tiny)' if a.tiny else ''}, "
          f"buckets {sizes}, batch 1; median of {a.rounds} rounds\n")
    print("| target | arm | compile s (median) | rounds s | process forks per compile |")
    print("|---|---|---:|---|---:|")
    for (target, arm), s in seconds.items():
        print(f"| {target} | {arm} | {statistics.median(s):.1f} | {', '.join(f'{x:.1f}' for x in s)} "
              f"| {forked[target, arm] / a.rounds:.0f} |")


if __name__ == "__main__":
    main()
