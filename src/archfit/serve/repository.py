"""The model repository extension (KServe v2 / Triton): list the files a server can serve, load
or replace one, unload one, without a restart. HTTP routes in app.py, gRPC twins in rpc.py.

A model is loaded from its file (a name given at start, or NAME.archfit in `--repository DIR`;
never a path from the request), built and warmed up on every engine in a worker thread while the
old version, if any, keeps answering; then swapped in, and the old version's queue is answered
before it goes. Unloading answers what is queued, then the name is gone (404)."""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchfitError, InputError, first_line

SUFFIX = ".archfit"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ROUTE = re.compile(r"^/v2/repository/(?:index|models/(?P<name>[^/]+)/(?P<action>load|unload))$")


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


def queue_timeouts(specs: list[str]) -> dict[str, float]:
    """`MS` or `NAME=MS` (the CLI's --timeout-ms) -> {name or "": seconds}."""
    out = {}
    for spec in specs:
        name, sep, ms = spec.rpartition("=")
        try:
            seconds = float(ms) / 1e3
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise InputError(f"--timeout-ms {spec!r}: give milliseconds, or NAME=milliseconds for one model "
                             f"(e.g. --timeout-ms 500 --timeout-ms bert=200)")
        out[name] = seconds
    return out


def load_file(name: str, path: Path):
    """The file at `path`, loaded and made a Servable named `name` (warmed up)."""
    from ..artifact import load
    from .servable import servable

    return servable(name, load(path))


def load_models(specs: list[str]) -> dict:
    """{name: Servable} for the files `specs` name."""
    return {name: load_file(name, path) for name, path in model_files(specs).items()}


def directory_files(directory: Path) -> dict[str, Path]:
    """{NAME: path} of the NAME.archfit files in a repository directory."""
    return {p.name[:-len(SUFFIX)]: p for p in sorted(directory.glob(f"*{SUFFIX}"))}


@dataclass
class Entry:
    name: str
    state: str  # READY, LOADING, UNAVAILABLE (as Triton names them)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "version": "1", "state": self.state, "reason": self.reason}


class Repository:
    def __init__(self, server, files: dict[str, Path], directory: Path | None = None):
        self.server, self.files, self.directory = server, dict(files), directory
        self.reasons: dict[str, Entry] = {}  # names loading, or not served and why
        self.lock = asyncio.Lock()  # one load or unload at a time

    def file(self, name: str) -> Path | None:
        if self.directory is not None and (self.directory / f"{name}{SUFFIX}").is_file():
            return self.directory / f"{name}{SUFFIX}"
        return self.files.get(name)

    def index(self, ready_only: bool = False) -> list[Entry]:
        names = set(self.files) | set(self.server.models) | set(self.reasons)
        if self.directory is not None:
            names |= set(directory_files(self.directory))
        out = []
        for name in sorted(names):
            if name in self.reasons:
                entry = self.reasons[name]
            elif name in self.server.models:
                entry = Entry(name, "READY" if self.server.ready else "UNAVAILABLE")
            else:
                entry = Entry(name, "UNAVAILABLE", "not loaded")
            if entry.state == "READY" or not ready_only:
                out.append(entry)
        return out

    async def load(self, name: str) -> None:
        """Load (or replace) `name` from its file; raises Refused with the reason."""
        from .app import Refused

        path = self.file(name) if NAME.match(name) else None
        if path is None:
            where = f"{self.directory / (name + SUFFIX)} does not exist" if self.directory else \
                f"the server was started without it (files: {', '.join(self.files) or 'none'}) and without --repository"
            raise Refused(404, f"load {name!r}: no file for it: {where}")
        async with self.lock:
            self.reasons[name] = Entry(name, "LOADING")
            try:
                served = await asyncio.to_thread(load_file, name, path)
            except Exception as e:  # noqa: BLE001 - a file our loader could not read: said, the server goes on
                # archfit's errors and the OS's are one line already; anything else is named by its type
                why = first_line(e) if isinstance(e, (ArchfitError, OSError)) else f"{type(e).__name__}: {first_line(e)}"
                self.reasons[name] = Entry(name, "UNAVAILABLE", f"load failed: {why}")
                raise Refused(400, f"load {name!r} from {path}: {why}") from e
            old = await self.server.swap(name, served)
            del self.reasons[name]
        if old is not None:
            await old

    async def unload(self, name: str) -> None:
        from .app import Refused

        async with self.lock:
            if name not in self.server.models:
                raise Refused(404, f"unload {name!r}: no model {name!r} is loaded; loaded: "
                                   f"{', '.join(self.server.models) or 'none'}")
            old = await self.server.swap(name, None)
            self.reasons[name] = Entry(name, "UNAVAILABLE", "unloaded")
        await old


async def route(server, path: str, method: str, request):
    """POST /v2/repository/index ({"ready": true} lists ready models only), and
    /v2/repository/models/NAME/load or /unload."""
    from starlette.responses import JSONResponse

    from .app import Refused, TooLarge, error

    m = _ROUTE.match(path)
    if m is None or method != "POST":
        return error(404 if m is None else 405, f"no route {method} {path}; the repository extension takes POST "
                                                f"/v2/repository/index and /v2/repository/models/NAME/load|unload")
    if server.repository is None:
        return error(405, "the model repository is not served here (Ray Serve: redeploy the application)")
    try:
        if m["name"] is None:
            try:
                body = json.loads(await server._body(request) or b"{}")
            except (ValueError, RecursionError) as e:
                raise Refused(400, f"repository index: the body is not JSON ({e})") from None
            ready = bool(body.get("ready")) if isinstance(body, dict) else False
            return JSONResponse([e.to_dict() for e in server.repository.index(ready)])
        await (server.repository.load if m["action"] == "load" else server.repository.unload)(m["name"])
        return JSONResponse({})
    except Refused as e:
        return error(e.status, e.message, e.headers)
    except TooLarge as e:
        return error(413, f"request: the body has {e.args[0]} bytes or more, over the server's limit")

