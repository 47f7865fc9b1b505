"""PyTorch's threads beside the engines' while a compiled graph runs.

Measured (DistilBERT-base, one add forced to the CPU mid-graph, OpenVINO, 2 cores): the model
ran 12-19% slower than fully compiled, and 1-2% slower when PyTorch ran that add on one thread.
PyTorch's OpenMP workers spin-wait for a while after each parallel op, so the engine that runs
next shares its cores with spinning threads. But on DLRM (2.6 ms a call) the spinning workers
helped (one thread: +7.5%, all threads: -3.3%), so where it matters it is measured: when the host
only glues engines together (views, elementwise ops; a host doing heavy arithmetic keeps its
threads), compile_plan times the graph both ways and the compiled module keeps the choice
(CompiledModule.one_thread), as saved files do. A near-tie goes to one thread (_KEEP_THREADS_MARGIN)."""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch

from .engines import engines_in
from .timing import fastest

aten = torch.ops.aten
_HEAVY = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.matmul, aten.linear, aten.convolution,
          aten._convolution, aten.conv1d, aten.conv2d, aten.conv3d, aten.conv_transpose1d, aten.conv_transpose2d,
          aten.conv_transpose3d, aten.scaled_dot_product_attention, aten.einsum, aten.embedding_bag,
          aten._embedding_bag,
          # recurrent layers are matmuls in a loop: a host holding a GRU (a text classifier whose
          # embedding and head fit the target) ran 2x slower than eager when timing noise gave it one thread
          aten.gru, aten.lstm, aten.rnn_tanh, aten.rnn_relu, aten.gru_cell, aten.lstm_cell, aten.rnn_tanh_cell,
          aten.rnn_relu_cell}


def light_host(gm: torch.nn.Module) -> bool:
    """Does this graph (traced or loaded) call engines and leave no heavy arithmetic to PyTorch?"""
    if not engines_in(gm):
        return False
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    return bool(ops) and not any(op.overloadpacket in _HEAVY for op in ops)  # host ops, none of them heavy


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


def host_threads(one: bool):
    """Run the host part of a graph on one PyTorch thread (or leave PyTorch's threads alone)."""
    return _one_thread() if one else nullcontext()


# PyTorch's threads must win by this much to be kept: one thread is the common winner by a wide
# margin (DistilBERT, one op forced: +1% against +17%), the reverse case wins by ~10% (DLRM), and
# a near-tie decided by noise went the wrong way in a peers run (+23% instead of +1%).
_KEEP_THREADS_MARGIN = 0.03
_MIN_CALLS = 5  # per candidate and round: a 30 ms model gave 2 calls in a 0.1 s burst


def choose_host_threads(gm: torch.nn.Module, inputs, seconds: float = 0.3) -> bool | None:
    """Time a light host both ways, interleaved: True (one thread) unless PyTorch's threads
    measure clearly faster (_KEEP_THREADS_MARGIN); None for a host that is not light (not measured)."""
    if not light_host(gm):
        return None

    def run(one: bool):
        def call():
            with torch.no_grad(), host_threads(one):
                gm(*inputs)
        return call

    return fastest({True: run(True), False: run(False)}, seconds, keep=True, margin=_KEEP_THREADS_MARGIN,
                   min_calls=_MIN_CALLS).best
