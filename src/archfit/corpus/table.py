"""A chunk's answers as an Arrow table: one column per output of the file (typed from the served
signature, so every chunk of a run has the same schema, even one whose rows all failed), the
columns the user keeps, and `error` (null where the row ran)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..serve.servable import TensorMeta
from .rows import NUMPY_DTYPES, ERROR_COLUMN, RowError


def arrow_type(meta: TensorMeta):
    """A row's type: strings; scalars; vectors as fixed-size lists; fixed shapes as Arrow's tensor
    type; shapes that vary by row (a bucketed file's token outputs) as nested lists."""
    import pyarrow as pa

    if meta.datatype == "BYTES":
        return pa.string()
    value = pa.from_numpy_dtype(NUMPY_DTYPES[meta.datatype])
    rest = list(meta.shape[1:])
    if any(d < 0 for d in rest):
        for _ in rest:
            value = pa.list_(value)
        return value
    if not rest:
        return value
    if len(rest) == 1:
        return pa.list_(value, rest[0])
    return pa.fixed_shape_tensor(value, rest)


def schema(outputs: Sequence[TensorMeta], keep=None):
    import pyarrow as pa

    fields = list(keep) if keep is not None else []
    return pa.schema(fields + [pa.field(m.name, arrow_type(m)) for m in outputs] + [pa.field(ERROR_COLUMN, pa.string())])


def to_table(outputs: Sequence[TensorMeta], results: Sequence[dict | RowError], keep=None):
    """`results` (RowMapper.run's) as a table; `keep`: the chunk's columns carried over, or None."""
    import pyarrow as pa

    ok = np.array([not isinstance(r, RowError) for r in results], dtype=bool)
    columns = [keep.column(i) for i in range(keep.num_columns)] if keep is not None else []
    for meta in outputs:
        columns.append(_column(meta, [r[meta.name] if good else None for r, good in zip(results, ok)], ok))
    columns.append(pa.array([None if good else r.message for r, good in zip(results, ok)], pa.string()))
    return pa.Table.from_arrays(columns, schema=schema(outputs, keep.schema if keep is not None else None))


def _column(meta: TensorMeta, values: list, ok: np.ndarray):
    import pyarrow as pa

    kind = arrow_type(meta)
    mask = pa.array(~ok) if not ok.all() else None
    if meta.datatype == "BYTES" or pa.types.is_list(kind) or not (meta.shape[1:]):
        plain = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
        return pa.array(plain, kind)
    rest = tuple(meta.shape[1:])
    dense = np.zeros((len(values), *rest), dtype=NUMPY_DTYPES[meta.datatype])
    for i, v in enumerate(values):
        if v is not None:
            dense[i] = v
    flat = pa.array(dense.reshape(-1))
    storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(rest)), mask=mask)
    if len(rest) == 1:
        return storage
    return pa.ExtensionArray.from_storage(kind, storage)
