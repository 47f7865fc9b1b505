"""int8 (core/quantize.py): a model trained here, quantized by each target's own quantizer,
calibrated on its inputs and judged by its gate on a held-apart set; accuracy control returning
a deliberately sensitive layer to float; fp8 emulation for Inferentia2; refusals."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import archfit
from archfit.errors import ArchfitError

from conftest import cli

CLASSES, FEATURES, ROWS = 10, 16, 8


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return centres[labels] + torch.randn(n, FEATURES, generator=g), labels


@pytest.fixture(scope="module")
def trained():
    """An MLP trained here on ten Gaussian classes (random weights would make int8 meaningless)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, CLASSES))
    x, y = _blobs(2048, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(-1) == y).float().mean() > 0.95  # it learned the task
    calibration = [(b,) for b in _blobs(32 * ROWS, 2)[0].split(ROWS)]
    validation = [(b,) for b in _blobs(32 * ROWS, 3)[0].split(ROWS)]  # held apart from the calibration
    return model, (validation[0][0],), calibration, validation


def _int8(model, example, calibration, validation, target, **kw):
    return archfit.trace(model, example, target, precision="int8", calibration=calibration,
                         validation_inputs=validation, accuracy="classification", check_payoff=False, **kw)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_int8_of_a_trained_model_passes_its_gate_on_the_held_apart_set(trained, target):
    model, example, calibration, validation = trained
    compiled = _int8(model, example, calibration, validation, target)
    v, q = compiled.report.validation, compiled.report.quantization
    assert compiled.precision == "int8" and v.ok and v.decided_by == "validation set"
    (metric,) = [m for m in v.metrics if m.label == "validation set"]
    assert metric.size == 32 and dict(metric.values)["top1"] >= 0.99
    assert q.layers + len(q.float_layers) == 3 and "32 input set(s)" in q.calibration
    with torch.no_grad():
        x = validation[5][0]
        agree = (compiled(x).argmax(-1) == model(x).argmax(-1)).float().mean()
        assert agree >= 0.75 and not torch.equal(compiled(x), model(x))  # int8 in effect, the answer kept
    assert "int8: " in compiled.report.to_text()


