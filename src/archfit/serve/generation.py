"""Decoder-only generation files served with continuous batching: the file's decode step runs
`slots` rows, one per running request; a new request is prefilled and joins the running batch at
the next token step, a finished one frees its row at once, and every token goes to its client as
it is made. The loop runs on its own thread (the engines release the GIL), handing tokens to the
event loop. Each request keeps its own transformers processors, stopping criteria and sampling
generator, so its tokens are those `model.generate` gives it alone (greedy; sampled with a seed).

Routes (serve/app.py sends them here): KServe v2's generate extension as Triton has it
(`POST /v2/models/NAME/generate`, `/generate_stream` as server-sent events) and OpenAI's
`POST /v1/completions` (with `stream`)."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..causal.module import CacheRunner
from ..errors import InputError
from ..seq2seq.loop import GENERATE_ARGUMENTS, eos_tensor, logits_processors, next_tokens, pad_id, stopping_criteria
from .protocol import RequestError
from .servable import Item, Servable, TensorMeta

log = logging.getLogger("archfit.serve")
DONE = object()


@dataclass
class Stream:
    """One request in the continuous batch: its tokens so far, and where they go."""

    prompt: list[int]
    config: object  # GenerationConfig
    processors: object
    stopping: object
    generator: torch.Generator | None
    loop: asyncio.AbstractEventLoop
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    made: list[int] = field(default_factory=list)
    finish: str | None = None  # "stop" (EOS or a stop string) or "length"
    cancelled: bool = False
    since: float = field(default_factory=time.perf_counter)
    first: float | None = None  # seconds to the first token
    sequence: torch.Tensor | None = None  # (1, prompt + tokens so far), what processors and stopping read

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, item)


class Scheduler:
    """The continuous batch of one causal file: `slots` cache rows (a decode step compiled for
    that many rows), requests waiting for a row, and the thread that runs prefills and steps."""

    def __init__(self, module, slots: int | None = None, max_waiting: int = 256, on_end=None):
        slots = slots or max(module.rows)
        if slots not in module.rows:
            raise InputError(f"--slots {slots}: the file's decode step runs {', '.join(map(str, module.rows))} rows; "
                             f"compile with a batch of {slots} (archfit compile --generate --batch {slots})")
        self.module, self.slots, self.max_waiting = module, slots, max_waiting
        self.on_end = on_end  # called with each stream that leaves the batch (the server's metrics)
        self.runner = CacheRunner(module, slots)
        self.free = list(range(slots))
        # decode steps compiled for fewer rows: with few requests running, they move to the first
        # rows and step on the smallest that holds them (a 1-row step costs less than an 8-row one)
        self.row_counts = sorted(r for r in module.rows if r <= slots)
        self.steps_by_rows: dict[int, int] = {}
        self.moved = 0
        self.active: dict[int, Stream] = {}
        self.waiting: deque[Stream] = deque()
        self.cv = threading.Condition()
        self.closing = False  # no new requests; what runs and waits is answered, then the loop ends
        self.stopped = False
        self.steps = 0  # decode steps run, and the rows they carried: the batch's fill
        self.rows_stepped = 0
        self.dropped = 0  # requests whose client went away before their end
        self.thread = threading.Thread(target=self._loop, name="archfit-generate", daemon=True)
        self.thread.start()

    # -- requests ------------------------------------------------------------------------------
    def submit(self, prompt: list[int], kwargs: dict, loop: asyncio.AbstractEventLoop) -> Stream:
        """Queue a prompt (token ids) with generate() arguments (and `seed`); refused in one line
        when it cannot run: a bad argument, beams, or more tokens than a cache row holds."""
        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", None)
        if not prompt:
            raise RequestError("generate: the prompt has no tokens")
        config = self.module.generation_config_for(dict(kwargs), len(prompt))
        if config.num_beams != 1 or config.num_return_sequences != 1:
            raise RequestError("generate: the server runs one sequence per request (greedy or sampled); "
                               "num_beams and num_return_sequences must be 1")
        if len(prompt) > self.module.prefill.sizes[-1]:
            raise RequestError(f"generate: the prompt has {len(prompt)} tokens, more than the largest prompt bucket "
                               f"{self.module.prefill.sizes[-1]}; cut it")
        if config.max_length > self.module.capacity:
            raise RequestError(f"generate: {len(prompt)} prompt tokens and up to {config.max_length - len(prompt)} "
                               f"new ones need {config.max_length} cache slots; the file's cache holds "
                               f"{self.module.capacity}: ask for fewer new tokens")
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        stream = Stream(prompt, config, logits_processors(config, ids, False, len(prompt), mask),
                        stopping_criteria(config, self.module.stop_tokenizer(config)), generator, loop, sequence=ids)
        with self.cv:
            if self.closing:
                raise OverflowError("the model is being unloaded or the server is stopping")
            if len(self.waiting) >= self.max_waiting:
                raise OverflowError(f"{len(self.waiting)} requests wait for a row already")
            self.waiting.append(stream)
            self.cv.notify()
        return stream

    def close(self, timeout: float = 30.0) -> None:
        """Answer what runs and what waits (new requests are refused), then stop; what is left
        after `timeout` seconds ends with an error, as does a request on a stopped loop."""
        with self.cv:
            self.closing = True
            self.cv.notify()
        self.thread.join(timeout)
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.thread.join(10)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopped and not self.closing and not self.waiting and not self.active:
                    self.cv.wait()
                if self.stopped or (self.closing and not self.waiting and not self.active):
                    break
                admitted = []
                while self.waiting and self.free:
                    s = self.waiting.popleft()
                    if not s.cancelled:
                        slot = min(self.free)  # the lowest row: running requests stay in the first rows
                        self.free.remove(slot)
                        admitted.append((slot, s))
            try:
                for slot, s in admitted:  # prefill interleaved with steps: joins at the next token
                    self._prefill(slot, s)
                self._drop_cancelled()
                if self.active:
                    self._step()
            except Exception as e:  # noqa: BLE001 - every running request hears it; the server goes on
                log.error("generation failed: %s: %s", type(e).__name__, e)
                for slot in list(self.active):
                    self._end(slot, InputError(f"generation failed: {type(e).__name__}: {e}"))
        with self.cv:
            left, self.waiting = list(self.waiting), deque()
        for slot in list(self.active):
            self._end(slot, InputError("the server is stopping"))
        for s in left:  # never admitted: their clients hear it too instead of waiting forever
            s.put(InputError("the server is stopping"))

    def _prefill(self, slot: int, s: Stream) -> None:
        ids = torch.tensor([s.prompt])
        logits, keys, values, lengths = self.runner.prefill(ids, torch.ones_like(ids))
        self.runner.write([slot], keys, values, lengths)
        self.active[slot] = s
        self._choose(slot, s, logits[0])

    def _step(self) -> None:
        rows = next(r for r in self.row_counts if r >= len(self.active))
        for slot in sorted(s for s in self.active if s >= rows):  # into the first rows (free ones there)
            target = min(f for f in self.free if f < rows)
            self.runner.move(slot, target)
            self.active[target] = self.active.pop(slot)
            self.free.remove(target)
            self.free.append(slot)
            self.moved += 1
        ids = torch.zeros(rows, 1, dtype=torch.long)  # rows without a request: any id in the table
        for slot, s in self.active.items():
            ids[slot, 0] = s.made[-1]
        logits = self.runner.step_all(ids, rows)
        self.steps_by_rows[rows] = self.steps_by_rows.get(rows, 0) + 1
        self.steps += 1
        self.rows_stepped += len(self.active)
        for slot, s in list(self.active.items()):
            self._choose(slot, s, logits[slot])

    def _choose(self, slot: int, s: Stream, logits: torch.Tensor) -> None:
        scores = s.processors(s.sequence, logits[None].float())
        token = int(next_tokens(scores, s.config, s.generator)[0])
        s.made.append(token)
        s.sequence = torch.cat([s.sequence, torch.tensor([[token]])], 1)
        if s.first is None:
            s.first = time.perf_counter() - s.since
        s.put(token)
        if bool(s.stopping(s.sequence, scores)[0]):
            eos = eos_tensor(s.config)
            hit_eos = eos is not None and token in eos.tolist()
            s.finish = "stop" if hit_eos or len(s.prompt) + len(s.made) < s.config.max_length else "length"
            self._end(slot, None)

    def _drop_cancelled(self) -> None:
        for slot, s in list(self.active.items()):
            if s.cancelled:
                self.dropped += 1
                self._end(slot, None)

    def _end(self, slot: int, error: Exception | None) -> None:
        s = self.active.pop(slot)
        self.free.append(slot)
        s.put(error if error is not None else DONE)
        if self.on_end is not None:
            self.on_end(s)


class CausalServable(Servable):
    """KServe v2 infer for a decode-only generation file: each row of input_ids (left padding
    under attention_mask) runs as one request of the continuous batch; output_ids as
    transformers returns them (the prompt, then the new tokens, finished rows padded)."""

    serves = "causal"
    continuous = True
    inputs = [TensorMeta("input_ids", "INT64", (-1, -1)), TensorMeta("attention_mask", "INT64", (-1, -1))]
    outputs = [TensorMeta("output_ids", "INT64", (-1, -1))]

    def __init__(self, name: str, module, slots: int | None = None):
        super().__init__(name, module)
        self.slots = slots
        self.scheduler: Scheduler | None = None  # started with the server, on its event loop

    @property
    def capacity(self) -> int:
        return self.slots or max(self.module.rows)

    def warm_up(self) -> None:  # every prompt bucket's prefill, and the decode step at each row count
        with torch.no_grad():
            for size in self.module.prefill.sizes:
                self.module.prefill(input_ids=torch.ones((1, size), dtype=torch.long),
                                    attention_mask=torch.ones((1, size), dtype=torch.long))
            runner = CacheRunner(self.module, max(self.module.rows))  # one cache: each step takes its first rows
            for rows in self.module.rows:
                runner.step_all(torch.ones((rows, 1), dtype=torch.long), rows)

    def start(self, slots: int | None = None, metrics=None) -> None:
        if self.scheduler is None:
            self.slots = slots or self.slots
            counted = None if metrics is None else (lambda s: metrics.generation(self.name, len(s.made), s.first))
            self.scheduler = Scheduler(self.module, self.slots, on_end=counted)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None

    def prepare(self, given, parameters=None):
        tied = self.check_inputs(given, optional=("attention_mask",))
        kwargs = {k: v for k, v in (parameters or {}).items() if k in GENERATE_ARGUMENTS or k == "seed"}
        return Item(given, tied[0], None, tied[1], kwargs)

    async def generate_rows(self, item: Item) -> dict[str, torch.Tensor]:
        ids = item.inputs["input_ids"]
        mask = item.inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        loop = asyncio.get_running_loop()
        streams = [self.scheduler.submit(ids[r][mask[r].bool()].tolist(), item.parameters, loop)
                   for r in range(ids.shape[0])]
        try:
            made = [await collect(s) for s in streams]
        finally:
            for s in streams:
                s.cancelled = True
        pad = pad_id(self.module.generation_config)
        width = max(len(m) for m in made)
        rows = [ids[r].tolist() + m + [pad] * (width - len(m)) for r, m in enumerate(made)]
        return {"output_ids": torch.tensor(rows)}

    def run(self, items):  # the plain batcher never gets these: app.py sends them to generate_rows
        raise NotImplementedError


async def collect(stream: Stream) -> list[int]:
    """Every token of a stream (raises the error that ended it, if one did)."""
    out = []
    async for token in tokens(stream):
        out.append(token)
    return out


async def tokens(stream: Stream):
    """A stream's tokens as they are made."""
    while True:
        item = await stream.tokens.get()
        if item is DONE:
            return
        if isinstance(item, Exception):
            raise item
        yield item
