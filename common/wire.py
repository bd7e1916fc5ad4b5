"""The wire format: one msgpack header frame plus one raw frame per array. No pickle, ever.

A message is `[header, array_0, array_1, ...]`. The header is a msgpack map:

    {"v": PROTOCOL_VERSION, "k": kind, "s": sender, "n": seq, "m": {meta...},
     "a": [[name, dtype, [dim, ...]], ...]}

and frame i+1 holds array i's bytes, C-contiguous, little-endian. Receivers rebuild arrays with
`numpy.frombuffer` (no copy). Every kind has a schema (in common/wire_schemas.py with the limits and
ranges, all re-exported here); `decode` checks the version, the kind against the allowlist, meta keys
and types, array names, dtypes, ranks, byte lengths, batch lengths and that float data is finite, and
raises the one `DecodeError` (with a short `reason` for counters) for anything else.
docs/protocol.md documents the same schemas; a test keeps the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from common.wire_schemas import (
    ALLOWED_DTYPES,
    DEFAULT_INT_RANGE,
    KINDS,
    MAX_ACTOR_INDEX,
    MAX_ARRAYS,
    MAX_COUNT,
    MAX_EPISODES_PER_REPORT,
    MAX_HEADER_BYTES,
    MAX_RANK,
    MAX_SEQ,
    MAX_STRING,
    PROTOCOL_VERSION,
    RANGES,
    SCHEMAS,
    STRING_LIMITS,
    Schema,
)

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_INT_RANGE",
    "DecodeError",
    "Encoder",
    "KINDS",
    "MAX_ACTOR_INDEX",
    "MAX_ARRAYS",
    "MAX_COUNT",
    "MAX_EPISODES_PER_REPORT",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_SEQ",
    "MAX_STRING",
    "Message",
    "PROTOCOL_VERSION",
    "RANGES",
    "SCHEMAS",
    "STRING_LIMITS",
    "Schema",
    "decode",
    "encode",
    "kind_prefix",
    "require_vectors",
]

_LITTLE_ENDIAN = np.little_endian
# name -> (little-endian dtype, is floating point), built once: np.dtype() per array is slow at this scale
_WIRE_DTYPES = {name: (np.dtype(name).newbyteorder("<"), np.dtype(name).kind == "f") for name in ALLOWED_DTYPES}


class DecodeError(ValueError):
    """Anything malformed; `reason` is a short stable code used in rejection counters.

    `meta` is the message's validated meta when only its arrays were at fault, so that a receiver can
    still say whose message it refused (replay's per-stream accounting does).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class Message:
    kind: str
    sender: str
    seq: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    version: int = PROTOCOL_VERSION


def encode(
    kind: str,
    meta: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    sender: str = "",
    seq: int = 0,
) -> list[Any]:
    """Frames for `send_multipart`: the header, then each array's buffer (no copy when contiguous)."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}")
    specs = []
    buffers: list[Any] = []
    for name, array in (arrays or {}).items():
        array = np.asarray(array)
        dtype_name = _dtype_name(array.dtype)
        if dtype_name not in ALLOWED_DTYPES:
            raise ValueError(f"array {name!r}: dtype {array.dtype} is not allowed on the wire")
        if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not _LITTLE_ENDIAN):
            array = array.astype(array.dtype.newbyteorder("<"))
        shape = list(array.shape)  # before ascontiguousarray, which turns a 0-d array into shape (1,)
        array = np.ascontiguousarray(array)
        specs.append([name, dtype_name, shape])
        buffers.append(memoryview(array).cast("B") if array.size else b"")
    header = {"v": PROTOCOL_VERSION, "k": kind, "s": sender, "n": seq, "m": dict(meta or {}), "a": specs}
    return [msgpack.packb(header, use_bin_type=True), *buffers]


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """`dtype.name`, remembered: numpy builds the string on every access, a good part of encoding a
    message of small arrays (actors send one every few steps)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def _frame_bytes(frame: Any) -> memoryview:
    buffer = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    if buffer is None:
        buffer = frame
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _unpack_header(frames: Sequence[Any]) -> dict[str, Any]:
    if not frames:
        raise DecodeError("empty", "no frames")
    raw = _frame_bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise DecodeError("header_too_large", f"{len(raw)} bytes")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types for garbage
        raise DecodeError("bad_header", type(err).__name__) from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", "header is not a map")
    return header


def decode(frames: Sequence[Any], *, expect: Collection[str] | None = None) -> Message:
    """Validate and rebuild a message. Arrays are views of the received frames (no copy): writable when the
    frames are zmq.Frames received with copy=False, read-only when they are bytes."""
    header = _unpack_header(frames)
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True == 1 and 1.0 == 1 in Python
        raise DecodeError("wrong_version", f"got {version!r}, this peer speaks {PROTOCOL_VERSION}")
    kind = header.get("k")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise DecodeError("unknown_kind", repr(kind)[:64])
    if expect is not None and kind not in expect:
        raise DecodeError("unexpected_kind", f"{kind} not accepted here")
    sender, seq, meta, specs = header.get("s"), header.get("n"), header.get("m"), header.get("a")
    if not isinstance(sender, str) or len(sender) > 256:
        raise DecodeError("bad_header", "sender")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise DecodeError("bad_header", "seq")
    if not isinstance(meta, dict) or not isinstance(specs, list):
        raise DecodeError("bad_header", "meta or arrays")
    if set(header) - {"v", "k", "s", "n", "m", "a"}:
        raise DecodeError("bad_header", "unknown header keys")
    schema = SCHEMAS[kind]
    if schema.max_bytes is not None:  # cheap: the frames are already in memory, only their lengths are summed
        total = sum(_frame_bytes(frame).nbytes for frame in frames)
        if total > schema.max_bytes:
            raise DecodeError("too_large", f"{kind}: {total} bytes, at most {schema.max_bytes}")
    _check_meta(kind, schema, meta)
    try:
        arrays = _decode_arrays(kind, schema, specs, frames)
    except DecodeError as err:
        err.meta = meta
        raise
    return Message(kind=kind, sender=sender, seq=seq, meta=meta, arrays=arrays)


def _decode_arrays(kind: str, schema: Schema, specs: list, frames: Sequence[Any]) -> dict[str, np.ndarray]:
    if len(specs) > MAX_ARRAYS:
        raise DecodeError("too_many_arrays", str(len(specs)))
    if len(frames) != len(specs) + 1:
        raise DecodeError("frame_count", f"{len(frames) - 1} data frames for {len(specs)} arrays")
    arrays: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames[1:], strict=True):
        name, array = _decode_array(spec, frame)
        if name in arrays:
            raise DecodeError("bad_array", f"duplicate array {name!r}")
        arrays[name] = array
    _check_arrays(kind, schema, arrays)
    return arrays


