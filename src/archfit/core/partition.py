"""Stage 3: group supported nodes into as few target partitions as possible, never a cycle.

Why not torch.fx's CapabilityBasedPartitioner: it merges greedily and can leave more
partitions than needed. Here every supported node gets a level: the largest number of
host-node "gaps" on any path from the inputs to it. All supported nodes of one level form
one partition. Along any path levels never decrease and rise after each host node, so a
partition can never reach itself through the host (no cycle), and the partition count equals
the longest chain of target-host-target alternations, which no valid split can beat.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..errors import UnsupportedOpsError
from .support import NodeInfo, Reason, SupportTable

_SOURCES = ("placeholder", "get_attr")


@dataclass(frozen=True)
class Boundary:
    """One tensor crossing between the host and a partition."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class Partition:
    index: int
    nodes: tuple[str, ...]  # fx node names, in graph order
    compute_ops: int
    flops: int
    inputs: tuple[Boundary, ...]
    outputs: tuple[Boundary, ...]

    @property
    def boundary_bytes(self) -> int:
        return sum(b.nbytes for b in self.inputs + self.outputs)


@dataclass(frozen=True)
class PartitionPlan:
    target: str
    partitions: tuple[Partition, ...]
    table: SupportTable  # final verdicts, including what the partitioner dropped
    min_size: int

    @property
    def fallback(self) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.table.nodes if not n.supported)


def _levels(gm: fx.GraphModule, supported: set[str]) -> dict[fx.Node, int]:
    level: dict[fx.Node, int] = {}  # supported node -> partition level
    gap: dict[fx.Node, int] = {}  # host node -> lowest level a supported successor may take
    for node in gm.graph.nodes:
        if node.op in _SOURCES:
            gap[node] = 0
            continue
        if node.op != "call_function":
            continue
        on_target = node.name in supported
        need = 0
        for p in node.all_input_nodes:
            if p in level:
                need = max(need, level[p] if on_target else level[p] + 1)
            else:
                need = max(need, gap.get(p, 0))
        (level if on_target else gap)[node] = need
    # Sink nodes feeding only target nodes (e.g. arange, constant masks) to the level of their
    # first user, so they do not start an extra partition or cross a boundary for nothing.
    for node in reversed(gm.graph.nodes):
        if node in level and node.users and all(u in level for u in node.users):
            level[node] = max(level[node], min(level[u] for u in node.users))
    return level


def _boundary(node: fx.Node) -> Boundary:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        shape = tuple(int(d) if not isinstance(d, torch.SymInt) else -1 for d in val.shape)
        nbytes = max(0, val.numel() if all(d >= 0 for d in shape) else 0) * val.dtype.itemsize
        return Boundary(node.name, shape, str(val.dtype).replace("torch.", ""), int(nbytes))
    return Boundary(node.name, (), type(val).__name__, 0)


def _groups(gm: fx.GraphModule, supported: set[str]) -> list[list[fx.Node]]:
    level = _levels(gm, supported)
    by_level: dict[int, list[fx.Node]] = {}
    for node in gm.graph.nodes:  # graph order keeps each group topologically sorted
        if node in level:
            by_level.setdefault(level[node], []).append(node)
    return [by_level[k] for k in sorted(by_level)]


def _make_partition(index: int, nodes: list[fx.Node], info: dict[str, NodeInfo]) -> Partition:
    members = set(nodes)
    inputs: dict[fx.Node, None] = {}
    outputs: dict[fx.Node, None] = {}
    for n in nodes:
        for p in n.all_input_nodes:
            if p not in members and p.op != "get_attr":  # weights move into the partition
                inputs[p] = None
        if any(u not in members for u in n.users):
            outputs[n] = None
    return Partition(
        index=index,
        nodes=tuple(n.name for n in nodes),
        compute_ops=sum(info[n.name].compute for n in nodes),
        flops=sum(info[n.name].flops for n in nodes),
        inputs=tuple(_boundary(p) for p in inputs),
        outputs=tuple(_boundary(n) for n in outputs),
    )


def plan_partitions(gm: fx.GraphModule, table: SupportTable, min_size: int = 2) -> PartitionPlan:
    """Partitions with fewer than `min_size` compute ops go back to the host (Neuron's
    minimum_segment_size, default 2 there too): one op is rarely worth a device round trip."""
    supported = {n.name for n in table.nodes if n.supported}
    while True:
        info = table.by_name()
        groups = _groups(gm, supported)
        small = [g for g in groups if sum(info[n.name].compute for n in g) < min_size]
        if not small:
            break
        for g in small:
            names = [n.name for n in g]
            k = sum(info[n].compute for n in names)
            table = table.with_reason(names, Reason.TOO_SMALL, f"{k} compute op(s), minimum partition size is {min_size}")
            supported -= set(names)
    info = table.by_name()
    parts = tuple(_make_partition(i, g, info) for i, g in enumerate(groups))
    return PartitionPlan(table.target, parts, table, min_size)


def drop_partitions(gm: fx.GraphModule, plan: PartitionPlan, indices: dict[int, str], reason: Reason) -> PartitionPlan:
    """Move whole partitions back to the host (e.g. they do not pay off), then re-plan."""
    table = plan.table
    for i, detail in indices.items():
        table = table.with_reason(plan.partitions[i].nodes, reason, detail)
    return plan_partitions(gm, table, plan.min_size)


def require_full(plan: PartitionPlan) -> None:
    if not plan.fallback:
        return
    listed = "; ".join(
        f"{n.name} ({n.op}, {n.reason.value}{' at ' + n.source if n.source else ''})" for n in plan.fallback
    )
    raise UnsupportedOpsError(
        f"require_full=True but {len(plan.fallback)} node(s) would run on the CPU instead of "
        f"{plan.target}: {listed}; drop require_full to allow CPU fallback"
    )


def partition_of(plan: PartitionPlan) -> dict[str, int]:
    return {name: p.index for p in plan.partitions for name in p.nodes}


def is_acyclic(gm: fx.GraphModule, plan: PartitionPlan) -> bool:
    """True when collapsing each partition to one vertex leaves the graph a DAG."""
    where = partition_of(plan)

    def key(n: fx.Node):
        return ("p", where[n.name]) if n.name in where else ("n", n.name)

    edges: dict[tuple, set[tuple]] = {}
    for n in gm.graph.nodes:
        for u in n.users:
            a, b = key(n), key(u)
            if a != b:
                edges.setdefault(a, set()).add(b)
    state: dict[tuple, int] = {}  # 1 = on stack, 2 = done

    def visit(v) -> bool:
        stack = [(v, iter(edges.get(v, ())))]
        state[v] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return False
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(edges.get(nxt, ()))))
        return True

    return all(visit(v) for v in list(edges) if v not in state)
