"""What the wire may carry: the protocol version, the framing limits, and one schema per message kind.

Why apart from the codec (common/wire.py, which re-exports every name here): these tables are the
protocol itself, read against docs/protocol.md by its tests and changed (with PROTOCOL_VERSION) when the
protocol changes; the codec that applies them changes for other reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    "stored": _COUNT,
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
        optional_meta={"newer_than": int, "run_id": str},
        max_bytes=_SMALL,
        doc="actor or relay -> learner: ask for the current weights now (a late joiner never waits)",
    ),
    "weights": Schema(
        meta={"version": int},
        optional_meta={"run_id": str},
        any_arrays=True,
        doc="learner -> actors (PUB, or reply to get_weights): every parameter tensor of the Q-network",
    ),
    "weights_ref": Schema(
        meta={"version": int, "run_id": str, "path": str, "token": str},
        optional_meta={"confirmed": int},
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
        optional_meta={"shm_path": str, "shm_token": str, "shm_slot": int, "with_mass": bool},
        max_bytes=_SMALL,
        doc="learner -> replay: request one prioritized batch (its observations into a shared-memory slot)",
    ),
    "batch": Schema(
        meta={"size": int},
        optional_meta={"shm_refused": str, "mass": _NUM, "stored": int},
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
        optional_meta={"mass": _NUM, "stored": int},
        max_bytes=_SMALL,
        doc="replay -> learner: a sampled batch is in the requested slot of the learner's shared-memory file",
    ),
    "priorities": Schema(
        arrays={"index": _I64, "id": _I64, "priority": _F32},
        batched=True,
        doc="learner -> replay: new priorities; ignored for slots overwritten since they were sampled",
    ),
    "stats_request": Schema(
        optional_meta={"with_mass": bool},
        max_bytes=_SMALL,
        doc="anyone -> replay: ask for the replay_stats counters",
    ),
    "replay_stats": Schema(
        meta={"size": int, "capacity": int, "inserted": int, "sampled": int, "rejected": dict},
        optional_meta={
            "insert_rate": _NUM,
            "sample_rate": _NUM,
            "samples_per_insert": _NUM,
            "waiting": str,
            "dropped": int,
            "lost": int,
            "mass": _NUM,
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
