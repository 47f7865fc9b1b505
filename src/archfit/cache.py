"""Persistent compile cache: engines keyed by partition graph, weights, shapes, target,
precision and versions, so tracing an unchanged model again loads instead of compiling.

Safe with concurrent processes: entries are written to a temporary file and renamed into
place (atomic on POSIX), so a reader sees a whole entry or none. Two processes compiling the
same partition at once both compile and the last rename wins; both results are identical."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import fx

from . import __version__
from .capture import attr_of
from .targets.base import Engine, Target


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


def get(key: str, target: Target) -> Engine | None:
    root = cache_dir()
    if root is None or target.load is None:
        return None
    path = root / f"{key}.engine"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return target.load(data)
    except Exception:  # noqa: BLE001 - a stale or damaged entry is dropped and rebuilt, never fatal
        path.unlink(missing_ok=True)
        return None


def put(key: str, engine: Engine) -> None:
    root = cache_dir()
    if root is None or not hasattr(engine, "serialize"):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(engine.serialize())
        os.replace(tmp, root / f"{key}.engine")
    except OSError:
        pass  # a read-only or full disk costs a recompile next time, nothing more


def clear() -> int:
    """Delete every cached engine; returns how many were removed."""
    root = cache_dir()
    if root is None or not root.is_dir():
        return 0
    removed = 0
    for p in root.glob("*.engine"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed
