"""The adapters of the module kinds a file may hold (the contract is servable.Servable): which
requests share an engine call, and how a group runs and is cut back into one answer each. Each
registers under its kind's name when defined; the batching itself is the kind's own methods."""
from __future__ import annotations

import math

import torch

from ..core.capture import TensorSpec, output_names
from ..core.module import CompiledModule, check_values
from .protocol import RequestError, datatype
from .servable import BatchStats, Item, Servable, TensorMeta, warm_buckets


class StaticServable(Servable):
    """One static-shape module: requests of exactly the compiled shapes, one per engine call."""

    serves = "static"

    def __init__(self, name: str, module: CompiledModule):
        super().__init__(name, module)
        self.specs = list(module.inputs)
        self.output_names = output_names(module.out_spec, module.out_spec.num_leaves)
        self.inputs = [TensorMeta(s.name, datatype(s.dtype), self.meta_shape(s)) for s in self.specs]
        self.outputs = self._probe_outputs()

    def meta_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        return tuple(spec.shape)

    def largest(self) -> CompiledModule:
        """The static module at the largest shape the file takes."""
        return self.module

    def _probe_outputs(self) -> list[TensorMeta]:
        """Output dtypes and shapes are not stored in the file; the engines' own output specs would
        do, but the host graph between them may change them: read them off one run on zeros."""
        flat = [torch.zeros(s.shape, dtype=s.dtype) for s in self.specs]
        with torch.no_grad():
            out = self.largest().run_flat(flat)
        return [TensorMeta(n, datatype(o.dtype), self.out_shape(i, tuple(o.shape)))
                for i, (n, o) in enumerate(zip(self.output_names, out))]

    def out_shape(self, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def prepare(self, given, parameters=None) -> Item:
        self.check_inputs(given)
        flat = [given[s.name] for s in self.specs]
        for spec, t in zip(self.specs, flat):
            check_values(spec, t, True)  # ids in range, no NaN/Inf: refused here, not in the batch
        return self.item(flat)

    def item(self, flat: list[torch.Tensor]) -> Item:
        return Item(flat, 1, None)

    def run(self, items):
        with torch.no_grad():
            out = [dict(zip(self.output_names, self.module.run_flat(it.inputs))) for it in items]
        return out, BatchStats("all", len(items), 1, len(items), len(items))


class BucketedServable(StaticServable):
    """Buckets over one varying size and/or a dynamic batch: requests are grouped by bucket, padded
    to it and stacked along the batch up to the compiled batch (partial batches padded as the file
    does), then each answer is cut back to its own rows and length."""

    serves = "bucketed"

    def __init__(self, name: str, module):
        self.padding = module.padding
        self.varying = dict(module.padding.dims)
        self.batched = module.padding.batch_follow is not None
        super().__init__(name, module)
        self.capacity = module.batch if self.batched else 1

    def meta_shape(self, spec):
        shape = list(spec.shape)
        if spec.name in self.varying:
            shape[self.varying[spec.name]] = -1
        if self.batched:
            shape[0] = -1
        return tuple(shape)

    def out_shape(self, index, shape):
        shape = list(shape)
        for d in self.padding.follow[index]:
            shape[d] = -1
        if self.batched:
            for d in self.padding.batch_follow[index]:
                shape[d] = -1
        return tuple(shape)

    def largest(self) -> CompiledModule:
        return self.module.buckets[str(self.module.sizes[-1])]

    def warm_up(self) -> None:
        warm_buckets(self.module)

    def item(self, flat):
        size = self.module.size_of(flat)  # refuses lengths over the largest bucket, in one line
        return Item(flat, flat[0].shape[0] if self.batched else 1, self.module.bucket_for(size), size)

    def run(self, items):
        from ..shapes.dispatch import cut, resize

        bucket, m = items[0].key, self.module
        rows = sum(it.rows for it in items)
        stats = BatchStats(str(bucket), rows, self.capacity, sum(it.rows * it.size for it in items),
                           (m.rows_computed(rows) if self.batched else rows) * bucket)
        with torch.no_grad():
            if not self.batched or len(items) == 1:
                out = [m.run_batch(it.inputs) if self.batched else m.run_bucket(it.inputs) for it in items]
                return [dict(zip(self.output_names, o)) for o in out], stats
            index = {s.name: i for i, s in enumerate(self.specs)}
            padded = [list(it.inputs) for it in items]
            for name, dim in self.varying.items():
                pad = self.padding.pad_values.get(name, 0)
                for p in padded:
                    p[index[name]] = resize(p[index[name]], dim, bucket, pad)
            out = m.run_batch([torch.cat(ts) for ts in zip(*padded)])
        answers, start = [], 0
        for it in items:
            answers.append({n: cut(o.narrow(bf[0], start, it.rows), f, it.size)
                            for n, o, f, bf in zip(self.output_names, out, self.padding.follow,
                                                   self.padding.batch_follow)})
            start += it.rows
        return answers, stats


class DynamicServable(Servable):
    """Bounded dynamic length (OpenVINO): requests of one exact length share an engine call."""

    serves = "dynamic"

    def __init__(self, name, module):
        super().__init__(name, module)
        self.capacity = module.rows
        self.inputs = [TensorMeta(s.name, datatype(s.dtype), (-1, -1)) for s in module.inputs]
        given = {s.name: torch.zeros((1, module.low), dtype=s.dtype) for s in module.inputs}
        with torch.no_grad():
            out = module(**given)
        self.outputs = [TensorMeta(k, datatype(v.dtype), (-1, -1, *v.shape[2:])) for k, v in out.items()]

    def warm_up(self) -> None:  # construction ran the shortest length; the longest allocates the most
        with torch.no_grad():
            self.module(**{s.name: torch.ones((self.capacity, self.module.high), dtype=s.dtype)
                           for s in self.module.inputs})

    def prepare(self, given, parameters=None):
        tied = self.check_inputs(given)
        for spec in self.module.inputs:
            check_values(spec, given[spec.name], True)
        length = tied[1]
        if length > self.module.high:
            raise RequestError(f"input {self.module.inputs[0].name!r} has length {length}, more than the compiled "
                               f"{self.module.high}; cut it")
        return Item(given, tied[0], length, length)

    def run(self, items):
        rows = sum(it.rows for it in items)
        length = items[0].key
        with torch.no_grad():
            out = self.module(**{k: torch.cat([it.inputs[k] for it in items]) for k in items[0].inputs})
        answers, start = [], 0
        for it in items:
            answers.append({k: v[start:start + it.rows] for k, v in out.items()})
            start += it.rows
        return answers, BatchStats(str(length), rows, self.capacity, rows * length,
                                   math.ceil(rows / self.capacity) * self.capacity * length)


class PackedServable(Servable):
    """Packed encoder: every queued sequence, whatever its length, shares the packed rows of one
    run (the server packs across requests, which is where packing pays most)."""

    serves = "packed"

    def __init__(self, name, module):
        super().__init__(name, module)
        self.capacity = module.spec.lookahead
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if module.spec.token_types else [])
        self.inputs = [TensorMeta(n, "INT64", (-1, -1)) for n in names]
        per = module.run([torch.ones(2, dtype=torch.long)])
        self.outputs = [TensorMeta(k, datatype(v.dtype), (-1, -1, *v.shape[2:]) if k != "pooled" else (-1, *v.shape[1:]))
                        for k, v in per[0].items()]

    @property
    def budget(self) -> int:
        # tokens, not sequences: a group is what one engine call's rows hold, so each request is
        # answered when its call ends rather than when every queued sequence's call has
        return self.module.rows * self.module.spec.max_len

    def cost(self, item) -> int:
        return item.size

    def prepare(self, given, parameters=None):
        from ..shapes.packed import as_sequence

        self.check_inputs(given, optional=("attention_mask", "token_type_ids"))
        for spec in self.module.inner.inputs:  # ids outside the tables refused here, not in the shared rows
            if spec.name in given:
                check_values(spec, given[spec.name], False)
        ids = given["input_ids"]
        seqs = []
        for b in range(ids.shape[0]):
            seq = {k: v[b] for k, v in given.items()}
            s = as_sequence(seq, b, self.module.spec.token_types)
            n = s["input_ids"].shape[0]
            if n > self.module.spec.max_len:
                raise RequestError(f"input 'input_ids' row {b} has {n} tokens, more than the packed rows' "
                                   f"{self.module.spec.max_len}; cut it")
            seqs.append(s)
        return Item(seqs, len(seqs), None, sum(s["input_ids"].shape[0] for s in seqs),
                    parameters={"shape": tuple(ids.shape)})

    def run(self, items):
        from ..shapes.packed import repad

        positions: list = []
        per = self.module.run([s for it in items for s in it.inputs], positions)
        answers, start = [], 0
        for it in items:
            answers.append(repad(per[start:start + it.rows], it.parameters["shape"]))
            start += it.rows
        rows = sum(n for _, n, _ in positions)
        return answers, BatchStats("packed", rows, rows, sum(r for _, _, r in positions),
                                   sum(s * n for s, n, _ in positions))


