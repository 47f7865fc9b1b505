"""The decoding loop on the host, shared by seq2seq and decoder-only generation: transformers'
own config preparation, logits processors, stopping criteria and beam-search helpers are
called here, so tokens equal `model.generate`'s; only the model call (`run`) is archfit's.

`run(ids (rows, 1), position) -> logits (rows, vocab)` is the compiled model; `run.reorder(rows,
filled)` moves cache rows after beam search picks its beams."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from transformers import GenerationConfig
from transformers.generation import GenerationMixin, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from ..errors import InputError

# generate() arguments with an effect here (besides the token ids and their mask); anything
# else a GenerationConfig holds (constraints, assistants, ...) is refused by name.
GENERATE_ARGUMENTS = {
    "max_new_tokens", "max_length", "min_length", "min_new_tokens", "num_beams", "num_return_sequences",
    "early_stopping", "length_penalty", "no_repeat_ngram_size", "repetition_penalty", "bad_words_ids",
    "forced_bos_token_id", "forced_eos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "bos_token_id", "suppress_tokens", "begin_suppress_tokens", "encoder_no_repeat_ngram_size",
    "remove_invalid_values", "renormalize_logits", "do_sample", "use_cache", "temperature", "top_k", "top_p",
    "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "stop_strings",
}


def prepare_config(defaults: GenerationConfig, kwargs: dict, prompt_len: int) -> GenerationConfig:
    """The generation config a generate(**kwargs) call runs with, as transformers'
    _prepare_generation_config makes it (the given config, then the model's values and the
    library defaults where it leaves a field unset, then the keywords); max_length counts the
    `prompt_len` tokens the sequences start with. Refuses, in one line, what the loop cannot do."""
    config = copy.deepcopy(kwargs.pop("generation_config", None) or GenerationConfig())
    config.update(**defaults.to_dict(), defaults_only=True, allow_custom_entries=True)
    config.update(**defaults._get_default_generation_params(), defaults_only=True)
    unknown = sorted(set(kwargs) - GENERATE_ARGUMENTS)
    if unknown:
        raise InputError(f"generate: argument {unknown[0]!r} is not supported by archfit's compiled generation; "
                         f"it takes {', '.join(sorted(GENERATE_ARGUMENTS))}")
    config.update(**kwargs)
    if config.do_sample and config.num_beams > 1:
        raise InputError("generate: do_sample=True with num_beams>1 (beam sampling) is not supported; archfit runs "
                         "greedy, sampling and beam search")
    if config.num_beams < 1 or config.num_return_sequences > config.num_beams:
        raise InputError(f"generate: num_return_sequences ({config.num_return_sequences}) must be at most "
                         f"num_beams ({config.num_beams})")
    if kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is not None:
        config.max_new_tokens = None
    if config.max_new_tokens is not None:
        config.max_length = config.max_new_tokens + prompt_len
    if config.min_new_tokens is not None:
        config.min_length = config.min_new_tokens + prompt_len
    return config


def logits_processors(config: GenerationConfig, input_ids: torch.Tensor, encoder_decoder: bool,
                      prompt_len: int, attention_mask: torch.Tensor | None = None) -> LogitsProcessorList:
    """transformers' own processor list for these settings (min length, forced BOS/EOS, bad
    words, n-gram blocking, temperature/top-k/top-p when sampling, ...), built by the method
    `generate` itself calls; it reads only `config.is_encoder_decoder` and a static helper.
    `attention_mask`: a decoder-only batch's, whose left padding repetition penalty ignores."""
    model = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=encoder_decoder),
                            _merge_criteria_processor_list=lambda default, custom: default)
    return GenerationMixin._get_logits_processor(model, config, input_ids_seq_length=prompt_len,
                                                 encoder_input_ids=input_ids, logits_processor=LogitsProcessorList(),
                                                 device="cpu", model_kwargs={"attention_mask": attention_mask})


def stopping_criteria(config: GenerationConfig, tokenizer=None) -> StoppingCriteriaList:
    stopping = StoppingCriteriaList([MaxLengthCriteria(config.max_length)])
    if config.stop_strings is not None:
        if tokenizer is None:
            raise InputError("generate: stop_strings needs the model's tokenizer; compile from a directory with a "
                             "tokenizer, or stop on eos_token_id")
        from transformers.generation.stopping_criteria import StopStringCriteria
        stopping.append(StopStringCriteria(stop_strings=config.stop_strings, tokenizer=tokenizer))
    eos = eos_tensor(config)
    if eos is not None:
        stopping.append(EosTokenCriteria(eos))
    return stopping


def eos_tensor(config: GenerationConfig) -> torch.Tensor | None:
    return None if config.eos_token_id is None else torch.tensor(config.eos_token_id).view(-1)


def _first_eos(config: GenerationConfig) -> int | None:
    eos = config.eos_token_id  # one id or a list of them
    return None if eos is None else int(eos[0] if isinstance(eos, (list, tuple)) else eos)


def pad_id(config: GenerationConfig) -> int:
    """transformers falls back to the first EOS id when there is no pad id."""
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = _first_eos(config)
    return eos if eos is not None else 0


def fill_value(config: GenerationConfig) -> int:
    """What transformers' beam search fills unused positions with (greedy pads with pad_id)."""
    if config.num_beams == 1:
        return pad_id(config)
    eos = _first_eos(config)
    if eos is None:
        return -1
    return int(config.pad_token_id or eos)  # sic: `pad or eos` (a pad id of 0 gives eos), as transformers


def next_tokens(scores: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """transformers' token choice: argmax, or one draw from the softmax when sampling (by default
    the global torch generator, as `model.generate` draws, so a seed gives the same tokens; a
    server gives each request its own)."""
    if config.do_sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return scores.argmax(-1)


def greedy(run, sequences, processors, stopping, config, position: int = 0) -> torch.Tensor:
    """transformers' greedy/sampling loop: finished rows keep emitting the pad token until all stop."""
    pad, eos = pad_id(config), eos_tensor(config)
    unfinished = torch.ones(sequences.shape[0], dtype=torch.long)
    while True:
        logits = run(sequences[:, -1:], position).float()
        scores = processors(sequences, logits)
        tokens = next_tokens(scores, config)
        if eos is not None:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping(sequences, scores)
        position += 1
        if unfinished.max() == 0:
            return sequences


def beam_search(run, input_ids, processors, stopping, config, batch: int) -> torch.Tensor:
    """transformers' vectorised beam search (GenerationMixin._beam_search), step for step, with
    its own helpers; the model call is the compiled step and the cache reorder is ours."""
    gm = GenerationMixin
    eos = eos_tensor(config)
    beams, max_length = config.num_beams, config.max_length
    early_stopping, length_penalty = config.early_stopping, config.length_penalty
    cur_len = prompt_len = input_ids.shape[1]
    n_eos = eos.shape[0] if eos is not None else 0
    keep = max(2, 1 + n_eos) * beams
    top_mask = torch.cat((torch.ones(beams, dtype=torch.bool), torch.zeros(keep - beams, dtype=torch.bool)))
    running = torch.full((batch, beams, max_length), fill_value=fill_value(config), dtype=torch.int64)
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


def padded(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists of any lengths as one batch and its attention mask, padded on the left (a
    decoder-only batch, as transformers' generate expects it) or on the right (a seq2seq source)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) if left else [1] * len(r) + [0] * (width - len(r))
                         for r in rows])
    return ids, mask


def pad_chunks(parts: list[torch.Tensor], config: GenerationConfig) -> torch.Tensor:
    """Chunks generated separately, joined as one batch: rows finished early padded as
    transformers pads them."""
    fill = fill_value(config)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts])
