"""Decoder-only generation on compiled parts: the prompt runs compiled per prompt-length bucket
(Prefill), every next token through one compiled decode step per row count against a key/value
cache preallocated on the host (DecodeStep), and the loop (seq2seq/loop.py: transformers'
processors, stopping and beam bookkeeping) on the host between them."""
from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from ..core.compile import share_cores
from ..core.module import ArchfitModule
from ..errors import InputError
from ..seq2seq.loop import beam_search, greedy, logits_processors, pad_chunks, pad_id, padded, prepare_config, \
    stopping_criteria


class CausalLMModule(ArchfitModule):
    """Returned by `archfit.trace_generate`: `generate(input_ids, attention_mask, ...)` as in
    transformers, on the compiled prefill and decode step."""

    kind = "causal"
    takes = "generation"

    def __init__(self, prefill, steps: dict[int, Any], generation_config: GenerationConfig, report=None,
                 manifest: dict | None = None):
        step = steps[max(steps)]
        super().__init__(step.target, step.precision, step.emulated, report if report is not None else step.report,
                         manifest)
        self.prefill = prefill  # BucketedModule over the prompt length, any number of rows
        self.steps = torch.nn.ModuleDict({str(r): steps[r] for r in sorted(steps)})  # rows -> CompiledModule
        self.generation_config = generation_config
        self.layers = (len(step.inputs) - 2) // 2  # ids, positions, every layer's keys, then values
        _rows, self.heads, self.head_dim, self.capacity = step.inputs[2].shape  # keys are stored transposed
        share_cores(self)  # the loop computes between engine calls: logits processing, cache writes, beams

    # -- the file ------------------------------------------------------------------------------
    def file_components(self) -> dict[str, ArchfitModule]:
        return {"prefill": self.prefill} | {f"step_{r}": self.steps[str(r)] for r in self.rows}

    def file_meta(self) -> dict:
        return {"config": self.generation_config.to_dict(), "capacity": self.capacity}

    @classmethod
    def from_file(cls, components, meta, manifest, model=None, source="the file") -> "CausalLMModule":
        steps = {int(name.removeprefix("step_")): m for name, m in components.items() if name.startswith("step_")}
        return cls(components["prefill"], steps, GenerationConfig.from_dict(meta["config"]), manifest=manifest)

    @classmethod
    def describe_file(cls, manifest: dict) -> list[str]:
        components, meta = manifest["components"], manifest["meta"]
        steps = [c.removeprefix("step_") for c in components if c.startswith("step_")]
        return [f"decoder-only generator: prompt buckets {components['prefill']['buckets']['sizes']}, decode step "
                f"rows {', '.join(steps)}, key/value cache {meta['capacity']} tokens (archfit generate FILE ...)"]

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.steps)

    @property
    def cache_bytes(self) -> int:
        """Memory of the key/value cache at the largest row count (keys and values, fp32)."""
        return 2 * 4 * self.layers * max(self.rows) * self.heads * self.capacity * self.head_dim

    def summary(self) -> str:
        """Each engine with its FLOPs (and, on an Inferentia profile, its ESTIMATED latency), the cache's memory."""
        def part(name: str, module) -> str:
            report = module.report
            if report is None:  # a loaded file: the fit report stays with the compile that made it
                return f"  {name}"
            line = f"  {name}: {report.total_flops / 1e9:.2f} GFLOPs"
            if report.estimate is not None:
                line += f", ESTIMATED {report.estimate.total_ms:.2f} ms on {report.estimate.chip}"
            return line

        lines = [f"generation: prefill per prompt bucket, decode step per row count over a {self.capacity}-token "
                 f"key/value cache ({self.cache_bytes / 2 ** 20:.1f} MiB at {max(self.rows)} rows); the loop runs "
                 f"on the host"]
        lines += [part(f"prefill, prompt bucket {s} (1 row)", self.prefill.buckets[str(s)]) for s in self.prefill.sizes]
        lines += [part(f"decode step, {r} row(s), per token", self.steps[str(r)]) for r in self.rows]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return (f"target={self.target!r}, precision={self.precision!r}, prompt buckets={self.prefill.sizes}, "
                f"decode rows={self.rows}, capacity={self.capacity}")

    # -- generating ----------------------------------------------------------------------------
    def generation_config_for(self, kwargs: dict, prompt_len: int = 1) -> GenerationConfig:
        """The generation config a generate(**kwargs) call runs with; refuses, in one line, an
        argument the compiled generation does not take."""
        return prepare_config(self.generation_config, kwargs, prompt_len)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Token ids (batch * num_return_sequences, prompt width + new tokens), the prompt first,
        as transformers returns them. Padded batches are left- or right-padded with their mask."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise InputError(f"generate: input_ids must be an int64 tensor (batch, prompt length), got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)} "
                             f"{getattr(input_ids, 'dtype', '')}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokenizer = kwargs.pop("tokenizer", None)
        config = self.generation_config_for(dict(kwargs), input_ids.shape[1])
        batch, beams = input_ids.shape[0], config.num_beams
        most = max(self.rows) // beams
        if most < 1:
            raise InputError(f"generate: num_beams={beams}, but the decode step was compiled for at most "
                             f"{max(self.rows)} rows; trace with num_beams>={beams}")
        if batch > most:  # in chunks the step holds
            return pad_chunks([self.generate(input_ids[i:i + most], attention_mask[i:i + most], tokenizer=tokenizer,
                                             **kwargs) for i in range(0, batch, most)], config)
        lengths = attention_mask.sum(1)
        new = config.max_length - input_ids.shape[1]
        if int(lengths.max()) + new > self.capacity:
            raise InputError(f"generate: a prompt of {int(lengths.max())} tokens and up to {new} new tokens need "
                             f"{int(lengths.max()) + new} cache slots, but the cache was compiled for {self.capacity}; "
                             f"pass a smaller max_new_tokens or trace with a larger max_new_tokens")
        if int(lengths.max()) > self.prefill.sizes[-1]:
            raise InputError(f"generate: a prompt of {int(lengths.max())} tokens is longer than the largest prompt "
                             f"bucket {self.prefill.sizes[-1]}; cut the prompt or trace with larger prompt_buckets")
        rows = min(r for r in self.rows if r >= batch * beams)  # exists: batch <= most
        run = CacheRunner(self, rows)
        run.start(input_ids, attention_mask, expand=beams)
        sequences, mask = input_ids.repeat_interleave(beams, 0), attention_mask.repeat_interleave(beams, 0)
        processors = logits_processors(config, sequences, encoder_decoder=False, prompt_len=input_ids.shape[1],
                                       attention_mask=mask)
        stopping = stopping_criteria(config, tokenizer if tokenizer is not None else self.stop_tokenizer(config))
        if beams == 1:
            return greedy(run, sequences, processors, stopping, config)
        return beam_search(run, sequences, processors, stopping, config, batch)

    def stop_tokenizer(self, config: GenerationConfig):
        """A transformers tokenizer over the file's tokenizer, for stop strings only (made once:
        the server asks for it per request)."""
        if config.stop_strings is None or self.text is None:
            return None
        if "_stop_tokenizer" not in self.__dict__:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            self.__dict__["_stop_tokenizer"] = PreTrainedTokenizerFast(
                tokenizer_object=Tokenizer.from_str(self.text.tokenizer))
        return self.__dict__["_stop_tokenizer"]

    @torch.no_grad()
    def answer(self, texts, **kwargs) -> list[str]:
        """The generated continuation of each prompt in `texts` (a file compiled from a directory
        with a tokenizer), decoded without special tokens; generate()'s arguments as keywords."""
        if self.text is None:
            raise InputError("this generator takes token ids (generate(input_ids)): it was not compiled from a "
                             "directory with a tokenizer")
        encodings = self.text.encode(list(texts))
        ids, mask = padded([e.ids for e in encodings], pad_id(self.generation_config), left=True)
        out = self.generate(ids, attention_mask=mask, **kwargs)
        return [self.text.decode(row[ids.shape[1]:]) for row in out.tolist()]


