"""PyTorch's threads beside the engines' while a compiled graph runs.

Measured (DistilBERT-base, one add forced to the CPU mid-graph, OpenVINO, 2 cores): the model
ran 12-17% slower than fully compiled, and 1% slower when PyTorch ran that add on one thread.
PyTorch's OpenMP workers spin-wait for a while after each parallel op, so the engine that runs
next shares its cores with spinning threads. When the host only glues engines together (views,
elementwise ops, no matmul or convolution), one PyTorch thread costs nothing and frees the cores;
a host that does heavy arithmetic keeps its threads."""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch

aten = torch.ops.aten
_HEAVY = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.matmul, aten.linear, aten.convolution,
          aten._convolution, aten.conv1d, aten.conv2d, aten.conv3d, aten.conv_transpose1d, aten.conv_transpose2d,
          aten.conv_transpose3d, aten.scaled_dot_product_attention, aten.einsum, aten.embedding_bag,
          aten._embedding_bag}


def light_host(gm: torch.nn.Module) -> bool:
    """Does this graph (traced or loaded) call engines and leave no heavy arithmetic to PyTorch?"""
    from .compile import EngineModule

    if not any(isinstance(m, EngineModule) for m in gm.modules()):
        return False
    return not any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                   and n.target.overloadpacket in _HEAVY for n in gm.graph.nodes)


_lock = threading.Lock()
_inside = 0
_saved = 1


@contextmanager
def _one_thread():
    # torch's thread count is process-wide: the first caller in sets it, the last one out
    # restores it, so concurrent calls (a server's streams) never leave it at 1
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                torch.set_num_threads(_saved)


def host_threads(light: bool):
    """Run the host part of a graph on one PyTorch thread when it is light (see light_host)."""
    return _one_thread() if light else nullcontext()
