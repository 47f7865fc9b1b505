"""Per-node cost estimates: FLOPs (from torch's flop formulas) and output bytes."""
from __future__ import annotations

import operator

import torch
from torch import fx
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import conv_flop_count, flop_registry

aten = torch.ops.aten

# Ops that only relabel memory (or produce metadata): no arithmetic, never worth a partition alone.
VIEW_OPS = {
    aten.view, aten.reshape, aten._unsafe_view, aten.expand, aten.permute, aten.transpose,
    aten.t, aten.unsqueeze, aten.squeeze, aten.slice, aten.select, aten.alias, aten.detach,
    aten.flatten, aten.unflatten, aten.split, aten.split_with_sizes, aten.chunk, aten.unbind,
    aten.sym_size, aten.contiguous, aten.clone, aten.lift_fresh_copy, aten.as_strided,
    aten.narrow, aten.view_as, aten.expand_as, aten.unfold, aten._to_copy, aten.to,
}


REDUCTIONS = {
    aten.sum, aten.mean, aten.amax, aten.amin, aten.max, aten.min, aten.var, aten.var_mean,
    aten.std, aten.prod, aten.argmax, aten.argmin, aten.norm, aten.linalg_vector_norm, aten.any, aten.all,
}


def is_compute(node: fx.Node) -> bool:
    """True for ops that do arithmetic (what 'minimum partition size' counts)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem or not isinstance(node.target, torch._ops.OpOverload):
        return False
    return node.target.overloadpacket not in VIEW_OPS


def _val(x):
    return x.meta.get("val") if isinstance(x, fx.Node) else x


def _numel(v) -> int:
    return sum(_prod(_shape(t)) for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor))


def _int(x) -> int:
    if isinstance(x, torch.SymInt) and not x.node.has_hint():
        return 1  # data-dependent size (unbacked symbol): unknown until run time, count as 1
    try:
        return int(x)
    except Exception:  # noqa: BLE001 - any other symbolic expression without a value
        return 1


def _shape(t) -> tuple[int, ...]:
    return tuple(_int(d) for d in t.shape)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _high_level_flops(packet, args, out) -> int | None:
    """High-level ops torch.export keeps but torch's flop table does not list."""
    if packet is aten.linear:
        return 2 * _prod(_shape(out)) * _shape(args[1])[-1]
    if packet in (aten.conv1d, aten.conv2d, aten.conv3d):
        return conv_flop_count(list(_shape(args[0])), list(_shape(args[1])), list(_shape(out)), transposed=False)
    if packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d):
        return conv_flop_count(list(_shape(args[0])), list(_shape(args[1])), list(_shape(out)), transposed=True)
    if packet is aten.matmul:
        return 2 * _prod(_shape(out)) * _shape(args[0])[-1]
    if packet is aten.scaled_dot_product_attention:
        q, k = _shape(args[0]), _shape(args[1])
        # QK^T and PV: 2 matmuls of (..., Lq, D) x (..., D, Lk)
        return 4 * _prod(q[:-1]) * k[-2] * q[-1]
    if packet is aten.einsum:
        return 2 * _prod(_shape(out)) * 1  # contraction size unknown without parsing; lower bound
    return None


def node_flops(node: fx.Node) -> int:
    """Estimated FLOPs; elementwise and reductions count one per output (or input) element."""
    if not is_compute(node):
        return 0
    packet = node.target.overloadpacket
    args = tree_map(_val, node.args)
    kwargs = tree_map(_val, node.kwargs)
    out = node.meta.get("val")
    try:
        flops = _high_level_flops(packet, args, out)
        if flops is None and packet in flop_registry:
            flops = flop_registry[packet](*args, out_val=out, **kwargs)
    except Exception:  # noqa: BLE001 - a formula that cannot read symbolic shapes: fall back
        flops = None
    if flops is None:
        # reductions read every input element; everything else does about one op per output
        flops = _numel(args[0]) if packet in REDUCTIONS and args else _numel(out)
    return _int(flops)


def node_bytes(node: fx.Node) -> int:
    """Bytes of the node's output(s): what crosses a boundary if it is cut there."""
    total = 0
    for t in tree_flatten(node.meta.get("val"))[0]:
        if isinstance(t, torch.Tensor):
            total += _prod(_shape(t)) * t.dtype.itemsize
    return total
