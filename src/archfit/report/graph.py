"""The graph behind the HTML page: every node of a captured graph with where it runs, the module
it came from and the tensors that cross between the host and a partition (with their bytes)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import fx

from ..core.cost import node_bytes
from ..core.partition import PartitionPlan, partition_of
from ..ops import op_name

HOST = -1  # runs in PyTorch on the CPU
IO = -2  # the model's inputs and outputs (on the host, but not computed there)


@dataclass(frozen=True)
class GraphNode:
    name: str  # fx node name
    op: str  # 'aten.linear'; 'input' and 'output' for the model's own
    module: tuple[tuple[str, str], ...]  # (path, class) of each enclosing module, outermost first
    place: int  # partition index, HOST or IO
    flops: int
    shape: str  # '[1, 128, 768] float32'
    inputs: tuple[int, ...]  # indices of the nodes it reads (weights left out)
    source: str | None  # user's 'file:line (code)'
    reason: str | None  # why it runs on the CPU
    detail: str


@dataclass(frozen=True)
class Crossing:
    """One tensor moving between places: produced by node `src`, read in `dst_place` (once,
    however many nodes there read it)."""

    src: int
    dst_place: int
    nbytes: int


@dataclass(frozen=True)
class GraphView:
    nodes: tuple[GraphNode, ...]
    crossings: tuple[Crossing, ...]

    def to_dict(self) -> dict:
        """Compact: one list per node, module paths interned (BERT-base stays ~100 KB)."""
        paths: dict[tuple[str, str], int] = {}
        nodes = []
        for n in self.nodes:
            chain = [paths.setdefault(m, len(paths)) for m in n.module]
            nodes.append([n.name, n.op, chain, n.place, n.flops, n.shape, list(n.inputs), n.source or "",
                          n.reason or "", n.detail])
        return {"modules": [list(m) for m in paths], "nodes": nodes,
                "crossings": [[c.src, c.dst_place, c.nbytes] for c in self.crossings]}


_INDEX = re.compile(r"\[(\d+)\]")
_KEY = re.compile(r"\[['\"]([^'\"]+)['\"]\]")


def _path(raw: str) -> str:
    """'L['self'].encoder.layer[0]' or 'encoder.layer.0' -> 'encoder.layer.0'."""
    raw = raw.replace("L['self']", "").replace("L__self__", "")
    raw = _KEY.sub(r".\1", _INDEX.sub(r".\1", raw))
    return raw.strip(".")


def _module_chain(node: fx.Node) -> tuple[tuple[str, str], ...]:
    stack = node.meta.get("nn_module_stack") or {}
    chain = []
    for value in stack.values():
        path, kind = value if isinstance(value, tuple) else (str(value), "")
        kind = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1].rstrip("'>")
        path = _path(str(path))
        if path:  # the root module is the page itself
            chain.append((path, kind))
    return tuple(chain)


def _shape(val) -> str:
    if isinstance(val, torch.Tensor):  # a data-dependent size shows as its symbol ('u0')
        dims = ", ".join(str(d) for d in val.shape)
        return f"[{dims}] {str(val.dtype).replace('torch.', '')}"
    if isinstance(val, (tuple, list)):
        return ", ".join(_shape(v) for v in val[:3]) + (", ..." if len(val) > 3 else "")
    return type(val).__name__ if val is not None else ""


def graph_view(gm: fx.GraphModule, plan: PartitionPlan) -> GraphView:
    where = partition_of(plan)
    info = plan.table.by_name()
    index: dict[fx.Node, int] = {}
    nodes: list[GraphNode] = []
    crossings: dict[tuple[int, int], Crossing] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        reads = [p for p in node.all_input_nodes if p in index]
        if node.op == "output":
            place, op, ni = IO, "output", None
            reads = list(dict.fromkeys(reads))
        elif node.op == "placeholder":
            place, op, ni = IO, "input", None
        else:
            ni = info.get(node.name)
            place = where.get(node.name, HOST)
            op = ni.op if ni is not None else op_name(node)
        i = len(nodes)
        index[node] = i
        for p in reads:
            src_place = nodes[index[p]].place
            if src_place != place and not (src_place in (HOST, IO) and place in (HOST, IO)):
                key = (index[p], HOST if place == IO else place)
                crossings.setdefault(key, Crossing(key[0], key[1], node_bytes(p)))
        nodes.append(GraphNode(
            name=node.name, op=op, module=_module_chain(node), place=place,
            flops=ni.flops if ni is not None else 0, shape=_shape(node.meta.get("val")),
            inputs=tuple(index[p] for p in reads), source=ni.source if ni is not None else None,
            reason=ni.reason.value if ni is not None and ni.reason is not None else None,
            detail=ni.detail if ni is not None else "",
        ))
    return GraphView(tuple(nodes), tuple(crossings.values()))
