"""Decoder-only generation on compiled parts (prefill per prompt bucket, decode step over a host
cache) equals transformers' generate, token for token, on four families' tiny configs."""
from __future__ import annotations

import functools
import re

import pytest
import torch
import transformers

import archfit
from archfit.core.engines import EngineModule
from archfit.errors import InputError, ModelError

VOCAB, MAX_NEW = 300, 10
BUCKETS = (8, 16)
TARGETS = {"gpt2": "onnxruntime", "opt": "openvino", "llama": "openvino", "qwen2": "openvino"}


def _config(family: str):
    common = dict(vocab_size=VOCAB, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, **common)
    if family == "opt":
        return transformers.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                      max_position_embeddings=64, word_embed_proj_dim=64, **common)
    cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    return cls(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, max_position_embeddings=64, **common)


def _model(family: str):
    """Weights spread wide enough that tokens depend on the prompt (HF's 0.02 init makes a tiny
    model repeat one token), and the EOS id set to the token greedy generation makes most, so
    rows end at different steps."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(family)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        made = [model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW)[:, ids.shape[1]:]
                for ids, mask in (_prompts(6, seed=6), _prompts(13, seed=13))]
        made = torch.cat(made)
    model.config.eos_token_id = model.generation_config.eos_token_id = int(made.flatten().mode().values)
    return model


@functools.cache
def _compiled(family: str):
    """Compiled once per test process: batch 2 and 3 beams (decode steps for 2 and 6 rows),
    GPT-2 on onnxruntime, the others on openvino."""
    model = _model(family)
    module = archfit.trace_generate(model, TARGETS[family], prompt_buckets=BUCKETS,
                                    max_new_tokens=MAX_NEW, batch_size=2, num_beams=3, check_payoff=False, cache=False)
    return model, module


def _prompts(width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second shorter and left-padded as a tokenizer pads for generation."""
    ids = torch.randint(5, VOCAB, (2, width), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    return ids, mask


@pytest.fixture(scope="module", params=("gpt2", "opt", "llama", "qwen2"))
def compiled(request):
    return _compiled(request.param)


@pytest.mark.parametrize("width", [6, 13])  # within the first bucket, and across into the second
def test_greedy_and_beam_match_transformers(compiled, width):
    model, module = compiled
    assert module.prefill.sizes == BUCKETS and module.rows == (2, 6)
    assert all(any(isinstance(c, EngineModule) for c in s.graph_module.modules()) for s in module.steps.values())
    ids, mask = _prompts(width, seed=width)
    ended_early = False
    for kwargs in ({}, {"num_beams": 3, "num_return_sequences": 2}, {"repetition_penalty": 1.3},
                   {"no_repeat_ngram_size": 2, "num_beams": 2}):
        want = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, **kwargs)
        got = module.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, **kwargs)
        assert torch.equal(got, want), (kwargs, got.tolist(), want.tolist())
        ended_early |= bool((want[:, width:-1] == model.config.eos_token_id).any())
    assert ended_early, "no row ended before max_new_tokens: the EOS bias no longer works"


def test_seeded_sampling_matches_transformers(compiled):
    model, module = compiled
    ids, mask = _prompts(7, seed=3)
    kwargs = dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=MAX_NEW)
    torch.manual_seed(11)
    want = model.generate(ids, attention_mask=mask, **kwargs)
    torch.manual_seed(11)
    assert torch.equal(module.generate(ids, attention_mask=mask, **kwargs), want)


def test_batches_larger_than_the_step_run_in_chunks():
    model, module = _compiled("llama")
    ids = torch.randint(5, VOCAB, (5, 9), generator=torch.Generator().manual_seed(5))
    want = model.generate(ids, max_new_tokens=MAX_NEW)
    assert torch.equal(module.generate(ids, max_new_tokens=MAX_NEW), want)


def test_save_load_generates_the_same(tmp_path):
    model, module = _compiled("qwen2")
    loaded = archfit.load(archfit.save(module, tmp_path / "qwen2.archfit"))
    assert loaded.manifest["kind"] == "causal" and loaded.prefill.sizes == BUCKETS and loaded.capacity == 26
    assert "decode step, 2 row(s), per token" in loaded.summary()  # no fit report in a file: named, not a crash
    ids, mask = _prompts(11, seed=4)
    for beams in (1, 3):
        want = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=beams)
        assert torch.equal(loaded.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=beams), want)


