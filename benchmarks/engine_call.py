"""The cost of calling an OpenVINO engine from Python: archfit's OpenVINOEngine.run (inputs whose
dtype matches the engine's ports bound as shared tensors, then infer()) against the call OpenVINO's
Python API offers, `infer(list_of_arrays, share_inputs=True)`, which runs each input through its
Python converters. Both on the same compiled model, each on its own infer request, with the
ONNX Runtime engine of the same model for reference; all return torch tensors.

    .venv/bin/python benchmarks/engine_call.py [--rounds 8] [--seconds 1.5] [--full-dlrm]

Models: a 128x64 linear + ReLU (the call's fixed cost alone), tiny DLRM (batch 16), and with
--full-dlrm the zoo's DLRM at batch 128 (2.2 GB of tables, about a minute to build). Arms
interleaved over rounds in one process; per model, the p50 of each arm and the paired median of
the rounds' ratios against OpenVINO's own call. Writes benchmarks/results/engine_call.json."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _engine(module):
    from archfit.core.engines import EngineModule

    (engine,) = [m.engine for m in module.modules() if isinstance(m, EngineModule)]
    return engine


def one(label: str, model, inputs, rounds: int, seconds: float) -> dict:
    import archfit
    from archfit.core.timing import interleaved_rounds
    from archfit.targets.base import to_numpy

    ov_engine = _engine(archfit.trace(model, inputs, "openvino", precision="fp32", check_payoff=False, cache=False))
    ort_engine = _engine(archfit.trace(model, inputs, "onnxruntime", precision="fp32", check_payoff=False,
                                       cache=False))
    ort_engine.run_alone()  # as a model compiled whole runs it
    request = ov_engine.compiled_model.create_infer_request()
    flat = list(inputs)

    def openvino_api():
        result = request.infer([to_numpy(t) for t in flat], share_inputs=True)
        return [torch.from_numpy(a) for a in result.to_tuple()]

    arms = {"OpenVINO's infer(list, share_inputs=True)": openvino_api,
            "archfit OpenVINOEngine.run": lambda: ov_engine.run(flat),
            "archfit OnnxRuntimeEngine.run (reference)": lambda: ort_engine.run(flat)}
    for got, want in zip(ov_engine.run(flat), openvino_api()):
        assert torch.equal(got, want)
    with torch.no_grad():
        looks = interleaved_rounds(arms, seconds, rounds, min_calls=5)
    base = "OpenVINO's infer(list, share_inputs=True)"
    out = {"model": label, "arms": {}}
    for k in arms:
        pooled = [t for look in looks for t in look[k]]
        ratios = [statistics.median(look[base]) / statistics.median(look[k]) for look in looks]
        out["arms"][k] = {"p50_us": 1e6 * statistics.median(pooled), "speed_vs_openvino_api": statistics.median(ratios)}
    return out


def main() -> None:
    from archfit import zoo

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--full-dlrm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cases = [("linear 128x64", _Linear().eval(), (torch.randn(128, 64),)),
             ("dlrm (tiny, batch 16)", *zoo.build("dlrm", tiny=True))]
    if args.full_dlrm:
        cases.append(("dlrm (batch 128)", *zoo.build("dlrm")))
    results = []
    for label, model, inputs in cases:
        model.eval()
        results.append(one(label, model, inputs, args.rounds, args.seconds))
        del model
    (ROOT / "benchmarks" / "results" / "engine_call.json").write_text(json.dumps(results, indent=1))
    print("| model | arm | p50 us | speed vs OpenVINO's own call (paired) |\n|---|---|---|---|")
    for r in results:
        for k, a in r["arms"].items():
            print(f"| {r['model']} | {k} | {a['p50_us']:.1f} | {a['speed_vs_openvino_api']:.2f}x |")


if __name__ == "__main__":
    main()
