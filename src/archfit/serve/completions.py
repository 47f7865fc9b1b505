"""The HTTP routes of generation (serve/generation.py runs it): KServe v2's generate extension
as Triton has it, and OpenAI's completions.

- `POST /v2/models/NAME/generate`: {"text_input": "..."} (files that carry a tokenizer) or
  {"input_ids": [...]}, generation arguments at the top level or under "parameters"
  (max_tokens or max_new_tokens, temperature, top_k, top_p, do_sample, seed, stop, ...) ->
  {"model_name", "model_version", "text_output", "output_ids", "finish_reason"}.
- `POST /v2/models/NAME/generate_stream`: the same, answered as server-sent events, one per token.
- `POST /v1/completions`: OpenAI's request (model, prompt, max_tokens, temperature, top_p, stop,
  seed, stream) and response (choices, usage; with stream, `data:` chunks then `data: [DONE]`).
  As in OpenAI's API, temperature defaults to 1 (sampling); temperature 0 is greedy."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import InputError
from .generation import CausalServable, tokens

_RENAMED = {"max_tokens": "max_new_tokens", "stop": "stop_strings"}
# generation arguments a request may set (transformers' names, and the renamed ones above)
_ARGUMENTS = {"max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p", "do_sample", "seed",
              "repetition_penalty", "no_repeat_ngram_size", "stop_strings", "eos_token_id"}


def arguments(given: dict) -> dict:
    """generate() keywords from a request's fields (unknown ones refused by name)."""
    out = {}
    for key, value in given.items():
        key = _RENAMED.get(key, key)
        if key not in _ARGUMENTS:
            raise InputError(f"generate: unknown parameter {key!r}; it takes {', '.join(sorted(_ARGUMENTS | set(_RENAMED)))}")
        if key == "stop_strings" and isinstance(value, str):
            value = [value]
        out[key] = value
    if "temperature" in out and "do_sample" not in out:  # a temperature asks for sampling; 0 for greedy
        temperature = out.pop("temperature")
        if temperature:
            out.update(do_sample=True, temperature=temperature)
    return out


class _Prompt:
    """A request's prompt as token ids, and its new tokens back as text where a tokenizer is carried."""

    def __init__(self, model: CausalServable, prompt):
        self.text = model.module.text
        if isinstance(prompt, str):
            if self.text is None:
                raise InputError(f"model {model.name!r} takes token ids (it carries no tokenizer): send input_ids")
            self.ids = self.text.encode([prompt])[0].ids
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            self.ids = list(prompt)
        else:
            raise InputError("generate: the prompt is a string or a non-empty list of token ids")
        self.shown = ""

    def decode(self, made: list[int]) -> str:
        return self.text.decode(made) if self.text is not None else ""

    def delta(self, made: list[int]) -> str:
        """The text the latest tokens added (decoded whole and diffed: a token may end mid-character)."""
        full = self.decode(made)
        if full.endswith("\ufffd"):  # a character still incomplete: wait for its next bytes
            return ""
        piece, self.shown = full[len(self.shown):], full
        return piece


async def _body(server, request: Request) -> dict:
    try:
        body = json.loads(await server._body(request))
    except ValueError as e:
        raise InputError(f"request: the body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise InputError("request: the body must be a JSON object")
    return body


def _sse(payload) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


async def generate(server, name: str, request: Request, stream: bool) -> Response:
    """KServe v2 generate / generate_stream."""
    model = server.models[name]
    body = await _body(server, request)
    fields = dict(body.get("parameters") or {})
    fields.update({k: v for k, v in body.items() if k not in ("text_input", "input_ids", "parameters", "id")})
    prompt = _Prompt(model, body.get("text_input", body.get("input_ids")))
    s = model.scheduler.submit(prompt.ids, arguments(fields), asyncio.get_running_loop())
    head = {"model_name": name, "model_version": "1"} | ({"id": body["id"]} if "id" in body else {})
    if not stream:
        made = [t async for t in _until_gone(s, request)]
        return JSONResponse(head | {"text_output": prompt.decode(made), "output_ids": made,
                                    "finish_reason": s.finish})

    async def events():
        made = []
        async for token in _until_gone(s, request):
            made.append(token)
            yield _sse(head | {"text_output": prompt.delta(made), "output_ids": [token]})
        yield _sse(head | {"text_output": prompt.delta(made), "output_ids": [], "finish_reason": s.finish})

    return StreamingResponse(events(), media_type="text/event-stream")


async def completions(server, request: Request) -> Response:
    """OpenAI's POST /v1/completions."""
    body = await _body(server, request)
    name = body.get("model")
    models = {n: m for n, m in server.models.items() if isinstance(m, CausalServable)}
    if name is None and len(models) == 1:
        name = next(iter(models))
    if name not in models:
        raise InputError(f"model {name!r} is not a generation model served here; these are: {', '.join(models) or 'none'}")
    if body.get("n", 1) != 1 or body.get("echo") or body.get("logprobs") or body.get("best_of", 1) != 1:
        raise InputError("completions: n, best_of, echo and logprobs are not supported (one completion per request)")
    model = models[name]
    fields = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed") if body.get(k) is not None}
    fields.setdefault("max_tokens", 16)  # OpenAI's defaults
    fields.setdefault("temperature", 1.0)
    prompt_value = body.get("prompt")
    if isinstance(prompt_value, list) and len(prompt_value) == 1 and isinstance(prompt_value[0], (str, list)):
        prompt_value = prompt_value[0]  # a batch of one
    prompt = _Prompt(model, prompt_value)
    s = model.scheduler.submit(prompt.ids, arguments(fields), asyncio.get_running_loop())
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}
    if not body.get("stream"):
        made = [t async for t in _until_gone(s, request)]
        return JSONResponse(head | {
            "choices": [{"text": prompt.decode(made), "index": 0, "logprobs": None, "finish_reason": s.finish}],
            "usage": {"prompt_tokens": len(prompt.ids), "completion_tokens": len(made),
                      "total_tokens": len(prompt.ids) + len(made)}})

    async def events():
        made = []
        async for token in _until_gone(s, request):
            made.append(token)
            piece = prompt.delta(made)
            if piece:
                yield _sse(head | {"choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]})
        yield _sse(head | {"choices": [{"text": prompt.delta(made), "index": 0, "logprobs": None,
                                        "finish_reason": s.finish}]})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


async def _until_gone(s, request: Request):
    """The stream's tokens; when the client hangs up, the request leaves the batch at the next step."""
    try:
        async for token in tokens(s):
            yield token
    finally:
        s.cancelled = True
