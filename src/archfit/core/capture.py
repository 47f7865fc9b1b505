"""Stage 1: capture a model as an ATen graph at the example inputs' fixed shapes (torch.export)."""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode, free_unbacked_symbols
from torch.fx.graph import CodeGen
from torch.utils import _pytree as pytree

from ..errors import CaptureError, first_line
from ..ops import op_name
from .source import from_traceback, node_source

# Pure checks torch.export leaves behind; they carry no compute and no data.
_ASSERT_OPS = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one flat input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    # integer inputs that index an embedding table: ids must be in [0, index_limit)
    index_limit: int | None = None

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Captured:
    """A flat ATen graph (parameters as get_attr, so backends see them as constants)."""

    graph_module: fx.GraphModule
    in_spec: pytree.TreeSpec  # structure of (args, kwargs)
    out_spec: pytree.TreeSpec  # structure of the model's output
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example_inputs: tuple[torch.Tensor, ...]  # flat, in graph order
    output_names: tuple[str, ...]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """torch.neuron style: a tensor, a tuple/list of args, or a dict of keyword args."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise CaptureError(
        f"example_inputs must be a tensor, a tuple of tensors or a dict of tensors, "
        f"got {type(example_inputs).__name__}; wrap it as (x,)"
    )


def leaf_names(model: torch.nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """Readable names for flat inputs: the forward's parameter names, plus the pytree path."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    paths, _ = pytree.tree_flatten_with_path((args, kwargs))
    names = []
    for path, _leaf in paths:
        head, rest = path[0].idx, path[1:]
        if head == 0:  # positional
            pos = rest[0].idx
            base = params[pos] if pos < len(params) else f"arg{pos}"
        else:
            base = rest[0].key
        names.append(base + pytree.keystr(rest[1:]))
    return names


def output_names(out_spec: pytree.TreeSpec, n: int) -> list[str]:
    dummy = pytree.tree_unflatten(list(range(n)), out_spec)
    paths, _ = pytree.tree_flatten_with_path(dummy)
    names = [pytree.keystr(p).lstrip(".") or "output" for p, _ in paths]
    return [name.replace("['", "").replace("']", "") if name.startswith("['") else name for name in names]


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs whole graphs on failure; the user gets our one line instead."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # a failed export also prints the partial graph straight to stderr (thousands of lines)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _export(model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    name = type(model).__name__
    try:
        # preserve_node_meta keeps what frontends annotate each node with (its source framework's name)
        with _quiet_torch_logs(), torch.fx.traceback.preserve_node_meta():
            ep = torch.export.export(model, args, kwargs)
            return ep.run_decompositions({})  # functional ATen, high-level ops kept
    except CaptureError:  # a frontend's own reason (the ONNX node that must run on the host)
        raise
    except GuardOnDataDependentSymNode as e:
        where = from_traceback(e.__traceback__)
        raise CaptureError(
            f"{name}: control flow depends on tensor values at {where or 'an unknown line'} "
            f"(data-dependent branch; a fixed-shape graph cannot hold it); "
            f"move the branch out of forward() or rewrite it with torch.where / torch.cond",
            reason="control flow depends on tensor values", where=where,
        ) from e
    except Exception as e:  # noqa: BLE001 - any exporter failure becomes one readable line
        _check_eager(model, args, kwargs)
        where = from_traceback(e.__traceback__)
        first = first_line(e)
        advice = "check that forward() runs on the example inputs and avoids Python-side effects"
        reason = f"torch.export cannot capture it: {first[:200]}"
        if "cache_utils" in first or "Cache'>" in first:  # transformers returns its KV cache as an object
            advice = "set model.config.use_cache = False to compile it without one"
            reason = f"it returns a transformers KV-cache object, not tensors ({advice})"
        raise CaptureError(
            f"{name}: torch.export could not capture the model at {where or 'an unknown line'}: {first[:300]}; "
            f"{advice}", reason=reason, where=where,
        ) from e


