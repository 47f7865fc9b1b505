"""`archfit serve`: compiled files behind the Open Inference Protocol (KServe v2) on Starlette and
uvicorn. `Server.handle` answers one HTTP request whatever carries it: the Starlette app here, or
a Ray Serve replica (ray.py), so both run the same routes, checks and batcher."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .._version import __version__
from ..errors import ArchfitError, InputError, first_line
from .batcher import Batcher, Overloaded, TooManyRows
from .metrics import Metrics
from .protocol import HEADER, RequestError, decode, encode
from .servable import Servable, servable

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                    r"(?P<rest>/ready|/infer|/generate|/generate_stream)?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _openai_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def _refused(e: Exception, fail=error) -> tuple[int, Response]:
    """A generation request refused: a full queue is 503 with Retry-After, a bad request 400."""
    if isinstance(e, OverflowError):
        return 503, fail(503, f"overloaded: {e}", headers={"Retry-After": "1"})
    return 400, fail(400, str(e))


class TooLarge(Exception):
    pass


def model_files(specs: list[str]) -> dict[str, Path]:
    """`path` or `name=path` -> {name: path}; the name defaults to the file's stem."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not NAME.match(name):
            raise InputError(f"model name {name!r} ({spec}): use letters, digits, '_', '.' or '-' (name=path)")
        if name in out:
            raise InputError(f"two files are served as {name!r}; name them: name=path/to/file.archfit")
        out[name] = Path(path)
    return out


def load_models(specs: list[str]) -> dict[str, Servable]:
    from ..artifact import load

    return {name: servable(name, load(path)) for name, path in model_files(specs).items()}


