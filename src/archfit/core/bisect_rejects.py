"""A partition the backend fails to compile does not sink the model: find the nodes it rejects by
bisection (compile each half of the partition alone, recurse into the halves that fail), so that
only those run on the CPU and the rest compiles. Never silent: the caller names every node found."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx

from ..errors import first_line
from ..targets.base import Target
from .cost import is_compute


@dataclass(frozen=True)
class Rejected:
    """A node the backend cannot compile, with the backend's own first line."""

    name: str
    error: str


def _values(sub: fx.GraphModule, args: Sequence[torch.Tensor]) -> dict[fx.Node, object]:
    """Every node's value when the partition runs on `args` (the slices' example inputs)."""
    env: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            env[n] = super().run_node(n)
            return env[n]

    with torch.no_grad():
        Recorder(sub).run(*args)
    return env


def _slice(sub: fx.GraphModule, nodes: list[fx.Node], env: dict) -> tuple[fx.GraphModule, tuple]:
    """The nodes (contiguous in graph order) as a graph of their own: values made before them
    come in as inputs, weights stay attributes, values used after them go out."""
    members = set(nodes)
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    inputs: list = []
    for node in nodes:
        for p in node.all_input_nodes:
            if p in members or p in mapping:
                continue
            if p.op == "get_attr":
                mapping[p] = graph.get_attr(p.target)
            else:
                mapping[p] = graph.placeholder(p.name)
                inputs.append(env[p])
            mapping[p].meta = dict(p.meta)
        mapping[node] = graph.node_copy(node, lambda n: mapping[n])
    outs = [mapping[n] for n in nodes if any(u not in members for u in n.users)]
    graph.output(tuple(outs))
    return fx.GraphModule(sub, graph), tuple(inputs)


def rejected_nodes(target: Target, sub: fx.GraphModule, args: Sequence[torch.Tensor], precision: str,
                   max_compiles: int = 64) -> list[Rejected]:
    """The compute nodes of `sub` that fail to compile alone, found by bisection over the graph's
    order (a contiguous slice is a valid graph); empty when every half compiles, i.e. the failure
    comes from a combination the halves do not show (the caller then reports the partition)."""
    env = _values(sub, args)
    body = [n for n in sub.graph.nodes if n.op == "call_function"]
    budget = [max_compiles]
    found: list[Rejected] = []

    def compiles(nodes: list[fx.Node]) -> str | None:
        budget[0] -= 1
        gm, inputs = _slice(sub, nodes, env)
        try:
            target.compile(gm, inputs, precision)
        except Exception as e:  # noqa: BLE001 - the backend's failure is the answer sought
            return f"{type(e).__name__}: {first_line(e, 200)}"
        return None

    def visit(nodes: list[fx.Node], error: str) -> None:
        if len(nodes) == 1 or budget[0] <= 0:
            # one node is the answer; out of budget, the slice's compute nodes are blamed
            blamed = nodes if len(nodes) == 1 else [n for n in nodes if is_compute(n)] or nodes
            found.extend(Rejected(n.name, error) for n in blamed)
            return
        mid = len(nodes) // 2
        for half in (nodes[:mid], nodes[mid:]):
            why = compiles(half)
            if why is not None:
                visit(half, why)

    first = compiles(body)
    if first is not None:
        visit(body, first)
    return found
