"""How ops are named everywhere archfit shows or stores one (reports, errors, files)."""
from __future__ import annotations

import torch
from torch import fx


def op_name(target) -> str:
    """Short, stable name of an op or of the op an fx node calls: 'aten.linear',
    'archfit_zoo.softclip', 'getitem'."""
    if isinstance(target, fx.Node):
        target = target.target
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.__name__}"
    return getattr(target, "__name__", str(target))


def overload_name(op: torch._ops.OpOverload) -> str:
    """Full name with the overload, as files store it: 'aten.add.Tensor'."""
    return f"{op.namespace}.{op._opname}.{op._overloadname}"


def library_name(op: torch._ops.OpOverload) -> str:
    """'namespace::op', as torch.library registers it."""
    return f"{op.namespace}::{op._opname}"
