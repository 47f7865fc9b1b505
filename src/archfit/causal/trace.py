"""archfit.trace_generate: a transformers decoder-only language model compiled for generation,
each fixed-shape part (parts.py) through archfit.trace, the loop on the host (module.py)."""
from __future__ import annotations

import copy

import torch

from ..core.accuracy import Accuracy
from ..shapes import Buckets
from .module import CausalLMModule
from .parts import DecodeStep, Prefill, cache_shape, check_causal


def trace_generate(model, target="openvino", *, prompt_buckets=(32, 64, 128), max_new_tokens: int = 128,
                   batch_size: int = 1, num_beams: int = 1, slots: int | None = None, precision: str | None = None,
                   cache: bool = True, check_payoff: bool = True, validate: bool = True, progress=None,
                   accuracy: str | Accuracy | None = None) -> CausalLMModule:
    """Compile a transformers decoder-only language model (GPT-2, OPT, Llama, Qwen2, ... or a
    text-generation directory on disk) for generation, as Neuron's inference library does: a
    prefill per prompt-length bucket (any number of rows; it writes the prompt's keys/values)
    and one decode step per row count (batch_size, batch_size * num_beams, and `slots` for a
    server's continuous batch) over a key/value cache of largest bucket + max_new_tokens slots.
    accuracy: a task gate for the decode step (e.g. "tokens"); the prefill keeps the
    elementwise tolerance. Returns a CausalLMModule whose `generate` takes transformers' arguments."""
    from ..pipeline import trace  # the straight line, once per part (pipeline imports this package lazily)
    from ..text.directory import CAUSAL, generation_text, is_directory, load_generator

    directory = model if is_directory(model) else None
    if directory is not None:
        model = load_generator(directory, CAUSAL)
    check_causal(model)
    model = model.eval()
    config = model.config
    sizes = prompt_buckets.sizes if isinstance(prompt_buckets, Buckets) else tuple(prompt_buckets)
    buckets = Buckets({"input_ids": 1, "attention_mask": 1}, sizes=tuple(int(s) for s in sizes),
                      pad_values={"input_ids": 0, "attention_mask": 0})
    capacity = buckets.top() + max_new_tokens
    common = dict(precision=precision, cache=cache, check_payoff=check_payoff, validate=validate, progress=progress)
    top = buckets.top()
    tokens = 4 + (torch.arange(top) * 7) % (config.vocab_size - 5)  # varied ordinary tokens
    example = {"input_ids": tokens.view(1, top), "attention_mask": torch.ones(1, top, dtype=torch.long)}
    if progress is not None:
        progress("compiling the prefill per prompt bucket")
    prefill = trace(Prefill(model), example, target, buckets=buckets, dynamic_batch=True, name="prefill", **common)
    layers, heads, head_dim = cache_shape(model)
    steps = {}
    for rows in sorted({batch_size, batch_size * num_beams} | ({slots} if slots else set())):
        if progress is not None:
            progress(f"compiling the decode step for {rows} rows")
        kv = [torch.zeros(rows, heads, capacity, head_dim) for _ in range(layers)]
        step_example = (torch.full((rows, 1), 5, dtype=torch.long), torch.arange(rows) % top + 1, kv,
                        [t.clone() for t in kv])
        steps[rows] = trace(DecodeStep(model), step_example, target, name="decode step", accuracy=accuracy, **common)
    generation_config = copy.deepcopy(model.generation_config)
    module = CausalLMModule(prefill, steps, generation_config, capacity)
    if directory is not None:  # its tokenizer, when it has one: texts in, texts out
        module.text = generation_text(directory, top, CAUSAL)
    return module
