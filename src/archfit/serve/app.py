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
from .batcher import Batcher, Expired, Overloaded, TooManyRows, queue_policy
from .metrics import Metrics
from .protocol import HEADER, InferRequest, RequestError, decode, encode
from .repository import Repository, directory_files, load_file, model_files
from .servable import Servable

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                    r"(?P<rest>/ready|/infer|/generate|/generate_stream)?$")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _openai_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


class TooLarge(Exception):
    pass


class Refused(Exception):
    """A request answered with an error: its HTTP status (gRPC maps it to a code) and one line."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def bad_request(e: Exception) -> Refused:
    """400 for a request our checks refused (InputError: its own line) or one they missed (named by
    its type, one line, no traceback): whichever carrier brought it."""
    if isinstance(e, InputError):
        return Refused(400, str(e))
    return Refused(400, f"request: {type(e).__name__}: {first_line(e, 200)}")


def refusal(e: Exception) -> Refused:
    """A generation request refused: a full queue is 503 with Retry-After, a bad request 400."""
    if isinstance(e, OverflowError):
        return Refused(503, f"overloaded: {e}", {"Retry-After": "1"})
    return Refused(400, str(e))


class Server:
    def __init__(self, models: Mapping[str, Servable], max_delay_ms: float = 5.0, max_queue: int = 256,
                 max_body: int = 64 << 20, streams: int = 1, slots: int | None = None,
                 grpc_address: str | None = None, timeouts: Mapping[str, float] | None = None,
                 body_timeout: float = 30.0, files: Mapping[str, Path] | None = None, repository: Path | None = None,
                 repository_api: bool = True):
        self.models = dict(models)
        self.metrics = Metrics()
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.max_body = max_body
        self.body_timeout = body_timeout  # seconds from the headers to the body's last byte (408 after)
        self.streams = streams  # batches run at once per model (engines loaded with as many streams)
        self.slots = slots  # cache rows of a generation file's continuous batch (None: its largest step)
        self.batchers: dict[str, Batcher] = {}
        self.grpc_address = grpc_address  # host:port of the gRPC service (rpc.py), None: HTTP only
        self.grpc = None
        # seconds a request may wait queued when it gives no timeout: per model name, "" for every model
        self.timeouts = dict(timeouts or {})
        # load/unload without a restart (repository.py); off where one process is not the whole server (Ray)
        self.repository = Repository(self, dict(files or {}), repository) if repository_api else None
        self.ready = False

    def _start_model(self, name: str, s: Servable) -> None:
        if s.continuous:  # generation: its own loop, one request per cache row (serve/generation.py)
            s.start(self.slots, self.metrics)
        else:
            self.batchers[name] = b = Batcher(s, self.metrics, self.max_delay, self.max_queue, self.streams)
            b.start()
        self.models[name] = s

    async def swap(self, name: str, served: Servable | None):
        """Serve `served` as `name` from the next request on (None: stop serving it); returns the old
        version's drain to await (its queued requests answered, its loop stopped), or None."""
        old, batcher = self.models.pop(name, None), self.batchers.pop(name, None)
        if served is not None:
            self._start_model(name, served)
        if old is None:
            return None

        async def drain():
            if batcher is not None:
                await batcher.close()
            if old.continuous:
                await asyncio.to_thread(old.stop)
        return drain()

    async def start(self) -> None:
        for name, s in list(self.models.items()):
            self._start_model(name, s)
        if self.grpc_address is not None:
            from . import rpc

            self.grpc = await rpc.start(self, self.grpc_address)
        self.ready = True

    async def stop(self) -> None:
        """Answer what is queued, then stop the batchers."""
        self.ready = False
        if self.grpc is not None:  # in-flight RPCs get the grace period HTTP's drain has
            await self.grpc.stop(30)
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
        if path.startswith("/v2/repository/"):
            from .repository import route

            return await route(self, path, method, request)
        m = _MODEL.match(path)
        if m is None:
            return error(404, f"no route {method} {path}; archfit serves the Open Inference Protocol under /v2")
        name, rest = m["name"], m["rest"]
        found = self.find(name, m["version"])
        if isinstance(found, tuple):
            return error(*found)
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

    def find(self, name: str, version: str | None) -> Servable | tuple[int, str]:
        """The model served as `name` (at `version`), or the status and line saying why not."""
        if name not in self.models:
            loading = self.repository is not None and name in self.repository.reasons and \
                self.repository.reasons[name].state == "LOADING"
            if loading:
                return 503, f"model {name!r} is loading; retry shortly"
            return 404, f"no model {name!r}; served here: {', '.join(self.models)}"
        if version not in (None, "1"):
            return 404, f"model {name!r} has version 1 only, not {version!r}"
        return self.models[name]

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
            r = refusal(e)
            status = r.status
            return fail(r.status, r.message, r.headers)
        except ClientDisconnect:
            status = 499
            return Response(status_code=499)
        except Refused as e:
            status = e.status
            return fail(e.status, e.message, e.headers)
        finally:
            self.metrics.answered(name or "completions", route, status,
                                  time.perf_counter() - start if status == 200 else None)

    async def _body(self, request: Request) -> bytes:
        try:
            return await asyncio.wait_for(self._read_body(request), self.body_timeout)
        except asyncio.TimeoutError:
            raise Refused(408, f"request: the body did not arrive within {self.body_timeout:g} s "
                               f"(--body-timeout); send it at once") from None

    async def _read_body(self, request: Request) -> bytes:
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
                raise Refused(413, f"request: the body has {e.args[0]} bytes or more, over the server's limit of "
                                   f"{self.max_body} (--max-body-mb); send smaller requests") from None
            except ClientDisconnect:  # the client hung up mid-body: nobody to answer, counted as such
                raise Refused(499, "") from None
            try:
                req = decode(body, request.headers.get(HEADER))
            except Exception as e:  # noqa: BLE001 - a body our checks missed too: one line, counted
                raise bad_request(e) from e
            outputs, bucket = await self.answer(name, req, lambda: _disconnected(request))
            content, headers = encode(name, req, outputs)
            ctype = "application/octet-stream" if headers else "application/json"
            return Response(content, headers=headers, media_type=ctype)
        except Refused as e:
            status = e.status
            if status == 499:
                return Response(status_code=499)
            return error(e.status, e.message, e.headers)
        finally:
            self.metrics.answered(name, bucket, status, time.perf_counter() - start if status == 200 else None)

    async def answer(self, name: str, req: InferRequest, gone=None) -> tuple[dict, str]:
        """A decoded infer request's outputs and the bucket that ran it, whatever carried it (HTTP,
        gRPC). `gone()`: a coroutine that returns when the client leaves (the request is then dropped);
        a carrier that cancels this task instead (gRPC) gets the same. Errors raise Refused."""
        model = self.models[name]
        try:
            if model.continuous:
                if {"timeout", "priority"} & set(req.parameters):
                    raise RequestError(f"model {name!r}: 'timeout' and 'priority' order the batcher's queue; a "
                                       f"generation file admits requests in arrival order (send neither)")
            else:
                timeout, priority = queue_policy(req.parameters, self.timeouts.get(name, self.timeouts.get("")))
            item = model.prepare(req.inputs, req.parameters)
            if req.outputs is not None:
                known = {o.name for o in model.outputs}
                unknown = [o for o in req.outputs if o not in known]
                if unknown:
                    raise RequestError(f"model {name!r} has no output {unknown[0]!r}; it has {', '.join(sorted(known))}")
        except Exception as e:  # noqa: BLE001 - a request our checks missed too: one line, counted
            raise bad_request(e) from e
        if model.continuous:  # each row joins the running batch; answered when all are done
            try:
                return await model.generate_rows(item), "slots"
            except (InputError, OverflowError) as e:
                raise refusal(e) from e
        try:
            future = self.batchers[name].submit(item, timeout, priority)
        except TooManyRows as e:
            raise Refused(413, f"request: {e}") from e
        except Overloaded as e:
            raise Refused(503, f"overloaded: {e}", {"Retry-After": "1"}) from e
        waits = {future}
        if gone is not None:
            waits.add(asyncio.ensure_future(gone()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if not w.done():  # the client went away (or this task was cancelled): dropped from the queue
                    w.cancel()
        if future.cancelled():
            raise Refused(499, "the client went away")
        try:
            return future.result()
        except InputError as e:
            raise Refused(400, str(e)) from e
        except Expired as e:
            raise Refused(504, f"timeout: {e}") from e
        except ArchfitError as e:
            raise Refused(500, str(e)) from e
        except Exception as e:  # noqa: BLE001 - a bug of ours or a backend's: one line, the server goes on
            raise Refused(500, f"internal: {type(e).__name__}: {first_line(e)}") from e


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
        log_level: str = "warning", on_ready=None, slots: int | None = None, grpc_port: int | None = None,
        timeouts: Mapping[str, float] | None = None, header_timeout: float = 5.0, body_timeout: float = 30.0,
        repository: str | None = None) -> None:
    """Load the files and serve them until SIGINT/SIGTERM (in-flight requests are answered first);
    with `grpc_port`, the same models over gRPC there too.
    streams > 1: each model runs that many batches at once, its engines split into as many
    streams (OpenVINO NUM_STREAMS), which uses the cores better under load than one batch on all."""
    import uvicorn

    from . import connections

    engine_threads(threads, streams)
    files = model_files(specs)
    if repository is not None:  # every NAME.archfit there, beside the files named (which win a clash)
        files = {**directory_files(Path(repository)), **files}
    server = Server({name: load_file(name, path) for name, path in files.items()}, max_delay_ms, max_queue,
                    int(max_body_mb * (1 << 20)), streams, slots,
                    grpc_address=None if grpc_port is None else f"{host}:{grpc_port}", timeouts=timeouts,
                    body_timeout=body_timeout, files=files, repository=None if repository is None else Path(repository))
    config = connections.config(create_app(server), host, port, header_timeout, log_level=log_level,
                                access_log=False, timeout_graceful_shutdown=30)
    if on_ready is not None:
        on_ready(server)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler found at start:
    # a no-op one here, so a drained server exits 0 (what an orchestrator expects of a clean stop)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)

