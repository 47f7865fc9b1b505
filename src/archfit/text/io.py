"""Text in, answers out: the tokenizer and the task's post-processing a compiled file carries
when it was compiled from a directory with a tokenizer. The tokenizer is its tokenizer.json
(data, read by the `tokenizers` library; never code); the rest is plain fields in the manifest.

Texts run through the module's own batching (the server's adapter for its kind: buckets, a
dynamic batch, packed rows), so Python calls, `archfit run --text` and `archfit serve` give the
same answers for the same text."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ArtifactError, InputError

MAX_TOKENIZER_BYTES = 64 << 20
QA_MAX_ANSWER = 30  # tokens: the longest answer span question-answering considers (as transformers' pipeline)


@dataclass(frozen=True)
class TextIO:
    """How a module takes text: the tokenizer, the graph's token inputs, the longest text it takes
    (in tokens; longer ones are cut to it when `truncate`, else refused) and the task's answers."""

    task: str
    tokenizer: str  # tokenizer.json
    inputs: tuple[str, ...]  # input_ids, attention_mask[, token_type_ids]
    max_length: int
    pad_id: int = 0
    labels: tuple[str, ...] = ()  # id2label (text- and token-classification)
    multi_label: bool = False  # sigmoid per label instead of a softmax
    embedding: bool = False  # a sentence encoder: output 'embedding', one vector per text
    truncate: bool = True
    # a packed sentence encoder's pooling, done here per text from its token states (TaskModel.tokens_only)
    pooling: tuple[str, ...] = ()
    normalize: bool = False

    @property
    def answer_name(self) -> str:
        """What one text's answer is called (a JSON key, a served output)."""
        if self.embedding:
            return "embedding"
        return {"feature-extraction": "last_hidden_state", "text-classification": "label",
                "token-classification": "tokens", "fill-mask": "masks", "question-answering": "answer",
                "text2text-generation": "generated_text", "text-generation": "generated_text"}[self.task]

    @cached_property
    def _tok(self):
        from tokenizers import Tokenizer

        from .sentencepiece import MarianPieces, is_document

        tok = MarianPieces(self.tokenizer) if is_document(self.tokenizer) else Tokenizer.from_str(self.tokenizer)
        tok.no_padding()  # padding is the module's business (its bucket, its packed rows)
        if self.truncate:  # a prompt keeps its end: the next token follows it
            tok.enable_truncation(self.max_length, direction="left" if self.task == "text-generation" else "right")
        else:
            tok.no_truncation()
        return tok

    def fitted(self, longest: int | None) -> "TextIO":
        """This front for a compiled module whose longest sequence is `longest` tokens."""
        return replace(self, max_length=min(self.max_length, longest or self.max_length))

    def buckets(self, sizes):
        """Buckets over the token inputs' length (dim 1) at `sizes`, ids padded with the pad id."""
        from ..shapes import Buckets

        return Buckets({n: 1 for n in self.inputs}, sizes=tuple(int(s) for s in sizes),
                       pad_values={"input_ids": self.pad_id})

    # -- texts to token inputs ----------------------------------------------------------------
    def encode(self, texts: Sequence[Any]) -> list:
        """tokenizers' Encodings of `texts` (strings, or (question, context) pairs for question-answering)."""
        if self.task == "question-answering":
            if not all(isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t)
                       for t in texts):
                raise InputError("question-answering takes (question, context) pairs of strings")
            encodings = self._tok.encode_batch([tuple(t) for t in texts])
        else:
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise InputError(f"text {bad} is a {type(texts[bad]).__name__}; the model takes strings")
            encodings = self._tok.encode_batch(list(texts))
        for i, e in enumerate(encodings):
            if len(e.ids) > self.max_length:
                raise InputError(f"text {i} has {len(e.ids)} tokens, more than the {self.max_length} this model takes; "
                                 f"shorten it, or compile with a longer length or bucket")
        return encodings

    def size(self, encoding) -> int:
        """Positions one text takes (the padding metric's real positions)."""
        return len(encoding.ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Generated token ids as text, special tokens left out."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def feed(self, encoding, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """One encoding as the graph's inputs, one row ([1, n]; [1, pad_to] padded for a static module)."""
        n = len(encoding.ids)
        size = max(n, pad_to or 0)
        columns = {"input_ids": (encoding.ids, self.pad_id), "attention_mask": (encoding.attention_mask, 0),
                   "token_type_ids": (encoding.type_ids, 0)}
        out = {}
        for name in self.inputs:
            values, pad = columns[name]
            row = np.full((1, size), pad, dtype=np.int64)
            row[0, :n] = values
            out[name] = torch.from_numpy(row)
        return out

    def example(self, batch: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
        """Example inputs for tracing: ids drawn over the vocabulary between the tokenizer's own
        first and last tokens (its [CLS]/[SEP]), every position attended."""
        ends = self._tok.encode("").ids or [self.pad_id]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(min(vocab - 1, 5), vocab, (batch, length), generator=g)
        ids[:, 0], ids[:, -1] = ends[0], ends[-1]
        out = {"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long)}
        if "token_type_ids" in self.inputs:
            out["token_type_ids"] = torch.zeros(batch, length, dtype=torch.long)
        return out

    # -- outputs to answers -------------------------------------------------------------------
    def answer(self, outputs: dict[str, torch.Tensor], encoding) -> Any:
        """One text's answer from its row of the module's outputs."""
        n = len(encoding.ids)
        if self.embedding and self.pooling:  # pooled here: the module gave this text's token states
            from .directory import sentence_embedding

            tokens = outputs["last_hidden_state"][:, :n].float()
            return sentence_embedding(tokens, torch.ones(tokens.shape[:2]), self.pooling, self.normalize)[0].numpy()
        if self.embedding:
            return outputs["embedding"][0].float().numpy()
        if self.task == "feature-extraction":
            return outputs["last_hidden_state"][0, :n].float().numpy()
        if self.task == "text-classification":
            return label_scores(outputs["logits"][0].float(), self.labels, self.multi_label)
        if self.task == "token-classification":
            return self._token_labels(outputs["logits"][0, :n].float(), encoding)
        if self.task == "fill-mask":
            return self._masks(outputs["logits"][0, :n].float(), encoding)
        return self._span(outputs["start_logits"][0, :n].float(), outputs["end_logits"][0, :n].float(), encoding)

    def _token_labels(self, logits: torch.Tensor, encoding) -> list[dict]:
        p = probabilities(logits, self.multi_label)
        out = []
        for i, (token, special) in enumerate(zip(encoding.tokens, encoding.special_tokens_mask)):
            if special:
                continue
            best = int(p[i].argmax())
            start, end = encoding.offsets[i]
            out.append({"token": token, "label": self.labels[best], "score": float(p[i, best]), "start": start,
                        "end": end})
        return out

    def _masks(self, logits: torch.Tensor, encoding, top: int = 5) -> list[list[dict]]:
        mask = self._mask_id
        out = []
        for i, token_id in enumerate(encoding.ids):
            if token_id == mask:
                p = torch.softmax(logits[i], -1)
                scores, ids = p.topk(top)
                out.append([{"token": self._tok.id_to_token(int(t)), "score": float(s)} for s, t in zip(scores, ids)])
        return out

    @cached_property
    def _mask_id(self) -> int | None:
        for token in ("[MASK]", "<mask>"):
            found = self._tok.token_to_id(token)
            if found is not None:
                return found
        return None

    def _span(self, start: torch.Tensor, end: torch.Tensor, encoding) -> dict:
        """The best answer span inside the context (the pair's second sequence), as transformers'
        question-answering pipeline picks it: start <= end, at most QA_MAX_ANSWER tokens."""
        context = torch.tensor([s == 1 for s in encoding.sequence_ids])
        ps, pe = torch.softmax(start, -1), torch.softmax(end, -1)
        scores = (ps[:, None] * pe[None, :]).triu().tril(QA_MAX_ANSWER - 1)
        scores = scores * context[:, None] * context[None, :]
        best = int(scores.argmax())
        i, j = divmod(best, scores.shape[1])
        return {"start": encoding.offsets[i][0], "end": encoding.offsets[j][1], "score": float(scores[i, j])}

    # -- in a file ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The manifest's plain fields (the tokenizer goes in its own member)."""
        return {k: v for k, v in asdict(self).items() if k != "tokenizer"}

    @classmethod
    def from_file(cls, value: Any, tokenizer: bytes | None, source: str) -> "TextIO":
        from .directory import POOLING

        fields = {"task": str, "inputs": list, "max_length": int, "pad_id": int, "labels": list,
                  "multi_label": bool, "embedding": bool, "truncate": bool}
        later = {"pooling": list, "normalize": bool}  # fields newer files have; older ones take the defaults
        if (not isinstance(value, dict) or tokenizer is None or len(tokenizer) > MAX_TOKENIZER_BYTES
                or any(not isinstance(value.get(k), t) for k, t in fields.items())
                or any(k in value and not isinstance(value[k], t) for k, t in later.items())
                or not set(value["inputs"]) <= {"input_ids", "attention_mask", "token_type_ids"}
                or not set(value.get("pooling", ())) <= set(POOLING)
                or not all(isinstance(x, str) for x in value["labels"])):
            raise ArtifactError(f"{source}: its text front (tokenizer and task) is malformed; save the model again")
        try:
            text = tokenizer.decode("utf-8")
            json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise ArtifactError(f"{source}: its tokenizer is not JSON; save the model again") from None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items() if k in fields or k in later},
                   tokenizer=text)


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)


