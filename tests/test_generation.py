"""Seq2seq generation on compiled parts equals transformers' generate, token for token."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import archfit
from archfit.core.engines import EngineModule
from archfit.errors import InputError, ModelError
from archfit.zoo import build

FAMILIES = ("marian-en-de", "bart-base", "pegasus")
MAX_NEW = 12


def _model(name: str, eos_bias: float = 0.0):
    """Tiny model with weights spread wide enough that tokens depend on the source (HF's 0.02
    init makes a tiny random model repeat one token whatever it reads); eos_bias > 0 makes EOS
    likely, so sequences end at different steps."""
    model = build(name, tiny=True)[0].model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        if eos_bias:
            eos = model.config.eos_token_id
            model.lm_head.weight[eos] = model.lm_head.weight[5:40].mean(0) * eos_bias
    return model


def _sources(length: int, seed: int):
    ids = torch.randint(4, 500, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, length - 2:] = 0  # the second source is padded, as a tokenizer pads a batch
    return ids, mask


def _uses_engines(module) -> bool:
    steps = [m for m in module.steps.values()]
    return all(any(isinstance(c, EngineModule) for c in s.graph_module.modules()) for s in steps)


# BART (with EOS made likely, so rows end at different steps) on onnxruntime, the others on openvino;
# MarianMT with two source buckets (lengths 5, 8 and 13 meet both, exact and padded), the others one
TARGET = {"bart-base": "onnxruntime"}
BUCKETS = {"marian-en-de": (8, 16)}


@functools.cache
def _compiled(name: str):
    """Compiled once per test process, whichever test asks first."""
    model = _model(name, eos_bias=8.0 if name == "bart-base" else 0.0)
    # Pegasus's decoder steps are judged by the token gate (the greedy next token agrees with eager's)
    module = archfit.trace_seq2seq(model, TARGET.get(name, "openvino"), source_buckets=BUCKETS.get(name, (16,)), num_beams=3,
                                   max_new_tokens=MAX_NEW, check_payoff=False, cache=False,
                                   accuracy="tokens" if name == "pegasus" else None)
    return name, model, module


@pytest.fixture(scope="module", params=FAMILIES)
def compiled(request):
    return _compiled(request.param)


@pytest.mark.parametrize("length", [5, 8, 13])  # exact and padded lengths (MarianMT: in both its buckets)
def test_greedy_and_beam_match_transformers(compiled, length):
    name, model, module = compiled
    assert _uses_engines(module) and module.encoder.sizes == BUCKETS.get(name, (16,))
    ids, mask = _sources(length, seed=length)
    for kwargs in ({"num_beams": 1}, {"num_beams": 3, "num_return_sequences": 2}, {"num_beams": 2}):
        want = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW - 1, **kwargs)
        got = module.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW - 1, **kwargs)
        assert torch.equal(got, want), (kwargs, got.tolist(), want.tolist())


def test_token_gate_judges_the_decoder_steps():
    _name, _model, module = _compiled("pegasus")
    for rows, step in module.steps.items():  # one step per row count (greedy, and beams x rows)
        v = step.report.validation
        assert v.gate == "tokens" and v.ok, rows
        assert [dict(m.values)["agreement"] for m in v.metrics] == [1.0, 1.0]  # fp32: the same greedy tokens
    assert module.encoder.buckets[str(module.encoder.sizes[0])].report.validation.gate is None  # elementwise


def test_sequences_end_early_like_transformers():
    """With EOS likely, rows finish at different steps: finished rows are padded, beams close."""
    _name, model, module = _compiled("bart-base")
    ended_early = False
    for seed in range(3):
        ids, mask = _sources(9, seed)
        for beams in (1, 2):
            want = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=beams)
            got = module.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=beams)
            assert torch.equal(got, want), (beams, got.tolist(), want.tolist())
            ended_early |= bool((want[:, 1:-1] == model.config.eos_token_id).any())
    assert ended_early, "no sequence ended before max_new_tokens: the EOS bias no longer works"


@pytest.mark.parametrize("compiled", ["marian-en-de"], indirect=True)  # one family is enough for the file
def test_save_load_generates_the_same(tmp_path, compiled):
    _name, model, module = compiled
    path = archfit.save(module, tmp_path / "marian.archfit")
    loaded = archfit.load(path)
    assert loaded.manifest["kind"] == "seq2seq" and loaded.encoder.sizes == (8, 16)
    ids, mask = _sources(11, seed=3)
    for beams in (1, 3):
        want = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=beams)
        assert torch.equal(loaded.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=beams), want)


def test_generate_refuses_what_it_cannot_do(compiled):
    _name, _model, module = compiled
    ids, mask = _sources(6, seed=0)
    with pytest.raises(InputError, match=f"decoder cache was compiled for {MAX_NEW}"):
        module.generate(ids, max_new_tokens=MAX_NEW + 5)
    with pytest.raises(InputError, match="more than the largest source bucket 16"):
        module.generate(torch.randint(4, 500, (1, 20)), max_new_tokens=4)
    with pytest.raises(InputError, match="do_sample=True is not supported"):
        module.generate(ids, do_sample=True, max_new_tokens=4)
    with pytest.raises(InputError, match="'guidance_scale' is not supported"):
        module.generate(ids, guidance_scale=2.0, max_new_tokens=4)
    with pytest.raises(InputError, match="num_beams=4, but the decoder step was compiled for at most 3 rows"):
        module.generate(ids, num_beams=4, max_new_tokens=4)


def test_not_a_seq2seq_model():
    model, _ = build("bert-base", tiny=True)
    with pytest.raises(ModelError, match="not a transformers encoder-decoder"):
        archfit.trace_seq2seq(model)


def test_served_generation_equals_transformers():
    """archfit serve with a seq2seq module: generate's arguments ride in the request's parameters;
    the tokens equal transformers' generate; an argument the compiled loop cannot honour is a 400."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from archfit.serve import Server, servable
    from conftest import Running

    _name, model, module = _compiled("marian-en-de")
    r = Running(Server({"mt": servable("mt", module)}))
    try:
        c = r.client()
        ids, mask = _sources(7, seed=5)
        tensors = []
        for name, t in (("input_ids", ids), ("attention_mask", mask)):
            tensors.append(http.InferInput(name, list(t.shape), "INT64"))
            tensors[-1].set_data_from_numpy(t.numpy())
        for params in ({"max_new_tokens": 6}, {"max_new_tokens": 8, "num_beams": 3}):
            got = c.infer("mt", tensors, parameters=params).as_numpy("output_ids")
            want = model.generate(ids, attention_mask=mask, **params)
            assert np.array_equal(got, want.numpy()), (params, got.tolist(), want.tolist())
        with pytest.raises(InferenceServerException, match="do_sample=True is not supported"):
            c.infer("mt", tensors, parameters={"do_sample": True})
    finally:
        r.stop()


