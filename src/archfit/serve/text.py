"""Text requests for files that carry a tokenizer (text/io.py): KServe v2 BYTES tensors in, the
task's answers out. Each text becomes one row of the file's own adapter (its bucket, its exact
length, its packed rows), so texts from many requests share engine calls the way token requests
do; what Triton users build as an ensemble (a tokenizer model before the encoder) is one model here."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from ..text.io import plain
from .protocol import RequestError, Strings
from .servable import BatchStats, Item, Servable, TensorMeta

MAX_TEXTS = 64  # texts one run of the text adapter takes from the queue


class TextServable(Servable):
    """A file with a text front, served as text: input 'text' (BYTES [-1]; question-answering
    takes 'question' and 'context'), outputs named for the task."""

    capacity = MAX_TEXTS

    def __init__(self, name: str, module, inner: Servable):
        super().__init__(name, module)
        # the file's front: its tokenizer (text/io.py), or its image processor (text/image.py, input 'image')
        self.inner, self.text = inner, module.text or module.image
        self.images = module.text is None
        names = ("question", "context") if self.text.task == "question-answering" else \
            ("image",) if self.images else ("text",)
        self.inputs = [TensorMeta(n, "BYTES", (-1,)) for n in names]
        self.outputs = self._outputs()

    def warm_up(self) -> None:
        self.inner.warm_up()

    def _outputs(self) -> list[TensorMeta]:
        text = self.text
        if text.embedding:
            encoding = text.encode(["a"])[0]
            probe = self.inner.run_items([self.inner.prepare(text.feed(encoding, self.inner.fixed_length()))])
            return [TensorMeta("embedding", "FP32", (-1, text.answer(probe[0], encoding).shape[-1]))]
        if text.task in ("text-classification", "image-classification"):
            return [TensorMeta("label", "BYTES", (-1,)), TensorMeta("score", "FP32", (-1,))]
        return [TensorMeta(text.answer_name, "BYTES", (-1,))]  # one JSON answer per text

    def prepare(self, given, parameters=None) -> Item:
        self.names(given)
        columns = []
        for meta in self.inputs:
            value = given[meta.name]
            if not isinstance(value, Strings) or len(value.shape) != 1 or not value.raw:
                raise RequestError(f"input {meta.name!r}: expected BYTES [-1] (one {meta.name} per element), got "
                                   f"{'BYTES' if isinstance(value, Strings) else 'a tensor'} "
                                   f"{list(getattr(value, 'shape', ()))}")
            if not self.images and len(value) != len(value.raw):
                raise RequestError(f"input {meta.name!r}: a BYTES element is not UTF-8 text")
            columns.append(value.raw if self.images else list(value))
        if len({len(c) for c in columns}) > 1:
            raise RequestError("inputs 'question' and 'context' must hold as many texts")
        texts = list(zip(*columns)) if len(columns) > 1 else columns[0]
        encodings = self.text.encode(texts)  # too long (truncation off): refused here, before queueing
        fixed = self.inner.fixed_length()
        rows = [self.inner.prepare(self.text.feed(e, fixed)) for e in encodings]
        return Item((rows, encodings), len(rows), None, sum(self.text.size(e) for e in encodings))

    def run(self, items):
        rows = [r for it in items for r in it.inputs[0]]
        encodings = [e for it in items for e in it.inputs[1]]
        outputs = self.inner.run_items(rows)
        answers = [self.text.answer(o, e) for o, e in zip(outputs, encodings)]
        out, start = [], 0
        for it in items:
            out.append(self._tensors(answers[start:start + it.rows]))
            start += it.rows
        n = len(rows)
        return out, BatchStats("text", n, self.capacity, sum(it.size for it in items),
                               math.ceil(n / self.capacity) * self.capacity)

    def run_all(self, items):
        return self.run(items)[0]  # every text of the chunk at once: the inner kind groups them by bucket

    def _tensors(self, answers: list) -> dict:
        if self.text.embedding:
            return {"embedding": torch.from_numpy(np.stack(answers))}
        if self.text.task in ("text-classification", "image-classification"):
            return {"label": Strings([a["label"] for a in answers], (len(answers),)),
                    "score": torch.tensor([a["score"] for a in answers], dtype=torch.float32)}
        texts = [json.dumps(plain(a)) for a in answers]
        return {self.text.answer_name: Strings(texts, (len(texts),))}

