"""Partitioner: as few partitions as possible, never a cycle, small ones back to the host."""
import random

import pytest
import torch
from torch import fx

from archfit.core.partition import is_acyclic, plan_partitions, require_full
from archfit.errors import UnsupportedOpsError
from archfit.core.support import NodeInfo, Reason, SupportTable

aten = torch.ops.aten


def _random_graph(rng: random.Random, n_nodes: int, p_supported: float):
    """A random DAG of aten.add nodes; each supported with probability p_supported."""
    g = fx.Graph()
    values = [g.placeholder(f"x{i}") for i in range(2)]
    supported = set()
    for i in range(n_nodes):
        a, b = rng.sample(values, 2) if len(values) > 1 else (values[0], values[0])
        node = g.call_function(aten.add.Tensor, (a, b))
        values.append(node)
        if rng.random() < p_supported:
            supported.add(node.name)
    sinks = [v for v in values if not v.users and v.op == "call_function"]
    g.output(tuple(sinks) if sinks else values[-1])
    return fx.GraphModule(torch.nn.Module(), g), supported


def _table(gm, supported):
    nodes = tuple(
        NodeInfo(n.name, "aten.add", n.name in supported, None if n.name in supported else Reason.NO_LOWERING,
                 "", 1, 4, True, None)
        for n in gm.graph.nodes if n.op == "call_function"
    )
    return SupportTable("test", nodes)


def _lower_bound(gm, supported) -> int:
    """Max number of supported runs separated by host nodes along any path (brute-force DP over
    the DAG): every valid split needs at least this many partitions."""
    best: dict[fx.Node, tuple[int, bool]] = {}  # node -> (runs so far, currently inside a run)
    answer = 0
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        preds = [best[p] for p in n.all_input_nodes if p in best] or [(0, False)]
        on = n.name in supported
        # choose the predecessor path that maximises runs once this node is added
        runs = max(r + (1 if on and not inside else 0) for r, inside in preds)
        best[n] = (runs, on)
        answer = max(answer, runs)
    return answer


@pytest.mark.parametrize("seed", range(60))
def test_random_graphs_are_acyclic_and_minimal(seed):
    rng = random.Random(seed)
    gm, supported = _random_graph(rng, rng.randint(5, 40), rng.choice([0.3, 0.6, 0.9]))
    plan = plan_partitions(gm, _table(gm, supported), min_size=1)
    assert is_acyclic(gm, plan)
    assert len(plan.partitions) == _lower_bound(gm, supported)
    assert {name for p in plan.partitions for name in p.nodes} == supported


def test_is_acyclic_detects_a_cycle():
    """The checker itself must be able to fail: a-host-b grouped as one partition is a cycle."""
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(aten.relu.default, (x,))
    h = g.call_function(aten.neg.default, (a,))
    b = g.call_function(aten.add.Tensor, (h, a))
    g.output(b)
    gm = fx.GraphModule(torch.nn.Module(), g)
    plan = plan_partitions(gm, _table(gm, {a.name, b.name}), min_size=1)
    assert len(plan.partitions) == 2 and is_acyclic(gm, plan)
    from dataclasses import replace
    merged = replace(plan.partitions[0], nodes=(a.name, b.name))
    assert not is_acyclic(gm, replace(plan, partitions=(merged,)))


def test_small_partitions_go_back_to_host_with_reason():
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(aten.relu.default, (x,))  # alone between host nodes: too small
    h = g.call_function(aten.neg.default, (a,))
    b = g.call_function(aten.add.Tensor, (h, h))
    c = g.call_function(aten.mul.Tensor, (b, b))
    g.output(c)
    gm = fx.GraphModule(torch.nn.Module(), g)
    plan = plan_partitions(gm, _table(gm, {a.name, b.name, c.name}), min_size=2)
    assert [p.nodes for p in plan.partitions] == [(b.name, c.name)]
    dropped = plan.table.by_name()[a.name]
    assert dropped.reason is Reason.TOO_SMALL and "minimum partition size is 2" in dropped.detail
    with pytest.raises(UnsupportedOpsError, match=rf"{a.name} \(aten.add, partition too small\).*{h.name}"):
        require_full(plan)
