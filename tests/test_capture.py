"""Capture failures name the op, the reason and the user's source line."""
import pytest
import torch

import archfit
from archfit.core.capture import capture

SOURCE = open(__file__).read().splitlines()


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(SOURCE, 1) if text in line and "line_of" not in line)


class WithNonzero(torch.nn.Module):
    def forward(self, x):
        y = torch.relu(x)
        idx = torch.nonzero(y)  # the data-dependent line
        return idx.float().sum() + y.sum()


class WithBranch(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # the data-dependent branch
            return x * 2
        return x - 1


def test_nonzero_fails_naming_op_and_line():
    with pytest.raises(archfit.CaptureError) as err:
        archfit.trace(WithNonzero(), (torch.randn(4, 4),), target="openvino")
    msg = str(err.value)
    assert "aten.nonzero" in msg and "data-dependent output shape" in msg
    assert f"test_capture.py:{line_of('idx = torch.nonzero(y)')} (idx = torch.nonzero(y)" in msg
    assert "\n" not in msg


def test_analyze_marks_data_dependent_nodes():
    report = archfit.analyze(WithNonzero(), (torch.randn(4, 4),), targets=["onnxruntime"])["onnxruntime"]
    reasons = {g.op: g.reason for g in report.fallback}
    assert reasons["aten.nonzero"] == "data-dependent shape"


def test_branch_on_tensor_value_fails_naming_line():
    line = line_of("if x.sum() > 0:")
    with pytest.raises(archfit.CaptureError, match=rf"control flow depends on tensor values at "
                                                   rf"tests/test_capture.py:{line} \(if x.sum\(\) > 0:"):
        archfit.trace(WithBranch(), (torch.randn(4, 4),), target="openvino")


def test_non_tensor_input_is_refused():
    with pytest.raises(archfit.CaptureError, match="example input #1 is a int"):
        capture(WithBranch(), (torch.randn(2), 3))


def test_capture_keeps_names_and_structure(tiny_bert):
    model, inputs = tiny_bert
    cap = capture(model, inputs)
    assert [i.name for i in cap.inputs] == ["input_ids", "attention_mask"]
    assert cap.output_names == ("last_hidden_state", "pooler_output")