class CacheRunner:
    """The key/value cache of `rows` rows, each row at its own length, and the compiled parts
    that fill it: `start` prefills prompts into rows, `__call__` runs one decode step for every
    row. Used by generate (one batch) and by the server (rows are slots of a continuous batch)."""

    def __init__(self, module: CausalLMModule, rows: int):
        self.module, self.rows, self.used = module, rows, rows
        self.step = module.steps[str(rows)]
        # one tensor per layer, as the step takes them; keys transposed (parts.decode_attention)
        self.keys = [torch.zeros(rows, module.heads, module.head_dim, module.capacity) for _ in range(module.layers)]
        self.values = [torch.zeros(rows, module.heads, module.capacity, module.head_dim) for _ in range(module.layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long)
        self.pending: torch.Tensor | None = None  # the prefill's logits, returned by the first call

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Prompts (any padding: only the tokens under the mask count, in order) through the
        compiled prefill: (logits (n, vocab), keys, values (layers, n, heads, width, head dim), lengths).
        The compacted rows are padded with id 0 (masked; any id in the table would do, and an EOS
        id used as pad may lie outside it)."""
        lengths = attention_mask.sum(1)
        width = max(int(lengths.max()), 1)
        ids = torch.zeros(input_ids.shape[0], width, dtype=torch.long)
        mask = torch.zeros(input_ids.shape[0], width, dtype=torch.long)
        for r in range(input_ids.shape[0]):  # compacted to the left: positions count real tokens, as transformers'
            real = input_ids[r][attention_mask[r].bool()]
            ids[r, :real.numel()], mask[r, :real.numel()] = real, 1
        logits, keys, values = self.module.prefill(input_ids=ids, attention_mask=mask)
        return logits, keys, values, lengths

    def start(self, input_ids, attention_mask, expand: int = 1) -> None:
        """Prefill a batch into rows 0.. (each prompt into `expand` rows, for beams)."""
        logits, keys, values, lengths = self.prefill(input_ids, attention_mask)
        if expand > 1:
            logits, lengths = logits.repeat_interleave(expand, 0), lengths.repeat_interleave(expand, 0)
            keys, values = keys.repeat_interleave(expand, 1), values.repeat_interleave(expand, 1)
        self.used = logits.shape[0]
        self.write(slice(0, self.used), keys, values, lengths)
        self.pending = logits

    def write(self, rows, keys, values, lengths) -> None:
        """Prefilled keys/values into `rows` (a slice or index list)."""
        width = keys.shape[3]
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            k[rows, :, :, :width] = keys[layer].transpose(2, 3)
            v[rows, :, :width] = values[layer]
        self.lengths[rows] = lengths

    def step_all(self, ids: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """One token for every row (ids (rows, 1)): logits (rows, vocab); each row's keys/values
        written at its length, which grows by one (a row already at the cache's end, a server row
        without a request, overwrites the last slot). `rows`: only the first that many, on the
        decode step compiled for them (the cache's first rows are contiguous views: no copy)."""
        rows = rows or self.rows
        step = self.step if rows == self.rows else self.module.steps[str(rows)]
        lengths = self.lengths[:rows]
        logits, new_keys, new_values = step.graph_module(ids, lengths, *(k[:rows] for k in self.keys),
                                                         *(v[:rows] for v in self.values))
        index = torch.arange(rows)
        slots = lengths.clamp(max=self.module.capacity - 1)
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            # two index tensors apart put the indexed dim first: (rows, heads, head dim)
            k[index, :, :, slots] = new_keys[layer, :, :, 0]
            v[index, :, slots] = new_values[layer, :, :, 0]
        self.lengths[:rows] += 1
        return logits

    def move(self, source: int, target: int) -> None:
        """Row `source`'s keys, values and length into row `target` (the server compacting its rows)."""
        n = int(self.lengths[source])
        for k, v in zip(self.keys, self.values):
            k[target, :, :, :n] = k[source, :, :, :n]
            v[target, :, :n] = v[source, :, :n]
        self.lengths[target] = n

    def __call__(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """The loop's model call (seq2seq/loop.py): the prefill's logits first, then decode steps."""
        if self.pending is not None:
            logits, self.pending = self.pending, None
            return logits
        if ids.shape[0] < self.rows:
            ids = torch.cat([ids, ids[:1].expand(self.rows - ids.shape[0], 1)])
        return self.step_all(ids)[:self.used]

    def reorder(self, rows: torch.Tensor, filled: int) -> None:
        """Beam search moved beams: row i now continues row rows[i]."""
        top = int(self.lengths[:self.used].max())
        for k, v in zip(self.keys, self.values):
            k[:self.used, :, :, :top] = k[rows, :, :, :top]
            v[:self.used, :, :top] = v[rows, :, :top]
        self.lengths[:self.used] = self.lengths[rows]
