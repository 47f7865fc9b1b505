"""Stage 7: the modules users call. `ArchfitModule` is what every trace returns, whatever its
kind (one static graph, buckets, regions attached to a model, a seq2seq generator): the target,
precision and report it was compiled with, a summary, and its kind's hooks (core/kinds.py).

`CompiledModule` is the static-shape one: it checks inputs, runs the host graph (which calls
the engines) and restores the model's output structure. The host graph is fx-generated Python,
which frees every intermediate right after its last use (the jaxpr-interpreter discipline)."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar

import torch
from torch import fx
from torch.utils import _pytree as pytree

from ..errors import ArtifactError, InputError
from .capture import TensorSpec
from .engines import EngineModule, engine_named
from .kinds import kind_class, register_kind
from .threads import host_threads


MAX_DIM = 2**31  # a dim or size a file may declare, at most


class CallAdapter:
    """How a module takes and gives values in another framework than torch. An imported model's
    frontend (frontends.FrameworkIO) sets one on the module it compiled; core only calls it."""

    id_inputs: tuple[str, ...] = ()  # inputs the framework gives as floats but the graph takes as ids

    def call(self, run: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """run(**torch_inputs) on the caller's values, the outputs given back in its framework."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain data for the file's manifest (frontends.FrameworkIO.from_dict reads it back)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Parts:
    """What one component of a file holds, written and read by artifact: static graphs (host
    program, weights, engines) by name prefix, or bare engines (no host program) by name; the
    component's signature; and its kind's own plain data, kept in its manifest entry."""

    inputs: tuple[TensorSpec, ...]
    graphs: tuple[tuple[str, "CompiledModule"], ...] = ()
    engines: tuple[tuple[str, EngineModule], ...] = ()
    specs: tuple[pytree.TreeSpec, pytree.TreeSpec] | None = None  # input and output structure
    table: dict = field(default_factory=dict)


