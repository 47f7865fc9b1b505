"""Persistent compile cache: engines keyed by partition graph, weights, shapes, target,
precision and versions, so tracing an unchanged model again loads instead of compiling.

Each entry carries the SHA-256 of its engine bytes, checked on every read: a damaged entry
(a bad disk, a partial copy, a write by something else) is named on stderr, removed where the
directory allows, and rebuilt; it never loads as a good engine. Safe with concurrent processes:
entries are written to a temporary file and renamed into place (atomic on POSIX), so a reader
sees a whole entry or none; temporaries left by an interrupted write are removed by `clear`."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from torch import fx

from .._version import __version__
from ..errors import ArtifactError, first_line
from ..targets.base import Engine, Target
from .capture import attr_of

log = logging.getLogger("archfit.cache")
MAGIC = b"archfit-cache-entry 1\n"
SUFFIX = ".engine"


def cache_dir() -> Path | None:
    """ARCHFIT_CACHE=0 disables; ARCHFIT_CACHE_DIR moves it (default ~/.cache/archfit)."""
    if os.environ.get("ARCHFIT_CACHE", "1") in ("0", "false", "off"):
        return None
    root = os.environ.get("ARCHFIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "archfit")
    return Path(root)


def partition_key(target: Target, gm: fx.GraphModule, inputs: Sequence[torch.Tensor], precision: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    versions = {"archfit": __version__, "torch": torch.__version__, **target.versions()}
    h.update(repr((target.name, precision, sorted(versions.items()))).encode())
    h.update(gm.code.encode())
    for t in inputs:
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = attr_of(gm, node.target)
            if isinstance(value, torch.Tensor):
                v = value.detach().contiguous()
                h.update(repr((node.target, tuple(v.shape), str(v.dtype))).encode())
                h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _drop(path: Path, why: str) -> None:
    log.warning("archfit: compile cache entry %s %s; compiling again", path, why)
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only cache: the entry stays, and is refused again next time
        pass


def get(key: str, target: Target) -> Engine | None:
    root = cache_dir()
    if root is None or target.load is None:
        return None
    path = root / f"{key}{SUFFIX}"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, body = _entry(data)
    if body is None:
        _drop(path, "fails its checksum")
        return None
    try:
        engine = target.load(body)
    except Exception as e:  # noqa: BLE001 - a stale entry (other backend build) is rebuilt, never fatal
        _drop(path, f"does not load ({first_line(e, 120)})")
        return None
    engine.origin = partial(_reread, path, digest)
    return engine


def _entry(data: bytes) -> tuple[str, bytes | None]:
    """(digest, body) of an entry's bytes; body None when the header or checksum is wrong."""
    digest, body = data[len(MAGIC):len(MAGIC) + 64].decode("ascii", "replace"), data[len(MAGIC) + 65:]
    ok = data[:len(MAGIC)] == MAGIC and digest == hashlib.sha256(body).hexdigest()
    return digest, body if ok else None


def _reread(path: Path, digest: str) -> bytes:
    """An entry's body read again (for engines their backend cannot export once imported)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"compile cache entry {path} went away after it was loaded; trace the model again "
                           f"to save it") from e
    seen, body = _entry(data)
    if body is None or seen != digest:
        raise ArtifactError(f"compile cache entry {path} changed after it was loaded; trace the model again to save it")
    return body


def put(key: str, engine: Engine) -> None:
    root = cache_dir()
    blob = engine.serialize() if root is not None else None
    if blob is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
        os.replace(tmp, root / f"{key}{SUFFIX}")
    except OSError:
        pass  # a read-only or full disk costs a recompile next time, nothing more


def clear() -> int:
    """Delete every cached engine and any temporary left by an interrupted write; returns how
    many engines were removed."""
    root = cache_dir()
    if root is None or not root.is_dir():
        return 0
    removed = 0
    for p in root.glob(f"*{SUFFIX}"):
        p.unlink(missing_ok=True)
        removed += 1
    for p in root.glob("*.tmp"):
        p.unlink(missing_ok=True)
    return removed
