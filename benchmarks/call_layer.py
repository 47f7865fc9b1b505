"""archfit's own cost per call, the engine stood in: what CompiledModule adds around its engine
(input checks, the fx host graph, flattening the call and rebuilding the outputs), with and
without its fast paths: the plain call (positional tensors in, a tensor or a tuple out: no
pytree) and the sole engine (a model compiled whole: the engine called without the fx graph).
Called outside torch.no_grad, as users call it (the slow path sets grad mode itself).

    .venv/bin/python benchmarks/call_layer.py [--calls 3000] [--rounds 7]

The engine's run returns a precomputed output, so only Python is timed; arms alternate per round,
best round per arm (the machine's own noise only ever adds). Tiny DLRM (two inputs, one output)
and tiny BERT (three inputs by keyword: the fast path does not apply, the pytree path is timed)."""
from __future__ import annotations

import argparse
import time

import torch


def one(name: str, calls: int, rounds: int) -> dict:
    import archfit
    from archfit import zoo
    from archfit.core.capture import normalize_inputs
    from archfit.core.engines import EngineModule

    model, inputs = zoo.build(name, tiny=True)
    model.eval()
    args, kwargs = normalize_inputs(inputs)
    m = archfit.trace(model, inputs, "openvino", check_payoff=False)
    engines = [e for e in m.modules() if isinstance(e, EngineModule)]
    for e in engines:
        e.engine = _Stand(e)
    plain, sole = m._plain, m._sole_engine

    def set_paths(on: tuple[bool, bool]):
        m.__dict__["_plain"] = plain if on[0] else (False, None)
        m.__dict__["_sole_engine"] = sole if on[1] else None

    # (plain call, sole engine): both fast paths / the plain call through the fx graph / neither
    arms = {"fast paths": (True, True), "no sole-engine path": (True, False), "pytree path": (False, False)}
    best = {k: float("inf") for k in arms}
    m(*args, **kwargs)
    for _ in range(rounds):
        for label, on in arms.items():
            set_paths(on)
            t = time.perf_counter()
            for _ in range(calls):
                m(*args, **kwargs)
            best[label] = min(best[label], (time.perf_counter() - t) / calls * 1e6)
    set_paths((True, True))
    return {"model": name, "plain": plain, "sole": sole, "us": best}


class _Stand:
    """An engine whose run returns the real engine's output for the example, computed once."""

    def __init__(self, module):
        self.real, self.out = module.engine, None

    def run(self, inputs):
        if self.out is None:
            self.out = self.real.run(inputs)
        return self.out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    print("| model | inputs / outputs | host graph | fast paths us per call | without the sole-engine path | "
          "pytree path, fx graph |\n|---|---|---|---|---|---|")
    for name in ("dlrm", "bert-base"):
        r = one(name, args.calls, args.rounds)
        print(f"| {name} (tiny) | {'positional' if r['plain'][0] else 'keywords'} / {r['plain'][1] or 'structured'} "
              f"| {'one engine' if r['sole'] else 'engines and host ops'} | {r['us']['fast paths']:.1f} "
              f"| {r['us']['no sole-engine path']:.1f} | {r['us']['pytree path']:.1f} |")


if __name__ == "__main__":
    main()
