"""Sequence packing (shapes/packing.py, shapes/packed.py): the algorithm against the SQuAD
lengths, and tiny encoders packed several sequences per row, each sequence's outputs equal to
the model run on it alone (fp32 tolerance of core.validate.TOLERANCES)."""
import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import archfit
from archfit import zoo
from archfit.core.validate import TOLERANCES
from archfit.errors import InputError, ModelError
from archfit.shapes.packing import lengths_from_histogram, pack, pack_stream, packing_stats

ATOL, RTOL = TOLERANCES["fp32"]


def _squad():
    counts, start = zoo.squad_lengths()
    return lengths_from_histogram(counts, start)


@pytest.mark.parametrize("method", ["spfhp", "bfd"])
def test_every_sequence_packed_once_within_capacity(method):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, 500)
    packs = pack(lengths, 100, max_per_pack=3, method=method)
    members = sorted(i for p in packs for i in p.members)
    assert members == list(range(500))
    assert all(p.used == sum(lengths[i] for i in p.members) <= 100 and len(p.members) <= 3 for p in packs)


def test_squad_packs_as_the_paper_reports():
    """Krell et al. 2021: SPFHP on SQuAD v1.1 at 384 packs into 2.18x fewer rows (bound 2.23x)."""
    lengths = _squad()
    stats = packing_stats(lengths, 384, pack(lengths, 384))
    assert stats.speedup == pytest.approx(2.18, abs=0.005) and stats.bound == pytest.approx(2.23, abs=0.005)
    assert stats.fill > 0.975
    # a bounded look-ahead of 256 sequences keeps most of it
    sample = np.random.default_rng(0).permutation(lengths)[:1000]
    packs = [p for w in pack_stream(sample, 384, 256) for p in w]
    assert sorted(i for p in packs for i in p.members) == list(range(1000))
    assert packing_stats(sample, 384, packs).speedup > 0.95 * 2.18


def test_too_long_or_unknown_method_is_refused():
    with pytest.raises(ValueError, match="length 9 cannot be packed into rows of 8"):
        pack([3, 9], 8)
    with pytest.raises(ValueError, match="choose 'spfhp' or 'bfd'"):
        pack([3], 8, method="ffd")


def _bert_example(model_name: str):
    model, example = zoo.build(model_name, tiny=True)
    example["token_type_ids"] = torch.zeros_like(example["input_ids"])
    return model, example


@functools.cache
def _packed(model_name: str, target: str):
    model, example = _bert_example(model_name)
    # BERT names its output; RoBERTa keeps the default, which leaves pooler_output (one value per row) out
    outputs = ("last_hidden_state",) if model_name == "bert-base" else None
    packing = archfit.Packing(max_len=32, rows=2, outputs=outputs, pool="mean", lookahead=5)
    return model, archfit.trace(model, example, target, packing=packing)


