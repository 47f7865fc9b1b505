"""Stage 2: a verdict for every op node on a target, with the reason when it is refused."""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Iterable

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from ..ops import op_name
from ..targets.base import Target
from .capture import Captured, data_dependent_nodes
from .cost import is_compute, node_bytes, node_flops
from .source import node_origin, node_source


class Reason(str, Enum):
    """Why a node runs in PyTorch on the host CPU instead of on the target."""

    NO_LOWERING = "no lowering on this target"
    DTYPE = "unsupported dtype"
    DYNAMIC = "data-dependent shape"
    FORCED = "forced to CPU by the user"
    TOO_SMALL = "partition too small"
    NO_PAYOFF = "does not pay off"
    POLICY = "target's partition policy"
    COMPILE_FAILED = "the target's compiler rejected it"


@dataclass(frozen=True)
class NodeInfo:
    name: str  # fx node name, unique in the graph
    op: str  # 'aten.linear'
    supported: bool
    reason: Reason | None
    detail: str  # human detail for the reason ("not in OpenVINO's op list", ...)
    flops: int
    out_bytes: int
    compute: bool  # does arithmetic (views and getitem do not)
    source: str | None  # user's 'file:line (code)', or the source framework's node for imported models
    origin: tuple[str, str] | None = None  # imported models: (source node, its op type there)


@dataclass(frozen=True)
class SupportTable:
    target: str
    nodes: tuple[NodeInfo, ...]  # every call_function node, in graph order

    def by_name(self) -> dict[str, NodeInfo]:
        return {n.name: n for n in self.nodes}

    def with_reason(self, names: Iterable[str], reason: Reason, detail: str) -> "SupportTable":
        names = set(names)
        return SupportTable(
            self.target,
            tuple(replace(n, supported=False, reason=reason, detail=detail) if n.name in names else n for n in self.nodes),
        )


def _dtypes(node: fx.Node) -> set[torch.dtype]:
    vals = [node.meta.get("val")] + [a.meta.get("val") for a in node.all_input_nodes]
    return {t.dtype for t in tree_flatten(vals)[0] if isinstance(t, torch.Tensor)}


def _matches(node: fx.Node, patterns: Iterable[str]) -> bool:
    """force_cpu entries name ops ('aten.gelu', 'gelu') or nodes ('gelu_3')."""
    name = op_name(node)
    return any(p in (node.name, name, name.split(".", 1)[-1]) for p in patterns)


def check_force_cpu(graphs: Iterable[fx.GraphModule], force_cpu: Iterable[str]) -> None:
    """Refuse force_cpu entries that name no node of the model: a misspelt op (or one the model does
    not have) would otherwise be ignored in silence. The message names the closest op and node names."""
    import difflib

    from ..errors import ArchfitError

    nodes = [n for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    missing = [p for p in force_cpu if not any(_matches(n, (p,)) for n in nodes)]
    if not missing:
        return
    names = sorted({op_name(n) for n in nodes} | {op_name(n).split(".", 1)[-1] for n in nodes} | {n.name for n in nodes})
    close = difflib.get_close_matches(missing[0], names, n=4, cutoff=0.5)
    ops = sorted({op_name(n) for n in nodes if is_compute(n)})
    hint = f"close names: {', '.join(close)}" if close else f"its ops: {', '.join(ops[:12])}{', ...' if len(ops) > 12 else ''}"
    raise ArchfitError(f"force_cpu={missing[0]!r} matches no op or node of the model ({hint}); name an op "
                       f"('aten.gelu' or 'gelu') or a node as the report names them")


def _verdict(node: fx.Node, target: Target, force_cpu: tuple[str, ...], dynamic: set[fx.Node]):
    if _matches(node, force_cpu):
        return Reason.FORCED, "listed in force_cpu"
    if node in dynamic:
        return Reason.DYNAMIC, "output shape depends on tensor values; fixed-shape engines cannot hold it"
    if node.target is operator.getitem:
        return None, ""  # follows its producer (see check_support)
    bad = sorted(str(d).replace("torch.", "") for d in _dtypes(node) - target.dtypes)
    if bad:
        return Reason.DTYPE, f"{', '.join(bad)} not supported by {target.name}"
    why = target.supports(node)
    if why:
        return Reason.NO_LOWERING, why
    return None, ""


def check_support(captured: Captured, target: Target, force_cpu: Iterable[str] = ()) -> SupportTable:
    force_cpu = tuple(force_cpu)
    gm = captured.graph_module
    dynamic = set(data_dependent_nodes(gm))
    infos: dict[fx.Node, NodeInfo] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        reason, detail = _verdict(node, target, force_cpu, dynamic)
        if node.target is operator.getitem and reason is None:
            producer = infos.get(node.args[0])  # a tuple's element goes where the tuple is made
            if producer is not None and not producer.supported:
                reason, detail = producer.reason, producer.detail
        infos[node] = NodeInfo(
            name=node.name,
            op=op_name(node),
            supported=reason is None,
            reason=reason,
            detail=detail,
            flops=node_flops(node),
            out_bytes=node_bytes(node),
            compute=is_compute(node),
            source=node_source(node),
            origin=node_origin(node),
        )
    return SupportTable(target.name, tuple(infos.values()))
