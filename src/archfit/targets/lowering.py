"""Graph edits made to a partition's program just before a backend converts it: the same values,
in forms the backend runs faster. Each target names the edits it takes (measured per backend:
an edit that helps one converter can slow another).

The graph is edited in place rather than re-traced (run_decompositions with a one-entry table did
the same in one more trace of the whole program). New nodes get their values (meta["val"])
computed on the program's fake tensors, as a trace would, since converters read them. The
signature and dynamic dims are kept, so fixed-shape and dynamic compiles share these edits."""
from __future__ import annotations

import math
import operator
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import fx
from torch.utils import _pytree as pytree

aten = torch.ops.aten
Program = torch.export.ExportedProgram | fx.GraphModule
Rewrite = Callable[[Program, fx.Node], bool]  # edits ep.graph (and an ExportedProgram's state)


def lower(ep: Program, rewrites: Sequence[tuple[object, Rewrite]]) -> Program:
    """ep (a program, or a graph module where no rewrite needs a program's state) with each
    (op, rewrite) applied to every node calling op, in the order given."""
    module = ep.graph_module if isinstance(ep, torch.export.ExportedProgram) else ep
    edited = False
    for op, rewrite in rewrites:
        for node in [n for n in module.graph.nodes if n.op == "call_function" and n.target is op]:
            edited |= rewrite(ep, node)
    if edited:
        module.recompile()
    return ep


@lru_cache(maxsize=1)
def avx512() -> bool:
    """Does this CPU run the backends' AVX-512 kernels? The linear edits below were measured on such
    CPUs only; on an AVX2-only CPU the backends' kernels differ, and each target then hands its
    programs over as the model writes them (openvino.linear_edits, onnxruntime.linear_edits)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def _call(graph: fx.Graph, op, args: tuple) -> fx.Node:
    """A new node calling op, with the value a trace would give it (when its inputs have theirs)."""
    node = graph.call_function(op, args)
    inputs = [a.meta.get("val") for a in node.all_input_nodes]  # a split's value is a list of them
    mode = next((v.fake_mode for v in pytree.tree_leaves(inputs) if hasattr(v, "fake_mode")), None)
    if mode is not None and all(v is not None for v in inputs):
        with mode:
            node.meta["val"] = op(*fx.node.map_arg(args, lambda a: a.meta["val"]))
    return node


def _replace(graph: fx.Graph, node: fx.Node, new: fx.Node) -> bool:
    new.meta = dict(node.meta)  # the old node's value and source line hold for its replacement
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def stack_as_concat(ep: Program, node: fx.Node) -> bool:
    """aten.stack written as cat of unsqueezed inputs (the same values); an input that is an
    embedding lookup of one column of an id tensor, stacked along that column's dim, looks up the
    column split off instead (`emb(ids[:, i]).unsqueeze(1)` == `emb(ids.split(1, 1)[i])`).

    Why, OpenVINO: its converter lowers aten.stack to concat + reshape, and that form matches its CPU
    plugin's DLRM "Interaction" fusion (concat -> reshape -> matmul(x, x^T) -> gather), a kernel
    that ran DLRM's feature interaction 3.5x slower in bf16 (0.28 vs 0.08 ms a call) and 1.5x in
    fp32 than the MatMul + Gather it replaces (benchmarks/dlrm_profile.py, AMD EPYC).
    Why the lookups, both backends: DLRM's 26 lookups otherwise reach them as one Split, 26 Squeeze,
    26 Gather and 26 Unsqueeze; a node costs a sub-millisecond model a dispatch each, and the
    squeeze/unsqueeze pairs cancel. Full DLRM fp32, batch 128, AMD EPYC, ad hoc A/B over 12
    interleaved rounds: 0.97x the time a call on both backends (paired median of the rounds)."""
    graph = ep.graph
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    splits: dict[tuple[fx.Node, int], fx.Node] = {}
    with graph.inserting_before(node):
        parts = [_lookup_keeping_dim(graph, t, dim, splits) or _call(graph, aten.unsqueeze.default, (t, dim))
                 for t in tensors]
        cat = _call(graph, aten.cat.default, (parts, dim))
    _replace(graph, node, cat)
    for t in dict.fromkeys(tensors):  # lookups now read their split column: the old lookup and select go
        if isinstance(t, fx.Node) and not t.users and t.target is aten.embedding.default:
            select = t.args[1]
            graph.erase_node(t)
            if not select.users:
                graph.erase_node(select)
    return True


def _lookup_keeping_dim(graph: fx.Graph, t, dim: int, splits: dict) -> fx.Node | None:
    """embedding(W, ids.split(1, d)[i]) for t = embedding(W, ids.select(d, i)) stacked along d,
    else None. Both have ids' dims with size 1 at d, then the embedding dim."""
    if not (isinstance(t, fx.Node) and t.target is aten.embedding.default and len(t.users) == 1):
        return None
    select = t.args[1]
    if not (isinstance(select, fx.Node) and select.target is aten.select.int):
        return None
    ids, d, i = select.args
    val = ids.meta.get("val") if isinstance(ids, fx.Node) else None
    if val is None or d % val.dim() != dim % (val.dim() + 1) or not isinstance(val.shape[d], int):
        return None
    d = d % val.dim()
    if (ids, d) not in splits:
        splits[ids, d] = _call(graph, aten.split_with_sizes.default, (ids, [1] * val.shape[d], d))
    column = _call(graph, operator.getitem, (splits[ids, d], i % val.shape[d]))
    return _call(graph, aten.embedding.default, (t.args[0], column, *t.args[2:]))


