"""Tokenizers that exist only as SentencePiece models beside a vocabulary (MarianMT: source.spm,
target.spm, vocab.json; transformers has no tokenizers-library form of them), carried in a file
as one JSON document (the models base64-encoded: data, read by the `sentencepiece` library) and
run as MarianTokenizer does: pieces of the source model mapped through the vocabulary, then </s>;
ids decoded to pieces through the vocabulary, joined by the target model."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

KEY = "archfit_sentencepiece"


def marian_document(root: Path) -> str | None:
    """A Marian directory's tokenizer as the JSON document a file carries, or None if it is not one."""
    files = [root / n for n in ("source.spm", "target.spm", "vocab.json")]
    if not all(f.is_file() for f in files):
        return None
    vocab = json.loads(files[2].read_text(encoding="utf-8"))
    config = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8")) \
        if (root / "tokenizer_config.json").is_file() else {}
    specials = {k: config.get(k, d) if isinstance(config.get(k, d), str) else d
                for k, d in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>"))}
    return json.dumps({KEY: {"source": base64.b64encode(files[0].read_bytes()).decode(),
                             "target": base64.b64encode(files[1].read_bytes()).decode(),
                             "vocab": vocab, **specials}})


def is_document(text: str) -> bool:
    return text.lstrip().startswith('{"' + KEY)


@dataclass
class Encoding:
    """What TextIO reads of a tokenizers Encoding."""

    ids: list[int]
    attention_mask: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.attention_mask = self.attention_mask or [1] * len(self.ids)
        self.type_ids = self.type_ids or [0] * len(self.ids)


class MarianPieces:
    """The part of a tokenizers.Tokenizer TextIO uses, over SentencePiece models and a vocabulary."""

    def __init__(self, document: str):
        import sentencepiece as spm

        from ..errors import ArtifactError

        try:
            d = json.loads(document)[KEY]
            self.source = spm.SentencePieceProcessor(model_proto=base64.b64decode(d["source"]))
            self.target = spm.SentencePieceProcessor(model_proto=base64.b64decode(d["target"]))
            self.vocab: dict[str, int] = {str(k): int(v) for k, v in d["vocab"].items()}
            self.eos, self.unk, self.pad = (self.vocab[d[k]] for k in ("eos_token", "unk_token", "pad_token"))
        except Exception as e:  # noqa: BLE001 - a crafted or damaged member: one line
            raise ArtifactError(f"its SentencePiece tokenizer is malformed ({type(e).__name__}); save the model "
                                f"again") from None
        self.pieces = {v: k for k, v in self.vocab.items()}
        self.max_length: int | None = None

    # configuration calls TextIO makes of a tokenizers.Tokenizer
    def no_padding(self):
        pass

    def enable_truncation(self, max_length: int, direction: str = "right"):
        self.max_length = max_length

    def no_truncation(self):
        self.max_length = None

    def encode(self, text: str) -> Encoding:
        ids = [self.vocab.get(p, self.unk) for p in self.source.encode(text, out_type=str)]
        if self.max_length is not None:
            ids = ids[:self.max_length - 1]
        return Encoding(ids + [self.eos])

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        special = {self.eos, self.pad, self.unk} if skip_special_tokens else set()
        pieces = [self.pieces[i] for i in ids if i in self.pieces and i not in special]
        return self.target.decode_pieces(pieces).replace("\u2581", " ").strip()  # as MarianTokenizer decodes

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.pieces.get(i)