def _with_outlier_channel(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The same function, but one channel into the second linear is 1000x larger and that linear's
    weights for it 1000x smaller: per-tensor int8 of that linear's input leaves the other channels
    about one step of resolution. Quantizing that one layer is what breaks the model."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[3] *= 1000
        model[0].bias[3] *= 1000
        model[2].weight[:, 3] /= 1000
    return model


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_accuracy_control_returns_the_sensitive_layer_to_float(trained, target):
    model, example, calibration, validation = trained
    outlier = _with_outlier_channel(model)
    with pytest.raises(archfit.ValidationError, match="gate fails on the validation set \\(int8\\)"):
        _int8(outlier, example, calibration, validation, target, accuracy_control=False)
    compiled = _int8(outlier, example, calibration, validation, target)
    q = compiled.report.quantization
    assert compiled.report.validation.ok and q.float_layers[0] == "linear_1"  # the layer reading the outlier
    assert q.steps[0].startswith("accuracy control: every layer in int8") and q.steps[-1].endswith("PASS")
    text = " ".join(compiled.report.to_text().split())
    assert "kept in float: linear_1" in text and "most sensitive in float (linear_1" in text


def test_accuracy_control_tries_fp32_floats_when_the_default_float_misses(trained):
    """The search order, its compiles stood in: every op in the target's default float; where that
    misses (a model bf16 does not suit), every op in fp32, then the fewest most sensitive layers
    that pass in fp32; refused, naming fp32, when every op in fp32 misses too."""
    import types

    from archfit.core.capture import capture
    from archfit.core.quantize import control_accuracy

    model, example, calibration, validation = trained
    captured = capture(model, example)
    ops = frozenset(n.name for n in captured.graph_module.graph.nodes if n.op == "call_function")
    compiled = types.SimpleNamespace(plan=types.SimpleNamespace(partitions=[types.SimpleNamespace(nodes=ops)]))
    options = types.SimpleNamespace(float_layers=(), calibration=calibration, validation_inputs=validation,
                                    accuracy_control=True, say=lambda line: None, accuracy=archfit.Classification(),
                                    float_precision=None)
    failed = types.SimpleNamespace(ok=False, metrics=[])

    def run(passes):
        calls = []

        def attempt(group, float_precision):
            calls.append((len(group) if len(group) < len(ops) else "every op", float_precision))
            return compiled, types.SimpleNamespace(ok=passes(group, float_precision), metrics=[])
        return calls, control_accuracy(captured, compiled, failed, options, attempt, lambda c: 1.0)

    calls, (_, validation_result, q) = run(lambda group, fp: fp == "fp32" and len(group) >= 2)
    assert calls == [("every op", None), ("every op", "fp32"), (1, "fp32"), (2, "fp32")]
    assert validation_result.ok and q.layers == 1 and len(q.float_layers) == 2
    assert q.steps[-1].startswith("  the 2 most sensitive in float (") and ", fp32: " in q.steps[-1]
    with pytest.raises(archfit.ValidationError, match="even with every op in fp32 \\(best: FAIL\\); use precision="):
        run(lambda group, fp: False)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_every_op_kept_in_float_compiles_the_partition_in_float(trained, target):
    """Accuracy control's last resort on the real quantizers: every op kept in float, in fp32,
    is the float engine (no quantizer left anything int8), equal to PyTorch within fp32 rounding."""
    from archfit.core.capture import capture
    from archfit.targets import get_target

    model, example, calibration, _ = trained
    gm = capture(model, example).graph_module
    every = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    engine = get_target(target).quantize(gm, list(example), calibration, every, float_precision="fp32")
    with torch.no_grad():
        want = gm(*example)[0]
    torch.testing.assert_close(engine.run(list(example))[0], want, rtol=1e-5, atol=1e-5)


def test_a_saved_int8_file_loads_in_a_fresh_process_with_the_same_outputs(trained, tmp_path):
    model, example, calibration, validation = trained
    compiled = _int8(model, example, calibration, validation, "openvino")
    path = archfit.save(compiled, tmp_path / "int8.archfit")
    x = validation[7][0]
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "want.npy", compiled(x).numpy())
    code = ("import numpy as np, torch, archfit; m = archfit.load(%r); x = torch.from_numpy(np.load(%r)); "
            "assert m.precision == 'int8'; np.testing.assert_allclose(m(x).numpy(), np.load(%r), rtol=1e-5, atol=1e-5)"
            % (str(path), str(tmp_path / "x.npy"), str(tmp_path / "want.npy")))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = cli("inspect", str(path))
    assert "precision int8" in shown.stdout and "int8: 3 layer(s) quantized" in " ".join(shown.stdout.split())


def test_auto_precision_with_calibration_measures_int8_beside_the_others(trained, monkeypatch):
    from archfit.core import timing

    model, example, calibration, validation = trained
    # which precision wins is the host's to say: short measurements, the rule is what is tested
    monkeypatch.setattr(timing, "settled_ms", lambda calls, seconds: timing.interleaved_ms(calls, 0.1))
    compiled = archfit.trace(model, example, "openvino", precision="auto", calibration=calibration,
                             validation_inputs=validation, accuracy="classification", check_payoff=False)
    measured = {a.precision: a.ms for a in compiled.report.alternatives if a.ms is not None}
    assert "int8" in measured and "fp32" in measured
    assert compiled.precision == min(measured, key=measured.get)  # the fastest that passed its gate


def test_int8_refusals_say_what_to_do(trained):
    model, example, calibration, validation = trained
    with pytest.raises(ArchfitError, match="precision='int8' is calibrated on inputs like those it will see: pass "
                                           "calibration="):
        archfit.trace(model, example, "openvino", precision="int8")
    with pytest.raises(ArchfitError, match="shipped only after passing a task gate on a validation set"):
        archfit.trace(model, example, "openvino", precision="int8", calibration=calibration)
    with pytest.raises(ArchfitError, match="Inferentia1's compiler \\(neuron-cc\\) casts matmuls to bf16"):
        _int8(model, example, calibration, validation, "inf1")
    with pytest.raises(ArchfitError, match="not to int8: use precision='fp8'"):
        _int8(model, example, calibration, validation, "inf2")
    with pytest.raises(ArchfitError, match="precision='int8' with packing is not built yet"):
        _int8(model, example, calibration, validation, "openvino", packing=archfit.Packing(max_len=16))


