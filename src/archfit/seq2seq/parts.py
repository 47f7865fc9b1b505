"""Seq2seq models (MarianMT, BART, Pegasus) cut into the two fixed-shape parts a generation loop
calls: `EncodeCross` (encoder + every decoder layer's cross-attention keys and values, computed
once per source) and `DecoderStep` (one token through the decoder against a key/value cache of
fixed length). Both reuse the transformers modules themselves, so the arithmetic is the
model's own; only the cache is ours: a functional one that takes the cache as inputs and
returns the new token's keys and values, because a fixed-shape engine cannot update a cache in
place and returning the whole cache each step would copy it every token."""
from __future__ import annotations

import torch
from transformers.cache_utils import EncoderDecoderCache

from ..errors import ModelError


def check_seq2seq(model: torch.nn.Module) -> None:
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_decoder") \
            or not hasattr(model, "lm_head"):
        raise ModelError(f"{type(model).__name__} is not a transformers encoder-decoder with a language-model head "
                         f"(e.g. MarianMTModel, BartForConditionalGeneration, PegasusForConditionalGeneration)")


def cache_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(decoder layers, heads, head dim) of the key/value cache."""
    layers = model.get_decoder().layers
    attn = layers[0].encoder_attn
    return len(layers), attn.k_proj.out_features // attn.head_dim, attn.head_dim


class EncodeCross(torch.nn.Module):
    """Source tokens -> cross-attention keys and values of every decoder layer, stacked
    (layers, batch, heads, source length, head dim)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder = model.get_encoder()
        self.attns = torch.nn.ModuleList(layer.encoder_attn for layer in model.get_decoder().layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        b, s, _ = states.shape

        def heads(proj, attn):
            return proj(states).view(b, s, -1, attn.head_dim).transpose(1, 2)

        keys = torch.stack([heads(a.k_proj, a) for a in self.attns])
        values = torch.stack([heads(a.v_proj, a) for a in self.attns])
        return keys, values


class _SelfAttentionCache:
    """What transformers' attention asks of a cache: `update` returns the keys/values to attend
    over (the cache, then the new token) and we keep the new token's for the step's outputs."""

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position, self.new = keys, values, position, {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key, value)
        return torch.cat([self.keys[layer_idx], key], 2), torch.cat([self.values[layer_idx], value], 2)

    def get_seq_length(self, layer_idx: int = 0):
        return self.position


class _Layer:
    def __init__(self, keys, values):
        self.keys, self.values = keys, values


class _CrossAttentionCache:
    def __init__(self, keys, values):
        self.layers = [_Layer(keys[i], values[i]) for i in range(keys.shape[0])]


class _StepCache(EncoderDecoderCache):
    """An EncoderDecoderCache in the attention modules' eyes (they test isinstance); every
    layer's cross keys/values count as already computed, so they are read, never recomputed."""

    def __init__(self, self_cache: _SelfAttentionCache, cross_cache: _CrossAttentionCache, layers: int):
        # EncoderDecoderCache.__init__ builds its own dynamic caches; none is wanted here
        self.self_attention_cache, self.cross_attention_cache = self_cache, cross_cache
        self.is_updated = {i: True for i in range(layers)}

    def get_seq_length(self, layer_idx: int = 0):
        return self.self_attention_cache.position


class DecoderStep(torch.nn.Module):
    """One decoder token at `position` (0-d int64) against a cache of fixed length T:
    (ids (R, 1), position, self keys/values (layers, R, heads, T, head dim), cross keys/values
    (layers, R, heads, S, head dim), source mask (R, S)) -> (next-token logits (R, vocab),
    this token's keys/values (layers, R, heads, 1, head dim)). Cache positions >= position are
    masked, so what they hold never matters."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.decoder = model.get_decoder()
        self.lm_head = model.lm_head
        if getattr(model, "final_logits_bias", None) is not None:
            self.register_buffer("final_logits_bias", model.final_logits_bias)
        else:
            self.final_logits_bias = None

    def forward(self, ids, position, self_keys, self_values, cross_keys, cross_values, source_mask):
        rows, length = ids.shape[0], self_keys.shape[3]
        slots = torch.arange(length + 1)
        visible = (slots < position) | (slots == length)  # filled cache slots and the new token
        self_mask = visible.view(1, 1, 1, length + 1).expand(rows, 1, 1, length + 1)
        cross_mask = source_mask.bool()[:, None, None, :]
        self_cache = _SelfAttentionCache(self_keys, self_values, position)
        cache = _StepCache(self_cache, _CrossAttentionCache(cross_keys, cross_values), self_keys.shape[0])
        # transformers decides on cross-attention by the presence of encoder states; their
        # keys/values come from the cache, so a placeholder of the right rank is enough
        placeholder = torch.zeros(rows, 1, 1)
        hidden = self.decoder(input_ids=ids, attention_mask=self_mask, encoder_hidden_states=placeholder,
                              encoder_attention_mask=cross_mask, cache=cache, use_cache=True).last_hidden_state
        logits = self.lm_head(hidden)[:, -1]
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        order = range(len(self_cache.new))
        new_keys = torch.stack([self_cache.new[i][0] for i in order])
        new_values = torch.stack([self_cache.new[i][1] for i in order])
        return logits, new_keys, new_values


def step_example(model: torch.nn.Module, rows: int, source_len: int, max_len: int, start_id: int) -> tuple:
    layers, heads, head_dim = cache_shape(model)
    cache = torch.zeros(layers, rows, heads, max_len, head_dim)
    cross = torch.randn(layers, rows, heads, source_len, head_dim)
    return (torch.full((rows, 1), start_id, dtype=torch.long), torch.tensor(0), cache, cache.clone(),
            cross, cross.clone(), torch.ones(rows, source_len, dtype=torch.long))