class ArchfitModule(torch.nn.Module):
    """Base of what archfit.trace / trace_seq2seq return and archfit.load gives back.

    A subclass that sets `kind` is a module kind (registered by that name, core/kinds.py) and
    declares its hooks here: a file's kind says which components it holds (`file_components`),
    the plain data it needs besides (`file_meta`) and how it comes back (`from_file`); a kind
    that is a component of files says which parts it is made of (`stored_parts`, `from_parts`);
    `describe_file` / `describe_component` are what `archfit inspect` prints of it without
    loading an engine; `takes` is what `archfit run` feeds it."""

    kind: ClassVar[str]
    # "tensors" (by input name: archfit run -i), "sequences" (packed: archfit run --batch-file),
    # "generation" (archfit generate)
    takes: ClassVar[str] = "tensors"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            register_kind(cls)

    def __init__(self, target: str, precision: str, emulated: bool, report=None, manifest: dict | None = None):
        super().__init__()
        self.target = target
        self.precision = precision
        self.emulated = emulated  # target partitions run on a CPU stand-in for the named chip
        self.report = report  # FitReport; None for modules loaded from a file
        self.manifest = manifest  # the file's manifest, for modules loaded from one
        self._check_finite = False
        # models imported from ONNX/TensorFlow/MXNet: inputs by name as their arrays, outputs given
        # back in the caller's framework
        self.frontend: CallAdapter | None = None
        # target="auto" / precision="auto": every candidate with its time or why it was left out
        self.alternatives: tuple = ()
        # compiled from a directory with a tokenizer: texts in, the task's answers out (text/io.py)
        self.text = None
        # compiled from an image-classification directory: images in, labels out (text/image.py)
        self.image = None

    def take_torch_tensors(self) -> tuple[str, ...]:
        """Take torch tensors by name from now on, as `archfit run` and `archfit serve` give them,
        instead of an imported model's arrays; returns the inputs its framework gave as floats but
        the graph takes as token ids (MXNet), for the caller to cast."""
        ids = tuple(self.frontend.id_inputs) if self.frontend is not None else ()
        self.frontend = None
        return ids

    def __call__(self, *args, **kwargs):
        if self.text is not None and len(args) == 1 and not kwargs and _texts(args[0]):
            answers = self.answer([args[0]] if _one_text(args[0]) else list(args[0]))
            return answers[0] if _one_text(args[0]) else answers
        if self.image is not None and len(args) == 1 and not kwargs and not isinstance(args[0], torch.Tensor):
            many = isinstance(args[0], (list, tuple))  # images: paths, bytes, PIL images, HWC arrays
            answers = self.image.run(self, list(args[0]) if many else [args[0]])
            return answers if many else answers[0]
        if self.frontend is None:
            return super().__call__(*args, **kwargs)
        return self.frontend.call(super().__call__, args, kwargs)

    def answer(self, texts) -> list:
        """The task's answer per text (module(texts) does the same): an embedding, a label with
        its score, token labels, the masked tokens' candidates or an answer span."""
        from ..text.io import run_texts

        if self.text is None:
            raise InputError("this module takes tensors: it was not compiled from a directory with a tokenizer")
        return run_texts(self, texts)

    def encode(self, texts):
        """Embeddings of `texts` as one float32 array (rows in order), as SentenceTransformer.encode."""
        import numpy as np

        if self.text is None or not self.text.embedding:
            raise InputError("encode() is for sentence encoders compiled from a sentence-transformers directory; "
                             "call module(texts) for this model's answers")
        one = isinstance(texts, str)
        out = np.stack(self.answer([texts] if one else list(texts)))
        return out[0] if one else out

    def longest(self) -> int | None:
        """The most positions along the varying (sequence) dim a call takes; None where nothing varies."""
        return None

    @property
    def check_finite(self) -> bool:
        """Refuse NaN/Inf inputs (see check_values); off by default, on in `archfit run`."""
        return self._check_finite

    @check_finite.setter
    def check_finite(self, on: bool) -> None:
        for m in self.modules():  # the static modules inside buckets, regions and generators too
            if isinstance(m, ArchfitModule):
                m._check_finite = bool(on)

    def summary(self) -> str:
        """What is particular to this module's shape (buckets, regions, generation), as text lines."""
        return ""

    def page(self) -> dict[str, Any]:
        """What the HTML page shows (keyword arguments of report.html.render_page): sections of
        reports side by side, plus what is particular to this module's shape."""
        return {"sections": [(self.report.model, [self.report])] if self.report is not None else []}

    # -- its file (artifact/package.py) ------------------------------------------------------
    def file_components(self) -> dict[str, "ArchfitModule"]:
        """Components to store, by name: modules of kinds that store parts (static, bucketed, dynamic)."""
        return {"main": self}

    def file_meta(self) -> dict[str, Any]:
        """JSON-able data, besides the components, that `from_file` needs."""
        return {}

    def file_inputs(self, components: dict[str, dict]) -> list[dict]:
        """The inputs the file's manifest advertises (given the components' manifest entries)."""
        return next(iter(components.values()))["inputs"]

    @classmethod
    def check_loadable(cls, meta: dict, model: torch.nn.Module | None, source) -> None:
        """Refuse, before any engine loads, a file this kind cannot be rebuilt from here (the
        model it attaches to missing, say)."""

    @classmethod
    def from_file(cls, components: dict[str, "ArchfitModule"], meta: dict, manifest: dict,
                  model: torch.nn.Module | None = None, source: str = "the file") -> "ArchfitModule":
        """Rebuild from what `file_components` and `file_meta` stored (`source`: the file, for errors)."""
        return components["main"]

    def stored_parts(self) -> Parts:
        """The parts of this module as one component of a file."""
        raise ArtifactError(f"a {self.kind!r} module is not stored as a component of a file; store its "
                            f"file_components()")

    @classmethod
    def from_parts(cls, parts: Parts, manifest: dict, source: str) -> "ArchfitModule":
        """Rebuild a component from the parts artifact loaded (`parts.table`: its manifest entry)."""
        raise ArtifactError(f"{source}: a {cls.kind!r} module is not stored as a component")

    @classmethod
    def describe_file(cls, manifest: dict) -> list[str]:
        """Lines `archfit inspect` prints of a file of this kind (from its manifest alone)."""
        lines = ["inputs: " + ", ".join(f"{i['name']}{i['shape']}:{i['dtype']}" for i in manifest["inputs"])]
        main = manifest["components"]["main"]
        kind = kind_class(main["kind"])
        return lines + (kind.describe_component(main) if kind is not None else [])

    @classmethod
    def describe_component(cls, entry: dict) -> list[str]:
        """Lines `archfit inspect` prints of one component of this kind (its manifest entry)."""
        return []

    def extra_repr(self) -> str:
        emulated = ", EMULATED on the CPU" if self.emulated else ""
        return f"target={self.target!r}, precision={self.precision!r}{emulated}"