def test_inf2_fp8_rounds_matmul_inputs_as_float8_e4m3(trained):
    from torch import fx

    from archfit.targets.precision import emulate_fp8

    x = torch.cat([torch.linspace(-500, 500, 2001), torch.tensor([0.0, 1e-4, -3e-3, 0.017])])

    class Mm(torch.nn.Module):
        def forward(self, a, b):
            return torch.ops.aten.mm.default(a, b)

    gm = fx.symbolic_trace(Mm())
    for node in gm.graph.nodes:  # fp32 values, as capture records them
        node.meta["val"] = torch.empty(1)
    got = emulate_fp8(gm)(x[:, None], torch.ones(1, 1))[:, 0]
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    model, example, _calibration, validation = trained
    compiled = archfit.trace(model, example, "inf2", precision="fp8", validation_inputs=validation,
                             accuracy="classification")
    assert compiled.report.validation.ok and compiled.report.validation.max_rel > 1e-3  # fp8 in effect


def test_cli_compiles_int8_from_npz_sets(trained, tmp_path):
    model, example, calibration, validation = trained
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "mlp.py").write_text(
        "import torch\n"
        "def build():\n"
        f"    m = torch.nn.Sequential(torch.nn.Linear({FEATURES}, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),\n"
        f"                          torch.nn.ReLU(), torch.nn.Linear(64, {CLASSES}))\n"
        f"    m.load_state_dict(torch.load({str(tmp_path / 'weights.pt')!r}, weights_only=True))\n"
        f"    return m.eval(), (torch.zeros({ROWS}, {FEATURES}),)\n")
    np.savez(tmp_path / "calib.npz", input=torch.stack([c[0] for c in calibration]).numpy())
    (tmp_path / "val").mkdir()
    for i, (x,) in enumerate(validation[:16]):  # a folder: one .npz a set
        np.savez(tmp_path / "val" / f"{i:03d}.npz", input=x.numpy())
    out = tmp_path / "mlp-int8.archfit"
    r = cli("compile", f"{tmp_path / 'mlp.py'}:build", "-t", "onnxruntime", "--precision", "int8", "--calibration",
            str(tmp_path / "calib.npz"), "--validation", str(tmp_path / "val"), "--accuracy", "classification",
            "--no-payoff", "--no-compare", "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "calibrated on 32 input set(s)" in text and "classification gate on the validation set (int8)" in text
    assert "over 16 inputs" in text and out.is_file()
    r = cli("compile", f"{tmp_path / 'mlp.py'}:build", "-t", "onnxruntime", "--precision", "int8", "--calibration",
            str(tmp_path / "val" / "000.npz"), "--no-compare")  # no validation set: refused before compiling
    assert r.returncode == 1 and "shipped only after passing a task gate on a validation set" in r.stderr


def test_calibration_and_validation_sets_given_as_generators_are_read_once(trained):
    """A generator runs dry after one pass; trace reads the sets more than once (calibration per
    attempt of accuracy control, the validation set per candidate), so it holds them as a list."""
    model, example, calibration, validation = trained
    outlier = _with_outlier_channel(model)  # accuracy control reads both sets again
    compiled = _int8(outlier, example, (c for c in calibration), (v for v in validation), "onnxruntime")
    q = compiled.report.quantization
    assert "32 input set(s)" in q.calibration and q.float_layers and compiled.report.validation.ok
    (metric,) = [m for m in compiled.report.validation.metrics if m.label == "validation set"]
    assert metric.size == 32


class _Bag(torch.nn.Module):
    """Token ids to a class: embeddings averaged over the attended positions, then an MLP."""

    def __init__(self, vocab: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32)
        self.head = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))