def index_as_gather(ep: Program, node: fx.Node) -> bool:
    """x[:, i, j] (1-D index tensors of one length on consecutive dims d..d+k-1, k >= 2) written as
    x.flatten(d, d+k-1).index_select(d, i * size_j + j): the same values.

    Why: OpenVINO lowers indexing on several dims as Transpose (those dims first) + GatherND +
    Transpose back; DLRM's pairwise-interaction pick `z[:, li, lj]` spent 0.107 ms of its 0.54 ms
    of layers in that first Transpose at batch 128 (fp32, AMD EPYC; ad hoc per-layer profile). A
    flatten is a free reshape and the pick one Gather. Other index forms are left as they are.
    Not taken by ONNX Runtime: there the same rewrite made a DLRM call slower (0.54 vs 0.45 ms, ad hoc)."""
    graph = ep.graph
    x, indices = node.args
    where = [k for k, t in enumerate(indices) if t is not None]
    if (len(where) < 2 or where != list(range(where[0], where[-1] + 1)) or x.meta.get("val") is None
            or not all(isinstance(indices[k], fx.Node) for k in where)):
        return False
    shape = tuple(x.meta["val"].shape)
    vals = [indices[k].meta.get("val") for k in where]
    if (any(v is None or v.dim() != 1 or v.dtype not in (torch.int64, torch.int32) for v in vals)
            or len({v.shape[0] for v in vals}) != 1 or not all(isinstance(shape[k], int) for k in where)):
        return False
    d = where[0]
    with graph.inserting_before(node):
        flat = _call(graph, aten.flatten.using_ints, (x, d, where[-1]))
        linear = None
        for k in where:  # row-major position in the flattened dims; negative indices count from the end
            i = _call(graph, aten.remainder.Scalar, (indices[k], shape[k]))
            linear = i if linear is None else _call(
                graph, aten.add.Tensor, (_call(graph, aten.mul.Tensor, (linear, shape[k])), i))
        picked = _call(graph, aten.index_select.default, (flat, d, linear))
    return _replace(graph, node, picked)


# OpenVINO's CPU plugin runs an fp32 FullyConnected with nothing fused into it on MLAS's GEMM, and one
# with a post-op (an activation, a clamp) on oneDNN's brgemm. Which is faster depends on the rows
# (AMD EPYC, 2 threads, interleaved, ad hoc): at a few rows against large weights, a read of the
# weights from memory, MLAS (4096x4096: 37% faster at 1 row, 22% at 4, 11% at 8, 11% slower at 16;
# 25088x4096: 24% at 1, 16% at 8; 1024x1024: 7% faster at 2 rows, 8% slower at 8, cache-resident);
# at BERT's 128 rows oneDNN (3072->768 30% faster, 768x768 6%, 768->3072 3%). So these two
# edits hand OpenVINO the form that gets the faster kernel. bf16 runs on oneDNN either way (measured:
# the same kernel with or without them). Measured on CPUs with AVX-512, and taken there only
# (openvino.linear_edits).
GEMV_ROWS = 8
GEMV_WEIGHTS = 4 << 20  # elements: 16 MB of fp32, past this CPU's caches
# what OpenVINO fuses into a FullyConnected: a linear followed by one of these is on oneDNN already
_FUSED = {aten.relu.default, aten.gelu.default, aten.sigmoid.default, aten.tanh.default, aten.silu.default,
          aten.hardswish.default, aten.hardtanh.default, aten.elu.default, aten.clamp.default,
          aten.clamp_min.default}


