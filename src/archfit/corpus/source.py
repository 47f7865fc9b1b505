"""A corpus on disk, read as a stream of Arrow tables of a fixed number of rows, whatever its size:
Parquet (row groups), CSV (blocks), JSON Lines (lines) and .npy/.npz arrays (slices; .npy
memory-mapped), a file or a folder of files of one format, in name order."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json",
           ".json": "json", ".npz": "npz", ".npy": "npy"}
ARRAY_COLUMN = "array"  # the column an .npy file's rows become


def _arrow():
    try:
        import pyarrow
    except ImportError as e:  # a dependency of archfit; seen only in a broken environment
        raise InputError("archfit map needs pyarrow: pip install pyarrow") from e
    return pyarrow


@dataclass(frozen=True)
class Source:
    files: tuple[Path, ...]
    format: str  # parquet, csv, json, npz, npy

    @property
    def ray_readable(self) -> bool:
        return self.format in ("parquet", "csv", "json")

    def count(self) -> int | None:
        """Rows in all, for a progress bar's ETA: exact for Parquet and arrays, lines for text
        formats (a CSV cell holding a newline makes it an estimate)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        if self.format in ("npy", "npz"):
            return sum(len(_arrays(f, self.format)[0][1]) for f in self.files)
        lines = 0
        for f in self.files:
            with open(f, "rb") as fh:
                lines += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return max(lines - (len(self.files) if self.format == "csv" else 0), 0)

    def tables(self, rows: int) -> Iterator:
        """pyarrow Tables of exactly `rows` rows (the last may hold fewer), in order."""
        pa = _arrow()
        pending, held = [], 0
        for part in self._parts(rows):
            while part.num_rows:
                take = min(rows - held, part.num_rows)
                pending.append(part.slice(0, take))
                held += take
                part = part.slice(take)
                if held == rows:
                    yield pa.concat_tables(pending).combine_chunks()
                    pending, held = [], 0
        if held:
            yield pa.concat_tables(pending).combine_chunks()

    def _parts(self, rows: int) -> Iterator:
        pa = _arrow()
        for f in self.files:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(f).iter_batches(batch_size=rows):
                    yield pa.Table.from_batches([batch])
            elif self.format == "csv":
                import pyarrow.csv as pcsv

                for batch in pcsv.open_csv(f):
                    yield pa.Table.from_batches([batch])
            elif self.format == "json":
                yield from _json_lines(f, rows)
            else:
                yield from _array_tables(f, self.format, rows)


def _json_lines(path: Path, rows: int) -> Iterator:
    """JSON Lines read by archfit rather than pyarrow's reader: one line that is not a JSON object
    is one bad row (its `error` cell says so), not a failed file; types are inferred per chunk."""
    chunk: list = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                value = {"__error__": f"{path.name} line {n}: not JSON ({e.msg})"}
            if not isinstance(value, dict):
                value = {"__error__": f"{path.name} line {n}: a JSON {type(value).__name__}, expected an object"}
            chunk.append(value)
            lines.append(n)
            if len(chunk) == rows:
                yield _rows_table(chunk, lines, path.name)
                chunk, lines = [], []
    if chunk:
        yield _rows_table(chunk, lines, path.name)


def _rows_table(rows: list[dict], lines: list[int], name: str):
    """JSON objects as a table; a value whose type differs from its column's first (a number
    among texts) makes its row a bad row rather than failing the chunk."""
    pa = _arrow()
    try:
        return _columns(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    kinds: dict[str, type] = {}
    for row in rows:
        for k, v in row.items():
            if v is not None and k != "__error__":
                kinds.setdefault(k, type(v))
    fixed = []
    for row, n in zip(rows, lines):
        odd = next((k for k, v in row.items() if k in kinds and v is not None and type(v) is not kinds[k]), None)
        if odd is not None and "__error__" not in row:
            row = {"__error__": f"{name} line {n}: column {odd!r} holds a {type(row[odd]).__name__} where other rows "
                                f"hold a {kinds[odd].__name__}"}
        fixed.append(row)
    return _columns(fixed)


def _columns(rows: list[dict]):
    """Every key of any row a column (pyarrow's from_pylist takes the first row's keys only)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return _arrow().table({k: [row.get(k) for row in rows] for k in keys})


def _arrays(path: Path, fmt: str) -> list[tuple[str, np.ndarray]]:
    if fmt == "npy":
        return [(ARRAY_COLUMN, np.load(path, mmap_mode="r", allow_pickle=False))]
    with np.load(path, allow_pickle=False) as z:
        arrays = [(k, z[k]) for k in z.files]
    lengths = {len(a) for _, a in arrays}
    if len(lengths) != 1:
        raise InputError(f"{path}: its arrays hold {sorted(lengths)} rows; every array is one column and needs "
                         f"as many rows (the first dim)")
    return arrays


def _array_tables(path: Path, fmt: str, rows: int) -> Iterator:
    """Arrays as tensor columns (pyarrow's fixed-shape tensor type; vectors as fixed-size lists)."""
    pa = _arrow()
    arrays = _arrays(path, fmt)
    for start in range(0, len(arrays[0][1]), rows):
        columns = {}
        for name, a in arrays:
            part = np.ascontiguousarray(a[start:start + rows])
            if part.ndim == 1:
                columns[name] = pa.array(part)
            elif part.ndim == 2:
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), part.shape[1])
            else:
                columns[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(part)
        yield pa.table(columns)


def open_source(path: str | Path) -> Source:
    """A file, or a folder of files of one format; one line naming what is wrong otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"inputs {p}: no such file or folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_"))) if p.is_dir() else [p]
    formats = {FORMATS.get(f.suffix.lower()) for f in files}
    names = ", ".join(sorted(FORMATS))
    if not files:
        raise InputError(f"inputs {p}: an empty folder; expected files ending {names}")
    if None in formats:
        odd = next(f for f in files if FORMATS.get(f.suffix.lower()) is None)
        raise InputError(f"inputs {odd}: not a format archfit map reads; expected a file ending {names}")
    if len(formats) > 1:
        raise InputError(f"inputs {p}: a folder mixing {', '.join(sorted(formats))} files; keep one format per folder")
    return Source(tuple(files), formats.pop())
