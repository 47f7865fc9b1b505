"""The garden: architectures no one here wrote, built from transformers and torchvision configs
at full size with random weights (nothing downloaded), through archfit as a new user would.

    .venv/bin/python benchmarks/garden.py [NAME ...]     # all, or some; then writes GARDEN.md

Per model: archfit.analyze on openvino, onnxruntime and the inf1 profile (one capture); then
Analysis.compile on openvino and onnxruntime (the defaults: payoff check, validation); max
relative error against eager; eager and compiled timed interleaved after both are warm; the
failure's one line where there is one. Results accumulate in benchmarks/results/garden.json, so
a run resumes model by model."""
from __future__ import annotations

import json
import re
import sys
import time
import traceback
from pathlib import Path

import torch

import archfit
from archfit.cli import bench
from archfit.core.capture import normalize_inputs
from archfit.core.timing import interleaved_ms


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/garden.json"
OUT = ROOT / "GARDEN.md"
RUNNABLE = ("openvino", "onnxruntime")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # results stored before archfit's errors dropped colour codes


def _ids(n: int = 128, vocab: int = 30000, mask: bool = True, batch: int = 1):
    ids = torch.randint(5, vocab, (batch, n))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if mask else {"input_ids": ids}


def _hf(config_cls, model_cls, inputs, **config):
    def build():
        cfg = config_cls(**config)
        if hasattr(cfg, "use_cache"):
            cfg.use_cache = False  # a KV-cache object is not a tensor (archfit says so when it is left on)
        return model_cls(cfg).eval(), inputs()
    return build


def _tv(fn: str, shape=(1, 3, 224, 224), **kw):
    def build():
        import torchvision

        return getattr(torchvision.models, fn)(weights=None, **kw).eval(), (torch.randn(shape),)
    return build


def _tv_det(fn: str, size: int = 320, **kw):
    def build():
        import torchvision

        return (getattr(torchvision.models.detection, fn)(weights=None, weights_backbone=None, **kw).eval(),
                ([torch.rand(3, size, size)],))
    return build


def _tv_seg(fn: str, **kw):
    def build():
        import torchvision

        return (getattr(torchvision.models.segmentation, fn)(weights=None, weights_backbone=None, **kw).eval(),
                (torch.randn(1, 3, 224, 224),))
    return build


