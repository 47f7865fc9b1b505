"""The file as a container: a zip of named members plus a JSON manifest holding each member's
SHA-256. Reading checks sizes against the zip directory before anything is inflated, caps the
JSON it parses, and verifies every digest; writing refuses paths that are not regular files
and never leaves a half-written file. What the members mean is package.py's business."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ArtifactError, first_line

FORMAT = "archfit"
# 2: identical files stored once; bucketed modules. 3: kinds with components (seq2seq).
# 4: every kind is components plus meta; the host program names ops from a closed vocabulary.
FORMAT_VERSION = 4

MAX_MEMBERS = 20_000
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_JSON_BYTES = 64 * 2**20  # host programs, reports
# archfit stores members uncompressed; a member may inflate to this many times the file's size
# (plus a little) before the file is refused as a decompression bomb.
MAX_INFLATION = 4
SLACK_BYTES = 2**20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_json(data: bytes, what: str, path, limit: int = MAX_JSON_BYTES) -> Any:
    """JSON from the file, refused past `limit` bytes or nested too deep, as one line."""
    if len(data) > limit:
        raise ArtifactError(f"{path}: {what} is {len(data)} bytes, over the {limit}-byte limit; the file is not from "
                            f"archfit")
    try:
        return json.loads(data)
    except RecursionError:
        raise ArtifactError(f"{path}: {what} is nested too deep; the file is not from archfit") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: {what} is not valid JSON ({first_line(e, 80)}); save it again with "
                            f"archfit.save") from None


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output that is not a regular file or a new path in an existing,
    writable directory (a device node, a directory, a missing folder)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ArtifactError(f"output {path} is {kind}; give a new file name or an existing .archfit file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ArtifactError(f"output {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ArtifactError(f"output {path}: directory {parent} is not writable")
    return path


def write(path: str | os.PathLike, manifest: dict, files: dict[str, bytes]) -> Path:
    """Write the manifest (plus each file's digest) and the files; identical contents once.
    Written beside the destination and renamed over it: a crash leaves no half-written file."""
    path = check_output_path(path)
    manifest = manifest | {"format": FORMAT, "format_version": FORMAT_VERSION,
                           "files": {name: sha256(data) for name, data in files.items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
            written: set[str] = set()
            for name, data in files.items():
                digest = manifest["files"][name]
                if digest not in written:  # a later file with the same bytes is read from the first
                    z.writestr(name, data)
                    written.add(digest)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is a normal file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check_directory(z: zipfile.ZipFile, path: Path) -> None:
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArtifactError(f"{path} holds {len(infos)} members, over the {MAX_MEMBERS} limit; not an archfit file")
    budget = MAX_INFLATION * path.stat().st_size + SLACK_BYTES
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > budget or total > budget:
            raise ArtifactError(f"{path}: member {info.filename[:80]!r} would inflate to {info.file_size} bytes, far "
                                f"more than the file's {path.stat().st_size}; refused as a decompression bomb")


def read(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """(manifest, files), every file's digest verified; nothing inflated beyond the size caps."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory; archfit.load takes the one file archfit.save or `archfit "
                            f"compile -o` wrote (a .archfit file); a model directory is compiled first "
                            f"(archfit.trace / archfit compile)")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            _check_directory(z, path)
            names = set(z.namelist())
            if "manifest.json" not in names:
                raise ArtifactError(f"{path} is not an archfit file (no manifest); save models with archfit.save")
            manifest = parse_json(z.read("manifest.json"), "manifest.json", path, MAX_MANIFEST_BYTES)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path} is not an archfit file; save models with archfit.save")
            version = manifest.get("format_version")
            if not isinstance(version, int) or version != FORMAT_VERSION:
                raise ArtifactError(
                    f"{path} was written in archfit file format {str(version)[:20]}, this archfit ({__version__}) "
                    f"reads format {FORMAT_VERSION}"
                    + ("; upgrade archfit" if isinstance(version, int) and version > FORMAT_VERSION else
                       "; compile the model again (older formats ran host programs this archfit no longer trusts)"))
            digests = manifest.get("files")
            if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
                raise ArtifactError(f"{path}: manifest has no valid file list; save it again with archfit.save")
            blobs = {name: z.read(name) for name in digests if name in names}
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"{path} is truncated, corrupted or not an archfit file ({first_line(e, 80)}); save it "
                            f"again with archfit.save") from None
    except (OSError, EOFError, ValueError) as e:
        raise ArtifactError(f"{path} is corrupted ({type(e).__name__}); save it again with archfit.save") from None
    by_digest = {sha256(data): data for data in blobs.values()}
    for name, digest in digests.items():  # stored once, under its first name
        if name not in blobs and digest in by_digest:
            blobs[name] = by_digest[digest]
    for name, digest in digests.items():
        if name not in blobs:
            raise ArtifactError(f"{path} is incomplete: {name[:80]} is missing; save it again with archfit.save")
        if sha256(blobs[name]) != digest:
            raise ArtifactError(f"{path} is corrupted: {name[:80]} fails its checksum; save it again with archfit.save")
    return manifest, blobs


def read_member(path: str | os.PathLike, name: str, digest: str) -> bytes:
    """One file's bytes read again from a saved file, checked against the digest it had when
    loaded: for engines a backend cannot export again once imported (OpenVINO)."""
    path = Path(path)
    changed = ArtifactError(f"{path} changed or went away since it was loaded ({name[:80]}); load it again before "
                            f"saving this module")
    try:
        with zipfile.ZipFile(path) as z:
            _check_directory(z, path)
            names = set(z.namelist())
            stored = name if name in names else next(  # identical contents are stored once, under the first name
                (n for n, d in parse_json(z.read("manifest.json"), "manifest.json", path, MAX_MANIFEST_BYTES)
                 .get("files", {}).items() if d == digest and n in names), None)
            data = z.read(stored) if stored is not None else b""
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, ArtifactError) as e:
        raise changed from e
    if sha256(data) != digest:
        raise changed
    return data