def _one_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, tuple) and len(value) == 2
                                      and all(isinstance(v, str) for v in value))


def _texts(value) -> bool:
    """A text, a (question, context) pair, or a list of them: what a text front takes."""
    return _one_text(value) or (isinstance(value, list) and bool(value) and all(_one_text(v) for v in value))


def check_values(spec: TensorSpec, value: torch.Tensor, finite: bool) -> None:
    """Values a compiled engine would answer silently and wrongly: ids outside the embedding
    table (eager PyTorch raises; an engine reads another row), and, when asked, NaN or Inf
    (backends propagate them differently: OpenVINO may return finite outputs where eager gives NaN)."""
    if spec.index_limit is not None and value.numel():
        low, high = (int(v) for v in torch.aminmax(value))  # one pass over the ids, on every call
        if low < 0 or high >= spec.index_limit:
            bad = low if low < 0 else high
            raise InputError(f"input {spec.name!r} holds id {bad}, outside the embedding table's range 0.."
                             f"{spec.index_limit - 1}; eager PyTorch would raise IndexError: fix the ids")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        count = int((~torch.isfinite(value)).sum())
        raise InputError(f"input {spec.name!r} holds {count} NaN/Inf value(s); targets differ in how they propagate "
                         f"them, so archfit refuses them (check_finite=True): clean the input, or set "
                         f"module.check_finite = False to pass them through")


def describe(shape, dtype) -> str:
    return f"{tuple(shape)} {str(dtype).replace('torch.', '')}"