def _rows_and_weights(linear: fx.Node) -> tuple[int, int] | None:
    """(rows of x, elements of the weights) of an fp32 aten.linear with fixed in features and
    weights, else None. Where the rows vary (a program compiled for a range of sizes), the most
    rows the program takes: the kernel is chosen once for every size, and a range's calls are
    mostly near its top (padded lengths, batches filled under load)."""
    x, w = (a.meta.get("val") if isinstance(a, fx.Node) else None for a in linear.args[:2])
    if (x is None or w is None or x.dtype != torch.float32 or not isinstance(x.shape[-1], int)
            or not all(isinstance(d, int) for d in w.shape)):
        return None
    rows = math.prod(x.shape[:-1])
    if isinstance(rows, torch.SymInt):
        most = rows.node.shape_env.bound_sympy(rows.node.expr).upper
        if not most.is_finite:
            return None
        rows = int(most)
    return rows, w.numel()


def gemv_relu_apart(ep: Program, node: fx.Node) -> bool:
    """relu(linear(x)), x of at most GEMV_ROWS rows and the weights past GEMV_WEIGHTS elements,
    written as clamp_min(linear(x), 0): the same values. OpenVINO does not fuse that Maximum, so
    the FullyConnected runs on MLAS (above): VGG16's classifier, 123M weights at batch 1, took the
    whole model to 0.95x the time (ad hoc, AMD EPYC, 6 interleaved rounds; BENCHMARKS.md has the
    peers run)."""
    graph = ep.graph
    linear = node.args[0]
    if not (isinstance(linear, fx.Node) and linear.target is aten.linear.default and len(linear.users) == 1):
        return False
    shape = _rows_and_weights(linear)
    if shape is None or shape[0] > GEMV_ROWS or shape[1] < GEMV_WEIGHTS:
        return False
    with graph.inserting_before(node):
        apart = _call(graph, aten.clamp_min.default, (linear, 0.0))
    return _replace(graph, node, apart)


def gemm_clamped(ep: Program, node: fx.Node) -> bool:
    """linear(x), x of more than GEMV_ROWS rows and no activation after it, written as
    clamp(linear(x), -m, m) for m float32's largest value: the same values, except that an
    overflow to +-inf reads +-m. OpenVINO fuses the Clamp, so the FullyConnected runs on oneDNN
    (above) and the Clamp costs no pass of its own."""
    graph = ep.graph
    shape = _rows_and_weights(node)
    if shape is None or shape[0] <= GEMV_ROWS or any(u.target in _FUSED for u in node.users):
        return False
    m = torch.finfo(torch.float32).max
    with graph.inserting_after(node):
        clamped = _call(graph, aten.clamp.default, (node, -m, m))
    node.replace_all_uses_with(clamped, delete_user_cb=lambda user: user is not clamped)
    return True


# ONNX Runtime's fp32 GEMM (MLAS, AVX-512 kernel) multiplies 12 rows of x at a time, read straight
# from x at its row stride (it packs only the weights). When a row spans a multiple of 4 KiB (in
# features a multiple of 1024), those 12 rows fall in one set of the L1 cache, which holds 8 ways on
# this CPU, and evict one another at every step. 16 zeros more per row put them in different sets
# (AMD EPYC, 2 threads, ad hoc, 8 interleaved rounds, a Pad op included: 128 x 3072 -> 768, BERT's
# second feed-forward linear, 0.72x the time; 1024 -> 1024 0.73-0.92x from 12 to 512 rows; 768
# in features, not a multiple, 0.72x the speed padded, so only multiples are padded). The Pad is a
# pass over x, a larger share of a linear with few outputs: at 512 outputs the whole measured
# 0.81-1.08x across runs, so only linears of MIN_OUT outputs or more are padded.
ALIASED_ROW_BYTES = 4096
K_PAD = 16
MLAS_ROWS = 12
MIN_OUT = 768