class Seq2SeqServable(Servable):
    """Generation: one request per run of the host loop; generate() arguments come from the
    request's parameters (max_new_tokens, num_beams, ...)."""

    serves = "seq2seq"
    inputs = [TensorMeta("input_ids", "INT64", (-1, -1)), TensorMeta("attention_mask", "INT64", (-1, -1))]
    outputs = [TensorMeta("output_ids", "INT64", (-1, -1))]

    def prepare(self, given, parameters=None):
        from ..seq2seq.loop import GENERATE_ARGUMENTS

        tied = self.check_inputs(given, optional=("attention_mask",))
        kwargs = {k: v for k, v in (parameters or {}).items() if k in GENERATE_ARGUMENTS}
        self.module.generation_config_for(dict(kwargs))  # refuse bad generation arguments before queueing
        if tied[1] > self.module.source_len:
            raise RequestError(f"input 'input_ids' has {tied[1]} source tokens, more than the largest source bucket "
                               f"{self.module.source_len}; cut it")
        return Item(given, tied[0], None, tied[1], kwargs)

    def warm_up(self) -> None:  # every source bucket's encoder, and the decoder step at each row count
        warm_buckets(self.module.encoder)
        for rows in self.module.rows:
            self.module.generate(torch.ones((rows, 1), dtype=torch.long), max_new_tokens=2)

    def run(self, items):
        out = [{"output_ids": self.module.generate(it.inputs["input_ids"], it.inputs.get("attention_mask"),
                                                   **it.parameters)} for it in items]
        return out, BatchStats("all", sum(it.rows for it in items), self.capacity, len(items), len(items))