def _sequences(n=11, vocab=500, seed=0, segments=2):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 33, (n,), generator=g).tolist()
    return [{"input_ids": torch.randint(3, vocab, (k,), generator=g),
             "token_type_ids": (torch.arange(k) >= k // 2).long() * (segments - 1)} for k in lengths]


def _eager(model, s):
    with torch.no_grad():
        return model(input_ids=s["input_ids"][None], token_type_ids=s["token_type_ids"][None]).last_hidden_state


@pytest.mark.parametrize("model_name,target", [("bert-base", "onnxruntime"), ("roberta-base", "inf1")])
def test_each_packed_sequence_equals_the_model_on_it_alone(model_name, target):
    model, packed = _packed(model_name, target)
    assert packed.checks is not None and packed.checks[1] < packed.checks[0]  # the check packed several per row
    atol, rtol = TOLERANCES[packed.precision]  # inf1 runs bf16 by default, as Neuron auto-casts there
    seqs = _sequences(segments=model.config.type_vocab_size)
    for s, got in zip(seqs, packed.run(seqs)):
        want = _eager(model, s)
        assert got["last_hidden_state"].shape == want.shape
        torch.testing.assert_close(got["last_hidden_state"], want, atol=atol, rtol=rtol)
        torch.testing.assert_close(got["pooled"], want.mean(dim=1), atol=atol, rtol=rtol)
    assert "no cross-contamination" in packed.summary()
    assert "left out (one value per row): pooler_output" in packed.summary()


def test_fewer_packed_rows_run_on_the_engine_compiled_for_them(monkeypatch):
    """Packing(rows=2, row_counts=(1,)): sequences that fill one row run on the 1-row engine (a
    server's short queue), two rows' worth on the 2-row engine; every sequence as the model alone."""
    from archfit.core.module import CompiledModule

    model, example = _bert_example("bert-base")
    packed = archfit.trace(model, example, "onnxruntime", check_payoff=False,
                           packing=archfit.Packing(max_len=32, rows=2, row_counts=(1,), outputs=("last_hidden_state",)))
    assert packed.inner.row_counts == (1,)
    rows_run = []
    run_flat = CompiledModule.run_flat
    monkeypatch.setattr(CompiledModule, "run_flat", lambda self, flat: rows_run.append(flat[0].shape[0]) or
                        run_flat(self, flat))
    g = torch.Generator().manual_seed(3)
    for lengths, calls in (((10, 12), [1]), ((20, 20), [2]), ((30, 30, 30), [2, 1])):
        seqs = [{"input_ids": torch.randint(3, 500, (k,), generator=g), "token_type_ids": torch.zeros(k, dtype=torch.long)}
                for k in lengths]
        rows_run.clear()
        for s, got in zip(seqs, packed.run(seqs)):
            torch.testing.assert_close(got["last_hidden_state"], _eager(model, s), atol=ATOL, rtol=RTOL)
        assert rows_run == calls
    with pytest.raises(archfit.errors.OptionError, match="row_counts \\(2,\\): fewer rows than rows=2"):
        archfit.Packing(max_len=32, rows=2, row_counts=(2,))


def test_map_keeps_order_across_windows_and_padded_batches_come_back_padded():
    model, packed = _packed("bert-base", "onnxruntime")
    seqs = _sequences(13, seed=1)  # look-ahead 5: three windows
    mapped = list(packed.map(iter(seqs), progress=False))
    assert [m["last_hidden_state"].shape[1] for m in mapped] == [s["input_ids"].shape[0] for s in seqs]
    for s, got in zip(seqs, mapped):
        torch.testing.assert_close(got["last_hidden_state"], _eager(model, s), atol=ATOL, rtol=RTOL)
    ids = torch.randint(3, 500, (2, 10))
    mask = torch.tensor([[1] * 6 + [0] * 4, [1] * 10])
    out = packed(input_ids=ids, attention_mask=mask)
    assert out["last_hidden_state"].shape == (2, 10, 64) and out["pooled"].shape == (2, 64)
    assert bool((out["last_hidden_state"][0, 6:] == 0).all())
    with torch.no_grad():
        want = model(input_ids=ids[:1, :6]).last_hidden_state[0]
    torch.testing.assert_close(out["last_hidden_state"][0, :6], want, atol=ATOL, rtol=RTOL)


def test_a_sequence_longer_than_a_row_is_refused_by_index():
    _, packed = _packed("bert-base", "onnxruntime")
    with pytest.raises(InputError, match=r"sequence #1 has 40 tokens, more than the packed rows' 32"):
        packed.run([torch.arange(3, 8), torch.arange(3, 43)])
    with pytest.raises(InputError, match="sequence #0: input 'position_ids' is not taken"):
        packed.run([{"input_ids": torch.arange(3, 8), "position_ids": torch.arange(5)}])


def test_cli_packs_saves_and_runs_a_batch_file_in_a_fresh_process(tmp_path):
    """compile --pack -o in this process; run --batch-file in a fresh one; pooled equal to eager."""
    from conftest import cli

    path = tmp_path / "packed.archfit"
    r = cli("compile", "bert-base", "--tiny", "-t", "onnxruntime", "--pack", "32", "--pool", "mean", "--no-compare",
            "-o", str(path))
    assert r.returncode == 0, r.stderr
    assert "left out (one value per row): pooler_output" in r.stdout and "no cross-contamination" in r.stdout
    shown = cli("inspect", str(path))
    assert "packed: several sequences per row, rows of [32], strategy pack" in shown.stdout, shown.stderr
    seqs = [[5, 6, 7], list(range(3, 30)), [9] * 12]
    batch = tmp_path / "seqs.jsonl"
    batch.write_text("\n".join(json.dumps({"input_ids": s}) for s in seqs[:2]) + "\n" + json.dumps(seqs[2]) + "\n")
    out = subprocess.run([sys.executable, "-m", "archfit", "run", str(path), "--batch-file", str(batch), "-d",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pooled.npy  (3, 64) float32" in out.stdout and "last_hidden_state.npz" in out.stdout
    model, _ = zoo.build("bert-base", tiny=True)
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([s])).last_hidden_state.mean(dim=1)[0].numpy() for s in seqs]
    np.testing.assert_allclose(np.load(tmp_path / "pooled.npy"), np.stack(want), atol=ATOL, rtol=RTOL)
    hidden = np.load(tmp_path / "last_hidden_state.npz")
    assert [hidden[f"arr_{i}"].shape for i in range(3)] == [(len(s), 64) for s in seqs]


def test_outputs_with_one_value_per_row_are_refused_before_compiling():
    model, example = _bert_example("bert-base")
    with pytest.raises(ModelError, match=r"output 'pooler_output' has one value per row.*keep the token outputs "
                                         r"\('last_hidden_state'\)"):
        archfit.trace(model, example, "onnxruntime",
                      packing=archfit.Packing(max_len=32, outputs=("last_hidden_state", "pooler_output")))


class _RowNorm(torch.nn.Module):
    """Takes position ids and a 4-D mask, but normalises over the whole row: mixes sequences."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)
        self.pos = torch.nn.Embedding(64, 8)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1])[None]
        h = self.emb(input_ids) + self.pos(position_ids)
        return {"hidden": h - h.mean(dim=1, keepdim=True)}


def test_a_model_that_mixes_positions_is_refused_by_the_contamination_check():
    example = {"input_ids": torch.randint(0, 100, (1, 16))}
    with pytest.raises(ModelError, match=r"_RowNorm cannot be packed: output 'hidden' of sequence #0 .* differs from "
                                         r"the model run on that sequence alone"):
        archfit.trace(_RowNorm(), example, "onnxruntime", packing=archfit.Packing(max_len=32))


class _NoPositions(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return {"hidden": input_ids.float()}


def test_a_model_without_position_ids_is_refused():
    with pytest.raises(ModelError, match="_NoPositions cannot be packed: its forward.. takes no position_ids, so "
                                         "positions cannot restart"):
        archfit.trace(_NoPositions(), {"input_ids": torch.ones(1, 4, dtype=torch.long)}, "onnxruntime",
                      packing=archfit.Packing(max_len=32))


def test_row_lengths_chosen_from_the_lengths_seen():
    from archfit.shapes.pack_trace import _row_sizes

    counts, start = zoo.squad_lengths()
    hist = [0.0] * (start - 1) + list(counts)
    packing = archfit.Packing(max_len=384, histogram=tuple(hist), max_sizes=3)
    packed, buckets = _row_sizes(packing, None), _row_sizes(packing, 1)
    assert len(packed) == len(buckets) == 3 and packed[-1] == buckets[-1] == 384
    assert packed[0] > buckets[0]  # packed rows come out fuller than single sequences


def _auto_packing(**kw):
    sample = tuple(np.random.default_rng(0).integers(1, 33, 64).tolist())
    return archfit.Packing(max_len=32, outputs=("last_hidden_state",), sample=sample, max_sizes=1, measure_seconds=0.2,
                           **kw)


def test_auto_measures_packing_buckets_and_dynamic_and_keeps_the_fastest():
    """One row length (max_sizes=1): packing and buckets share one engine; plus one dynamic."""
    model, example = zoo.build("bert-base", tiny=True)
    auto = archfit.trace(model, example, "openvino", packing=_auto_packing(strategy="auto"))
    measured = auto.spec.measured
    assert set(measured) == {"pack", "buckets", "dynamic"} and auto.spec.strategy == max(measured, key=measured.get)
    assert "strategy chosen by measurement" in auto.summary() and "(chosen)" in auto.summary()


def test_dynamic_lengths_run_exact_sizes_through_a_file(tmp_path):
    model, example = zoo.build("bert-base", tiny=True)
    dynamic = archfit.trace(model, example, "openvino", packing=_auto_packing(strategy="dynamic", rows=2))
    assert dynamic.spec.strategy == "dynamic" and dynamic.inner.high == 32 and dynamic.rows == 2
    loaded = archfit.load(archfit.save(dynamic, tmp_path / "dynamic.archfit"))
    seqs = [torch.arange(3, 3 + n) for n in (1, 2, 17, 32, 17)]  # two of one length: one call, both rows
    for s, got in zip(seqs, loaded.run(seqs)):
        with torch.no_grad():
            want = model(input_ids=s[None]).last_hidden_state
        torch.testing.assert_close(got["last_hidden_state"], want, atol=ATOL, rtol=RTOL)
    with pytest.raises(archfit.ArchfitError, match="dynamic lengths: target 'onnxruntime' compiles fixed shapes only"):
        archfit.trace(model, example, "onnxruntime", packing=_auto_packing(strategy="dynamic"))


def test_served_packed_file_packs_across_requests():
    """archfit serve with a packed module: concurrent requests of different lengths share packed
    rows; each answer equals the module called on that request alone."""
    import tritonclient.http as http

    from archfit.serve import Server, servable
    from conftest import Running, metric_total

    model, packed = _packed("bert-base", "onnxruntime")
    r = Running(Server({"enc": servable("enc", packed)}, max_delay_ms=100))
    try:
        c = r.client()
        meta = c.get_model_metadata("enc")
        assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
        assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"last_hidden_state": [-1, -1, 64],
                                                                    "pooled": [-1, 64]}
        requests = []
        for n, rows in ((5, 1), (17, 1), (9, 2), (30, 1), (3, 1)):
            ids = torch.randint(3, 500, (rows, n))
            mask = torch.ones(rows, n, dtype=torch.long)
            mask[-1, n - 2:] = 0 if rows > 1 else 1  # a padded row inside a request
            tensors = []
            for name, t in (("input_ids", ids), ("attention_mask", mask)):
                tensors.append(http.InferInput(name, list(t.shape), "INT64"))
                tensors[-1].set_data_from_numpy(t.numpy())
            requests.append((ids, mask, c.async_infer("enc", tensors)))
        bad = http.InferInput("input_ids", [1, 4], "INT64")  # in the same window as the others
        bad.set_data_from_numpy(np.array([[5, 6, 10**6, 7]]))
        with pytest.raises(Exception, match="holds id 1000000, outside the embedding table"):
            c.infer("enc", [bad])
        for ids, mask, fut in requests:
            res = fut.get_result()
            want = packed(input_ids=ids, attention_mask=mask)
            np.testing.assert_allclose(res.as_numpy("last_hidden_state"), want["last_hidden_state"].numpy(), atol=1e-5)
            np.testing.assert_allclose(res.as_numpy("pooled"), want["pooled"].numpy(), atol=1e-5)
        text = r.metrics()
        assert metric_total(text, "archfit_batch_seconds_count") < len(requests)  # packed together
        assert metric_total(text, "archfit_positions_total", kind="real") == 5 + 17 + 9 + 7 + 30 + 3
    finally:
        r.stop()


class _Stacked(torch.nn.Module):
    """Token features stacked and multiplied by their transpose (DLRM's interaction, over a length)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)

    def forward(self, input_ids):
        e = self.embed(input_ids)
        x = torch.stack([e.mean(1), e.amax(1), e[:, 0]], dim=1)
        return {"out": torch.bmm(x, x.transpose(1, 2)).flatten(1)}


def test_dynamic_lengths_hand_openvino_stack_as_concat(monkeypatch):
    """compile_dynamic rewrites aten.stack like fixed-shape compiles do (targets/lowering.stack_as_concat),
    keeping the symbolic length; the engine equals eager at two lengths."""
    import openvino

    from archfit.shapes.dynamic import trace_dynamic
    from archfit.targets.registry import get_target

    handed, convert = [], openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda ep, **kw: handed.append(ep) or convert(ep, **kw))
    model = _Stacked().eval()
    module = trace_dynamic(model, {"input_ids": torch.randint(0, 50, (1, 8))}, get_target("openvino"), "fp32", 24, {})
    (ep,) = handed
    assert not [n for n in ep.graph.nodes if n.target is torch.ops.aten.stack.default]
    assert [n for n in ep.graph.nodes if n.target is torch.ops.aten.cat.default]
    assert ep.range_constraints  # the length stayed symbolic
    for n in (3, 20):
        ids = torch.randint(0, 50, (1, n))
        with torch.no_grad():
            torch.testing.assert_close(module(input_ids=ids)["out"], model(input_ids=ids)["out"], atol=ATOL, rtol=RTOL)
