"""bf16 auto-cast of matmul and convolution, as Inferentia1's compiler does by default
(neuron-cc --fast-math). Backends with native bf16 take a hint; this pass gives the same
numerics on backends without it, by rounding the op's float inputs and output to bf16."""
from __future__ import annotations

import copy

import torch
from torch import fx

aten = torch.ops.aten

MATMUL_CONV = {
    aten.linear, aten.matmul, aten.mm, aten.bmm, aten.addmm, aten.baddbmm,
    aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten._convolution,
    aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d,
    aten.scaled_dot_product_attention, aten.einsum,
}


def is_matmul_or_conv(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target.overloadpacket in MATMUL_CONV


def _round_bf16(graph: fx.Graph, value: fx.Node) -> fx.Node:
    """value -> bf16 -> fp32, inserted right after `value`'s definition point in order."""
    with graph.inserting_after(value):
        down = graph.call_function(aten._to_copy.default, (value,), {"dtype": torch.bfloat16})
    with graph.inserting_after(down):
        return graph.call_function(aten._to_copy.default, (down,), {"dtype": torch.float32})


def _is_fp32(node) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def emulate_bf16(gm: fx.GraphModule) -> fx.GraphModule:
    """Copy of `gm` where every fp32 matmul/conv sees bf16-rounded inputs and output."""
    gm = copy.deepcopy(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if not (node.op == "call_function" and is_matmul_or_conv(node) and _is_fp32(node)):
            continue
        for arg in list(node.all_input_nodes):
            if _is_fp32(arg):
                node.replace_input_with(arg, _round_bf16(graph, arg))
        users = list(node.users)
        rounded = _round_bf16(graph, node)
        for user in users:
            user.replace_input_with(node, rounded)
    graph.lint()
    gm.recompile()
    return gm


# float8 e4m3 (Inferentia2's --auto-cast-type fp8_e4m3): 3 mantissa bits, exponents -6..8, largest 448
_FP8_MIN_EXP, _FP8_MAX_EXP, _FP8_MAX = -6, 8, 448.0


def _round_fp8(graph: fx.Graph, value: fx.Node) -> fx.Node:
    """value rounded to the nearest float8 e4m3 (saturating at 448), in fp32 ops every backend
    converts: |x| split into its power of two and 3 mantissa bits, rounded, signed again. Nodes
    go at the graph's insertion point (the caller's inserting_before the consumer)."""
    def op(target, *args):
        return graph.call_function(target, tuple(args))

    a = op(aten.abs.default, value)
    e = op(aten.floor.default, op(aten.log2.default, op(aten.clamp.default, a, 2.0 ** (_FP8_MIN_EXP - 3))))
    e = op(aten.clamp.default, e, float(_FP8_MIN_EXP), float(_FP8_MAX_EXP))
    step = op(aten.pow.Scalar, 2.0, op(aten.sub.Tensor, e, 3.0))  # 2**x: OpenVINO converts no aten.exp2
    q = op(aten.mul.Tensor, op(aten.round.default, op(aten.div.Tensor, a, step)), step)
    q = op(aten.clamp.default, q, None, _FP8_MAX)
    return op(aten.mul.Tensor, op(aten.sign.default, value), q)


def emulate_fp8(gm: fx.GraphModule) -> fx.GraphModule:
    """Copy of `gm` where every fp32 matmul/conv reads float8 e4m3-rounded inputs (fp32 accumulation)."""
    gm = copy.deepcopy(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and is_matmul_or_conv(node) and _is_fp32(node):
            for arg in list(node.all_input_nodes):
                if _is_fp32(arg):
                    with graph.inserting_before(node):
                        node.replace_input_with(arg, _round_fp8(graph, arg))
    graph.lint()
    gm.recompile()
    return gm
