"""Persistent compile cache: engines keyed by partition graph, weights, shapes, target,
precision and versions, so tracing an unchanged model again loads instead of compiling.

Each entry carries the SHA-256 of its engine bytes, checked on every read: a damaged entry
(a bad disk, a partial copy, a write by something else) is named on stderr, removed where the
directory allows, and rebuilt; it never loads as a good engine. Safe with concurrent processes:
entries are written to a temporary file and renamed into place (atomic on POSIX), so a reader
sees a whole entry or none; temporaries left by an interrupted write are removed by `clear`.

Bounded: after each write, least recently used entries go until the directory holds at most
ARCHFIT_CACHE_MAX_GB (default 10 GiB; `inf` for no bound). A day of benchmarks wrote 24 GiB here
before this bound, and a full disk fails everything else on the machine, not just the cache.
Entries this process loaded or wrote are never evicted by it: an engine imported from the cache
may re-read its entry when it is saved."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from torch import fx

from .._version import __version__
from ..errors import ArtifactError, CacheError, first_line
from ..targets.base import Engine, Target
from .capture import attr_of

log = logging.getLogger("archfit.cache")
MAGIC = b"archfit-cache-entry 1\n"
SUFFIX = ".engine"
DEFAULT_MAX_GB = 10.0
STALE_TMP_SECONDS = 3600  # a temporary this old is an interrupted write, not one in progress
_used: set[str] = set()  # keys this process loaded or wrote: never evicted by it
_warned: set[str] = set()  # cache directories whose failed write was already reported


def cache_dir() -> Path | None:
    """ARCHFIT_CACHE=0 disables; ARCHFIT_CACHE_DIR moves it (default ~/.cache/archfit)."""
    if os.environ.get("ARCHFIT_CACHE", "1") in ("0", "false", "off"):
        return None
    root = os.environ.get("ARCHFIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "archfit")
    return Path(root)


def max_bytes() -> float:
    """The bound on the cache directory's size, from ARCHFIT_CACHE_MAX_GB (GiB; `inf`: none)."""
    raw = os.environ.get("ARCHFIT_CACHE_MAX_GB", "").strip()
    if not raw:
        return DEFAULT_MAX_GB * 2**30
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also refuses nan
        raise CacheError(f"ARCHFIT_CACHE_MAX_GB={raw!r} is not a size in GiB; set a number such as 10, "
                         f"or inf for no bound")
    return gb * 2**30


def partition_key(target: Target, gm: fx.GraphModule, inputs: Sequence[torch.Tensor], precision: str,
                  extra: str = "") -> str:
    """extra: what else the engine depends on (int8: the calibration data and the layers kept in float)."""
    h = hashlib.blake2b(digest_size=20)
    versions = {"archfit": __version__, "torch": torch.__version__, **target.versions()}
    h.update(repr((target.name, precision, sorted(versions.items()), extra)).encode())
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
    _used.add(key)
    try:
        os.utime(path)  # the entry's mtime is its last use: eviction goes oldest first
    except OSError:
        pass
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
    limit = max_bytes()
    data = MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob
    if len(data) > limit:
        _warn_once(root, f"an engine of {size_text(len(data))} is larger than the compile cache's bound "
                         f"({size_text(limit)}, ARCHFIT_CACHE_MAX_GB), so it is not cached")
        return
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, root / f"{key}{SUFFIX}")
    except OSError as e:  # a read-only or full disk costs a recompile next time, nothing more
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # never leave half an engine on a full disk
        _warn_once(root, f"could not write to the compile cache {root} ({e.strerror or e}); "
                         f"this model compiles again next time")
        return
    _used.add(key)
    evict(limit)


def _warn_once(root: Path, message: str) -> None:
    if str(root) not in _warned:
        _warned.add(str(root))
        log.warning("archfit: %s", message)


def size_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every entry, oldest first; entries another process removes as
    this runs are skipped."""
    found = []
    for p in root.glob(f"*{SUFFIX}"):
        try:
            st = p.stat()
        except OSError:
            continue
        found.append((st.st_mtime, st.st_size, p))
    return sorted(found)


def evict(limit: float | None = None) -> int:
    """Remove least recently used entries until the cache holds at most `limit` bytes (default:
    ARCHFIT_CACHE_MAX_GB), and temporaries of writes interrupted over an hour ago; returns how
    many engines went."""
    root = cache_dir()
    if root is None or not root.is_dir():
        return 0
    limit = max_bytes() if limit is None else limit
    for p in root.glob("*.tmp"):
        try:
            if p.stat().st_mtime < time.time() - STALE_TMP_SECONDS:
                p.unlink()
        except OSError:
            pass
    entries = _entries(root)
    total, removed = sum(size for _, size, _ in entries), 0
    for _, size, path in entries:
        if total <= limit:
            break
        if path.stem in _used:
            continue
        try:
            path.unlink(missing_ok=True)  # missing: another process evicted it first
        except OSError:  # read-only: nothing this process can free
            break
        total -= size
        removed += 1
    if removed:
        log.info("archfit: compile cache over %s: removed %d least recently used engine(s)", size_text(limit), removed)
    return removed


def info() -> tuple[int, int, float]:
    """(engines, bytes they take, the bound in bytes)."""
    root = cache_dir()
    entries = _entries(root) if root is not None and root.is_dir() else []
    return len(entries), sum(size for _, size, _ in entries), max_bytes()


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