def label_scores(logits: torch.Tensor, labels: Sequence[str], multi_label: bool) -> dict:
    """A classifier's answer, text's or image's: its label, its score and every label's score."""
    p = probabilities(logits, multi_label)
    best = int(p.argmax())
    return {"label": labels[best], "score": float(p[best]), "scores": {label: float(s) for label, s in zip(labels, p)}}


def plain(value):
    """An answer as JSON values (numpy arrays as lists)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def run_texts(module, texts: Sequence[Any]) -> list[Any]:
    """Answers of `module` (a module with a text front) for `texts`, in order."""
    text: TextIO = module.text
    adapter = text_adapter(module)
    encodings = text.encode(texts)
    fixed = adapter.fixed_length()
    items = [adapter.prepare(text.feed(e, fixed)) for e in encodings]
    outputs = adapter.run_items(items)
    return [text.answer(o, e) for o, e in zip(outputs, encodings)]


def text_adapter(module):
    """The serving adapter of the module's kind, made once per module: how its rows are batched."""
    adapter = module.__dict__.get("_text_adapter")
    if adapter is None:
        from ..serve.servable import servable

        adapter = servable("text", module, text=False)
        rows = adapter.inputs[0].shape[0] if adapter.inputs else -1
        if rows > 1:
            raise InputError(f"this module was compiled at batch {rows}; text runs one row per text: compile at "
                             f"batch 1, or with a dynamic batch, buckets or packing")
        module.__dict__["_text_adapter"] = adapter
    return adapter