def test_marian_directory_with_sentencepiece_files_only_takes_text(tmp_path):
    """MarianMT directories hold source.spm, target.spm and vocab.json, and transformers has no
    tokenizer.json form of them: the file carries them; texts encode to MarianTokenizer's ids,
    ids decode to its texts, and texts in give the tokens transformers generates."""
    from transformers import MarianMTModel, MarianTokenizer

    from directories import marian_tokenizer

    _model("marian-en-de").save_pretrained(tmp_path / "marian")
    marian_tokenizer(tmp_path / "marian")
    module = archfit.trace_seq2seq(str(tmp_path / "marian"), "openvino", source_buckets=(16,), num_beams=1,
                                   max_new_tokens=6, check_payoff=False, cache=False)
    loaded = archfit.load(archfit.save(module, tmp_path / "m.archfit"))
    texts = ["the cat sees a bird", "a dog runs"]
    tok = MarianTokenizer.from_pretrained(tmp_path / "marian")
    source = tok(texts, padding=True, return_tensors="pt")
    rows = [[i for i, m in zip(r, k) if m] for r, k in zip(source["input_ids"].tolist(), source["attention_mask"].tolist())]
    assert [e.ids for e in loaded.text.encode(texts)] == rows
    for ids in ([5, 6, 7, 1], [10, 11, 3, 1, 0, 0]):  # pieces, </s>, <pad>
        assert loaded.text.decode(ids) == tok.decode(ids, skip_special_tokens=True)
    model = MarianMTModel.from_pretrained(tmp_path / "marian").eval()
    ids = source["input_ids"].masked_fill(source["attention_mask"] == 0, model.config.pad_token_id)
    want = model.generate(ids, attention_mask=source["attention_mask"], max_new_tokens=6, num_beams=1)
    assert loaded.answer(texts, max_new_tokens=6) == [loaded.text.decode(w) for w in want.tolist()]
    assert torch.equal(loaded.generate(ids, attention_mask=source["attention_mask"], max_new_tokens=6), want)
