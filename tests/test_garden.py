"""Models no one here wrote, built from library configs (tiny, random weights): the three
failure classes of the garden issue, each traced and matched against eager PyTorch. The full
garden is a benchmark (it takes minutes), not a test."""
from __future__ import annotations

import pytest
import torch

import archfit
from conftest import assert_close_to_eager


def test_gpt2_with_its_cache_object_is_named_and_without_it_compiles():
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    model, ids = GPT2Model(config).eval(), {"input_ids": torch.randint(0, 512, (1, 16))}
    with pytest.raises(archfit.ArchfitError, match=r"returns a transformers KV-cache object, not tensors \(set "
                                                   r"model.config.use_cache = False"):
        archfit.trace(model, ids, "openvino", require_full=True)  # refused whole, before any region is tried
    model.config.use_cache = False
    compiled = archfit.trace(model, ids, "openvino", check_payoff=False)
    assert len(compiled.report.partitions) == 1
    assert_close_to_eager(model, compiled, ids)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_t5_encoder_traces(target):
    """T5's attention reshapes a transposed tensor; re-exporting the partition kept a `view` that
    only the capture's strides allowed (fixed: partitions export with reshape), and torch.onnx's
    decomposition turned the reshape back into such a view (fixed: a contiguous copy first, free
    in ONNX); on onnxruntime this failed as "Failed to decompose the FX graph"."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=512)
    model, ids = T5EncoderModel(config).eval(), {"input_ids": torch.randint(0, 512, (1, 16))}
    compiled = archfit.trace(model, ids, target, check_payoff=False)
    assert compiled.report.verdict == "fits" and len(compiled.report.partitions) == 1
    assert_close_to_eager(model, compiled, ids)


class MeanPooled(torch.nn.Module):
    """A sentence encoder as sentence-transformers builds one: the mean of the token states over
    each sentence's own tokens (the attention mask)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1)


def test_mean_pooled_sentence_encoder_on_a_padded_batch():
    """A batch padded to its longest sentence has pad columns that are zero in every row: random
    validation inputs must not collapse to all-zero ids and masks (0/0 in the pooling)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, max_position_embeddings=64)).eval()
    lengths = [12, 7, 4]
    ids = torch.zeros(3, 16, dtype=torch.long)
    mask = torch.zeros(3, 16, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, 512, (n,))
        mask[row, :n] = 1
    model, inputs = MeanPooled(encoder).eval(), {"input_ids": ids, "attention_mask": mask}
    compiled = archfit.trace(model, inputs, "onnxruntime", check_payoff=False)
    checks = {c.label: c for c in compiled.report.validation.checks}
    assert checks["random inputs"].ok and checks["example inputs"].ok
    assert_close_to_eager(model, compiled, inputs)
    out = compiled(**inputs)
    assert torch.isfinite(out).all() and out.shape == (3, 64)