def linear_rows_unaliased(ep: torch.export.ExportedProgram, node: fx.Node) -> bool:
    """linear(x, w, b), x of at least MLAS_ROWS rows whose in features span a multiple of
    ALIASED_ROW_BYTES and w a weight of the program of MIN_OUT outputs or more, read by this linear
    alone, written as linear(pad(x, K_PAD), w', b) with w' = w padded by K_PAD zero columns in the
    program's state:
    the same values (zeros on both sides of the dot products). w is padded in the state, not by an
    op: ONNX Runtime would pad it on every call (it did not fold that Pad), and its weights would
    no longer be constants packed once."""
    shape = _rows_and_weights(node)
    if shape is None or shape[0] < MLAS_ROWS:
        return False
    x, w = node.args[:2]
    k = x.meta["val"].shape[-1]
    if ((k * x.meta["val"].element_size()) % ALIASED_ROW_BYTES or w.op != "placeholder" or len(w.users) != 1
            or w.meta["val"].shape[0] < MIN_OUT):
        return False
    spec = next((s for s in ep.graph_signature.input_specs if s.arg.name == w.name), None)
    store = next((d for d in (ep.state_dict, ep.constants) if spec is not None and spec.target in d), None)
    if store is None:  # a user input, not a weight of the program
        return False
    old = store[spec.target]
    padded = torch.nn.functional.pad(old.detach(), (0, K_PAD))
    store[spec.target] = torch.nn.Parameter(padded, requires_grad=False) if isinstance(old, torch.nn.Parameter) else padded
    with w.meta["val"].fake_mode:
        w.meta["val"] = torch.empty(padded.shape, dtype=padded.dtype)
    with ep.graph.inserting_before(node):
        node.args = (_call(ep.graph, aten.constant_pad_nd.default, (x, [0, K_PAD])), *node.args[1:])
    return True


def fold_batch_norms(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` with each inference batch norm that alone reads a conv2d's output folded into
    that convolution's weights and bias (the same values up to rounding), as PTQ prepares a model.
    Why, for int8 on OpenVINO: its converter folds them itself and names the folded convolution
    after the batch norm's multiply ('Multiply_13474'), where a quantizer told to keep 'conv2d_5'
    in float looks for it by name; folded here, the convolution keeps its own."""
    import copy
    import functools

    out = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    graph, made = out.graph, 0
    fetch = lambda node: functools.reduce(getattr, node.target.split("."), out).detach()  # noqa: E731
    for bn in [n for n in graph.nodes if n.op == "call_function"
               and n.target is aten._native_batch_norm_legit_no_training.default]:
        conv, gamma, beta, mean, var, _momentum, eps = bn.args
        bias = conv.args[2] if isinstance(conv, fx.Node) and len(conv.args) > 2 else None
        if not (isinstance(conv, fx.Node) and conv.target is aten.conv2d.default and len(conv.users) == 1
                and all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (conv.args[1], gamma, beta, mean, var))
                and (bias is None or bias.op == "get_attr")
                and all(u.target is operator.getitem and u.args[1] == 0 for u in bn.users)):
            continue
        w, g, b, m, v = (fetch(a) for a in (conv.args[1], gamma, beta, mean, var))
        scale = g / torch.sqrt(v + eps)
        names = (f"_archfit_folded_weight_{made}", f"_archfit_folded_bias_{made}")
        out.register_buffer(names[0], w * scale.reshape(-1, *([1] * (w.dim() - 1))))
        out.register_buffer(names[1], ((fetch(bias) if bias is not None else torch.zeros_like(m)) - m) * scale + b)
        with graph.inserting_before(conv):
            conv.args = (conv.args[0], graph.get_attr(names[0]), graph.get_attr(names[1]), *conv.args[3:])
        for user in list(bn.users):
            user.replace_all_uses_with(conv)
            graph.erase_node(user)
        graph.erase_node(bn)
        made += 1
    if made:
        graph.eliminate_dead_code()
        out.recompile()
    return out
