"""The wire format: one msgpack header frame plus one raw frame per array. No pickle, ever.

A message is `[header, array_0, array_1, ...]`. The header is a msgpack map:

    {"v": PROTOCOL_VERSION, "k": kind, "s": sender, "n": seq, "m": {meta...},
     "a": [[name, dtype, [dim, ...]], ...]}

and frame i+1 holds array i's bytes, C-contiguous, little-endian. Receivers rebuild arrays with
`numpy.frombuffer` (no copy). Every kind has a schema below; `decode` checks the version, the kind
against the allowlist, meta keys and types, array names, dtypes, ranks, byte lengths, batch lengths
and that float data is finite, and raises the one `DecodeError` (with a short `reason` for counters)
for anything else. docs/protocol.md documents the same schemas; a test keeps the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 4

ALLOWED_DTYPES = frozenset({"uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool"})
MAX_ARRAYS = 256
MAX_RANK = 8
MAX_HEADER_BYTES = 1 << 20
# Every int a peer sends has a range (a Python int is unbounded; 2**64-1 summed twice no longer packs, and a
# numpy int64 column overflows). Per-key ranges live in RANGES below; any other int gets DEFAULT_INT_RANGE.
DEFAULT_INT_RANGE = (0, 2**53)
MAX_COUNT = 2**40  # transitions, steps, bytes: far above any run, far below int64 even summed
MAX_ACTOR_INDEX = 2**20
MAX_SEQ = 2**53
MAX_STRING = 256  # any string in meta unless STRING_LIMITS says otherwise
# The most episodes one actor_stats (or eval_result) may carry; the learner refuses a report with more,
# so actors send the newest this many (docs/protocol.md).
MAX_EPISODES_PER_REPORT = 1024
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
class Schema:
    """What one message kind carries.

    `meta` maps required keys to Python types; `optional_meta` likewise for keys that may be absent.
    `arrays` maps required array names to allowed dtypes (None: any allowed dtype); `any_arrays` lets a
    kind carry arbitrary names (weights). `batched` arrays must share their first dimension.
    """

    meta: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional_meta: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    arrays: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    any_arrays: bool = False
    batched: bool = False
    max_bytes: int | None = None
    """all frames of one message together (header included); None: only the socket's limit applies"""
    doc: str = ""


_COUNT = (0, MAX_COUNT)
# key -> (lowest, highest), the same key meaning the same thing in every kind (docs/protocol.md, "Ranges").
RANGES: dict[str, tuple[int, int]] = {
    "actor_index": (-1, MAX_ACTOR_INDEX),
    "pid": (0, 2**31),
    "version": (0, MAX_SEQ),
    "weight_version": (-1, MAX_SEQ),
    "sent_before": _COUNT,
    "count": _COUNT,
    "sent": _COUNT,
    "dropped": _COUNT,
    "env_steps": _COUNT,
    "transitions_sent": _COUNT,
    "transitions_dropped": _COUNT,
    "batch_size": (1, 65536),
    "size": _COUNT,
    "shm_slot": (0, 1024),
    "slot": (0, 1024),
    "capacity": _COUNT,
    "inserted": _COUNT,
    "sampled": _COUNT,
    "lost": _COUNT,
    "transitions": _COUNT,
    "bytes": (0, 2**50),
}
# key -> longest string; any other string key gets MAX_STRING.
STRING_LIMITS: dict[str, int] = {"path": 4096, "detail": 1024, "shm_refused": 1024}
_SMALL = 8 << 10  # a header of a few short fields and the sender: a few KiB at most


_F32 = frozenset({"float32"})
_I64 = frozenset({"int64"})
_I32 = frozenset({"int32"})
_NUM = (int, float)

