"""Decoder-only language models (GPT-2, OPT, Llama, Qwen2, ...) cut into the two fixed-shape parts
a generation loop calls, the way Neuron's inference library cuts them: `Prefill` (a prompt
bucket through the model, writing its keys/values) and `DecodeStep` (one token per row against
a key/value cache of fixed length). Both run the transformers modules themselves; only the
cache is ours, functional as in seq2seq/parts.py: the step takes the cache as inputs and
returns the new token's keys/values, which the host writes into its preallocated cache, and
attends to the cache and the new token apart (decode_attention), copying neither.

Every row keeps its own length (prompts are right-padded and compacted, positions per row), so
one decode step serves a padded batch, beams and a continuous batch of unrelated requests."""
from __future__ import annotations

import inspect

import torch

from ..errors import ModelError


def _cache_argument(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its cache by: `cache` since transformers 5.6 or so,
    `past_key_values` before (optimum-intel pins an older transformers; its benchmark runs both)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def check_causal(model: torch.nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_decoder") \
            or model.get_output_embeddings() is None:
        raise ModelError(f"{type(model).__name__} is not a transformers decoder-only language model with a "
                         f"language-model head (e.g. GPT2LMHeadModel, OPTForCausalLM, LlamaForCausalLM, "
                         f"Qwen2ForCausalLM; AutoModelForCausalLM loads one)")


def cache_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of the key/value cache, read from one probe call so
    every family's naming (n_head, num_key_value_heads, head_dim, ...) is its own business."""
    probe = _Recording(None, None, 0)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long), **{_cache_argument(model): probe}, use_cache=True,
              attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool), position_ids=torch.zeros(1, 1, dtype=torch.long))
    keys = probe.new[0][0]
    return len(probe.new), keys.shape[1], keys.shape[3]


class _Recording:
    """What transformers' attention asks of a cache, for a prompt run from an empty cache:
    `update` keeps the new keys/values for the outputs and returns them to attend over."""

    is_compileable = False

    def __init__(self, keys, values, length: int):
        self.keys, self.values, self.length, self.new = keys, values, length, {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key, value)
        return key, value

    def get_seq_length(self, layer_idx: int = 0):
        return self.length

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        order = range(len(self.new))
        return torch.stack([self.new[i][0] for i in order]), torch.stack([self.new[i][1] for i in order])


class Prefill(torch.nn.Module):
    """(ids (R, P) right-padded, mask (R, P)) -> (each row's next-token logits (R, vocab), the
    prompt's keys/values (layers, R, heads, P, head dim)). Only the last real token's logits
    leave the engine: the whole (R, P, vocab) block would be megabytes per call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.cache_argument = _cache_argument(model)

    def forward(self, input_ids, attention_mask):
        rows, width = input_ids.shape
        slots = torch.arange(width)
        causal = slots[None, :] <= slots[:, None]  # (query, key)
        visible = causal[None] & attention_mask.bool()[:, None, :]
        # a pad row attends to its first slot, so no row of the softmax is empty (NaN)
        visible = visible | (slots == 0)[None, None, :]
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        cache = _Recording(None, None, 0)
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        # the head only at each row's last position, as generate's prefill does (logits_to_keep);
        # a 1-D index keeps those positions in every row, so row r's own is on the diagonal
        logits = self.model(input_ids=input_ids, attention_mask=visible[:, None], position_ids=positions,
                            **{self.cache_argument: cache}, use_cache=True, logits_to_keep=last).logits
        logits = logits[torch.arange(rows), torch.arange(rows)]
        keys, values = cache.stacked()
        return logits, keys, values


class _StepCache(_Recording):
    """The decode step's cache: `update` keeps the new token's keys/values and hands attention the
    cache itself, keys stored transposed (R, heads, head dim, T); `decode_attention` attends to the
    cache and the new token apart, so no step copies the cache (a concatenation would, and so
    would transposing the keys for the product)."""

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key, value)
        return self.keys[layer_idx], self.values[layer_idx]


_STEPS: list[_StepCache] = []  # the step being traced or run (attention functions receive no cache)


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One query token per row against keys (R, kv heads, head dim, T) and values (R, kv heads,
    T, head dim) from the cache, plus the token's own key/value: scores of both, one softmax over
    T + 1 under the (R, 1, 1, T + 1) mask, the weighted sum of both. Grouped-query heads share
    their key/value head by broadcasting, not by repeating the cache."""
    new_key, new_value = _STEPS[-1].new[module.layer_idx]  # (R, kv heads, 1, head dim)
    rows, heads, _one, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[3]
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim) * (scaling if scaling is not None else dim ** -0.5)
    scores = torch.cat([torch.matmul(q, key), torch.matmul(q, new_key.transpose(2, 3))], -1)
    scores = scores.masked_fill(~attention_mask.reshape(rows, 1, 1, length + 1), float("-inf"))
    weights = torch.softmax(scores, -1)
    out = torch.matmul(weights[..., :length], value) + torch.matmul(weights[..., length:], new_value)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("archfit_decode", decode_attention)


_register_attention()


class DecodeStep(torch.nn.Module):
    """One token per row, row r at position positions[r] (its length so far) against a cache of
    fixed length T: (ids (R, 1), positions (R,), keys: one (R, heads, head dim, T) tensor per
    layer, values: one (R, heads, T, head dim) per layer) -> (next-token logits (R, vocab), this
    token's keys/values (layers, R, heads, 1, head dim)). Slots >= a row's position are masked, so
    what they hold never matters. The cache comes as one input per layer (slicing a stacked one
    copies every layer each token); attention is `decode_attention`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.cache_argument = _cache_argument(model)

    def forward(self, ids, positions, keys, values):
        length = keys[0].shape[3]
        slots = torch.arange(length + 1)
        visible = (slots[None, :] < positions[:, None]) | (slots == length)[None, :]  # filled slots, the new token
        cache = _StepCache(keys, values, length)
        config, _STEPS[:] = self.model.config, [cache]
        attention, config._attn_implementation = config._attn_implementation, "archfit_decode"
        try:
            logits = self.model(input_ids=ids, attention_mask=visible[:, None, None, :],
                                position_ids=positions[:, None], **{self.cache_argument: cache},
                                use_cache=True).logits[:, -1]
        finally:
            config._attn_implementation, _STEPS[:] = attention, []
        new_keys, new_values = cache.stacked()
        return logits, new_keys, new_values
