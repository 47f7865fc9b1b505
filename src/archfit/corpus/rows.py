"""Rows in, rows out: a compiled module run over a corpus's rows, each row checked on its own (a
bad row becomes an error cell, never a failed batch), the good ones run together the way the
server runs requests (serve/servable.py: grouped by bucket, a dynamic batch filled, sequences
packed across rows), answers cut back to one row each.

A row is a text (files that carry a tokenizer), a (question, context) pair, or a dict of arrays
named by the module's inputs (token-id lists, feature vectors)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError, first_line
from ..serve.protocol import DTYPES, Strings
from ..serve.servable import Servable, TensorMeta, servable

ERROR_COLUMN = "error"
# the protocol's datatypes as numpy's (bfloat16 has no numpy type: no row holds one)
NUMPY_DTYPES = {name: torch.empty((), dtype=dtype).numpy().dtype for name, dtype in DTYPES.items()
                if dtype is not torch.bfloat16}


@dataclass(frozen=True)
class RowError:
    row: int  # index in the rows given
    message: str


class RowMapper:
    """One loaded module and how rows feed it; `columns` says which columns of a table it reads."""

    def __init__(self, module, column: str | None = None):
        self.module = module
        self.adapter: Servable = servable("map", module)
        self.text = module.text is not None
        self.column = column
        batch = [m.shape[0] for m in self.adapter.inputs if m.datatype != "BYTES" and m.shape]
        if any(b > 1 for b in batch):
            raise InputError(f"this file was compiled at batch {max(batch)}; archfit map feeds one row at a time: "
                             f"compile it at batch 1, or with --dynamic-batch, buckets or packing")

    @property
    def outputs(self) -> list[TensorMeta]:
        return self.adapter.outputs

    # -- which columns hold the inputs ----------------------------------------------------------
    def columns(self, names: Sequence[str], string: Sequence[str] = ()) -> list[str]:
        """The columns read, in the order of the inputs (for a text file: the text column, or the
        question and context columns); `string` names the columns that hold text."""
        wanted = [m.name for m in self.adapter.inputs]
        if self.text:
            if self.column:
                wanted = [self.column]
            elif wanted == ["text"] and "text" not in names:
                if len(string) != 1:
                    raise InputError(f"which column holds the text? the inputs have columns {', '.join(names)}; "
                                     f"name one with --column")
                wanted = list(string)
        elif self.column and len(wanted) == 1:
            wanted = [self.column]
        elif len(wanted) == 1 and len(names) == 1:
            wanted = list(names)
        missing = [w for w in wanted if w not in names]
        if missing:
            raise InputError(f"the inputs have no column {missing[0]!r} (columns: {', '.join(names)}); the model takes "
                             f"{', '.join(m.name for m in self.adapter.inputs)}"
                             + ("" if self.text else ": name the columns after them, or give --column for a sole input"))
        return wanted

    # -- running rows ---------------------------------------------------------------------------
    def run(self, rows: Sequence[Any]) -> list[dict | RowError]:
        """Each row's outputs ({output name: value}) or its RowError, in order."""
        results: list = [None] * len(rows)
        items, where = [], []
        for i, row in enumerate(rows):
            if isinstance(row, RowError):
                results[i] = row
                continue
            try:
                items.append(self.adapter.prepare(self._given(row)))
                where.append(i)
            except InputError as e:
                results[i] = RowError(i, str(e.args[0]) if e.args else str(e))
        if items:
            for i, out in zip(where, self.adapter.run_all(items)):
                results[i] = {m.name: _row_value(out[m.name]) for m in self.adapter.outputs}
        return results

    def _given(self, row) -> dict:
        if self.text:
            names = [m.name for m in self.adapter.inputs]
            parts = list(row) if len(names) > 1 and isinstance(row, (tuple, list)) else [row]
            if len(parts) != len(names) or not all(isinstance(p, str) for p in parts):
                what = " and ".join(names)
                raise InputError(f"expected {'a string' if len(names) == 1 else what + ' as strings'} for {what}, got "
                                 f"{', '.join(type(p).__name__ for p in parts)}")
            return {n: Strings([p], (1,)) for n, p in zip(names, parts)}
        if not isinstance(row, dict):
            raise InputError(f"expected a dict of arrays named {', '.join(m.name for m in self.adapter.inputs)}, "
                             f"got a {type(row).__name__}")
        given = {}
        for meta in self.adapter.inputs:
            value = row.get(meta.name)
            if value is None:
                raise InputError(f"input {meta.name!r} is missing")
            try:
                array = np.asarray(value, dtype=NUMPY_DTYPES[meta.datatype])
            except (TypeError, ValueError) as e:
                raise InputError(f"input {meta.name!r}: expected {meta.datatype} values, got "
                                 f"{first_line(e)}") from e
            if not (array.flags.writeable and array.flags.c_contiguous):  # a memory-mapped or Arrow-held row
                array = np.array(array, order="C")
            given[meta.name] = torch.from_numpy(array[None])
        return given


def _row_value(value):
    """One row of an output: an array without its batch dim, or the row's string."""
    if isinstance(value, Strings):
        return value[0]
    if isinstance(value, torch.Tensor):
        return value[0].numpy()
    return value


def table_rows(mapper: RowMapper, table) -> list:
    """A pyarrow Table's rows as the mapper takes them (a bad cell already a RowError)."""
    import pyarrow as pa

    names = [n for n in table.column_names if n != "__error__"]
    string = [n for n in names if pa.types.is_string(table.schema.field(n).type)
              or pa.types.is_large_string(table.schema.field(n).type)]
    read = mapper.columns(names, string)
    cells = [_cells(table.column(n)) for n in read]
    bad = table.column("__error__").to_pylist() if "__error__" in table.column_names else [None] * table.num_rows
    rows: list = []
    for i in range(table.num_rows):
        if bad[i] is not None:
            rows.append(RowError(i, bad[i]))
        elif mapper.text:
            rows.append(cells[0][i] if len(cells) == 1 else tuple(c[i] for c in cells))
        else:
            rows.append({m.name: c[i] for m, c in zip(mapper.adapter.inputs, cells)})
    return rows


def _cells(column) -> list:
    import pyarrow as pa

    column = column.combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        return list(column.to_numpy_ndarray())
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
        return list(column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size))
    return column.to_pylist()
