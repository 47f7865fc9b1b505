"""Variable input sizes: buckets, padding and unpadding, dynamic batch, padding safety, save/load."""
import json

import numpy as np
import pytest
import torch

import archfit
from archfit import Buckets
from conftest import assert_close_to_eager, cli

SEQ = {"input_ids": 1, "attention_mask": 1}
SIZES = (4, 9, 16)


def _bert_inputs(length, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[0, length // 2 + 1:] = 0  # one row carries its own padding too
    return {"input_ids": torch.randint(3, 500, (batch, length), generator=g), "attention_mask": mask}


@pytest.fixture(scope="module")
def bucketed_bert(tiny_bert):
    model, inputs = tiny_bert
    return model, archfit.trace(model, inputs, "openvino", buckets=Buckets(SEQ, sizes=SIZES), check_payoff=False)


def test_every_length_matches_eager_at_that_exact_length(bucketed_bert):
    model, module = bucketed_bert
    assert module.sizes == SIZES and len(module.safety) == 3
    for length in range(1, SIZES[-1] + 1):
        inputs = _bert_inputs(length, seed=length)
        out = module(**inputs)
        assert out.last_hidden_state.shape == (1, length, 64)
        assert_close_to_eager(model, module, inputs)


def test_html_page_has_the_bucket_table(bucketed_bert):
    _, module = bucketed_bert
    page = module.page()
    rows = page["buckets"]["rows"]
    assert [r["size"] for r in rows] == list(SIZES) and all(r["ok"] for r in rows)
    assert all(r["partitions"] == len(module.report.partitions) for r in rows)
    html = archfit.report.to_html(module)
    assert '"buckets":{"rows":[{"size":%d' % SIZES[0] in html and html.startswith("<!DOCTYPE html>")


def test_oversize_and_untied_sizes_are_one_line_errors(bucketed_bert):
    _, module = bucketed_bert
    with pytest.raises(archfit.InputError, match=r"input 'input_ids' dim 1 has size 17, larger than the largest "
                                                 r"bucket 16"):
        module(**_bert_inputs(17))
    bad = _bert_inputs(8)
    bad["attention_mask"] = bad["attention_mask"][:, :6]
    with pytest.raises(archfit.InputError, match=r"'input_ids' \(dim 1\) = 8, 'attention_mask' \(dim 1\) = 6 vary "
                                                 r"together"):
        module(**bad)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_dynamic_batch_splits_and_pads_like_eager(tiny_bert, target):
    model, _ = tiny_bert
    module = archfit.trace(model, _bert_inputs(16, batch=2), target, dynamic_batch=True, check_payoff=False)
    assert module.batch == 2
    for batch in (1, 2, 5):
        assert_close_to_eager(model, module, _bert_inputs(16, batch=batch, seed=batch))


def test_buckets_and_dynamic_batch_together(tiny_bert):
    model, _ = tiny_bert
    module = archfit.trace(model, _bert_inputs(16, batch=2), "onnxruntime", buckets=Buckets(SEQ, sizes=(8, 16)),
                           dynamic_batch=True, check_payoff=False)
    for batch, length in ((3, 5), (1, 16), (4, 11)):
        out = module(**_bert_inputs(length, batch=batch))
        assert out.last_hidden_state.shape == (batch, length, 64)
        assert_close_to_eager(model, module, _bert_inputs(length, batch=batch))


def test_smaller_batch_sizes_run_a_partial_batch_on_the_engine_that_holds_it(tiny_bert, tmp_path, monkeypatch):
    """batch_sizes=(1, 2) beside a batch of 4: a batch runs in chunks of 4, its last chunk on the
    smallest compiled row count that holds it (5 rows: 4 + 1; 6: 4 + 2; 7: 4 + 4, the 3 padded)."""
    from archfit.core.module import CompiledModule

    model, _ = tiny_bert
    module = archfit.trace(model, _bert_inputs(16, batch=4), "onnxruntime", buckets=Buckets(SEQ, sizes=(16,)),
                           dynamic_batch=True, batch_sizes=(1, 2), check_payoff=False)
    assert module.row_counts == (1, 2) and sorted(module.fewer) == ["16x1", "16x2"]
    loaded = archfit.load(archfit.save(module, tmp_path / "b.archfit"))
    assert loaded.row_counts == (1, 2)
    rows_run = []
    run_flat = CompiledModule.run_flat
    monkeypatch.setattr(CompiledModule, "run_flat", lambda self, flat: rows_run.append(flat[0].shape[0]) or
                        run_flat(self, flat))
    for batch, length, calls in ((5, 11, [4, 1]), (6, 5, [4, 2]), (7, 16, [4, 4]), (2, 3, [2]), (1, 9, [1])):
        rows_run.clear()
        assert_close_to_eager(model, loaded, _bert_inputs(length, batch=batch))
        assert rows_run == calls and loaded.rows_computed(batch) == sum(calls)
    with pytest.raises(archfit.errors.ArchfitError, match=r"batch_sizes \(4,\): with dynamic_batch, row counts "
                                                         r"from 1 to below the example's batch \(4\)"):
        archfit.trace(model, _bert_inputs(16, batch=4), "onnxruntime", dynamic_batch=True, batch_sizes=(4,),
                      check_payoff=False)


def test_buckets_chosen_from_a_sample(tiny_bert):
    model, inputs = tiny_bert
    sample = (2, 3, 3, 4, 5, 5, 5, 6, 7, 12, 15, 16, 16)
    module = archfit.trace(model, inputs, "openvino", check_payoff=False, check_padding=False,  # the fixture checks it
                           buckets=Buckets(SEQ, sample=sample, max_buckets=3))
    choice = module.choice
    assert len(module.sizes) <= 3 and module.sizes[-1] == 16 and module.sizes == choice.boundaries
    assert choice.speedup > 1.0 and 0 < choice.padding_waste < 1
    assert "expected speedup over pad-to-max" in module.summary()
    assert_close_to_eager(model, module, _bert_inputs(6))


class _MeanOverSequence(torch.nn.Module):
    """Averages over every position, masked or not: padding changes its output."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)

    def forward(self, ids):
        return self.emb(ids).mean(dim=1)


def test_model_that_is_not_padding_safe_is_refused_naming_the_output():
    with pytest.raises(archfit.ValidationError, match=r"not padding-safe: output 'output' differs .* length 1 is "
                                                      r"padded to bucket 4"):
        archfit.trace(_MeanOverSequence(), (torch.randint(1, 100, (1, 8)),), "onnxruntime", check_payoff=False,
                      buckets=Buckets({"ids": 1}, sizes=(4, 8)))


def test_unknown_varying_input_is_named():
    with pytest.raises(archfit.ArchfitError, match="buckets: no input named 'tokens'; the inputs are ids"):
        archfit.trace(_MeanOverSequence(), (torch.randint(1, 100, (1, 8)),), "onnxruntime",
                      buckets=Buckets({"tokens": 1}, sizes=(4, 8)))


class _Tagger(torch.nn.Module):
    """Token classifier whose weights dwarf its graph, to measure what buckets add to a file."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(2000, 128)
        self.fc1, self.fc2 = torch.nn.Linear(128, 512), torch.nn.Linear(512, 16)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


def test_saved_buckets_store_weights_once_and_load_identical(tmp_path):
    model, ids = _Tagger().eval(), (torch.randint(0, 2000, (1, 32)),)
    one = archfit.trace(model, ids, "onnxruntime", check_payoff=False)
    four = archfit.trace(model, ids, "onnxruntime", check_payoff=False, buckets=Buckets({"ids": 1}, sizes=(8, 16, 32)))
    archfit.save(one, tmp_path / "one.archfit")
    archfit.save(four, tmp_path / "four.archfit")
    assert (tmp_path / "four.archfit").stat().st_size < 1.2 * (tmp_path / "one.archfit").stat().st_size
    loaded = archfit.load(tmp_path / "four.archfit")
    assert loaded.sizes == four.sizes and loaded.padding == four.padding
    for length in (3, 8, 20, 32):
        x = torch.randint(0, 2000, (1, length))
        assert torch.equal(loaded(x), four(x))
    # in memory, the buckets' sessions hold one copy of each weight
    arrays = [{id(a) for a in m.graph_module.engines["target_0"].engine._weights.values()}
              for m in loaded.buckets.values()]
    assert all(a == arrays[0] for a in arrays)


def test_cli_compile_with_lengths_then_run_any_length(tmp_path):
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps([3, 4, 4, 5, 9, 9, 10, 16, 16]))
    out = tmp_path / "bert.archfit"
    done = cli("compile", "bert-base", "--tiny", "-t", "onnxruntime", "-o", str(out), "--vary", "input_ids:1",
               "--vary", "attention_mask:1", "--lengths", str(lengths), "--max-buckets", "2", "--no-compare")
    assert done.returncode == 0, done.stderr
    assert "buckets over input_ids[1], attention_mask[1]:" in done.stdout and "padding-safe" in done.stdout
    shown = cli("inspect", str(out))
    assert "buckets: " in shown.stdout and "over input_ids[1], attention_mask[1]" in shown.stdout
    inputs = _bert_inputs(7)
    for name, t in inputs.items():
        np.save(tmp_path / f"{name}.npy", t.numpy())
    ran = cli("run", str(out), "-d", str(tmp_path / "o"), "--input", f"input_ids={tmp_path / 'input_ids.npy'}",
              "--input", f"attention_mask={tmp_path / 'attention_mask.npy'}")
    assert ran.returncode == 0, ran.stderr
    got = np.load(tmp_path / "o" / "last_hidden_state.npy")
    assert got.shape == (1, 7, 64)
    bad = cli("compile", "bert-base", "--tiny", "--buckets", "4,8")
    assert bad.returncode == 1 and "need --vary NAME:DIM" in bad.stderr


def test_empty_wrong_rank_and_out_of_vocabulary_inputs_are_one_line_errors(bucketed_bert):
    _, module = bucketed_bert
    with pytest.raises(archfit.InputError, match=r"input 'input_ids' dim 1 has size 0; a bucketed module takes sizes "
                                                 r"1..16"):
        module(**_bert_inputs(0))
    with pytest.raises(archfit.InputError, match=r"input 'input_ids': expected a 2-d tensor \(its dim 1 varies\), "
                                                 r"got 1-d"):
        module(input_ids=torch.ones(8, dtype=torch.long), attention_mask=torch.ones(8, dtype=torch.long))
    vocab = module.inputs[0].index_limit
    assert vocab == 512  # the tiny config's vocabulary, found in the graph
    for bad_id in (-1, vocab):
        inputs = _bert_inputs(8)
        inputs["input_ids"][0, 3] = bad_id
        with pytest.raises(archfit.InputError, match=rf"input 'input_ids' holds id {bad_id}, outside the embedding "
                                                     rf"table's range 0..{vocab - 1}"):
            module(**inputs)
