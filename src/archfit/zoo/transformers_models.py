"""Hugging Face transformers models built from configs (random weights, no hub access)."""
from __future__ import annotations

import torch


def _token_inputs(vocab: int, seq: int, batch: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (batch, seq))
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def bert_base(tiny: bool):
    from transformers import BertConfig, BertModel

    if tiny:
        cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)
        seq = 16
    else:
        cfg = BertConfig()  # bert-base-uncased: 12 layers, 768 hidden, 30522 vocab
        seq = 128
    cfg._attn_implementation = "sdpa"
    return BertModel(cfg, add_pooling_layer=True), _token_inputs(cfg.vocab_size, seq)
