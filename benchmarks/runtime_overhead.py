"""What archfit's own run-time layer costs around the engines, side by side in one process.

Arms, interleaved over rounds (archfit.cli.bench.run_arms), per full-size model on one target:
  engine alone         the compiled engine(s) called directly on flat tensors (no host code at all)
  host graph (traced)  the traced fx host graph on flat tensors: engines plus CPU ops, no checks
  traced module        what archfit.trace returns: input checks (shape, dtype, embedding ids), pytree
  loaded module        the same model saved and loaded: host program run by the closed-vocabulary
                       interpreter (artifact/host_program.py) instead of fx-generated code
  eager PyTorch        the model itself
So: input checks = traced module - host graph; interpreter = loaded module - traced module.

    .venv/bin/python benchmarks/runtime_overhead.py --rounds 5      # writes results/runtime_overhead.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

import archfit
from archfit import zoo
from archfit.cli import bench
from archfit.core.capture import normalize_inputs
from archfit.core.engines import EngineModule

RESULTS = Path(__file__).resolve().parent / "results" / "runtime_overhead.json"
MODELS = (("bert-base", "openvino"), ("mlp-custom-op", "openvino"))


def arms(name: str, target: str, workdir: Path) -> dict:
    model, inputs = zoo.build(name)
    args, kwargs = normalize_inputs(inputs)
    flat = pytree.tree_flatten((args, kwargs))[0]
    compiled = archfit.trace(model, inputs, target, check_payoff=False, cache=False)
    loaded = archfit.load(archfit.save(compiled, workdir / f"{name}.archfit"))
    gm = compiled.graph_module
    engines = [m for m in gm.modules() if isinstance(m, EngineModule)]
    boundary = {}  # each engine's own inputs, recorded once, so "engine alone" runs only engines
    hooks = [e.register_forward_pre_hook(lambda m, a: boundary.__setitem__(m, a)) for e in engines]
    with torch.no_grad():
        gm(*flat)
    for h in hooks:
        h.remove()

    def engines_alone():
        for e in engines:
            e.engine.run(boundary[e])

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn()
        return call

    return {
        "eager PyTorch": ("fp32", lambda: no_grad(lambda: model(*args, **kwargs))),
        "engine alone": ("fp32", lambda: engines_alone),
        "host graph (traced)": ("fp32", lambda: no_grad(lambda: gm(*flat))),
        "traced module": ("fp32", lambda: lambda: compiled(*args, **kwargs)),
        "loaded module": ("fp32", lambda: lambda: loaded(*args, **kwargs)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    torch.set_num_threads(2)
    out = {"cpu": bench.cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in MODELS:
            results = bench.run_arms(arms(name, target, Path(tmp)), rounds=opts.rounds)
            out["models"][f"{name} on {target}"] = {r.name: {"p50_ms": r.p50, "p90_ms": r.p90, "error": r.error}
                                                   for r in results}
            for r in results:
                print(f"{name:14} {r.name:20} p50 {r.p50:9.3f} ms  p90 {r.p90:9.3f} ms  {r.error or ''}", flush=True)
    RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
