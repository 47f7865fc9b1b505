"""archfit.trace_generate: a transformers decoder-only language model compiled for generation,
each fixed-shape part (parts.py) through archfit.trace, the loop on the host (module.py)."""
from __future__ import annotations

import copy

import torch

from ..core.accuracy import Accuracy
from ..errors import InputError
from ..shapes import Buckets
from ..targets.base import LOSSY
from .module import CausalLMModule
from .parts import DecodeStep, Prefill, cache_shape, check_causal


def trace_generate(model, target="openvino", *, prompt_buckets=(32, 64, 128), max_new_tokens: int = 128,
                   batch_size: int = 1, num_beams: int = 1, slots: int | None = None, step_rows=(),
                   precision: str | None = None,
                   cache: bool = True, check_payoff: bool = True, validate: bool = True, progress=None,
                   accuracy: str | Accuracy | None = None, validation=None) -> CausalLMModule:
    """Compile a transformers decoder-only language model (GPT-2, OPT, Llama, Qwen2, ... or a
    text-generation directory on disk) for generation, as Neuron's inference library does: a
    prefill per prompt-length bucket (any number of rows; it writes the prompt's keys/values)
    and one decode step per row count (batch_size, batch_size * num_beams, and `slots` for a
    server's continuous batch, and `step_rows`: more row counts, on which the server steps when
    fewer requests run) over a key/value cache of largest bucket + max_new_tokens slots.
    accuracy: a task gate for the decode step (e.g. "tokens"); the prefill keeps the
    elementwise tolerance. precision="int8w" (int8 weights, OpenVINO) applies to the decode step,
    whose time is reading its weights; the prefill, bound by arithmetic, runs bf16 where the CPU
    has bf16 units (under bf16's elementwise tolerance), else fp32. Like every
    lossy precision it ships only after the tokens gate passes on `validation`: prompts of the
    user's (token-id lists or 1-D tensors), each prefilled by the eager model into a decode step's
    inputs. Returns a CausalLMModule whose `generate` takes transformers' arguments."""
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
    lossy = precision in LOSSY
    if lossy and validation is None and validate:
        raise InputError(f"precision={precision!r} ships only after the tokens gate passes on prompts of yours: pass "
                         f"validation= (a list of token-id lists; CLI --validation FILE of one prompt per line)")
    if lossy and accuracy is None:
        accuracy = "tokens"  # the gate generation has: the next token agrees with eager's
    common = dict(cache=cache, check_payoff=check_payoff, validate=validate, progress=progress)
    top = buckets.top()
    tokens = 4 + (torch.arange(top) * 7) % (config.vocab_size - 5)  # varied ordinary tokens
    example = {"input_ids": tokens.view(1, top), "attention_mask": torch.ones(1, top, dtype=torch.long)}
    if progress is not None:
        progress("compiling the prefill per prompt bucket")
    prefill = trace(Prefill(model), example, target, buckets=buckets, dynamic_batch=True, name="prefill",
                    precision=_prefill_precision(target, precision) if lossy else precision, **common)
    layers, heads, head_dim = cache_shape(model)
    steps = {}
    for rows in sorted({batch_size, batch_size * num_beams} | ({slots} if slots else set()) | set(step_rows)):
        if progress is not None:
            progress(f"compiling the decode step for {rows} rows")
        step_example = (torch.full((rows, 1), 5, dtype=torch.long), torch.arange(rows) % top + 1,
                        [torch.zeros(rows, heads, head_dim, capacity) for _ in range(layers)],  # keys transposed
                        [torch.zeros(rows, heads, capacity, head_dim) for _ in range(layers)])
        sets = None if validation is None else step_sets(model, validation, rows, capacity)
        steps[rows] = trace(DecodeStep(model), step_example, target, name="decode step", accuracy=accuracy,
                            precision=precision, validation_inputs=sets, **common)
    generation_config = copy.deepcopy(model.generation_config)
    module = CausalLMModule(prefill, steps, generation_config)
    if directory is not None:  # its tokenizer, when it has one: texts in, texts out
        module.text = generation_text(directory, top, CAUSAL)
    return module


def step_sets(model, prompts, rows: int, capacity: int) -> list[tuple]:
    """Decode-step input sets from real prompts: `rows` prompts at a time (the last group filled
    with repeats) prefilled by the eager model, each row's next token its greedy choice."""
    prompts = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
    if not prompts or any(p.numel() == 0 or p.numel() >= capacity for p in prompts):
        raise InputError(f"validation: give prompts of 1..{capacity - 1} token ids each (a list of id lists)")
    prefill, sets = Prefill(model.eval()), []
    with torch.no_grad():
        for start in range(0, len(prompts), rows):
            group = (prompts[start:start + rows] * rows)[:rows]
            width = max(p.numel() for p in group)
            ids = torch.stack([torch.nn.functional.pad(p, (0, width - p.numel())) for p in group])
            mask = torch.stack([(torch.arange(width) < p.numel()).long() for p in group])
            logits, keys, values = prefill(ids, mask)
            pad = (0, capacity - width)
            sets.append((logits.argmax(-1)[:, None], mask.sum(1),
                         [torch.nn.functional.pad(k.transpose(2, 3), pad) for k in keys],  # keys transposed
                         [torch.nn.functional.pad(v, (0, 0) + pad) for v in values]))
    return sets


def _prefill_precision(target, precision: str) -> str:
    """A lossy decode step's prefill: bf16 where the target offers it and the CPU has its units."""
    from ..targets import get_target

    t = get_target(target)
    return "bf16" if "bf16" in t.precisions and t.precision_unavailable("bf16") is None else "fp32"
