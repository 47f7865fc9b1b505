"""`archfit map`: a compiled file over a corpus on disk, in one process or on Ray, into a folder of
Parquet shards; and `archfit.map`, the same over rows in Python."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import InputError
from .ray_data import RayOptions
from .rows import RowError, RowMapper, table_rows
from .shards import Shards, write_all
from .source import Source, open_source
from .table import to_table


@dataclass(frozen=True)
class MapSummary:
    rows: int  # rows in the input
    written: int  # rows written by this run (rows of shards finished before are not)
    errors: int  # bad rows this run wrote to _errors-*.jsonl
    seconds: float
    output: Path

    def to_dict(self) -> dict:
        return {"rows": self.rows, "written": self.written, "errors": self.errors,
                "seconds": round(self.seconds, 3), "output": str(self.output)}


def _module(model):
    from ..artifact import load

    return load(model) if isinstance(model, (str, Path)) else model


def _settings(file: Path, source: Source, shard_rows: int, column: str | None, keep: tuple[str, ...]) -> dict:
    """What a resumed run must share with the one it resumes (the file by size and time)."""
    stat = file.stat()
    return {"file": str(file.resolve()), "file_bytes": stat.st_size, "file_mtime_ns": stat.st_mtime_ns,
            "inputs": [str(f.resolve()) for f in source.files], "shard_rows": shard_rows, "column": column,
            "keep": list(keep)}


def _local(source: Source, mapper: RowMapper, shards: Shards, keep: tuple[str, ...], chunk_rows: int) -> Iterator:
    start = 0
    for table in source.tables(chunk_rows):
        n = table.num_rows
        if shards.done(start):
            yield start, None, n
        else:
            missing = [k for k in keep if k not in table.column_names]
            if missing:
                raise InputError(f"--keep {missing[0]}: the inputs have no such column (columns: "
                                 f"{', '.join(table.column_names)})")
            results = mapper.run(table_rows(mapper, table))
            yield start, to_table(mapper.outputs, results, table.select(list(keep)) if keep else None), n
        start += n


def map_file(file: str | Path, inputs: str | Path, output: str | Path, *, column: str | None = None,
             keep: Iterable[str] = (), shard_rows: int = 8192, chunk_rows: int = 512, on_error: str = "skip",
             overwrite: bool = False, ray: RayOptions | None = None,
             progress: Callable[[int, int | None], None] | None = None) -> MapSummary:
    """Run the compiled `file` over `inputs` (a Parquet, CSV or JSON Lines file or folder, or .npy/.npz
    arrays) into the folder `output`; `progress(rows_done, rows_total)` as it goes."""
    if on_error not in ("skip", "fail"):
        raise InputError(f"--on-error {on_error!r}: expected skip or fail")
    if shard_rows < 1 or chunk_rows < 1:
        raise InputError("--shard-rows and chunk rows must be at least 1")
    chunk_rows = math.gcd(shard_rows, chunk_rows)  # every chunk within one shard
    file, keep = Path(file), tuple(keep)
    if not file.is_file():
        raise InputError(f"file {file}: no such file (archfit map takes a file written by archfit compile -o)")
    source = open_source(inputs)
    total = source.count()
    shards = Shards(output, _settings(file, source, shard_rows, column, keep), shard_rows, overwrite)
    began = time.perf_counter()
    report = (lambda done: progress(done, total)) if progress else None
    if ray is not None:
        from . import ray_data

        produced = ray_data.tables(source, file, ray, column, keep, chunk_rows)
    else:
        produced = _local(source, RowMapper(_module(file), column), shards, keep, chunk_rows)
    writer = write_all(shards, produced, on_error, report)
    summary = MapSummary(writer.rows, writer.written, writer.failed, time.perf_counter() - began, shards.folder)
    shards.finish(summary.to_dict())
    return summary


def map(model, rows, *, column: str | None = None, on_error: str = "fail", chunk_rows: int = 256,
        keep: Iterable[str] = (), actors: int = 2, threads: int = 1) -> Any:
    """`model` (a loaded module or a file's path) over `rows`: an iterator of one answer per row, in
    order ({output name: value}). Rows are texts (or (question, context) pairs) for a file that
    carries a tokenizer, else dicts of arrays named by the inputs; or a pyarrow Table. A bad row
    raises (on_error='fail') or comes out as a RowError ('skip').

    Given a Ray Dataset, returns the mapped Ray Dataset (pyarrow batches through an actor pool:
    `actors` actors, `threads` engine threads each; `model` must be a path)."""
    if type(rows).__module__.startswith("ray.data"):
        from .ray_data import map_dataset

        return map_dataset(model, rows, column, tuple(keep), actors, threads, chunk_rows)
    if on_error not in ("skip", "fail"):
        raise InputError(f"on_error {on_error!r}: expected 'skip' or 'fail'")
    return _map_rows(RowMapper(_module(model), column), rows, on_error, chunk_rows)


def _map_rows(mapper: RowMapper, rows, on_error: str, chunk_rows: int) -> Iterator:
    start = 0
    for chunk in _chunks(mapper, rows, chunk_rows):
        for i, result in enumerate(mapper.run(chunk)):
            if isinstance(result, RowError):
                if on_error == "fail":
                    raise InputError(f"row {start + i}: {result.message}")
                result = RowError(start + i, result.message)
            yield result
        start += len(chunk)


def _chunks(mapper: RowMapper, rows, size: int) -> Iterator[list]:
    if hasattr(rows, "slice") and hasattr(rows, "column_names"):  # a pyarrow Table
        for offset in range(0, rows.num_rows, size):
            yield table_rows(mapper, rows.slice(offset, size))
        return
    if isinstance(rows, (str, bytes)):
        raise InputError("archfit.map takes rows (a list of texts, dicts of arrays, a pyarrow Table); for a "
                         "file on disk use archfit.corpus.map_file or `archfit map`")
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