def test_generate_refuses_what_it_cannot_do():
    _model, module = _compiled("opt")
    ids = torch.randint(5, VOCAB, (1, 12))
    with pytest.raises(InputError, match="need 28 cache slots, but the cache was compiled for 26"):
        module.generate(ids, max_new_tokens=16)
    with pytest.raises(InputError, match="longer than the largest prompt bucket 16"):
        module.generate(torch.randint(5, VOCAB, (1, 20)), max_new_tokens=2)
    with pytest.raises(InputError, match="beam sampling"):
        module.generate(ids, do_sample=True, num_beams=2, max_new_tokens=4)
    with pytest.raises(InputError, match="num_beams=7, but the decode step was compiled for at most 6 rows"):
        module.generate(ids, num_beams=7, max_new_tokens=4)
    with pytest.raises(InputError, match="stop_strings needs the model's tokenizer"):
        module.generate(ids, stop_strings=["cat"], max_new_tokens=4)
    with pytest.raises(InputError, match="'guidance_scale' is not supported"):
        module.generate(ids, guidance_scale=2.0, max_new_tokens=4)


def test_not_a_causal_model():
    with pytest.raises(ModelError, match="not a transformers decoder-only language model"):
        archfit.trace_generate(torch.nn.Linear(4, 4))


def test_cli_compiles_a_builtin_for_generation_and_generates(tmp_path):
    from conftest import cli

    path = tmp_path / "gpt2.archfit"
    r = cli("compile", "gpt2", "--tiny", "--generate", "--source-buckets", "8,16", "--max-new-tokens", "6",
            "--batch", "2", "--no-cache", "-o", str(path))
    assert r.returncode == 0, r.stderr
    assert "same tokens: yes" in r.stdout and "decode step, 2 row(s), per token" in r.stdout
    r = cli("inspect", str(path))
    assert "decoder-only generator: prompt buckets [8, 16], decode step rows 1, 2" in r.stdout
    r = cli("generate", str(path), "--ids", "5,6,7", "--ids", "9,10,11,12", "--max-new-tokens", "4")
    rows = [line.split(",") for line in r.stdout.split()]
    assert r.returncode == 0 and [len(row) for row in rows] == [8, 8] and rows[0][:1] == ["0"]  # left-padded
    r = cli("generate", str(path), "--ids", "5,6", "--max-new-tokens", "30")
    assert r.returncode != 0 and "need 32 cache slots, but the cache was compiled for 22" in r.stderr


def _trained_counter():
    """A tiny GPT-2 trained here to continue arithmetic sequences (next = previous + step, mod
    60, steps 1-4): trained weights, so the int8w gate judges real next-token margins."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64,
                                                                 vocab_size=64, eos_token_id=63, pad_token_id=0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        start, step = torch.randint(0, 60, (32, 1), generator=g), torch.randint(1, 5, (32, 1), generator=g)
        seq = (start + step * torch.arange(24)) % 60 + 1
        loss = model(input_ids=seq, labels=seq).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), lambda start, step, n: ((start + step * torch.arange(n)) % 60 + 1).tolist()


def test_int8w_passes_the_tokens_gate_on_a_trained_model():
    model, sequence = _trained_counter()
    validation = [sequence(s, k, n) for s, k, n in ((3, 1, 6), (10, 2, 9), (40, 3, 12), (7, 4, 5), (55, 1, 8))]
    module = archfit.trace_generate(model, "openvino", prompt_buckets=(16,), max_new_tokens=8, precision="int8w",
                                    validation=validation, check_payoff=False, cache=False)
    gate = module.steps["1"].report.validation
    assert module.precision == "int8w" and gate.gate == "tokens" and gate.ok
    assert dict(gate.metrics[-1].values)["agreement"] == 1.0 and gate.metrics[-1].size == 5
    prompt = torch.tensor([sequence(20, 3, 7)])
    want = model.generate(prompt, max_new_tokens=8)
    assert want[0, 7:].tolist() == sequence(20 + 21, 3, 8)  # the model learned the task
    assert torch.equal(module.generate(prompt, max_new_tokens=8), want)
    with pytest.raises(InputError, match="pass validation="):
        archfit.trace_generate(model, "openvino", prompt_buckets=(16,), max_new_tokens=8, precision="int8w")


def test_inferentia_profile_estimates_prefill_and_per_token_latency():
    model = _model("gpt2")
    module = archfit.trace_generate(model, "inf2", prompt_buckets=(8,), max_new_tokens=4, check_payoff=False,
                                    cache=False)
    lines = module.summary().splitlines()
    assert re.search(r"prefill, prompt bucket 8 \(1 row\): [\d.]+ GFLOPs, ESTIMATED [\d.]+ ms on inf2", lines[1])
    assert re.search(r"decode step, 1 row\(s\), per token: [\d.]+ GFLOPs, ESTIMATED [\d.]+ ms on inf2", lines[2])
    ids = torch.randint(5, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    assert torch.equal(module.generate(ids, max_new_tokens=4), model.generate(ids, max_new_tokens=4))
