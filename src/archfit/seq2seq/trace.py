"""archfit.trace_seq2seq: a transformers encoder-decoder compiled for generation, each fixed-shape
part (parts.py) through archfit.trace, the loop on the host around them (generate.py)."""
from __future__ import annotations

import copy
import dataclasses

import torch

from ..core.accuracy import Accuracy
from ..shapes import Buckets
from .generate import Seq2SeqModule
from .parts import DecoderStep, EncodeCross, check_seq2seq, step_example


def trace_seq2seq(model: torch.nn.Module, target="openvino", *, source_buckets=(16, 32, 64), batch_size: int = 1,
                  num_beams: int = 1, max_new_tokens: int = 64, precision: str | None = None, cache: bool = True,
                  check_payoff: bool = True, validate: bool = True, progress=None,
                  accuracy: str | Accuracy | None = None):
    """Compile a transformers encoder-decoder for generation: the encoder (with the decoder's
    cross-attention projections) once per source-length bucket, the decoder step once at the
    largest source bucket with a `max_new_tokens`-long key/value cache, for `batch_size` rows
    and, when num_beams > 1, also for batch_size * num_beams rows. `source_buckets` is a
    tuple of lengths or an archfit.Buckets over input_ids dim 1 (e.g. chosen from a sample of
    source lengths). accuracy: a task gate for the decoder step (e.g. "tokens": the greedy next
    token agrees with eager's); the encoder keeps the elementwise tolerance. Returns a
    Seq2SeqModule whose `generate` takes transformers' arguments."""
    from ..pipeline import trace  # the straight line, once per part (pipeline imports this package lazily)
    from ..text.directory import generation_text, is_directory, load_generator

    directory = model if is_directory(model) else None
    if directory is not None:  # a text2text-generation directory on disk
        model = load_generator(directory)
    check_seq2seq(model)
    model = model.eval()
    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    if not isinstance(source_buckets, Buckets):
        source_buckets = Buckets({"input_ids": 1, "attention_mask": 1}, sizes=tuple(source_buckets))
    pads = {"input_ids": pad, "attention_mask": 0} | dict(source_buckets.pad_values)
    source_buckets = dataclasses.replace(source_buckets, pad_values=pads)
    common = dict(precision=precision, cache=cache, check_payoff=check_payoff, validate=validate, progress=progress)
    top = source_buckets.top()
    # varied ordinary tokens (no special ids: 0-3 and the last are pad/eos/unk in these vocabularies)
    tokens = 4 + (torch.arange(batch_size * top) * 7) % (config.vocab_size - 5)
    example = {"input_ids": tokens.view(batch_size, top),
               "attention_mask": torch.ones(batch_size, top, dtype=torch.long)}
    if progress is not None:
        progress("compiling the encoder per source bucket")
    encoder = trace(EncodeCross(model), example, target, buckets=source_buckets, dynamic_batch=True, name="encoder",
                    **common)
    steps = {}
    for rows in sorted({batch_size, batch_size * num_beams}):
        if progress is not None:
            progress(f"compiling the decoder step for {rows} rows")
        example = step_example(model, rows, encoder.sizes[-1], max_new_tokens, config.decoder_start_token_id)
        steps[rows] = trace(DecoderStep(model), example, target, name="decoder step", accuracy=accuracy, **common)
    module = Seq2SeqModule(encoder, steps, copy.deepcopy(model.generation_config), max_new_tokens, encoder.sizes[-1])
    if directory is not None:  # its tokenizer, when it has one: texts in, texts out
        module.text = generation_text(directory, module.source_len)
    return module