def flatten_call(args: tuple, kwargs: dict, in_spec: pytree.TreeSpec, inputs: tuple[TensorSpec, ...]) -> list:
    """The call's flat inputs, refused when not structured as the example inputs were."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec:
        names = ", ".join(i.name for i in inputs)
        raise InputError(f"called with {len(flat)} input(s) in another structure than traced; expected the "
                         f"inputs ({names}) passed the same way (positional/keyword) as the example inputs")
    return flat


class CompiledModule(ArchfitModule):
    """Returned by `archfit.trace`: same inputs, same output structure as the traced model.
    one_thread: PyTorch's threads for the host ops between engines, as measured at compile time
    (True: one thread; False/None: PyTorch's own; see core/threads.py)."""

    kind = "static"

    def __init__(self, graph_module: fx.GraphModule, in_spec: pytree.TreeSpec, out_spec: pytree.TreeSpec,
                 inputs: tuple[TensorSpec, ...], target: str, precision: str, report=None, emulated: bool = False,
                 manifest: dict | None = None, one_thread: bool | None = None):
        super().__init__(target, precision, emulated, report, manifest)
        self.graph_module = graph_module
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.inputs = inputs
        self.one_thread = one_thread

    def stored_parts(self) -> Parts:
        return Parts(self.inputs, graphs=(("", self),), specs=(self.in_spec, self.out_spec))

    @classmethod
    def from_parts(cls, parts: Parts, manifest: dict, source: str) -> "CompiledModule":
        if len(parts.graphs) != 1 or parts.engines:
            raise ArtifactError(f"{source}: a static component holds one host program, not {len(parts.graphs)}")
        return parts.graphs[0][1]

    @classmethod
    def describe_component(cls, entry: dict) -> list[str]:
        return ["buckets: none (fixed shapes)"]

    def longest(self) -> int | None:
        shape = self.inputs[0].shape if self.inputs else ()
        return shape[1] if len(shape) > 1 else None

    def check(self, flat: list) -> None:
        for spec, value in zip(self.inputs, flat):
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {spec.name!r}: expected a tensor {describe(spec.shape, spec.dtype)}, "
                                 f"got {type(value).__name__}")
            if value.device.type != "cpu":
                raise InputError(f"input {spec.name!r} is on the {value.device.type} device; archfit runs CPU "
                                 f"tensors holding values: move it with .cpu()")
            if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
                raise InputError(
                    f"input {spec.name!r}: expected {describe(spec.shape, spec.dtype)}, got "
                    f"{describe(value.shape, value.dtype)}; shapes are fixed at compile time: pad or "
                    f"resize the input, or trace again with an example of this shape"
                )
            check_values(spec, value, self._check_finite)

    def run_flat(self, flat: list) -> list:
        self.check(flat)
        if self._sole_engine is not None:  # no host op: no grad mode or host threads to set
            return list(engine_named(self.graph_module, self._sole_engine).forward(*flat))
        with torch.no_grad(), host_threads(self.one_thread is True):
            return list(self.graph_module(*flat))

    @cached_property
    def _sole_engine(self) -> str | None:
        """The engine submodule's name when the host graph only hands every input, in order, to one
        engine and returns its outputs in order (a model compiled whole). Such a call skips the fx
        graph, two modules' call machinery and the grad-mode switch: archfit's layer around a tiny
        DLRM's engine 11.8 -> 5.6 us a call (benchmarks/call_layer.py), 1.4% of DLRM's 0.45 ms.
        The name, not the module: auto and per_partition swap engines by name."""
        nodes = list(self.graph_module.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        calls = [n for n in nodes if n.op == "call_module"]
        picks = [n for n in nodes if n.op == "call_function"]
        if (len(calls) != 1 or list(calls[0].args) != inputs or calls[0].kwargs
                or len(nodes) != len(inputs) + 1 + len(picks) + 1 or nodes[-1].op != "output"):
            return None
        engine = engine_named(self.graph_module, calls[0].target)
        outs = nodes[-1].args[0]
        if (not isinstance(engine, EngineModule) or not isinstance(outs, (tuple, list)) or list(outs) != picks
                or len(picks) != len(engine.out_dtypes)
                or any(p.target is not operator.getitem or p.args != (calls[0], i) for i, p in enumerate(picks))):
            return None
        return calls[0].target

    @cached_property
    def _plain(self) -> tuple[bool, str | None]:
        """(traced with positional tensors only, outputs 'leaf'/'tuple'/None): in these common
        cases a call skips pytree's flatten and unflatten (benchmarks/call_layer.py: archfit's layer
        around a tiny DLRM's engine 23.5 -> 11.9 us a call)."""
        n, k = len(self.inputs), self.out_spec.num_leaves
        plain_in = self.in_spec == pytree.tree_structure((tuple(range(n)), {}))
        out = ("leaf" if self.out_spec == pytree.tree_structure(0) else
               "tuple" if self.out_spec == pytree.tree_structure(tuple(range(k))) else None)
        return plain_in, out

    def forward(self, *args, **kwargs):
        plain_in, out = self._plain
        if plain_in and not kwargs and len(args) == len(self.inputs):
            flat = list(args)  # check() refuses anything in place of a tensor, naming the input
        else:
            flat = flatten_call(args, kwargs, self.in_spec, self.inputs)
        result = self.run_flat(flat)
        if out == "leaf":
            return result[0]
        return tuple(result) if out == "tuple" else pytree.tree_unflatten(result, self.out_spec)
