"""The host program as plain JSON, and back, without executing anything stored.

Why not pickle or torch.save: loading either can run arbitrary code. Why not torch.export's
serializer: the host graph calls compiled engines, which are not exportable ops. The graph
holds only ATen ops (and registered custom ops), operator.getitem, engine calls and weights,
so a small explicit format covers it, and every op is resolved by name from torch.ops."""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from .errors import ArtifactError

# The only Python callables a host graph may name; anything else is refused on load.
_PY_FUNCTIONS = {f"_operator.{f.__name__}": f for f in (
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
)}
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64,
)}


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
    if name in _PY_FUNCTIONS:
        return name
    raise ArtifactError(f"cannot save host op {target!r}: archfit saves ATen/custom ops and operator.* only")


def resolve_op(name: str):
    """'aten.add.Tensor' -> torch.ops.aten.add.Tensor, by attribute lookup only."""
    if name in _PY_FUNCTIONS:
        return _PY_FUNCTIONS[name]
    parts = name.split(".")
    if len(parts) != 3:
        raise ArtifactError(f"host program names an unknown function {name!r}; the file is not from archfit")
    namespace, op, overload = parts
    try:
        return getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (AttributeError, RuntimeError):
        raise ArtifactError(
            f"the file needs op {namespace}::{op}.{overload}, which is not registered here; import the "
            f"module that defines it (torch.library) before archfit.load (CLI: archfit run --import MODULE)"
        ) from None


def _encode(value: Any, node_name: str) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return {"float": repr(value)} if not math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, node_name) for v in value]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ArtifactError(f"cannot save argument {value!r} ({type(value).__name__}) of host node {node_name!r}")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(value, dict):
        (kind, v), = value.items()
        if kind == "node":
            return env[v]
        if kind == "float":
            return float(v)
        if kind in ("list", "tuple"):
            items = [_decode(x, env) for x in v]
            return items if kind == "list" else tuple(items)
        if kind == "dtype":
            return _DTYPES[v]
        if kind == "device":
            return torch.device(v)
        if kind in ("layout", "memory_format"):
            obj = getattr(torch, v)
            if not isinstance(obj, (torch.layout, torch.memory_format)):
                raise ArtifactError(f"unknown {kind} {v!r} in host program")
            return obj
        raise ArtifactError(f"unknown value kind {kind!r} in host program")
    return value


def graph_to_json(gm: fx.GraphModule) -> list[dict]:
    nodes = []
    for n in gm.graph.nodes:
        entry = {"name": n.name, "op": n.op}
        if n.op == "call_function":
            entry["target"] = _target_name(n.target)
        elif n.op in ("get_attr", "call_module", "placeholder"):
            entry["target"] = str(n.target)
        entry["args"] = _encode(tuple(n.args), n.name)
        entry["kwargs"] = {k: _encode(v, n.name) for k, v in n.kwargs.items()}
        nodes.append(entry)
    return nodes


def graph_from_json(nodes: list[dict], attributes: dict[str, Any]) -> fx.GraphModule:
    """Rebuild the host GraphModule; `attributes` maps get_attr/call_module targets to objects."""
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    try:
        for e in nodes:
            args = _decode(e["args"], env)
            kwargs = {k: _decode(v, env) for k, v in e["kwargs"].items()}
            op = e["op"]
            if op == "call_function":
                target = resolve_op(e["target"])
            elif op in ("placeholder", "get_attr", "call_module"):
                target = str(e["target"])
            elif op == "output":
                target = "output"
            else:
                raise ArtifactError(f"unknown node kind {op!r} in host program")
            env[e["name"]] = graph.create_node(op, target, args, kwargs, name=e["name"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"host program is malformed ({type(err).__name__}: {err}); re-save the model") from None
    return fx.GraphModule(attributes, graph)