SCHEMAS: dict[str, Schema] = {
    "hello": Schema(
        meta={"role": str, "actor_index": int},
        optional_meta={"host": str, "pid": int, "instance": str},
        max_bytes=_SMALL,
        doc="actor/evaluator -> learner: join the run; actor_index -1 asks the learner to assign one",
    ),
    "welcome": Schema(
        meta={"config": dict, "actor_index": int, "run_id": str},
        optional_meta={"epsilon": _NUM},
        doc="learner -> actor: the run config, the actor's global index and the epsilon it is to explore with",
    ),
    "get_weights": Schema(
        max_bytes=_SMALL, doc="actor -> learner: ask for the current weights now (a late joiner never waits)"
    ),
    "weights": Schema(
        meta={"version": int},
        optional_meta={"run_id": str},
        any_arrays=True,
        doc="learner -> actors (PUB, or reply to get_weights): every parameter tensor of the Q-network",
    ),
    "weights_ref": Schema(
        meta={"version": int, "run_id": str, "path": str, "token": str},
        max_bytes=_SMALL,
        doc="learner -> actors (PUB): a new version is in the shared-memory file at path, for actors on its host",
    ),
    "transitions": Schema(
        meta={"actor_index": int},
        optional_meta={"stream": str, "sent_before": int, "count": int},
        arrays={
            "obs": None,
            "action": _I64,
            "reward": _F32,
            "discount": _F32,
            "next_obs": None,
            "priority": _F32,
            "version": _I64,
        },
        batched=True,
        doc="actor -> replay (PUSH): n-step transitions, initial priorities, the weight version that acted",
    ),
    "frame_transitions": Schema(
        meta={"actor_index": int},
        optional_meta={"stream": str, "sent_before": int, "count": int},
        arrays={
            "frames": None,
            "obs_frames": _I32,
            "next_obs_frames": _I32,
            "action": _I64,
            "reward": _F32,
            "discount": _F32,
            "priority": _F32,
            "version": _I64,
        },
        doc="actor -> replay (PUSH): transitions of stacked frames, each distinct frame sent once",
    ),
    "stream_end": Schema(
        meta={"actor_index": int, "stream": str, "sent": int, "dropped": int},
        max_bytes=_SMALL,
        doc="actor -> replay (PUSH), last on its stream: transitions sent in all, and dropped unsent",
    ),
    "actor_stats": Schema(
        meta={"actor_index": int, "env_steps": int, "transitions_sent": int, "weight_version": int},
        optional_meta={"epsilon": _NUM, "steps_per_s": _NUM, "transitions_dropped": int, "stream": str},
        arrays={"episode_returns": _F32, "episode_lengths": _I64},
        batched=True,
        max_bytes=_SMALL + MAX_EPISODES_PER_REPORT * 12,
        doc="actor -> learner: cumulative counters and the episodes finished since the last report",
    ),
    "eval_result": Schema(
        meta={"weight_version": int},
        arrays={"returns": _F32, "lengths": _I64},
        batched=True,
        max_bytes=_SMALL + 1000 * 12,  # eval.episodes is at most 1000
        doc="evaluator -> learner: returns of one greedy evaluation",
    ),
    "sample": Schema(
        meta={"batch_size": int, "beta": _NUM},
        optional_meta={"shm_path": str, "shm_token": str, "shm_slot": int},
        max_bytes=_SMALL,
        doc="learner -> replay: request one prioritized batch (its observations into a shared-memory slot)",
    ),
    "batch": Schema(
        meta={"size": int},
        optional_meta={"shm_refused": str},
        arrays={
            "obs": None,
            "action": _I64,
            "reward": _F32,
            "discount": _F32,
            "next_obs": None,
            "weight": _F32,
            "index": _I64,
            "id": _I64,
        },
        batched=True,
        doc="replay -> learner: a sampled batch with importance weights, slot indices and insert ids",
    ),
    "batch_ref": Schema(
        meta={"size": int, "slot": int, "token": str},
        max_bytes=_SMALL,
        doc="replay -> learner: a sampled batch is in the requested slot of the learner's shared-memory file",
    ),
    "priorities": Schema(
        arrays={"index": _I64, "id": _I64, "priority": _F32},
        batched=True,
        doc="learner -> replay: new priorities; ignored for slots overwritten since they were sampled",
    ),
    "stats_request": Schema(max_bytes=_SMALL, doc="anyone -> replay: ask for the replay_stats counters"),
    "replay_stats": Schema(
        meta={"size": int, "capacity": int, "inserted": int, "sampled": int, "rejected": dict},
        optional_meta={
            "insert_rate": _NUM,
            "sample_rate": _NUM,
            "samples_per_insert": _NUM,
            "waiting": str,
            "dropped": int,
            "lost": int,
        },
        doc="replay -> requester: occupancy and counters (rejected maps reason -> count; dropped, lost in transitions)",
    ),
    "snapshot_request": Schema(
        max_bytes=_SMALL, doc="anyone -> replay: write a snapshot to RUN_DIR/replay/ now; answered when on disk"
    ),
    "snapshot_done": Schema(
        meta={"path": str, "transitions": int, "inserted": int, "bytes": int, "seconds": _NUM},
        max_bytes=_SMALL,
        doc="replay -> requester: a snapshot taken after the request is durably on disk at path",
    ),
    "stop": Schema(
        meta={"reason": str},
        max_bytes=_SMALL,
        doc="learner -> everyone (PUB): the run is over; actors and evaluators exit",
    ),
    "error": Schema(
        meta={"reason": str},
        optional_meta={"detail": str},
        max_bytes=_SMALL,
        doc="server -> requester: the request was refused (wrong version, malformed, unknown kind)",
    ),
}

KINDS = frozenset(SCHEMAS)


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