def _check_meta(kind: str, schema: Schema, meta: dict[str, Any]) -> None:
    for key in schema.meta:
        if key not in meta:
            raise DecodeError("bad_meta", f"{kind}: missing {key!r}")
    for key, value in meta.items():
        expected = schema.meta.get(key) or schema.optional_meta.get(key)
        if expected is None:
            raise DecodeError("bad_meta", f"{kind}: unknown key {key!r}")
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise DecodeError("bad_meta", f"{kind}: {key!r} has type {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError("bad_meta", f"{kind}: {key!r} is not finite")
        if type(value) is int:
            low, high = RANGES.get(key, DEFAULT_INT_RANGE)
            if not low <= value <= high:
                raise DecodeError("out_of_range", f"{kind}: {key!r} outside [{low}, {high}]")
        elif type(value) is str and len(value) > STRING_LIMITS.get(key, MAX_STRING):
            raise DecodeError("too_long", f"{kind}: {key!r} longer than {STRING_LIMITS.get(key, MAX_STRING)}")


def _decode_array(spec: Any, frame: Any) -> tuple[str, np.ndarray]:
    # `type(x) is int` also refuses booleans; the checks run per array of every message, so each counts.
    if type(spec) is not list or len(spec) != 3:
        raise DecodeError("bad_array", "spec must be [name, dtype, shape]")
    name, dtype, shape = spec
    if type(name) is not str or not name or len(name) > 256:
        raise DecodeError("bad_array", "name")
    if type(dtype) is not str or dtype not in _WIRE_DTYPES:  # a list/map is unhashable
        raise DecodeError("bad_dtype", f"{name}: {str(dtype)[:32]}")
    if type(shape) is not list or len(shape) > MAX_RANK:
        raise DecodeError("bad_shape", f"{name}: shape")
    for d in shape:
        if type(d) is not int or not 0 <= d < 2**40:
            raise DecodeError("bad_shape", f"{name}: dimensions")
    np_dtype, is_float = _WIRE_DTYPES[dtype]
    buffer = _frame_bytes(frame)
    expected = math.prod(shape) * np_dtype.itemsize
    if len(buffer) != expected:
        raise DecodeError("bad_length", f"{name}: {len(buffer)} bytes, shape needs {expected}")
    try:  # a zero dimension beside huge ones passes the length check but overflows numpy's size
        array = np.frombuffer(buffer, dtype=np_dtype).reshape(shape)
    except ValueError:
        raise DecodeError("bad_shape", f"{name}: too large") from None
    if is_float and expected and not np.isfinite(array).all():
        raise DecodeError("non_finite", name)
    return name, array


def _check_arrays(kind: str, schema: Schema, arrays: dict[str, np.ndarray]) -> None:
    if not schema.any_arrays:
        missing = set(schema.arrays) - set(arrays)
        extra = set(arrays) - set(schema.arrays)
        if missing or extra:
            raise DecodeError("bad_arrays", f"{kind}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, dtypes in schema.arrays.items():
            if dtypes is not None and _dtype_name(arrays[name].dtype) not in dtypes:
                raise DecodeError("bad_dtype", f"{kind}.{name}: {arrays[name].dtype.name}")
    if schema.batched and arrays:
        lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise DecodeError("bad_shape", f"{kind}: arrays must share their first dimension")


def require_vectors(msg: Message, *names: str) -> None:
    """Receivers that index by these arrays need them one-dimensional; the schema fixes only the first dim."""
    for name in names:
        if msg.arrays[name].ndim != 1:
            raise DecodeError("bad_shape", f"{msg.kind}.{name} must be one-dimensional")


def kind_prefix(kind: str) -> bytes:
    """The first bytes of every header of this kind: a SUB socket subscribes to the kinds it wants.

    The header map always starts with the version and the kind, so the prefix is fixed per kind, and a
    PUB socket then sends a subscriber nothing else (the 6.75 MB weights to an actor that reads them
    from shared memory, for one).
    """
    pack = msgpack.packb
    prefix = b"\x86" + pack("v") + pack(PROTOCOL_VERSION) + pack("k") + pack(kind)  # 0x86: a map of 6 keys
    if not encode(kind)[0].startswith(prefix):
        raise AssertionError(f"header layout changed: update kind_prefix ({kind})")
    return prefix


class Encoder:
    """Stamps a sender id and an increasing sequence number on every message from one socket owner."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.seq = 0

    def __call__(
        self, kind: str, meta: Mapping[str, Any] | None = None, arrays: Mapping[str, np.ndarray] | None = None
    ) -> list[Any]:
        self.seq += 1
        return encode(kind, meta, arrays, sender=self.sender, seq=self.seq)
