"""Seq2seq generation with compiled parts: the decoding loop stays on the host (Python), the
encoder runs compiled per source-length bucket, the decoder step runs compiled at fixed shapes
against a preallocated key/value cache. Greedy and beam search give the same tokens as
transformers' `generate`: its own logits processors, stopping criteria and beam-search
bookkeeping are called here, only the model calls are ours."""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation import GenerationMixin, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from ..core.compile import share_cores
from ..core.module import ArchfitModule
from ..errors import InputError

# generate() arguments with an effect here (besides the token ids and their mask); anything
# else a GenerationConfig holds (sampling, constraints, assistants, ...) is refused by name.
GENERATE_ARGUMENTS = {
    "max_new_tokens", "max_length", "min_length", "min_new_tokens", "num_beams", "num_return_sequences",
    "early_stopping", "length_penalty", "no_repeat_ngram_size", "repetition_penalty", "bad_words_ids",
    "forced_bos_token_id", "forced_eos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "bos_token_id", "suppress_tokens", "begin_suppress_tokens", "encoder_no_repeat_ngram_size",
    "remove_invalid_values", "renormalize_logits", "do_sample", "use_cache",
}


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
        # transformers' _prepare_generation_config: the given config, then the model's values and
        # the library defaults where it leaves a field unset, then the keyword arguments
        config = copy.deepcopy(kwargs.pop("generation_config", None) or GenerationConfig())
        config.update(**self.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
        config.update(**self.generation_config._get_default_generation_params(), defaults_only=True)
        unknown = sorted(set(kwargs) - GENERATE_ARGUMENTS)
        if unknown:
            raise InputError(f"generate: argument {unknown[0]!r} is not supported by archfit's compiled generation; "
                             f"it takes {', '.join(sorted(GENERATE_ARGUMENTS))}")
        config.update(**kwargs)
        if config.do_sample:
            raise InputError("generate: do_sample=True is not supported; archfit runs greedy and beam search")
        if config.num_beams < 1 or config.num_return_sequences > config.num_beams:
            raise InputError(f"generate: num_return_sequences ({config.num_return_sequences}) must be at most "
                             f"num_beams ({config.num_beams})")
        if kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is not None:
            config.max_new_tokens = None
        # as transformers does: the decoder prompt is the start token, so max_length counts it
        if config.max_new_tokens is not None:
            config.max_length = config.max_new_tokens + 1
        if config.min_new_tokens is not None:
            config.min_length = config.min_new_tokens + 1
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
        from ..errors import InputError

        if self.text is None:
            raise InputError("this generator takes token ids (generate(input_ids)): it was not compiled from a "
                             "directory with a tokenizer")
        encodings = self.text.encode(list(texts))
        width = max(len(e.ids) for e in encodings)
        pad = self.generation_config.pad_token_id or 0
        ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in encodings])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encodings])
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
            fill = _fill_value(config)
            width = max(p.shape[1] for p in parts)
            return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts])
        rows = min(r for r in self.rows if r >= batch * beams)  # exists: batch <= most, chunked above
        step = self.steps[str(rows)]
        run = _StepRunner(self, step, rows, batch * beams, *self._encode(input_ids, attention_mask, beams, rows))
        processors = _logits_processors(config, input_ids)
        eos = None if config.eos_token_id is None else torch.tensor(config.eos_token_id).view(-1)
        stopping = StoppingCriteriaList([MaxLengthCriteria(config.max_length)])
        if eos is not None:
            stopping.append(EosTokenCriteria(eos))
        start = torch.full((batch * beams, 1), config.decoder_start_token_id, dtype=torch.long)
        if beams == 1:
            return _greedy(run, start, processors, stopping, config, eos)
        return _beam_search(run, start, processors, stopping, config, eos, batch)

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


def _logits_processors(config: GenerationConfig, input_ids: torch.Tensor) -> LogitsProcessorList:
    """transformers' own processor list for these settings (min length, forced BOS/EOS, bad
    words, n-gram blocking, ...), built by the method `generate` itself calls; it reads only
    `config.is_encoder_decoder` and a static helper from the model."""
    model = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=True),
                            _merge_criteria_processor_list=lambda default, custom: default)
    return GenerationMixin._get_logits_processor(model, config, input_ids_seq_length=1, encoder_input_ids=input_ids,
                                                 logits_processor=LogitsProcessorList(), device="cpu",
                                                 model_kwargs={})


def _first_eos(config: GenerationConfig) -> int | None:
    eos = config.eos_token_id  # one id or a list of them
    return None if eos is None else int(eos[0] if isinstance(eos, (list, tuple)) else eos)


def _pad_id(config: GenerationConfig) -> int:
    """transformers falls back to the first EOS id when there is no pad id."""
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = _first_eos(config)
    return eos if eos is not None else 0


