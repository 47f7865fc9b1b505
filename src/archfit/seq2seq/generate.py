"""Seq2seq generation with compiled parts: the decoding loop stays on the host (Python), the
encoder runs compiled per source-length bucket, the decoder step runs compiled at fixed shapes
against a preallocated key/value cache. Greedy and beam search give the same tokens as
transformers' `generate`: its own logits processors, stopping criteria and beam-search
bookkeeping are called here, only the model calls are ours."""
from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from ..core.compile import share_cores
from ..core.module import ArchfitModule
from ..errors import InputError
from .loop import beam_search, greedy, logits_processors, pad_chunks, padded, prepare_config, stopping_criteria

class Seq2SeqModule(ArchfitModule):
    """Returned by `archfit.trace_seq2seq`: `generate(input_ids, attention_mask, ...)` as in
    transformers, on the compiled encoder and decoder step."""

    kind = "seq2seq"
    takes = "generation"

    def __init__(self, encoder, steps: dict[int, Any], generation_config: GenerationConfig, max_new_tokens: int,
                 source_len: int, report=None, manifest: dict | None = None):
        step = steps[max(steps)]
        super().__init__(step.target, step.precision, step.emulated, report if report is not None else step.report,
                         manifest)
        self.encoder = encoder  # BucketedModule over the source length
        self.steps = torch.nn.ModuleDict({str(r): steps[r] for r in sorted(steps)})  # rows -> CompiledModule
        self.generation_config = generation_config
        self.max_new_tokens = max_new_tokens  # the decoder cache's length
        self.source_len = source_len  # decoder steps take the cross keys/values padded to this length
        self.layers, _rows, self.heads, _t, self.head_dim = step.inputs[2].shape
        share_cores(self)  # the loop computes between engine calls: logits processing, cache writes, beams

    def file_components(self) -> dict[str, ArchfitModule]:
        return {"encoder": self.encoder} | {f"step_{r}": self.steps[str(r)] for r in self.rows}

    def file_meta(self) -> dict:
        return {"config": self.generation_config.to_dict(), "max_new_tokens": self.max_new_tokens,
                "source_len": self.source_len}

    @classmethod
    def from_file(cls, components, meta, manifest, model=None, source="the file") -> "Seq2SeqModule":
        steps = {int(name.removeprefix("step_")): m for name, m in components.items() if name.startswith("step_")}
        return cls(components["encoder"], steps, GenerationConfig.from_dict(meta["config"]), meta["max_new_tokens"],
                   meta["source_len"], manifest=manifest)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.steps)

    def generation_config_for(self, kwargs: dict) -> GenerationConfig:
        """The generation config a generate(**kwargs) call runs with; refuses, in one line, an
        argument archfit's compiled generation does not take or a length past the compiled cache."""
        # as transformers does: the decoder prompt is the start token, so max_length counts it
        config = prepare_config(self.generation_config, kwargs, prompt_len=1)
        if config.do_sample:
            raise InputError("generate: do_sample=True is not supported for seq2seq models; archfit runs greedy and "
                             "beam search for them")
        if config.max_length - 1 > self.max_new_tokens:
            raise InputError(f"generate: up to {config.max_length - 1} new tokens asked, but the decoder cache was "
                             f"compiled for {self.max_new_tokens}; pass max_new_tokens<={self.max_new_tokens} or "
                             f"trace with a larger max_new_tokens")
        return config

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, expand: int, rows: int):
        """Cross keys/values and source mask, padded to the compiled source length and rows."""
        if input_ids.shape[1] > self.source_len:
            raise InputError(f"input 'input_ids' has {input_ids.shape[1]} source tokens, more than the largest "
                             f"source bucket {self.source_len}; cut the input or trace with larger buckets")
        keys, values = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        mask = attention_mask
        if expand > 1:  # every beam of a source reads the same encoder output, as in transformers
            keys, values = keys.repeat_interleave(expand, 1), values.repeat_interleave(expand, 1)
            mask = mask.repeat_interleave(expand, 0)
        pad_s, pad_r = self.source_len - keys.shape[3], rows - keys.shape[1]
        if pad_s or pad_r:
            keys = torch.nn.functional.pad(keys, (0, 0, 0, pad_s, 0, 0, 0, pad_r))
            values = torch.nn.functional.pad(values, (0, 0, 0, pad_s, 0, 0, 0, pad_r))
            # padded rows attend to one zero key (a fully masked row would be NaN); their tokens are dropped
            mask = torch.nn.functional.pad(mask, (0, pad_s, 0, pad_r))
            mask[mask.shape[0] - pad_r:, 0] = 1
        return keys.contiguous(), values.contiguous(), mask.contiguous()

    @torch.no_grad()
    def answer(self, texts, **kwargs) -> list[str]:
        """Generated texts for source `texts` (a file compiled from a directory with a tokenizer):
        each cut at the largest source bucket, the batch padded and masked, decoded without
        special tokens; generate()'s arguments as keywords. module(texts) does the same."""

        if self.text is None:
            raise InputError("this generator takes token ids (generate(input_ids)): it was not compiled from a "
                             "directory with a tokenizer")
        encodings = self.text.encode(list(texts))
        ids, mask = padded([e.ids for e in encodings], self.generation_config.pad_token_id or 0, left=False)
        return [self.text.decode(row) for row in self.generate(ids, attention_mask=mask, **kwargs).tolist()]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Token ids (batch * num_return_sequences, length), starting with the decoder start token."""
        config = self.generation_config_for(dict(kwargs))
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise InputError(f"generate: input_ids must be int64 (batch, source length), got "
                             f"{tuple(input_ids.shape)} {input_ids.dtype}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, beams = input_ids.shape[0], config.num_beams
        most = max(self.rows) // beams
        if most < 1:
            raise InputError(f"generate: num_beams={beams}, but the decoder step was compiled for at most "
                             f"{max(self.rows)} rows; trace with num_beams>={beams}")
        if batch > most:  # in chunks the step holds; rows finished early are padded as transformers pads them
            parts = [self.generate(input_ids[i:i + most], attention_mask[i:i + most], **kwargs)
                     for i in range(0, batch, most)]
            return pad_chunks(parts, config)
        rows = min(r for r in self.rows if r >= batch * beams)  # exists: batch <= most, chunked above
        step = self.steps[str(rows)]
        run = _StepRunner(self, step, rows, batch * beams, *self._encode(input_ids, attention_mask, beams, rows))
        processors = logits_processors(config, input_ids, encoder_decoder=True, prompt_len=1)
        stopping = stopping_criteria(config)
        start = torch.full((batch * beams, 1), config.decoder_start_token_id, dtype=torch.long)
        if beams == 1:
            return greedy(run, start, processors, stopping, config)
        return beam_search(run, start, processors, stopping, config, batch)

    @classmethod
    def describe_file(cls, manifest: dict) -> list[str]:
        components, meta = manifest["components"], manifest["meta"]
        steps = [c for c in components if c.startswith("step_")]
        return [f"seq2seq generator: source buckets {components['encoder']['buckets']['sizes']}, decoder step "
                f"rows {', '.join(c.removeprefix('step_') for c in steps)}, key/value cache "
                f"{meta['max_new_tokens']} tokens (archfit generate FILE --ids ...)"]

    def summary(self) -> str:
        return (f"generation: encoder buckets over the source length {', '.join(map(str, self.encoder.sizes))}; "
                f"decoder step for {', '.join(map(str, self.rows))} row(s) (batch x beams) with a "
                f"{self.max_new_tokens}-token key/value cache; the decoding loop runs on the host")

    def extra_repr(self) -> str:
        return (f"target={self.target!r}, precision={self.precision!r}, source buckets={self.encoder.sizes}, "
                f"decoder rows={self.rows}, max_new_tokens={self.max_new_tokens}")


class _StepRunner:
    """Holds the key/value cache of one generate call and runs the compiled decoder step."""

    def __init__(self, module: Seq2SeqModule, step, rows: int, used: int, cross_keys, cross_values, mask):
        self.step, self.rows, self.used = step.graph_module, rows, used
        shape = (module.layers, rows, module.heads, module.max_new_tokens, module.head_dim)
        self.keys, self.values = torch.zeros(shape), torch.zeros(shape)
        self.cross = (cross_keys, cross_values, mask)
        step.check([torch.zeros(rows, 1, dtype=torch.long), torch.tensor(0), self.keys, self.values, *self.cross])

    def __call__(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        if ids.shape[0] < self.rows:
            ids = torch.cat([ids, ids[:1].expand(self.rows - ids.shape[0], 1)])
        logits, new_keys, new_values = self.step(ids, torch.tensor(position), self.keys, self.values, *self.cross)
        self.keys[:, :, :, position] = new_keys[:, :, :, 0]
        self.values[:, :, :, position] = new_values[:, :, :, 0]
        return logits[:self.used]

    def reorder(self, rows: torch.Tensor, filled: int) -> None:
        """Beam search moved beams: row i now continues row rows[i] (only filled slots matter)."""
        for cache in (self.keys, self.values):
            cache[:, :self.used, :, :filled] = cache[:, rows, :, :filled]
