"""Find the user's `file:line` in stack traces recorded by torch.export or raised by it."""
from __future__ import annotations

import os
import re
import traceback
from types import TracebackType

import torch

# Frames inside these trees are machinery, not the user's model code. archfit's own zoo
# models are model code, so they count as the user's.
_ARCHFIT = os.path.dirname(os.path.dirname(__file__)) + os.sep  # the archfit package
_INTERNAL_ROOTS = (os.path.dirname(torch.__file__) + os.sep, _ARCHFIT)
_USER_INSIDE_ARCHFIT = _ARCHFIT + "zoo" + os.sep

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _is_user(filename: str) -> bool:
    if filename.startswith(_USER_INSIDE_ARCHFIT):
        return True
    return not filename.startswith(_INTERNAL_ROOTS) and not filename.startswith("<")


def _short(filename: str) -> str:
    """Paths under site-packages are shown from the package down (transformers/...)."""
    marker = "site-packages" + os.sep
    if marker in filename:
        return filename.split(marker, 1)[1]
    if filename.startswith(_ARCHFIT):
        return "archfit" + os.sep + filename[len(_ARCHFIT):]
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def from_stack_trace(stack_trace: str | None) -> str | None:
    """Last user frame of a node's `meta['stack_trace']`, as 'file:line (code)'."""
    if not stack_trace:
        return None
    frames = [m for m in _FRAME.finditer(stack_trace) if _is_user(m.group(1))]
    if not frames:
        return None
    path, line, _fn, code = frames[-1].groups()
    return f"{_short(path)}:{line} ({code.strip()})" if code.strip() else f"{_short(path)}:{line}"


# node.meta["custom"] keys a frontend sets (frontends/onnx.py): how the user's framework names the
# node ("TF Conv2D 'model/conv1/Conv2D' (Keras layer conv1)") and its op type there ("Conv2D")
SOURCE_KEY = "archfit_source"
OP_KEY = "archfit_op"


def node_source(node: torch.fx.Node) -> str | None:
    """Where a node came from: the user's framework node for imported models, else the user's
    'file:line (code)' recorded by torch.export."""
    custom = node.meta.get("custom") or {}
    return custom.get(SOURCE_KEY) or from_stack_trace(node.meta.get("stack_trace"))


def node_origin(node: torch.fx.Node) -> tuple[str, str] | None:
    """(source node, its op type) for nodes of imported models."""
    custom = node.meta.get("custom") or {}
    return (custom[SOURCE_KEY], custom.get(OP_KEY, "")) if SOURCE_KEY in custom else None


def from_traceback(tb: TracebackType | None) -> str | None:
    """Deepest user frame of an exception's traceback, as 'file:line (code)'."""
    frames = [f for f in traceback.extract_tb(tb) if _is_user(f.filename)]
    if not frames:
        return None
    f = frames[-1]
    code = (f.line or "").strip()
    return f"{_short(f.filename)}:{f.lineno} ({code})" if code else f"{_short(f.filename)}:{f.lineno}"
