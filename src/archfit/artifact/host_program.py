"""The host program as plain JSON, and back, run by a small interpreter over a closed vocabulary.

Why not pickle or torch.save: loading either can run arbitrary code. Why not torch.export's
serializer: the host graph calls compiled engines, which are not exportable ops. Why not rebuild
an fx.GraphModule: fx turns node names and attribute paths into Python source and executes it,
so a crafted name would become code. Here nothing from the file is ever formatted into code or
looked up by walking attributes: every call target must be an op from the vocabulary below,
found by name in torch's op registry; every attribute a node reads is a key of one flat dict
(the file's own weights and engines); every string stays data."""
from __future__ import annotations

import math
import operator
import re
from functools import lru_cache
from typing import Any

import torch
from torch import fx

from ..errors import ArtifactError
from ..ops import library_name, overload_name

# The only Python callables a host graph may name; anything else is refused on load.
PY_FUNCTIONS = {f"_operator.{f.__name__}": f for f in (
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
)}
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64,
)}
_LAYOUTS = {"strided": torch.strided}
_MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format,
                   "channels_last": torch.channels_last}

# Namespaces torch and its companions register; an op there must pass the aten rules or is refused.
_TORCH_NAMESPACES = frozenset({
    "aten", "prims", "prim", "quantized", "_quantized", "profiler", "c10d", "_c10d_functional",
    "_c10d_functional_autograd", "_dtensor", "_native", "_test", "coor", "debug_mode_ops", "debugprims", "export",
    "inductor", "inductor_prims", "mkl", "mkldnn", "mkldnn_prepacked", "onednn", "quantization", "rngprims",
    "sparse", "static_runtime", "symm_mem", "higher_order", "fbgemm", "cuda", "xpu", "mps",
})
# Private aten ops that captured graphs hold on the host and that compute, nothing else.
_PRIVATE_OK = frozenset({"_safe_softmax", "_unsafe_view", "_unsafe_index", "_scaled_dot_product_flash_attention_for_cpu",
                         "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
                         "_assert_tensor_metadata", "_assert_scalar", "_to_copy", "_softmax", "_log_softmax"})
# Random only through a dropout argument, which is 0 in the inference graphs archfit captures.
_DROPOUT_ARG_ONLY = frozenset({"scaled_dot_product_attention"})
# Words that mark file, storage or process access in an op's name or argument names.
_IO_WORDS = re.compile(r"file|save|load|storage|print|record|set_|device_sync|_dist|share|mmap|pickle", re.I)
# Names from the file: identifiers that may start with one underscore, never a dunder. An
# nn.Sequential's weight is `0.weight` (an attribute path may start with a digit), and torch.fx
# names the node reading it `_0_weight` (after the underscore a digit too).
_IDENT = re.compile(r"^(?:[A-Za-z]|_[A-Za-z0-9])[A-Za-z0-9_]{0,198}$")
_ATTR = re.compile(r"^(?:[A-Za-z0-9]|_[A-Za-z0-9])[A-Za-z0-9_]{0,98}(\.[A-Za-z0-9_]{1,100}){0,15}$")
MAX_NODES = 200_000  # a real host program has a few thousand at most (BERT-large on inf1: ~2k)
MAX_DEPTH = 8  # nesting of lists/tuples in one argument


# ATen's operator spellings (`a & b` on tensors captures as aten.__and__) stored as the bitwise ops
# that compute the same: a file's names never hold dunders (resolve_op refuses them), and before
# this a host program holding one (a BERT attention mask's `&`, left on the host) saved but
# could not be loaded.
_DUNDER_OPS = {"aten.__and__.Tensor": "aten.bitwise_and.Tensor", "aten.__and__.Scalar": "aten.bitwise_and.Scalar",
               "aten.__or__.Tensor": "aten.bitwise_or.Tensor", "aten.__or__.Scalar": "aten.bitwise_or.Scalar",
               "aten.__xor__.Tensor": "aten.bitwise_xor.Tensor", "aten.__xor__.Scalar": "aten.bitwise_xor.Scalar",
               "aten.__lshift__.Tensor": "aten.bitwise_left_shift.Tensor",
               "aten.__lshift__.Scalar": "aten.bitwise_left_shift.Tensor_Scalar",
               "aten.__rshift__.Tensor": "aten.bitwise_right_shift.Tensor",
               "aten.__rshift__.Scalar": "aten.bitwise_right_shift.Tensor_Scalar"}


def _plain_op_name(name: str) -> bool:
    """'namespace.op.overload', each part an identifier without dunders: the only op names a file
    may hold (checked by load, and by save so that what it writes loads)."""
    parts = name.split(".") if isinstance(name, str) else []
    return len(parts) == 3 and all(_IDENT.match(p) and "__" not in p for p in parts)