class Server:
    def __init__(self, models: Mapping[str, Servable], max_delay_ms: float = 5.0, max_queue: int = 256,
                 max_body: int = 64 << 20, streams: int = 1, slots: int | None = None):
        self.models = dict(models)
        self.metrics = Metrics()
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.max_body = max_body
        self.streams = streams  # batches run at once per model (engines loaded with as many streams)
        self.slots = slots  # cache rows of a generation file's continuous batch (None: its largest step)
        self.batchers: dict[str, Batcher] = {}
        self.ready = False

    async def start(self) -> None:
        for name, s in self.models.items():
            if s.continuous:  # generation: its own loop, one request per cache row (serve/generation.py)
                s.start(self.slots, self.metrics)
                continue
            self.batchers[name] = b = Batcher(s, self.metrics, self.max_delay, self.max_queue, self.streams)
            b.start()
        self.ready = True

    async def stop(self) -> None:
        """Answer what is queued, then stop the batchers."""
        self.ready = False
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        for s in self.models.values():
            if s.continuous:
                await asyncio.to_thread(s.stop)

    # -- routes --------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path == "/v2/health/live":
            return Response(status_code=200)
        if path == "/v2/health/ready":
            return Response(status_code=200 if self.ready else 503)
        if path == "/v2":
            return JSONResponse({"name": "archfit", "version": __version__, "extensions": ["binary_tensor_data"]})
        if path == "/metrics":
            return Response(self.metrics.text(), media_type="text/plain; version=0.0.4")
        if path == "/v1/completions" and method == "POST":
            return await self.generation(None, request, "completions")
        if path == "/v1/models":
            return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "archfit"}
                                                            for n, s in self.models.items() if s.continuous]})
        if path == "/v2/repository/index" and method == "POST":
            return JSONResponse([{"name": n, "version": "1", "state": "READY" if self.ready else "UNAVAILABLE"}
                                 for n in self.models])
        m = _MODEL.match(path)
        if m is None:
            return error(404, f"no route {method} {path}; archfit serves the Open Inference Protocol under /v2")
        name, version, rest = m["name"], m["version"], m["rest"]
        if name not in self.models:
            return error(404, f"no model {name!r}; served here: {', '.join(self.models)}")
        if version not in (None, "1"):
            return error(404, f"model {name!r} has version 1 only, not {version!r}")
        if rest == "/ready":
            return Response(status_code=200 if self.ready else 503)
        if rest == "/infer":
            if method != "POST":
                return error(405, "infer takes POST")
            return await self.infer(name, request)
        if rest in ("/generate", "/generate_stream"):
            if method != "POST" or not self.models[name].continuous:
                return error(405 if method != "POST" else 400,
                             f"{rest.lstrip('/')} takes POST, for a decoder-only generation file ({name!r} is a "
                             f"{self.models[name].kind} file: use infer)")
            return await self.generation(name, request, rest.lstrip("/"))
        return JSONResponse(self.models[name].metadata())

    async def generation(self, name: str | None, request: Request, route: str) -> Response:
        """generate, generate_stream and completions: errors answered as infer's are, counted alike."""
        from . import completions

        start, status = time.perf_counter(), 200
        # OpenAI's clients read {"error": {"message": ...}}; the v2 routes answer as infer does
        fail = _openai_error if route == "completions" else error
        try:
            if route == "completions":
                return await completions.completions(self, request)
            return await completions.generate(self, name, request, stream=route == "generate_stream")
        except TooLarge as e:
            status = 413
            return fail(413, f"request: the body has {e.args[0]} bytes or more, over the server's limit of "
                              f"{self.max_body} (--max-body-mb)")
        except (InputError, OverflowError) as e:
            status, response = _refused(e, fail)
            return response
        except ClientDisconnect:
            status = 499
            return Response(status_code=499)
        finally:
            self.metrics.answered(name or "completions", route, status,
                                  time.perf_counter() - start if status == 200 else None)

    async def _body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        if declared > 16 * self.max_body:  # answered at once; the client sees the connection close
            raise TooLarge(declared)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            elif size > 16 * self.max_body:
                raise TooLarge(size)
            else:  # read past and dropped, so the client gets its 413 instead of a broken pipe
                chunks.clear()
        if size > self.max_body:
            raise TooLarge(size)
        return b"".join(chunks)

    async def infer(self, name: str, request: Request) -> Response:
        start = time.perf_counter()
        bucket, status = "-", 200
        try:
            try:
                body = await self._body(request)
            except TooLarge as e:
                status = 413
                return error(413, f"request: the body has {e.args[0]} bytes or more, over the server's limit of "
                                  f"{self.max_body} (--max-body-mb); send smaller requests")
            except ClientDisconnect:  # the client hung up mid-body: nobody to answer, counted as such
                status = 499
                return Response(status_code=499)
            try:
                req = decode(body, request.headers.get(HEADER))
                model = self.models[name]
                item = model.prepare(req.inputs, req.parameters)
                if req.outputs is not None:
                    known = {o.name for o in model.outputs}
                    unknown = [o for o in req.outputs if o not in known]
                    if unknown:
                        raise RequestError(f"model {name!r} has no output {unknown[0]!r}; it has {', '.join(sorted(known))}")
            except InputError as e:
                status = 400
                return error(400, str(e))
            except Exception as e:  # noqa: BLE001 - a request our checks missed: one line, counted, no traceback
                status = 400
                return error(400, f"request: {type(e).__name__}: {first_line(e, 200)}")
            if model.continuous:  # each row joins the running batch; answered when all are done
                try:
                    outputs, bucket = await model.generate_rows(item), "slots"
                except (InputError, OverflowError) as e:
                    status, response = _refused(e)
                    return response
                content, headers = encode(name, req, outputs)
                return Response(content, headers=headers,
                                media_type="application/octet-stream" if headers else "application/json")
            try:
                future = self.batchers[name].submit(item)
            except TooManyRows as e:
                status = 413
                return error(413, f"request: {e}")
            except Overloaded as e:
                status = 503
                return error(503, f"overloaded: {e}", headers={"Retry-After": "1"})
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not future.done():  # the client went away: its request is dropped from the queue
                future.cancel()
                status = 499
                return Response(status_code=499)
            try:
                outputs, bucket = future.result()
            except InputError as e:
                status = 400
                return error(400, str(e))
            except ArchfitError as e:
                status = 500
                return error(500, str(e))
            except Exception as e:  # noqa: BLE001 - a bug of ours or a backend's: one line, the server goes on
                status = 500
                return error(500, f"internal: {type(e).__name__}: {first_line(e)}")
            content, headers = encode(name, req, outputs)
            ctype = "application/octet-stream" if headers else "application/json"
            return Response(content, headers=headers, media_type=ctype)
        finally:
            self.metrics.answered(name, bucket, status, time.perf_counter() - start if status == 200 else None)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    message = await request.receive()
    if message["type"] != "http.disconnect":
        # a carrier that does not report disconnects this way (Ray Serve's proxy): never returns
        await asyncio.Event().wait()


def create_app(server: Server):
    """The Starlette app: every path goes to Server.handle; the batchers live as long as the app."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    route = Route("/{path:path}", server.handle, methods=["GET", "POST", "PUT", "DELETE"])
    return Starlette(routes=[route], lifespan=lifespan)


def engine_threads(threads: int | None = None, streams: int = 1) -> None:
    """Threads per engine and engine streams for the engines loaded from now on in this process
    (read by the targets at load, see targets.base.thread_limit/stream_count)."""
    if threads:
        import torch

        os.environ["ARCHFIT_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    if streams > 1:
        os.environ["ARCHFIT_STREAMS"] = str(streams)


def run(specs: list[str], host: str = "127.0.0.1", port: int = 8000, max_delay_ms: float = 5.0,
        max_queue: int = 256, max_body_mb: float = 64, streams: int = 1, threads: int | None = None,
        log_level: str = "warning", on_ready=None, slots: int | None = None) -> None:
    """Load the files and serve them until SIGINT/SIGTERM (in-flight requests are answered first).
    streams > 1: each model runs that many batches at once, its engines split into as many
    streams (OpenVINO NUM_STREAMS), which uses the cores better under load than one batch on all."""
    import uvicorn

    engine_threads(threads, streams)
    server = Server(load_models(specs), max_delay_ms, max_queue, int(max_body_mb * (1 << 20)), streams, slots)
    config = uvicorn.Config(create_app(server), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")
    if on_ready is not None:
        on_ready(server)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler found at start:
    # a no-op one here, so a drained server exits 0 (what an orchestrator expects of a clean stop)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)

