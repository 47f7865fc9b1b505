"""What the server needs of a loaded file, whatever its kind: the signature it advertises, how a
request is checked (before it queues, so one bad request never fails a batch), which requests may
share an engine call (`key`: the bucket, the exact length, or one group) and how many rows a call
takes (`capacity`), and how a group runs and is cut back into one answer per request.

One subclass per module kind (adapters.py), registered under that kind's name (`serves`);
`servable(name, module)` picks it by the module's kind. The batching itself is the kind's own
public methods."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.module import ArchfitModule
from ..errors import InputError
from .protocol import RequestError, datatype

ADAPTERS: dict[str, type["Servable"]] = {}  # module kind -> the adapter that serves it


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where any size is taken

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class Item:
    """One checked request: its inputs, the batch rows it fills, the group it may share an engine
    call with, and its real size along the varying dim (for unpadding and the padding metric)."""

    inputs: Any
    rows: int
    key: Any
    size: int = 1
    parameters: dict | None = None


@dataclass(frozen=True)
class BatchStats:
    """One engine call group, for the metrics: rows filled of the capacity, positions that held
    real data and positions computed in all (padding included)."""

    bucket: str
    rows: int
    capacity: int
    real: int
    computed: int


class Servable:
    """Subclasses name the module kind they serve (`serves`) and set `inputs` and `outputs` (the
    signature, fixed once loaded) and `capacity`."""

    serves: ClassVar[str]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    capacity: int = 1  # rows per engine call
    continuous: ClassVar[bool] = False  # runs its own loop (generation), not the batcher: start(), stop()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "serves" in cls.__dict__:
            ADAPTERS[cls.serves] = cls

    def __init__(self, name: str, module: ArchfitModule):
        self.name = name
        self.module = module

    @property
    def kind(self) -> str:
        return self.module.kind

    # -- what one engine call holds, for the batcher ----------------------------------------
    @property
    def budget(self) -> int:
        """What one engine call holds, in the units of `cost` (rows, by default)."""
        return self.capacity

    def cost(self, item: "Item") -> int:
        return item.rows

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": f"archfit_{self.module.target}",
                "inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs],
                "parameters": {"kind": self.kind, "precision": self.module.precision, "max_batch": self.capacity,
                               "emulated": self.module.emulated}}

    # -- a request ---------------------------------------------------------------------------
    def names(self, given: dict[str, torch.Tensor], optional: tuple[str, ...] = ()) -> None:
        """Missing or unknown inputs, named."""
        want = [m.name for m in self.inputs]
        missing = [n for n in want if n not in given and n not in optional]
        extra = [n for n in given if n not in want]
        if missing or extra:
            what = "; ".join(filter(None, [missing and f"missing {', '.join(map(repr, missing))}",
                                           extra and f"unknown {', '.join(map(repr, extra))}"]))
            raise RequestError(f"model {self.name!r} takes inputs {', '.join(want)}: {what}")

    def check_inputs(self, given: dict[str, torch.Tensor], optional: tuple[str, ...] = ()) -> dict[int, int]:
        """Names, then every given input against its signature; the sizes of the dims marked -1."""
        self.names(given, optional)
        tied: dict[int, int] = {}
        for meta in self.inputs:
            if meta.name in given:
                self.check(meta, given[meta.name], tied)
        return tied

    def check(self, meta: TensorMeta, t: torch.Tensor, tied: dict[int, int]) -> None:
        """dtype, rank and every fixed dim; dims marked -1 must agree across inputs (`tied`: dim -> size)."""
        if datatype(t.dtype) != meta.datatype or t.dim() != len(meta.shape):
            raise RequestError(f"input {meta.name!r}: expected {meta.datatype} {list(meta.shape)} (-1: any size), got "
                               f"{datatype(t.dtype)} {list(t.shape)}")
        for d, (want, have) in enumerate(zip(meta.shape, t.shape)):
            if want >= 0 and want != have:
                raise RequestError(f"input {meta.name!r}: dim {d} must be {want}, got {have} (shape {list(t.shape)})")
            if want < 0:
                if have == 0:
                    raise RequestError(f"input {meta.name!r}: dim {d} is empty")
                if tied.setdefault(d, have) != have:
                    raise RequestError(f"input {meta.name!r}: dim {d} is {have}, but another input's is {tied[d]}; "
                                       f"they must agree")

    def prepare(self, given: dict[str, torch.Tensor], parameters: dict | None = None) -> Item:
        raise NotImplementedError

    def run(self, items: list[Item]) -> tuple[list[dict[str, torch.Tensor]], BatchStats]:
        raise NotImplementedError

    def fixed_length(self) -> int | None:
        """The length every row must have (a static module's), or None where lengths vary."""
        shape = self.inputs[0].shape if self.inputs else ()
        return shape[1] if len(shape) > 1 and shape[1] >= 0 else None

    def run_items(self, items: list[Item]) -> list[dict[str, torch.Tensor]]:
        """Answers for `items` in order, run as the batcher would group them: by key, each engine
        call filled up to the budget (texts in Python and in a server's text requests)."""
        answers: list = [None] * len(items)
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.key, []).append(i)
        for indices in groups.values():
            start = 0
            while start < len(indices):
                end, filled = start, 0
                while end < len(indices) and (end == start or filled + self.cost(items[indices[end]]) <= self.budget):
                    filled += self.cost(items[indices[end]])
                    end += 1
                out, _stats = self.run([items[i] for i in indices[start:end]])
                for i, o in zip(indices[start:end], out):
                    answers[i] = o
                start = end
        return answers

    def run_all(self, items: list[Item]) -> list[dict[str, torch.Tensor]]:
        """Answers for every item of a corpus's chunk (archfit map), as the kind batches best."""
        return self.run_items(items)

    def warm_up(self) -> None:
        """One call on every engine the file holds (their first call allocates and picks kernels),
        so a model is ready only once a request would not pay for that. Kinds whose construction
        ran every engine already (reading off output shapes) keep this default."""


def warm_buckets(bucketed) -> None:
    """One call of every bucket's compiled module (a BucketedModule's), on ones (valid ids and masks)."""
    with torch.no_grad():
        for size in bucketed.sizes:
            compiled = bucketed.buckets[str(size)]
            compiled.run_flat([torch.ones(s.shape, dtype=s.dtype) for s in compiled.inputs])


def servable(name: str, module: ArchfitModule, text: bool = True) -> Servable:
    """The adapter for a loaded module, by its kind, or one line saying why it cannot be served; a
    module that carries a tokenizer takes texts (serve/text.py) unless `text` is off."""
    module.take_torch_tensors()  # files of ONNX/TF/MXNet models: the protocol gives tensors by name, ids as ints
    from . import adapters, generation  # noqa: F401 - each kind's adapter registers itself when defined

    adapter = ADAPTERS.get(module.kind)
    if adapter is None:
        raise InputError(f"model {name!r}: a {module.kind!r} file cannot be served on its own (it runs inside the "
                         f"user's model code); serve a file traced whole, with buckets, packing or generation")
    front = module.text or module.image
    if text and front is not None and not front.task.endswith("generation"):  # generators take ids
        from .text import TextServable

        served = TextServable(name, module, adapter(name, module))
    else:
        served = adapter(name, module)
    served.warm_up()
    return served