class Recurrent(torch.nn.Module):
    def __init__(self, cell: str):
        super().__init__()
        self.rnn = getattr(torch.nn, cell)(64, 128, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class BranchOnValue(torch.nn.Module):
    """A branch on a tensor's value: a fixed-shape graph cannot hold it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(256, 256), torch.nn.Linear(256, 256)

    def forward(self, x):
        h = self.a(x)
        if h.mean() > 0:
            h = torch.relu(h)
        return self.b(h)


def _models() -> dict:
    import transformers as T

    def whisper():
        m = T.WhisperModel(T.WhisperConfig()).eval()
        return m.encoder, (torch.randn(1, 80, 3000),)

    return {
        # decoder-only language models (no KV cache input), encoders
        "gpt2": _hf(T.GPT2Config, T.GPT2Model, lambda: _ids(128, 50000, mask=False)),
        "opt-125m": _hf(T.OPTConfig, T.OPTModel, lambda: _ids(128, 50000)),
        "llama-style (512 wide, 8 layers)": _hf(T.LlamaConfig, T.LlamaModel, lambda: _ids(128, 32000),
                                                hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                                                num_attention_heads=8, num_key_value_heads=4),
        "qwen2-style (512 wide, 8 layers)": _hf(T.Qwen2Config, T.Qwen2Model, lambda: _ids(128, 32000),
                                                hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                                                num_attention_heads=8, num_key_value_heads=4, vocab_size=32000),
        "t5-small encoder": _hf(T.T5Config, T.T5EncoderModel, lambda: _ids(128, 32000, mask=False)),
        "electra-base": _hf(T.ElectraConfig, T.ElectraModel, lambda: _ids(128), hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, embedding_size=768),
        "albert-base": _hf(T.AlbertConfig, T.AlbertModel, lambda: _ids(128), hidden_size=768,
                           num_attention_heads=12, intermediate_size=3072),
        "deberta-v2-base": _hf(T.DebertaV2Config, T.DebertaV2Model, lambda: _ids(128), hidden_size=768,
                               num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        "mpnet-base": _hf(T.MPNetConfig, T.MPNetModel, lambda: _ids(128)),
        # vision transformers and convnets from transformers
        "vit-base": _hf(T.ViTConfig, T.ViTModel, lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        "deit-base": _hf(T.DeiTConfig, T.DeiTModel, lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        "beit-base": _hf(T.BeitConfig, T.BeitModel, lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        "swin-tiny (transformers)": _hf(T.SwinConfig, T.SwinModel, lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        "convnext-tiny (transformers)": _hf(T.ConvNextConfig, T.ConvNextModel,
                                            lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        "segformer-b0": _hf(T.SegformerConfig, T.SegformerModel, lambda: {"pixel_values": torch.randn(1, 3, 224, 224)}),
        # audio
        "wav2vec2-base": _hf(T.Wav2Vec2Config, T.Wav2Vec2Model, lambda: {"input_values": torch.randn(1, 16000)}),
        "whisper-encoder": whisper,
        # torchvision classification
        "mobilenet_v3_small": _tv("mobilenet_v3_small"),
        "mobilenet_v3_large": _tv("mobilenet_v3_large"),
        "efficientnet_b0": _tv("efficientnet_b0"),
        "efficientnet_v2_s": _tv("efficientnet_v2_s"),
        "regnet_y_400mf": _tv("regnet_y_400mf"),
        "regnet_x_1_6gf": _tv("regnet_x_1_6gf"),
        "convnext_tiny": _tv("convnext_tiny"),
        "swin_t": _tv("swin_t"),
        "vit_b_16": _tv("vit_b_16"),
        "maxvit_t": _tv("maxvit_t"),
        "densenet121": _tv("densenet121"),
        "googlenet": _tv("googlenet", aux_logits=False, init_weights=True),
        "inception_v3": _tv("inception_v3", shape=(1, 3, 299, 299), aux_logits=False, init_weights=True),
        "shufflenet_v2_x1_0": _tv("shufflenet_v2_x1_0"),
        "squeezenet1_1": _tv("squeezenet1_1"),
        "mnasnet1_0": _tv("mnasnet1_0"),
        "wide_resnet50_2": _tv("wide_resnet50_2"),
        "alexnet": _tv("alexnet"),
        "r3d_18 (video)": lambda: (__import__("torchvision").models.video.r3d_18(weights=None).eval(),
                                   (torch.randn(1, 3, 16, 112, 112),)),
        # segmentation, detection
        "deeplabv3_mobilenet_v3_large": _tv_seg("deeplabv3_mobilenet_v3_large"),
        "lraspp_mobilenet_v3_large": _tv_seg("lraspp_mobilenet_v3_large"),
        "fcn_resnet50": _tv_seg("fcn_resnet50"),
        "fasterrcnn_mobilenet_v3_large_320_fpn": _tv_det("fasterrcnn_mobilenet_v3_large_320_fpn"),
        "fcos_resnet50_fpn": _tv_det("fcos_resnet50_fpn", min_size=320, max_size=320),
        "maskrcnn_resnet50_fpn": _tv_det("maskrcnn_resnet50_fpn", min_size=320, max_size=320),
        # recurrent, and a branch on a tensor's value
        "lstm (2 layers)": lambda: (Recurrent("LSTM").eval(), (torch.randn(4, 50, 64),)),
        "gru (2 layers)": lambda: (Recurrent("GRU").eval(), (torch.randn(4, 50, 64),)),
        "branch on a value": lambda: (BranchOnValue().eval(), (torch.randn(8, 256),)),
    }


def _line(e: BaseException) -> str:
    from archfit.errors import first_line

    return f"{type(e).__name__}: {first_line(e)}"


# Detectors are judged by the detection gate (boxes matched by IoU >= 0.9 and label, recall and
# precision >= 0.99), as archfit's own detectors declare: an elementwise comparison of NMS output
# fails on reordered near-tie boxes that a user would never see as different detections.
GATES = {"fasterrcnn_mobilenet_v3_large_320_fpn": "detection", "fcos_resnet50_fpn": "detection",
         "maskrcnn_resnet50_fpn": "detection"}


def run_model(name: str, build) -> dict:
    torch.manual_seed(0)
    row: dict = {"model": name, "targets": {}}
    try:
        model, inputs = build()
        analysis = archfit.analyze(model, inputs, targets=[*RUNNABLE, "inf1"], name=name)
    except Exception as e:  # noqa: BLE001 - a failure is a result, with its line
        row["error"] = _line(e)
        row["archfit_error"] = isinstance(e, archfit.ArchfitError)
        return row
    row["regions"] = analysis.regions is not None
    for r in analysis.reports:
        row["targets"].setdefault(r.target, {})["verdict"] = r.verdict
    args, kwargs = normalize_inputs(inputs)
    for target in RUNNABLE:
        t = row["targets"][target]
        try:
            compiled = analysis.compile(target, cache=False, accuracy=GATES.get(name))
        except Exception as e:  # noqa: BLE001
            t["error"], t["archfit_error"] = _line(e), isinstance(e, archfit.ArchfitError)
            continue
        v = getattr(compiled, "validation", None) or compiled.report.validation
        t["ok"] = bool(v.ok) if v is not None else None
        t["max_rel"] = v.max_rel if v is not None else None
        t["gate"] = "; ".join(m.describe() for m in v.metrics) if v is not None and v.gate else None
        t["partitions"] = len(compiled.report.partitions) if compiled.report is not None else None
        with torch.no_grad():
            ms = interleaved_ms({"eager": lambda: model(*args, **kwargs), "archfit": lambda: compiled(*args, **kwargs)},
                                seconds=4.0, rounds=4, min_calls=3)
        t["eager_ms"], t["archfit_ms"] = ms["eager"], ms["archfit"]
        del compiled
    return row


def _slowest(rows: list[dict]) -> str:
    """The floor 'no model slower than eager on its best target': the lowest best-target speedup."""
    best = {}
    for r in rows:
        for target, t in r.get("targets", {}).items():
            if t.get("archfit_ms") and t.get("ok"):
                best[r["model"]] = max(best.get(r["model"], 0.0), t["eager_ms"] / t["archfit_ms"])
    if not best:
        return ""
    name = min(best, key=best.get)
    return (f"On its best target every validated model runs at >= {best[name]:.2f}x eager PyTorch (lowest: {name}); "
            f"the models without a validated target are the FAILED rows below.")


def write_table(results: dict) -> None:
    rows = list(results.values())
    n = len(rows)

    def passed(target):
        return sum(1 for r in rows if r.get("targets", {}).get(target, {}).get("ok"))

    lines = [
        "# The garden: models no one here wrote",
        "",
        "Generated by `.venv/bin/python benchmarks/garden.py` (results in `benchmarks/results/garden.json`).",
        f"Host: {bench.cpu_model()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; full-size configs, random weights, batch as listed in the script.",
        "Speed: eager PyTorch and the compiled module timed interleaved (core.timing.interleaved_ms: 4 rounds of a "
        "1-second burst each, the burst's first call untimed), median ms.",
        "",
        f"Traced and validated: **openvino {passed('openvino')}/{n} ({passed('openvino') / n:.1%}), onnxruntime "
        f"{passed('onnxruntime')}/{n} ({passed('onnxruntime') / n:.1%})** (floors: 95% and 90%).",
        _slowest(rows),
        "",
        "How to read a row: the first column is the inf1 profile's verdict (analysis only); each target cell",
        "gives the analysis verdict, whether the compiled model matched eager PyTorch, its max relative error,",
        "the partitions kept and the speed against eager. **0 partition(s)** means archfit's payoff check",
        "found the model no faster on that backend than in PyTorch and kept it in PyTorch (hence ~1.0x); a",
        "FAILED cell is archfit's one-line error. Models that cannot be captured whole are marked (regions):",
        "their submodules compile and their own Python (NMS, a branch on a value) runs on the host.",
        "Detectors are validated with the detection gate (`accuracy=\"detection\"`: boxes matched by IoU >= 0.9",
        "with the same label, recall and precision >= 0.99 of eager's); the cell prints what it measured",
        "on the example and on a random input.",
        "",
        "| model | inf1 verdict | openvino | onnxruntime |",
        "|---|---|---|---|",
    ]

    def cell(t: dict) -> str:
        if not t:
            return "-"
        if "error" in t:
            return f"FAILED: {_ANSI.sub('', t['error']).replace('|', '/')}"
        speed = f"{t['eager_ms'] / t['archfit_ms']:.2f}x eager" if t.get("archfit_ms") else ""
        gate = f" (detection gate: {t['gate']})" if t.get("gate") else ""
        return (f"{t.get('verdict', '')}; {'ok' if t.get('ok') else 'NOT VALIDATED'}{gate}, max rel err "
                f"{t['max_rel']:.1e}, {t['partitions']} partition(s), {t['archfit_ms']:.1f} ms, {speed}")

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | analysis FAILED: {_ANSI.sub('', r['error']).replace('|', '/')} | | |")
            continue
        tg = r["targets"]
        lines.append(f"| {r['model']}{' (regions)' if r.get('regions') else ''} | {tg.get('inf1', {}).get('verdict', '-')} "
                     f"| {cell(tg.get('openvino', {}))} | {cell(tg.get('onnxruntime', {}))} |")
    OUT.write_text("\n".join(lines) + "\n")


def main() -> None:
    models = _models()
    names = sys.argv[1:] or list(models)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = run_model(name, models[name])
        except Exception:  # noqa: BLE001 - keep going; the traceback is for us
            traceback.print_exc()
            results[name] = {"model": name, "error": "benchmark crashed (see its log)", "targets": {}}
        results[name]["seconds"] = time.perf_counter() - t0
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1, default=str))
        print(f"{name}: {time.perf_counter() - t0:.0f} s {json.dumps(results[name], default=str)[:400]}", flush=True)
    write_table({k: results[k] for k in models if k in results})


if __name__ == "__main__":
    main()