def target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = overload_name(target)
        if name in _DUNDER_OPS:
            resolve_op(_DUNDER_OPS[name])  # the plain op passes load's checks (raises otherwise)
            return _DUNDER_OPS[name]
        # what resolve_op accepts, checked when saving: a file that cannot be loaded is lost work
        if not _plain_op_name(name):
            raise ArtifactError(f"cannot save host op {name}: a file names ops by plain identifiers, which load "
                                f"checks; run this op on the target, or map it in host_program._DUNDER_OPS")
        if (why := refusal(target)) is not None:
            raise ArtifactError(f"cannot save host op {name}: archfit does not run it from a file, as {why}")
        return name
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
    if name in PY_FUNCTIONS:
        return name
    raise ArtifactError(f"cannot save host op {target!r}: archfit saves ATen/custom ops and operator.* only")


def refusal(op: torch._ops.OpOverload) -> str | None:
    """Why `op` may not run from a file's host program, or None. Only pure tensor ops pass:
    no mutation, no randomness (global generator state), no file, storage or process access,
    no private op of torch's besides the few that captured graphs compute with."""
    schema = op._schema
    namespace, name = op.namespace, op._opname
    if schema.is_mutable or any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return "it mutates its inputs"
    if torch.Tag.nondeterministic_seeded in op.tags and name not in _DROPOUT_ARG_ONLY:
        return "it draws random numbers (global generator state)"
    if _IO_WORDS.search(name) or any(_IO_WORDS.search(a.name) for a in schema.arguments):
        return "it may read or write files, storage or process state"
    if namespace in _TORCH_NAMESPACES:
        if namespace != "aten":
            return f"namespace {namespace!r} is torch's internal machinery, not a tensor op archfit emits"
        if name.startswith("_") and name not in _PRIVATE_OK and torch.Tag.core not in op.tags:
            return "it is a private torch op that archfit never leaves on the host"
        return None
    if namespace.startswith("_"):
        return f"namespace {namespace!r} is private"
    return None  # a user's or a companion library's custom op (torchvision::nms, mylib::op): pure by schema


@lru_cache(maxsize=None)
def resolve_op(name: str):
    """'aten.add.Tensor' -> torch.ops.aten.add.Tensor, looked up in torch's op registry by its
    exact name (never by walking attributes), then checked against the vocabulary."""
    if name in PY_FUNCTIONS:
        return PY_FUNCTIONS[name]
    if not _plain_op_name(name):
        raise ArtifactError(f"host program names an unknown function {str(name)[:100]!r}; the file is not from archfit")
    namespace, op, overload = name.split(".")
    try:
        handle = torch._C._dispatch_find_schema_or_throw(f"{namespace}::{op}", "" if overload == "default" else overload)
    except RuntimeError:
        raise ArtifactError(
            f"the file needs op {namespace}::{op}.{overload}, which is not registered here; import the "
            f"module that defines it (torch.library) before archfit.load (CLI: archfit run --import MODULE)"
        ) from None
    del handle
    # Plain getattr (never the namespaces' own __getattr__, which would build a second, different
    # torch.ops.aten): the names are identifiers without dunders, registered as checked above.
    target = getattr(getattr(getattr(torch.ops, namespace), op), overload)
    if not isinstance(target, torch._ops.OpOverload):
        raise ArtifactError(f"host program names {name!r}, which is not an op; the file is not from archfit")
    why = refusal(target)
    if why is not None:
        raise ArtifactError(f"host program calls {library_name(target)}.{overload}, which archfit refuses to run from "
                            f"a file: {why}; the file was not written by archfit.save")
    return target


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


def graph_to_json(graph: fx.Graph) -> list[dict]:
    nodes = []
    for n in graph.nodes:
        entry = {"name": n.name, "op": n.op}
        if n.op == "call_function":
            entry["target"] = target_name(n.target)
        elif n.op in ("get_attr", "call_module", "placeholder"):
            entry["target"] = str(n.target)
        entry["args"] = _encode(tuple(n.args), n.name)
        entry["kwargs"] = {k: _encode(v, n.name) for k, v in n.kwargs.items()}
        nodes.append(entry)
    return nodes


