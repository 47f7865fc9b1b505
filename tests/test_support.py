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


def test_onnxruntime_judges_ops_by_the_exporters_own_decompositions():
    """torch.onnx decomposes what torchlib lacks with torch._decomp's wider table, not only torch's
    default one: adaptive_avg_pool2d (VGG's, ResNet's) is exported, so it stays in the engine
    instead of splitting the model around a host op."""
    from conftest import assert_close_to_eager

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d((7, 7)),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 49, 10)).eval()
    for size in (14, 16):  # divisible (an average pool) and not (windows of two sizes)
        inputs = (torch.randn(2, 3, size, size),)
        table = check_support(capture(model, inputs), get_target("onnxruntime"))
        assert all(n.supported for n in table.nodes), [n.detail for n in table.nodes if not n.supported]
    compiled = archfit.trace(model, inputs, "onnxruntime", check_payoff=False)
    assert len(compiled.report.partitions) == 1
    assert_close_to_eager(model, compiled, inputs)
