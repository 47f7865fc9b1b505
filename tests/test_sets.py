"""Validation sets as users hold them (core/sets.py): one input set, a list, a DataLoader or a
generator; a gate judged over the whole set decides, and names the worst inputs when it fails."""
from __future__ import annotations

import pytest
import torch

import archfit
from archfit.core.accuracy import Embedding
from archfit.core.sets import input_sets
from archfit.errors import InputError, ValidationError


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 10)).eval()
    return model, (torch.randn(4, 16),)


def _sets(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 16, generator=g) * (1 + i),) for i in range(n)]


def test_a_set_is_one_input_set_a_list_a_dataloader_or_a_generator(classifier):
    _model, example = classifier
    spec = torch.utils._pytree.tree_flatten(((example[0],), {}))[1]
    sets = _sets(3)
    assert len(input_sets(example, spec, "v")) == 1
    assert len(input_sets(sets, spec, "v")) == 3
    assert len(input_sets([s[0] for s in sets], spec, "v")) == 3  # bare tensors for a one-tensor model
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 16)), batch_size=4)
    assert [s[0].shape for s in input_sets(loader, spec, "v")] == [(4, 16)] * 3
    assert len(input_sets((s for s in sets), spec, "v")) == 3
    with pytest.raises(InputError, match=r"v\[1\]: structured as .*not as the example inputs"):
        input_sets([sets[0], {"x": sets[1][0]}], spec, "v")
    with pytest.raises(InputError, match="v: no input set in it"):
        input_sets([], spec, "v")


def test_the_gate_over_the_set_decides_and_reports_its_size(classifier):
    model, example = classifier
    compiled = archfit.trace(model, example, "inf1", accuracy="classification", validation_inputs=_sets(6),
                             check_payoff=False)
    v = compiled.report.validation
    assert v.ok and v.decided_by == "validation set"
    (metric,) = [m for m in v.metrics if m.label == "validation set"]
    assert metric.size == 6 and dict(metric.values)["top1"] >= 0.99 and len(metric.worst) == 3
    text = " ".join(compiled.report.to_text().split())  # lines wrap at the terminal's width
    assert "classification gate on the validation set (bf16): top1" in text and "over 6 inputs" in text
    assert "(reported; the validation set decides)" in text  # the example's own gate line does not decide
    assert any(c.label == "validation set (6 inputs)" for c in v.checks)


def test_a_gate_failing_on_the_set_names_its_worst_inputs(classifier):
    model, example = classifier
    with pytest.raises(ValidationError, match=r"gate fails on the validation set \(bf16\): cosine 0\.\d+ < 1 .* over 5 "
                                              r"inputs \(worst: #\d, #\d, #\d\)"):
        archfit.trace(model, example, "inf1", accuracy=Embedding(cosine=1.0), validation_inputs=_sets(5),
                      check_payoff=False)


def test_without_a_gate_every_input_of_the_set_is_checked_elementwise(classifier):
    model, example = classifier
    compiled = archfit.trace(model, example, "onnxruntime", validation_inputs=_sets(3), check_payoff=False)
    (check,) = [c for c in compiled.report.validation.checks if c.label == "validation set (3 inputs)"]
    assert check.ok and len(check.outputs) == 1
    with pytest.raises(InputError, match=r"validation_inputs\[0\]: structured as"):
        archfit.trace(model, example, "onnxruntime", validation_inputs=[{"x": example[0]}], check_payoff=False)