def _fill_value(config: GenerationConfig) -> int:
    """What transformers' beam search fills unused positions with (greedy pads with _pad_id)."""
    if config.num_beams == 1:
        return _pad_id(config)
    eos = _first_eos(config)
    if eos is None:
        return -1
    return int(config.pad_token_id or eos)  # sic: `pad or eos` (a pad id of 0 gives eos), as transformers


def _greedy(run: _StepRunner, sequences, processors, stopping, config, eos) -> torch.Tensor:
    """transformers' greedy loop: finished rows keep emitting the pad token until all stop."""
    pad = _pad_id(config)
    unfinished = torch.ones(sequences.shape[0], dtype=torch.long)
    position = 0
    while True:
        logits = run(sequences[:, -1:], position).float()
        scores = processors(sequences, logits)
        tokens = scores.argmax(-1)
        if eos is not None:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping(sequences, scores)
        position += 1
        if unfinished.max() == 0:
            return sequences


def _beam_search(run: _StepRunner, input_ids, processors, stopping, config, eos, batch: int) -> torch.Tensor:
    """transformers' vectorised beam search (GenerationMixin._beam_search), step for step, with
    its own helpers; the model call is the compiled step and the cache reorder is ours."""
    gm = GenerationMixin
    beams, max_length = config.num_beams, config.max_length
    early_stopping, length_penalty = config.early_stopping, config.length_penalty
    cur_len = prompt_len = input_ids.shape[1]
    n_eos = eos.shape[0] if eos is not None else 0
    keep = max(2, 1 + n_eos) * beams
    top_mask = torch.cat((torch.ones(beams, dtype=torch.bool), torch.zeros(keep - beams, dtype=torch.bool)))
    running = torch.full((batch, beams, max_length), fill_value=_fill_value(config), dtype=torch.int64)
    running[:, :, :cur_len] = gm._unflatten_beam_dim(input_ids, batch, beams)
    sequences = running.clone()
    running_scores = torch.zeros((batch, beams))
    running_scores[:, 1:] = -1e9
    scores = torch.full((batch, beams), -1e9)
    finished = torch.zeros((batch, beams), dtype=torch.bool)
    improvable = torch.ones((batch, 1), dtype=torch.bool)
    hits = torch.zeros((batch, beams), dtype=torch.bool)
    running_indices = torch.full((batch, beams, max_length - cur_len), -1, dtype=torch.int32)
    indices = running_indices.clone()
    while True:
        flat = gm._flatten_beam_dim(running[:, :, :cur_len])
        logits = run(flat[:, -1:], cur_len - 1).float()
        log_probs = processors(flat, torch.nn.functional.log_softmax(logits, dim=-1))
        log_probs = gm._unflatten_beam_dim(log_probs, batch, beams) + running_scores[:, :, None]
        log_probs = log_probs.reshape(batch, -1)
        topk_scores, topk_running, topk_indices = gm._get_top_k_continuations(
            gm, accumulated_log_probs=log_probs, running_sequences=running, running_beam_indices=running_indices,
            cur_len=cur_len, decoder_prompt_len=prompt_len, do_sample=False, beams_to_keep=keep, num_beams=beams,
            batch_size=batch)
        hits = stopping(gm._flatten_beam_dim(topk_running[:, :, :cur_len + 1]), None)
        hits = gm._unflatten_beam_dim(hits, batch, keep)
        running, running_scores, running_indices = gm._get_running_beams_for_next_iteration(
            gm, topk_log_probs=topk_scores, topk_running_sequences=topk_running,
            topk_running_beam_indices=topk_indices, next_token_hits_stopping_criteria=hits, num_beams=beams)
        sequences, scores, indices, finished = gm._update_finished_beams(
            gm, sequences=sequences, topk_running_sequences=topk_running, beam_scores=scores,
            topk_log_probs=topk_scores, beam_indices=indices, topk_running_beam_indices=topk_indices,
            is_early_stop_heuristic_unsatisfied=improvable, is_sent_finished=finished,
            next_token_hits_stopping_criteria=hits, top_num_beam_mask=top_mask, num_beams=beams, cur_len=cur_len,
            decoder_prompt_len=prompt_len, length_penalty=length_penalty, early_stopping=early_stopping)
        run.reorder(gm._flatten_beam_dim(running_indices[..., cur_len - prompt_len]).long(), cur_len)
        cur_len += 1
        improvable = gm._check_early_stop_heuristic(
            improvable, running_scores, scores, finished, cur_len, max_length, prompt_len, early_stopping,
            length_penalty)
        if not gm._beam_search_has_unfinished_sequences(improvable, finished, hits, early_stopping):
            break
    returned = config.num_return_sequences
    sequences = gm._flatten_beam_dim(sequences[:, :returned, :])
    indices = gm._flatten_beam_dim(indices[:, :returned, :])
    length = prompt_len + int(((indices + 1).bool()).sum(dim=1).max())
    return sequences[:, :length]
