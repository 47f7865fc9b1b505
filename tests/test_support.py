"""Support analysis: verdicts, reasons, FLOPs and bytes per node."""
import torch

import archfit
from archfit.core.capture import capture
from archfit.core.support import Reason, check_support
from archfit.targets import get_target


def test_every_node_has_verdict_cost_and_source(mlp_custom):
    model, inputs = mlp_custom
    table = check_support(capture(model, inputs), get_target("openvino"))
    linears = [n for n in table.nodes if n.op == "aten.linear"]
    assert len(linears) == 4
    # 16 x 128 @ 128 x 128: 2 * 16 * 128 * 128 FLOPs, fp32 output of 16 x 128
    assert all(n.flops == 2 * 16 * 128 * 128 and n.out_bytes == 16 * 128 * 4 for n in linears)
    assert all(n.supported and n.reason is None and n.source and "toy.py" in n.source for n in linears)
    (custom,) = [n for n in table.nodes if n.op == "archfit_zoo.softclip"]
    assert not custom.supported and custom.reason is Reason.NO_LOWERING
    assert "not in OpenVINO's op list" in custom.detail


def test_high_level_op_judged_by_its_decomposition(tiny_bert):
    """OpenVINO's published list names core ATen ops (addmm, ...), not aten.linear; linear is
    supported because its decomposition is."""
    model, inputs = tiny_bert
    cap = capture(model, inputs)
    from archfit.targets.base import core_ops

    node = next(n for n in cap.graph_module.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert torch.ops.aten.linear.default not in core_ops(node)
    table = check_support(cap, get_target("openvino"))
    assert all(n.supported for n in table.nodes if n.op == "aten.linear")


def test_unsupported_dtype_reason(tiny_resnet18):
    model, inputs = tiny_resnet18
    target = get_target("onnxruntime")
    narrow = archfit.Target(name="no-float-test", backend="x", device="CPU", description="", supports=target.supports,
                            compile=target.compile, dtypes=frozenset({torch.int64}))
    table = check_support(capture(model, inputs), narrow)
    conv = next(n for n in table.nodes if n.op == "aten.conv2d")
    assert conv.reason is Reason.DTYPE and "float32 not supported by no-float-test" in conv.detail


def test_force_cpu_by_op_and_by_node_name(tiny_bert):
    model, inputs = tiny_bert
    cap = capture(model, inputs)
    table = check_support(cap, get_target("openvino"), force_cpu=["gelu", "tanh"])
    forced = {n.name for n in table.nodes if n.reason is Reason.FORCED}
    assert forced == {n.name for n in table.nodes if n.op in ("aten.gelu", "aten.tanh")}
    assert len(forced) == 3