class _Decoder:
    """JSON values back to Python, every kind checked; node references only to earlier nodes."""

    def __init__(self):
        self.env: dict[str, fx.Node] = {}

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ArtifactError(f"host program argument nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            if len(value) != 1:
                raise ArtifactError("host program argument is not a single-kind value")
            (kind, v), = value.items()
            if kind == "node":
                if v not in self.env:
                    raise ArtifactError(f"host program uses node {str(v)[:60]!r} before it is defined")
                return self.env[v]
            if kind == "float":
                if v not in ("inf", "-inf", "nan"):
                    raise ArtifactError(f"host program float {str(v)[:30]!r} is not inf, -inf or nan")
                return float(v)
            if kind in ("list", "tuple") and isinstance(v, list):
                items = [self(x, depth + 1) for x in v]
                return items if kind == "list" else tuple(items)
            table = {"dtype": DTYPES, "layout": _LAYOUTS, "memory_format": _MEMORY_FORMATS}.get(kind)
            if table is not None and v in table:
                return table[v]
            if kind == "device" and v == "cpu":
                return torch.device("cpu")
            raise ArtifactError(f"unknown value {str(value)[:80]!r} in host program")
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, str) and len(value) > 200:
                raise ArtifactError("host program holds a string argument over 200 characters")
            return value
        raise ArtifactError(f"unknown value of type {type(value).__name__} in host program")


def graph_from_json(nodes: Any, attributes: set[str] | None) -> fx.Graph:
    """The host graph; `attributes` are the names get_attr/call_module nodes may read (the file's
    own weights and engines; None: any well-formed name, for inspecting a file without loading
    it). Builds no code: run it with HostProgram."""
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise ArtifactError(f"host program must be a list of at most {MAX_NODES} nodes")
    graph, decode = fx.Graph(), _Decoder()
    outputs = 0
    try:
        for e in nodes:
            op, name = e["op"], e["name"]
            if not isinstance(name, str) or not _IDENT.match(name) or name in decode.env:
                raise ArtifactError(f"host program node name {str(name)[:60]!r} is not a fresh identifier")
            if op == "call_function":
                try:
                    target = resolve_op(e["target"])
                except ArtifactError as err:
                    raise ArtifactError(f"node {name!r}: {err.args[0]}") from None
            elif op in ("get_attr", "call_module"):
                target = e["target"]
                if not isinstance(target, str) or not _ATTR.match(target) or "__" in target or \
                        (attributes is not None and target not in attributes):
                    raise ArtifactError(f"host program node {name!r} reads {str(target)[:60]!r}, which the file does "
                                        f"not hold")
            elif op == "placeholder":
                target = name
            elif op == "output":
                target, outputs = "output", outputs + 1
            else:
                raise ArtifactError(f"unknown node kind {str(op)[:30]!r} in host program")
            args, kwargs = decode(e["args"]), {k: decode(v) for k, v in e["kwargs"].items()}
            if not isinstance(args, tuple) or not all(isinstance(k, str) and _IDENT.match(k) for k in kwargs):
                raise ArtifactError(f"host program node {name!r} has malformed arguments")
            decode.env[name] = graph.create_node(op, target, args, kwargs, name=name)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ArtifactError(f"host program is malformed ({type(err).__name__}); re-save the model") from None
    if outputs != 1:
        raise ArtifactError("host program must end in exactly one output node")
    return graph


class HostProgram(torch.nn.Module):
    """Runs a loaded host graph node by node (read, run, write, free after last use, as a jaxpr
    interpreter does): engines are its child modules, weights a flat dict, both by exact name."""

    def __init__(self, graph: fx.Graph, weights: dict[str, torch.Tensor], engines: dict[str, torch.nn.Module]):
        super().__init__()
        self.graph = graph
        self.weights = weights
        self.engines = torch.nn.ModuleDict(engines)
        last_use: dict[fx.Node, fx.Node] = {}
        for node in graph.nodes:
            for arg in node.all_input_nodes:
                last_use[arg] = node
        self._free = {}  # node -> the values no longer needed once it ran
        for value, user in last_use.items():
            self._free.setdefault(user, []).append(value)

    def attr(self, target: str):
        return self.weights[target] if target in self.weights else self.engines[target]

    def forward(self, *flat):
        env: dict[fx.Node, Any] = {}
        inputs = iter(flat)

        def value(a):
            return env[a] if isinstance(a, fx.Node) else a

        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(inputs)
                continue
            args = fx.node.map_aggregate(node.args, value)
            kwargs = fx.node.map_aggregate(node.kwargs, value)
            if node.op == "output":
                return tuple(args[0])
            if node.op == "get_attr":
                env[node] = self.attr(node.target)
            elif node.op == "call_module":
                env[node] = self.engines[node.target](*args, **kwargs)
            else:
                env[node] = node.target(*args, **kwargs)
            for dead in self._free.get(node, ()):
                env.pop(dead, None)
        raise ArtifactError("host program has no output node")
