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