def _check_eager(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """After torch.export failed: when eager PyTorch fails on the example inputs too, the inputs
    are what is wrong (a wrong shape, a wrong dtype), not capture; say that."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the model's own failure, named with the inputs it got
        flat = pytree.tree_flatten((args, kwargs))[0]
        names = leaf_names(model, args, kwargs)
        raise bad_example_inputs(type(model).__name__, [(n, t.shape, t.dtype) for n, t in zip(names, flat)], e) from e


def bad_example_inputs(model: str, inputs, error: BaseException):
    """The one line for a model that fails on its own example inputs in eager PyTorch."""
    from ..errors import ModelError

    given = ", ".join(f"{n} {tuple(shape)} {str(dtype).removeprefix('torch.')}" for n, shape, dtype in inputs)
    return ModelError(f"{model} fails on its example inputs in eager PyTorch ({type(error).__name__}: "
                      f"{first_line(error, 200)}); the inputs given: {given}: give example inputs the model takes "
                      f"(dtype and shape as in use: a float model takes float tensors)")


def _flat_graph_module(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """Unlifted module (weights as get_attr) that takes and returns flat tensor lists."""
    gm = ep.module()
    gm._forward_pre_hooks.clear()  # export's own input checks; the runtime checks inputs itself
    gm.graph._codegen = CodeGen()  # flat in, flat out; pytree structure is kept in Captured
    for node in list(gm.graph.nodes):
        is_assert = node.op == "call_function" and node.target in _ASSERT_OPS
        is_guard = node.op == "call_module" and node.target == "_guards_fn"  # export's input guards
        if is_assert or is_guard:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def data_dependent_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes whose output shape or value depends on tensor data (unbacked symbols)."""
    return [
        n for n in gm.graph.nodes
        if n.op == "call_function" and "val" in n.meta and free_unbacked_symbols(n.meta["val"])
    ]


def first_data_dependent_origin(gm: fx.GraphModule) -> fx.Node | None:
    """The op that introduced data dependence: a dependent node with no dependent input."""
    dependent = set(data_dependent_nodes(gm))
    for node in dependent:
        if not any(arg in dependent for arg in node.all_input_nodes):
            return node
    return None


def capture(model: torch.nn.Module, example_inputs: Any) -> Captured:
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = normalize_inputs(example_inputs)
    flat, in_spec = pytree.tree_flatten((args, kwargs))
    bad = [i for i, t in enumerate(flat) if not isinstance(t, torch.Tensor)]
    if bad:
        raise CaptureError(
            f"example input #{bad[0]} is a {type(flat[bad[0]]).__name__}; archfit compiles tensor "
            f"inputs only: bake constants into the model or pass them as tensors"
        )
    if model.training:
        try:
            model.eval()  # inference graphs: dropout off, batch norm on running stats
        except NotImplementedError:  # modules from torch.export are already inference graphs
            pass
    ep = _export(model, args, kwargs)
    gm = _flat_graph_module(ep)
    out_spec = ep.call_spec.out_spec
    names = leaf_names(model, args, kwargs)
    limits = index_limits(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = tuple(TensorSpec(n, tuple(t.shape), t.dtype, limits.get(p))
                   for n, t, p in zip(names, flat, placeholders))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_vals = [a.meta.get("val") if isinstance(a, fx.Node) else a for a in out_node.args[0]]
    out_names = output_names(out_spec, len(out_vals))
    outputs = tuple(
        TensorSpec(n, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else TensorSpec(n, (), torch.float32)
        for n, v in zip(out_names, out_vals)
    )
    return Captured(gm, in_spec, out_spec, inputs, outputs, tuple(t.detach() for t in flat), tuple(out_names))


_EMBEDDINGS = (torch.ops.aten.embedding.default, torch.ops.aten.embedding_bag.default,
               torch.ops.aten.embedding_bag.padding_idx, torch.ops.aten._embedding_bag.default)
_PASS_THROUGH = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.flatten.using_ints,
                 torch.ops.aten._to_copy.default, torch.ops.aten.clone.default, torch.ops.aten.contiguous.default}


def index_limits(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Placeholders whose values index an embedding table (through views only), with the table's
    row count: eager PyTorch raises on an id outside it, a compiled engine silently reads another
    row, so the module checks such inputs itself."""
    limits: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _EMBEDDINGS or len(node.args) < 2:
            continue
        weight, source = node.args[0], node.args[1]
        while isinstance(source, fx.Node) and source.op == "call_function" and source.target in _PASS_THROUGH:
            source = source.args[0]
        rows = weight.meta.get("val").shape[0] if isinstance(weight, fx.Node) and "val" in weight.meta else None
        if isinstance(source, fx.Node) and source.op == "placeholder" and rows is not None:
            limits[source] = min(int(rows), limits.get(source, int(rows)))
    return limits


def attr_of(module: torch.nn.Module, dotted: str):
    """The object a get_attr node names ('encoder.layer.0.weight')."""
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class CaptureFailure:
    """Why a module cannot be captured whole at fixed shapes, and where."""

    reason: str  # one line, without advice
    where: str | None = None  # the user's 'file:line (code)' capture stopped at

    def __str__(self) -> str:
        return f"{self.reason} at {self.where}" if self.where else self.reason


def capture_fixed(module: torch.nn.Module, inputs, strict: bool = True) -> tuple[Captured | None, CaptureFailure | None]:
    """(Captured, None) when `module` captures at fixed shapes; else (Captured or None, why):
    the graph when it captured but holds a data-dependent op. strict: errors that are not about
    capture itself (not a module, a non-tensor input) propagate."""
    try:
        captured = capture(module, inputs)
    except CaptureError as e:
        if strict and e.reason is None:
            raise
        return None, CaptureFailure(e.reason or str(e), e.where)
    origin = first_data_dependent_origin(captured.graph_module)
    if origin is None:
        return captured, None
    return captured, CaptureFailure(f"{op_name(origin)} has a data-dependent output shape", node_source(origin))
