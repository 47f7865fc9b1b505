"""Hugging Face transformers models built from their published configs (random weights, no hub
access). Each builder returns the full-size model, or with tiny=True the same architecture
shrunk for tests. Sequence lengths are typical serving shapes."""
from __future__ import annotations

import torch

# Shrinks applied to every tiny variant: same architecture, small enough for 2-core tests.
_TINY_ENCODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_TINY_SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)


def _token_inputs(vocab: int, seq: int, batch: int = 1, low: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.randint(low, vocab, (batch, seq))
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def _encoder(config_cls, model_cls, full: dict, tiny: bool, seq: int = 128, tiny_vocab: int = 512, **kw):
    cfg = dict(full)
    if tiny:
        cfg.update(_TINY_ENCODER, vocab_size=tiny_vocab, max_position_embeddings=min(cfg.get("max_position_embeddings", 512), 130))
        seq = 16
    config = config_cls(**cfg)
    config._attn_implementation = "sdpa"
    return model_cls(config, **kw), _token_inputs(config.vocab_size, seq)


def bert_base(tiny: bool):
    from transformers import BertConfig, BertModel

    return _encoder(BertConfig, BertModel, {}, tiny)  # BertConfig() is bert-base-uncased


def biobert_base(tiny: bool):
    """BioBERT v1.1: BERT-base architecture with BioBERT's cased vocabulary (28996 tokens)."""
    from transformers import BertConfig, BertModel

    return _encoder(BertConfig, BertModel, {"vocab_size": 28996}, tiny)


def distilbert_base(tiny: bool):
    from transformers import DistilBertConfig, DistilBertModel

    if tiny:
        config = DistilBertConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=130)
        seq = 16
    else:
        config, seq = DistilBertConfig(), 128  # distilbert-base-uncased
    config._attn_implementation = "sdpa"
    return DistilBertModel(config), _token_inputs(config.vocab_size, seq)


_ROBERTA = {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
            "layer_norm_eps": 1e-5}


def roberta_base(tiny: bool):
    from transformers import RobertaConfig, RobertaModel

    return _encoder(RobertaConfig, RobertaModel, _ROBERTA, tiny)


def xlm_roberta_base(tiny: bool):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    return _encoder(XLMRobertaConfig, XLMRobertaModel, _ROBERTA | {"vocab_size": 250002}, tiny)


class Seq2SeqStep(torch.nn.Module):
    """One forward pass of an encoder-decoder model: encode the source, run one decoder step,
    return the next-token logits. The generation loop around it is the host's job."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         use_cache=False)
        return out.logits


def _seq2seq(config_cls, model_cls, full: dict, tiny: bool, src_len: int = 64):
    cfg = dict(full)
    if tiny:
        cfg.update(_TINY_SEQ2SEQ, vocab_size=512, max_position_embeddings=128)
        for key in ("pad_token_id", "decoder_start_token_id", "eos_token_id", "bos_token_id"):
            if cfg.get(key, 0) >= 512:  # special tokens at the end of a big vocabulary
                cfg[key] = 511
        src_len = 12
    config = config_cls(**cfg)
    config._attn_implementation = "sdpa"
    inputs = _token_inputs(config.vocab_size, src_len)
    inputs["decoder_input_ids"] = torch.full((1, 1), config.decoder_start_token_id, dtype=torch.long)
    return Seq2SeqStep(model_cls(config)), inputs


def _dims(vocab: int, d_model: int, layers: int, heads: int, ffn: int, positions: int) -> dict:
    """The published sizes of an encoder-decoder whose encoder and decoder are alike."""
    return dict(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                max_position_embeddings=positions)


def marian_en_de(tiny: bool):
    """Helsinki-NLP/opus-mt-en-de's configuration."""
    from transformers import MarianConfig, MarianMTModel

    return _seq2seq(MarianConfig, MarianMTModel, _dims(58101, 512, 6, 8, 2048, 512) | dict(
        pad_token_id=58100, decoder_start_token_id=58100, eos_token_id=0, scale_embedding=True,
        activation_function="swish"), tiny)


def pegasus(tiny: bool):
    """google/pegasus-large's configuration."""
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    return _seq2seq(PegasusConfig, PegasusForConditionalGeneration, _dims(96103, 1024, 16, 16, 4096, 1024) | dict(
        pad_token_id=0, decoder_start_token_id=0, eos_token_id=1, scale_embedding=True,
        activation_function="relu"), tiny)


def bart_base(tiny: bool):
    """facebook/bart-base's configuration."""
    from transformers import BartConfig, BartForConditionalGeneration

    return _seq2seq(BartConfig, BartForConditionalGeneration, _dims(50265, 768, 6, 12, 3072, 1024) | dict(
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2), tiny)


class CausalLogits(torch.nn.Module):
    """A decoder-only language model as one forward pass (prompt -> logits), for analyze and
    compile; `archfit compile NAME --generate` compiles `.model` for generation instead."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _causal(config_cls, model_cls, full: dict, tiny: dict, is_tiny: bool, seq: int = 128):
    config = config_cls(**(full | tiny if is_tiny else full))
    config._attn_implementation = "sdpa"
    ids = torch.randint(3, config.vocab_size, (1, 16 if is_tiny else seq))
    return CausalLogits(model_cls(config).eval()), {"input_ids": ids}


def gpt2(tiny: bool):
    """GPT-2 (124M): GPT2Config() is openai-community/gpt2's configuration."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _causal(GPT2Config, GPT2LMHeadModel, {}, dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512,
                                                         n_positions=256, bos_token_id=511, eos_token_id=511), tiny)


def llama_100m(tiny: bool):
    """A Llama-architecture model of about 100M parameters (8 layers of 768, grouped-query
    attention 12/4 heads, SwiGLU 2048, a 32000-token vocabulary as Llama 2's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    full = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                intermediate_size=2048, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    return _causal(LlamaConfig, LlamaForCausalLM, full, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                              num_key_value_heads=2, intermediate_size=128,
                                                              vocab_size=512), tiny)
