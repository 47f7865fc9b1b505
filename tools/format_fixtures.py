"""Write the saved-file fixtures in tests/data/files/: one small file of each kind archfit saves,
with the inputs it was run on and the outputs it gave, so that tests/test_file_formats.py can
check that files written by an earlier archfit still load and answer the same.

Run it only when the file format changes on purpose (then commit the new set beside the old one):
    .venv/bin/python tools/format_fixtures.py tests/data/files/v4
The set committed as v4 was written by archfit 0f40093, before the module-kind registry; its
causal.archfit (a decoder-only generator) when that kind was added (`... v4 causal` writes it alone),
and its packed_dynamic.archfit again when OpenVINO engines were first saved as IR (`... v4
packed_dynamic`): the compiled blob stored before loads only on the kind of CPU that wrote it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import archfit
from archfit import zoo


def _tiny_bert():
    model, inputs = zoo.build("bert-base", tiny=True)
    return model.eval(), inputs


def _save(out: Path, name: str, module, inputs: dict, outputs: dict) -> None:
    archfit.save(module, out / f"{name}.archfit")
    arrays = {f"in.{k}": v.numpy() for k, v in inputs.items()}
    arrays |= {f"out.{k}": v.detach().numpy() for k, v in outputs.items()}
    np.savez(out / f"{name}.npz", **arrays)
    print(f"{name}: {(out / f'{name}.archfit').stat().st_size / 1024:.0f} KiB")


def causal(out: Path) -> None:
    """A decoder-only generator (tiny GPT-2, onnxruntime), greedy over a left-padded batch of two."""
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32,
                                                                 vocab_size=200, eos_token_id=199)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    m = archfit.trace_generate(model, "onnxruntime", prompt_buckets=(8,), max_new_tokens=6, batch_size=2,
                               check_payoff=False, cache=False)
    ids = torch.randint(4, 199, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    _save(out, "causal", m, {"input_ids": ids, "attention_mask": mask},
          {"output_ids": m.generate(ids, attention_mask=mask, max_new_tokens=6)})


def packed(out: Path, name: str) -> None:
    """Packed rows (onnxruntime), or a packed file of one dynamic-length engine (openvino)."""
    torch.manual_seed(0)
    bert, inputs = _tiny_bert()
    strategy, target = {"packed": ("pack", "onnxruntime"), "packed_dynamic": ("dynamic", "openvino")}[name]
    seqs = [torch.randint(5, 90, (n,)) for n in (5, 9, 3, 12)]
    batch = torch.zeros(4, 12, dtype=torch.long)
    mask = torch.zeros(4, 12, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, :len(s)], mask[i, :len(s)] = s, 1
    m = archfit.trace(bert, inputs, target, packing=archfit.Packing(max_len=16, rows=2, pool="mean", strategy=strategy),
                      check_payoff=False, cache=False)
    got = m(input_ids=batch, attention_mask=mask)
    _save(out, name, m, {"input_ids": batch, "attention_mask": mask}, dict(got))


def main(out: Path, only: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if only == "causal":
        return causal(out)
    if only == "packed_dynamic":
        return packed(out, only)
    common = dict(check_payoff=False, cache=False)
    torch.manual_seed(0)

    # Engines are ONNX Runtime's (an ONNX graph, readable by any later version) except where only
    # OpenVINO offers the kind (one dynamic-length engine).
    # static: two engines with a custom CPU op between them (a computing host program)
    model, (x,) = zoo.build("mlp-custom-op", tiny=True)
    m = archfit.trace(model, (x,), "onnxruntime", **common)
    _save(out, "static", m, {"x": x}, {"0": m(x)})

    # buckets over the length and a dynamic batch, onnxruntime (weights stored apart, once)
    bert, inputs = _tiny_bert()
    m = archfit.trace(bert, inputs, "onnxruntime", buckets=archfit.Buckets({"input_ids": 1, "attention_mask": 1},
                                                                           sizes=(8, 16)), dynamic_batch=True, **common)
    ids = torch.randint(5, 90, (3, 11))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    got = m(input_ids=ids, attention_mask=mask)
    _save(out, "bucketed", m, {"input_ids": ids, "attention_mask": mask},
          {"last_hidden_state": got["last_hidden_state"], "pooler_output": got["pooler_output"]})

    for name in ("packed", "packed_dynamic"):
        packed(out, name)

    # a seq2seq generator (MarianMT), greedy
    marian = zoo.build("marian-en-de", tiny=True)[0].model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in marian.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    m = archfit.trace_seq2seq(marian, "onnxruntime", source_buckets=(8,), max_new_tokens=6, **common)
    ids = torch.randint(4, 500, (1, 7), generator=gen)
    mask = torch.ones_like(ids)
    _save(out, "seq2seq", m, {"input_ids": ids, "attention_mask": mask},
          {"output_ids": m.generate(ids, attention_mask=mask, max_new_tokens=6)})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/files/v4"), sys.argv[2] if len(sys.argv) > 2 else None)
