"""User-facing errors: one line naming the stage, the input/op/node, what was expected, what to do."""
from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(err: BaseException, limit: int = 300) -> str:
    """A dependency's exception as one line: its first non-empty line (terminal colour codes
    removed: torch.onnx colours its messages), else its type's name."""
    lines = _ANSI.sub("", str(err)).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]


class ArchfitError(Exception):
    """Base class. `str(err)` is a single line meant for a person, never a dependency's traceback."""

    stage = "archfit"

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))

    def __str__(self) -> str:  # prefix the stage so CLI users know where it failed
        return f"{self.stage}: {self.args[0]}"


class CaptureError(ArchfitError):
    stage = "capture"

    def __init__(self, message: str, reason: str | None = None, where: str | None = None):
        super().__init__(message)
        self.reason = reason  # what stopped capture, without the advice (for fit reports)
        self.where = where  # 'file:line (code)' it stopped at, when known


# One class per stage, so callers can catch a stage; the stage prefixes every message.
class TargetError(ArchfitError): stage = "target"  # noqa: E701
class UnsupportedOpsError(ArchfitError): stage = "partition"  # noqa: E701
class CompileError(ArchfitError): stage = "compile"  # noqa: E701
class ValidationError(ArchfitError): stage = "validate"  # noqa: E701
class InputError(ArchfitError): stage = "run"  # noqa: E701
# An option given to archfit's own API that it cannot take (Buckets, Packing, choose_buckets): one
# line for a person, and still a ValueError for code that catches those.
class OptionError(ArchfitError, ValueError): stage = "options"  # noqa: E701
class ModelError(ArchfitError): stage = "model"  # noqa: E701
class ArtifactError(ArchfitError): stage = "artifact"  # noqa: E701
class CacheError(ArchfitError): stage = "cache"  # noqa: E701
