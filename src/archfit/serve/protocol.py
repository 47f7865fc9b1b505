"""The Open Inference Protocol (KServe v2, as Triton, OpenVINO Model Server and MLServer speak
it): an infer request's JSON body, and the binary tensor data extension where a JSON header of
`Inference-Header-Content-Length` bytes is followed by the raw tensors that carry
`parameters.binary_data_size`, in the order the JSON names them.

Written by hand because it is archfit's boundary: every malformed body becomes one
`RequestError` line naming the input and what was expected (the HTTP layer answers 400)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import InputError

DTYPES = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
    "INT64": torch.int64, "UINT16": torch.uint16, "UINT32": torch.uint32, "UINT64": torch.uint64,
    "FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64, "BF16": torch.bfloat16,
}
NAMES = {v: k for k, v in DTYPES.items()}
HEADER = "inference-header-content-length"
MAX_RANK, MAX_DIM = 16, 2**31 - 1  # a tensor a request may declare, at most (torch's own limits are larger)


class Strings(list):
    """A BYTES tensor: its elements decoded as UTF-8 text, flat, with the shape it was sent in
    (texts for a file that carries a tokenizer); `raw`, the elements' bytes as sent (images for a
    file that carries an image processor; the list itself is empty when they are not all UTF-8)."""

    def __init__(self, values, shape, raw: list[bytes] | None = None):
        super().__init__(values)
        self.shape = tuple(shape)
        self.raw = raw if raw is not None else [v.encode() for v in values]


MAX_TEXT_BYTES = 1 << 20  # one element of a BYTES input, at most


class RequestError(InputError):
    """A request the server cannot take; answered with 400 and this line."""

    stage = "request"


def datatype(dtype: torch.dtype) -> str:
    try:
        return NAMES[dtype]
    except KeyError:
        raise RequestError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclass
class InferRequest:
    inputs: dict[str, torch.Tensor]
    id: str | None = None
    outputs: dict[str, bool] | None = None  # requested outputs -> binary; None: all
    binary: bool = False  # binary_data_output: every output as binary unless one says otherwise
    parameters: dict = field(default_factory=dict)


def _tensor(entry: dict, index: int, raw: memoryview | None, offset: int,
            literals: bool = False) -> tuple[str, torch.Tensor, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise RequestError(f"inputs[{index}] must be an object with a 'name'")
    name = entry["name"]
    shape, dt = entry.get("shape"), entry.get("datatype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {str(shape)[:80]}")
    if len(shape) > MAX_RANK or any(d > MAX_DIM for d in shape):
        raise RequestError(f"input {name!r}: shape {str(shape)[:80]} has more than {MAX_RANK} dims or a dim over "
                           f"{MAX_DIM}")
    if dt not in DTYPES and dt != "BYTES":
        raise RequestError(f"input {name!r}: datatype {dt!r} is not one archfit serves ({', '.join(DTYPES)}, and "
                           f"BYTES for files that carry a tokenizer)")
    numel = 1
    for d in shape:
        numel *= d
    params = entry.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if dt == "BYTES":
        return _strings(name, shape, numel, entry.get("data"), size, raw, offset)
    dtype = DTYPES[dt]
    if size is not None:
        nbytes = numel * dtype.itemsize
        if raw is None:
            raise RequestError(f"input {name!r} says it has binary data, but the request has no "
                               f"Inference-Header-Content-Length header")
        if type(size) is not int or size != nbytes:
            raise RequestError(f"input {name!r}: binary_data_size {size!r}, but shape {shape} {dt} takes {nbytes} bytes")
        if offset + size > len(raw):
            raise RequestError(f"input {name!r}: the body ends {offset + size - len(raw)} bytes before its binary data does")
        # one copy out of the request body: the tensor must own writable memory
        t = torch.frombuffer(bytearray(raw[offset:offset + size]), dtype=dtype) if size else torch.empty(0, dtype=dtype)
        return name, t.reshape(shape), offset + size
    data = entry.get("data")
    if data is None:
        raise RequestError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    t = _from_json(name, data, dt, dtype, literals)
    if t.numel() != numel:
        raise RequestError(f"input {name!r}: 'data' holds {t.numel()} values, shape {shape} takes {numel}")
    return name, t.reshape(shape), offset


def _strings(name: str, shape: list, numel: int, data, size, raw: memoryview | None,
             offset: int) -> tuple[str, Strings, int]:
    """A BYTES input: JSON strings, or binary elements each a 4-byte little-endian length then its bytes."""
    if size is not None:
        if raw is None or type(size) is not int or size < 0 or offset + size > len(raw):
            raise RequestError(f"input {name!r}: binary_data_size {size!r} does not fit the body's binary data")
        chunk, values, at = raw[offset:offset + size], [], 0
        while at < len(chunk):
            n = int.from_bytes(chunk[at:at + 4], "little") if at + 4 <= len(chunk) else -1
            if n < 0 or at + 4 + n > len(chunk) or n > MAX_TEXT_BYTES:
                raise RequestError(f"input {name!r}: BYTES element {len(values)} runs past its binary data")
            values.append(bytes(chunk[at + 4:at + 4 + n]))
            at += 4 + n
        offset += size
    else:
        if data is None:
            raise RequestError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        values = list(data) if isinstance(data, list) else [data]
        while any(isinstance(v, list) for v in values):
            values = [x for v in values for x in (v if isinstance(v, list) else [v])]
        if not all(isinstance(v, str) and len(v) <= MAX_TEXT_BYTES for v in values):
            raise RequestError(f"input {name!r}: datatype BYTES takes strings in 'data'")
    if len(values) != numel:
        raise RequestError(f"input {name!r}: {len(values)} BYTES elements, shape {shape} takes {numel}")
    raw = [v if isinstance(v, bytes) else v.encode() for v in values]
    try:
        texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    except UnicodeDecodeError:  # binary elements (images): kept as bytes; a text front refuses them
        texts = []
    return name, Strings(texts, shape, raw), offset


def _has_bool(data) -> bool:
    stack = [data]
    while stack:
        v = stack.pop()
        if type(v) is bool:
            return True
        if isinstance(v, list):
            stack.extend(v)
    return False


def _from_json(name: str, data, dt: str, dtype: torch.dtype, literals: bool = False) -> torch.Tensor:
    """JSON `data` as a tensor of `dtype`, its values of that kind: torch would turn 101.9 into an
    INT64 101 and true into 1 without a word, so every value's JSON type is checked first (numpy
    reads the whole list at once: any float makes the array float; a bool among numbers becomes a
    number there, so where the body holds a true or false literal the values are walked)."""
    import numpy as np

    try:
        values = np.asarray(data)
    except (ValueError, TypeError, RecursionError) as e:
        raise RequestError(f"input {name!r}: 'data' is not a (nested) list of {dt} values ({type(e).__name__})") from None
    kind = values.dtype.kind
    if literals and kind != "b" and _has_bool(data):
        kind = "b"
    wanted = "b" if dtype == torch.bool else ("iu" if not dtype.is_floating_point else "iuf")
    if values.size and kind not in wanted:
        got = {"b": "booleans", "f": "floats", "i": "integers", "u": "integers", "U": "strings"}.get(kind, "other values")
        takes = "booleans" if wanted == "b" else "numbers" if "f" in wanted else "integers"
        raise RequestError(f"input {name!r}: datatype {dt} takes {takes}, and 'data' holds {got}")
    try:
        return torch.tensor(values.tolist() if kind == "O" else values, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise RequestError(f"input {name!r}: 'data' is not a list of {dt} values ({type(e).__name__})") from None


def decode(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header plus binary tensors)."""
    raw = None
    if header_length is not None:
        try:
            cut = int(header_length)
        except ValueError:
            raise RequestError(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < cut <= len(body):
            raise RequestError(f"Inference-Header-Content-Length {cut} does not fit a body of {len(body)} bytes")
        head, raw = memoryview(body)[:cut], memoryview(body)[cut:]
    else:
        head = body
    try:
        doc = json.loads(bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the body is not valid JSON ({e}); send an Open Inference Protocol infer request") from e
    except RecursionError:
        raise RequestError("the body's JSON is nested too deep; send an Open Inference Protocol infer request") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestError("the request must be a JSON object with a non-empty 'inputs' list")
    inputs, offset = {}, 0
    literals = b"true" in head or b"false" in head
    for i, entry in enumerate(doc["inputs"]):
        name, t, offset = _tensor(entry, i, raw, offset, literals)
        if name in inputs:
            raise RequestError(f"input {name!r} is given twice")
        inputs[name] = t
    if raw is not None and offset != len(raw):
        raise RequestError(f"{len(raw) - offset} bytes of binary data follow the last input's")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise RequestError("'outputs' must be a list")
        outputs = {}
        for o in doc["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise RequestError("each requested output must be an object with a 'name'")
            p = o.get("parameters") or {}
            if not isinstance(p, dict):
                raise RequestError(f"output {o['name'][:60]!r}: 'parameters' must be an object")
            outputs[o["name"]] = bool(p.get("binary_data", params.get("binary_data_output", False)))
    rid = doc.get("id")
    return InferRequest(inputs, None if rid is None else str(rid), outputs, bool(params.get("binary_data_output")),
                        params)


def tensor_from(entry: dict, index: int, raw: memoryview | None,
                literals: bool = False) -> tuple[str, torch.Tensor | Strings]:
    """One input described as in a JSON body, its binary data all of `raw` (gRPC's raw contents)."""
    name, value, used = _tensor(entry, index, raw, 0, literals)
    if raw is not None and used != len(raw):
        raise RequestError(f"input {name!r}: {len(raw) - used} bytes of raw contents past its shape's")
    return name, value


def pack_bytes(values: Sequence[bytes]) -> bytes:
    """BYTES elements in the binary form: each one's 4-byte little-endian length, then its bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def raw_tensor(value: torch.Tensor | Strings) -> tuple[str, list[int], bytes]:
    """An output's datatype, shape and binary data (BYTES in the binary form; BF16 as its 2-byte patterns)."""
    if isinstance(value, Strings):
        return "BYTES", list(value.shape), pack_bytes(value.raw)
    t = value.detach().contiguous()
    return datatype(t.dtype), list(t.shape), (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


def encode(model: str, request: InferRequest, outputs: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers; outputs asked as binary follow the JSON."""
    wanted = request.outputs if request.outputs is not None else {k: request.binary for k in outputs}
    entries, chunks = [], []
    for name, binary in wanted.items():
        value = outputs[name]
        if binary:
            dt, shape, data = raw_tensor(value)
            entries.append({"name": name, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(data)}})
            chunks.append(data)
        elif isinstance(value, Strings):
            entries.append({"name": name, "datatype": "BYTES", "shape": list(value.shape), "data": list(value)})
        else:
            t = value.detach()
            entries.append({"name": name, "datatype": datatype(t.dtype), "shape": list(t.shape),
                            "data": (t.float() if t.dtype == torch.bfloat16 else t).flatten().tolist()})
    doc = {"model_name": model, "model_version": "1", "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, {}
    return b"".join([head, *chunks]), {"Inference-Header-Content-Length": str(len(head))}