def _sequences(n: int, length: int, seed: int):
    """Class c: most tokens from ids 16c..16c+15, the rest anywhere; a batch of `n` at `length`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < 0.6, y[:, None] * 16 + torch.randint(0, 16, (n, length),
                                                                                               generator=g),
                      torch.randint(1, 64, (n, length), generator=g))
    return {"input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.long)}, y


def test_int8_with_buckets_calibrates_and_gates_every_bucket_on_the_sets_fitted_to_it():
    """Each bucket is calibrated and judged on the user's sets padded (or cut) to its length and
    batch: sets of any length in, every bucket's gate passed on the held-apart set."""
    torch.manual_seed(0)
    model = _Bag()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(120):
        x, y = _sequences(64, 4 + step % 20, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(**x), y).backward()
        opt.step()
    model.eval()
    calibration = [_sequences(4, 4 + i % 20, 1000 + i)[0] for i in range(24)]
    validation = [_sequences(4, 4 + i % 20, 2000 + i)[0] for i in range(24)]
    example = _sequences(4, 16, 7)[0]
    compiled = archfit.trace(model, example, "openvino", precision="int8", calibration=calibration,
                             validation_inputs=validation, accuracy="classification", check_payoff=False,
                             buckets=archfit.Buckets({"input_ids": 1, "attention_mask": 1}, sizes=(8, 24)),
                             dynamic_batch=True)
    assert compiled.precision == "int8" and sorted(compiled.buckets) == ["24", "8"]
    for bucket in compiled.buckets.values():
        v = bucket.report.validation
        (metric,) = [m for m in v.metrics if m.label == "validation set"]
        assert v.ok and metric.size == 24 and dict(metric.values)["top1"] >= 0.9
        assert "24 input set(s)" in bucket.report.quantization.calibration
    x, y = _sequences(6, 11, 99)  # between the buckets, more rows than the compiled 4
    with torch.no_grad():
        assert (compiled(**x).argmax(-1) == model(**x).argmax(-1)).float().mean() >= 0.8


def test_openvino_int8_finds_a_convolution_after_a_batch_norm_by_its_graph_name():
    """OpenVINO's converter renames conv2d (decomposed to convolution, a batch norm after it folded
    under its multiply's name); archfit folds the batch norm (same outputs) and keeps the names, so
    the converted convolutions carry the graph's conv2d names, the names NNCF is told to ignore."""
    import openvino as ov

    from archfit.core.capture import capture
    from archfit.targets.base import export_partition
    from archfit.targets.lowering import fold_batch_norms
    from archfit.targets.openvino import REWRITES, _keeping_names, lower

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    x = torch.randn(1, 3, 12, 12)
    gm = capture(net, (x,)).graph_module
    folded = fold_batch_norms(gm)
    assert not [n for n in folded.graph.nodes if "batch_norm" in str(n.target)]
    torch.testing.assert_close(folded(x)[0], net(x), rtol=1e-4, atol=1e-5)
    model = ov.convert_model(_keeping_names(lower(export_partition(folded, [x]), REWRITES)))
    convs = sorted(op.get_friendly_name().split("/")[0] for op in model.get_ordered_ops()
                   if op.get_type_name() == "Convolution")
    assert convs == sorted(n.name for n in gm.graph.nodes if n.target is torch.ops.aten.conv2d.default)


def test_accuracy_control_narrows_a_long_passing_set_block_by_block(trained, monkeypatch):
    """Where the ranking misses (the one op that must stay float is ranked least sensitive, so only
    every candidate in float passes the prefix search), the passing set is narrowed on the
    compiled engine: blocks go back to int8, the least sensitive first, kept where the gate passes."""
    import types

    from archfit.core import quantize
    from archfit.core.capture import capture

    model, example, calibration, validation = trained
    captured = capture(model, example)
    ops = frozenset(n.name for n in captured.graph_module.graph.nodes if n.op == "call_function")
    candidates = quantize.candidates_in(captured.graph_module, ops)
    ranked = [n for n, _ in quantize.sensitivity(captured.graph_module, candidates, calibration, validation)]
    needed = ranked[-1]
    monkeypatch.setattr(quantize, "NARROW_FROM", len(ranked))
    compiled = types.SimpleNamespace(plan=types.SimpleNamespace(partitions=[types.SimpleNamespace(nodes=ops)]))
    options = types.SimpleNamespace(float_layers=(), calibration=calibration, validation_inputs=validation,
                                    accuracy_control=True, say=lambda line: None, accuracy=archfit.Classification(),
                                    float_precision="fp32")
    tried = []

    def attempt(group, float_precision):
        tried.append(tuple(group))
        return compiled, types.SimpleNamespace(ok=needed in group, metrics=[])

    _, result, q = quantize.control_accuracy(captured, compiled, types.SimpleNamespace(ok=False, metrics=[]), options,
                                             attempt, lambda c: 1.0)
    assert tuple(ranked) in tried  # the prefix search passed only with every candidate
    assert result.ok and q.float_layers == (needed,)
    assert any(line.startswith(f"  {len(ranked) - 1} ops (1 fewer) in float") for line in q.steps), q.steps
