"""The replay server process: ingests actors' transitions, serves prioritized batches to the learner.

One thread, one poll loop. Actors PUSH to a PULL socket (bulk data); the learner talks to a ROUTER
socket (sample requests, priority updates, statistics) so that several requests can be in flight and a
learner that dies never wedges the server in a REQ/REP lockstep. Backpressure is ZeroMQ's own: while
the rate limiter holds inserts back, the server stops reading the PULL socket, the actors' send queues
fill to their high-water mark, and the actors wait.

Snapshots (timer, `snapshot_request`, clean exit) copy the buffer's state between loop iterations, where
it is consistent by construction, and write the copy from a background thread so ingest pauses only for
the copy, never for the disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path

import numpy as np
import zmq

from common.config import RunConfig
from common.durable import write_rotating
from common.envs import EnvSpec
from common.errors import StartupError
from common.frame_dedup import dedup_stacks
from common.metrics_export import start_exporter
from common.run_keys import local_ingest_address
from common.security import ServerSecurity, peer_role, secure_server
from common.shared_batches import BatchFileMapping, SharedBatchesUnavailable
from common.sockets import BULK_KERNEL_BUFFER, bind, make_socket, require_secure_bind
from common.wire import DecodeError, Encoder, Message, decode, require_vectors
from replay.accounting import Ledger, StreamRecord
from replay.buffer import FieldSpec, ReplayBuffer
from replay.frame_storage import FrameReplayBuffer
from replay.pending import PendingSample, PendingSamples
from replay.rate_limiter import SampleToInsertRatio
from replay.snapshot import SnapshotInfo, load_snapshot, write_snapshot
from replay.validation import MagnitudeLimits

log = logging.getLogger(__name__)

POLL_MS = 50
ACTOR_COUNTS_KEY = "server.stored_by_actor"  # (K, 2) int64 rows of (actor index, transitions stored)
LEDGER_KEY = "server.ledger"  # the per-stream accounting as JSON bytes (uint8)
ACCOUNTING_FILE = "accounting.json"
STREAM_LINES = 100  # "stream closed" lines logged one by one; after that one in a thousand
DRAIN_QUEUED_MAX = 4096  # messages read per ingest socket at a stop after the grace, so a flood cannot hold it
INGEST_KINDS = ("transitions", "frame_transitions", "stream_end")
LEARNER_KINDS = ("sample", "priorities", "snapshot_request")  # with authentication on, the learner key's only
BATCH_FILES_KEPT = 4  # learners' batch files kept mapped (one per learner; a restarted learner makes a new one)
BATCH_FILE_REFUSALS_KEPT = 64
VECTORS = ("action", "reward", "discount", "priority", "version")


def uses_frame_storage(spec: EnvSpec, config: RunConfig) -> bool:
    """Stacked frames (K, H, W) are stored as distinct frames unless the config says otherwise."""
    return config.replay.frame_dedup and len(spec.obs_shape) == 3


def make_buffer(config: RunConfig, spec: EnvSpec) -> ReplayBuffer | FrameReplayBuffer:
    rc = config.replay
    common = {"prioritized": rc.prioritized, "alpha": rc.alpha, "seed": config.seed + 7919}
    if not uses_frame_storage(spec, config):
        return ReplayBuffer(rc.capacity, transition_fields(spec), **common)
    stack = spec.obs_shape[0]
    needed = 2 * stack * config.actor.send_size  # the most frames one message can carry
    if rc.capacity * rc.frames_per_transition < needed:
        raise StartupError(
            f"replay.capacity ({rc.capacity}) x replay.frames_per_transition ({rc.frames_per_transition:g}) "
            f"frames cannot hold one message of actor.send_size={config.actor.send_size} stacks of {stack} "
            f"frames ({needed} frames)"
        )
    return FrameReplayBuffer(
        rc.capacity, transition_fields(spec), frames_per_transition=rc.frames_per_transition, **common
    )


def transition_fields(spec: EnvSpec) -> dict[str, FieldSpec]:
    """The stored columns of one n-step transition."""
    obs = FieldSpec(spec.obs_shape, np.dtype(spec.obs_dtype))
    return {
        "obs": obs,
        "action": FieldSpec((), np.dtype(np.int64)),
        "reward": FieldSpec((), np.dtype(np.float32)),
        "discount": FieldSpec((), np.dtype(np.float32)),
        "next_obs": obs,
    }


class _SnapshotJob:
    """One snapshot write, run by a background thread (or inline at exit); the loop replies to `waiters`."""

    def __init__(self, directory: Path, state: dict, waiters: list[bytes], copy_s: float, reason: str) -> None:
        self.waiters = waiters
        self.reason = reason
        self.copy_s = copy_s
        self.info: SnapshotInfo | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self.write, args=(directory, state), name="replay-snapshot", daemon=True)

    def write(self, directory: Path, state: dict) -> None:
        try:
            self.info = write_snapshot(directory, state)
        except Exception as err:  # a full disk must not kill the server: report it to the waiters instead
            self.error = err


class ReplayServer:
    def __init__(
        self,
        config: RunConfig,
        spec: EnvSpec,
        *,
        ctx: zmq.Context | None = None,
        run_dir: Path | None = None,
        restore: bool = False,
    ) -> None:
        # Before anything is allocated: a refused bind should cost nothing (bind() checks again).
        require_secure_bind(config.net.bind_host, bool(config.net.curve_secret_key))
        self.config = config
        self.spec = spec
        rc = config.replay
        self.buffer = make_buffer(config, spec)
        self.limiter = SampleToInsertRatio.for_run(
            rc.samples_per_insert, rc.min_size, rc.rate_tolerance, config.actor.send_size, config.learner.batch_size
        )
        self.max_insert = config.actor.send_size
        self.limits = MagnitudeLimits(spec, rc)
        self.rejected: Counter[str] = Counter()
        self.stored_by_actor: Counter[int] = Counter()
        self.ledger = Ledger()
        self._streams_closed = 0
        self._held: tuple[Message, int, StreamRecord] | None = None  # a decoded insert waiting for the limiter
        self._pending = PendingSamples()
        # The largest batch this server could ever serve: a larger request would wait forever.
        self.max_batch = min(self.buffer.capacity, self.limiter.max_sample() if self.limiter else self.buffer.capacity)
        self._encode = Encoder("replay")
        self._rate_marks: deque[tuple[float, int, int]] = deque(maxlen=64)
        self._batch_files: OrderedDict[str, BatchFileMapping] = OrderedDict()
        self._batch_file_refusals: OrderedDict[str, str] = OrderedDict()
        self.batches_by_shared_memory = 0
        self.batch_files_refused = 0  # `sample` requests whose batch file was refused (answered by socket)
        # Without a run directory there is nowhere durable to write, so snapshots are off entirely.
        self.snapshot_dir = run_dir / "replay" if run_dir is not None else None
        self._snapshot_interval = rc.snapshot_interval_s if self.snapshot_dir is not None else 0.0
        self._next_snapshot = time.monotonic() + self._snapshot_interval
        self._snapshot_waiters: list[bytes] = []
        self._snapshot_job: _SnapshotJob | None = None
        if restore:
            self._restore()  # before any socket exists: a snapshot that does not fit costs nothing to refuse
        self._owns_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.security = ServerSecurity.from_config(config.net, self.ctx)
        max_bytes = config.net.max_message_mb << 20
        self.ingest = make_socket(
            self.ctx,
            zmq.PULL,
            hwm=config.net.send_hwm,
            max_message_bytes=max_bytes,
            kernel_buffer_bytes=BULK_KERNEL_BUFFER,
            heartbeats=False,  # see make_socket: on the bulk path they lose data
        )
        self.requests = make_socket(self.ctx, zmq.ROUTER, hwm=1024, max_message_bytes=max_bytes)
        secure_server(self.ingest, self.security, "replay ingest")
        secure_server(self.requests, self.security, "replay sampling")
        host = config.net.bind_host
        self.ingest_address = bind(self.ingest, host, config.net.ingest_port, "replay ingest")
        self.sample_address = bind(self.requests, host, config.net.sample_port, "replay sampling")
        # Actors on this host push to an ipc socket in the private run-keys directory: no CURVE cost.
        self.local_ingest, self.local_ingest_address = None, local_ingest_address()
        if self.local_ingest_address is not None and not config.net.curve_secret_key:
            self.local_ingest = make_socket(
                self.ctx, zmq.PULL, hwm=config.net.send_hwm, max_message_bytes=max_bytes, heartbeats=False
            )
            self.local_ingest.bind(self.local_ingest_address)

    # ---- ingest -------------------------------------------------------------------------------
    def _decode_insert(self, frames: list) -> tuple[Message, int, StreamRecord] | None:
        """A valid insert, or None after counting the message as rejected (or closing a stream)."""
        try:
            msg = decode(frames, expect=INGEST_KINDS)
        except DecodeError as err:
            self._reject(err.reason, err, err.meta)
            return None
        if msg.kind == "stream_end":
            self._end_stream(msg.meta)
            return None
        a = msg.arrays
        count = a["action"].shape[0] if a["action"].ndim else -1
        meta = msg.meta
        if count < 0 or meta.get("count", count) != count or meta.get("sent_before", 0) < 0:
            self._reject("bad_count", f"count {meta.get('count')} for {count} rows, from actor {meta['actor_index']}")
            return None
        record, in_order = self.ledger.arrived(meta, count)
        if record is None:
            self._reject("too_many_streams", f"ledger full of open streams, from actor {meta['actor_index']}")
            return None
        if not in_order:
            self._reject("out_of_order", f"actor {meta['actor_index']} stream {meta.get('stream')}")
            return None
        problem = self._check_observations(msg, count)
        if problem is not None:
            self._reject(*problem, record=record, count=count)
            return None
        checks = (
            (count == 0, "empty_batch"),
            (count > self.max_insert, "batch_too_large"),
            (any(a[k].shape != (count,) for k in VECTORS), "bad_shape"),
            (bool(((a["action"] < 0) | (a["action"] >= self.spec.num_actions)).any()), "bad_action"),
            (bool(((a["discount"] < 0) | (a["discount"] > 1)).any()), "bad_discount"),
        )
        for failed, reason in checks:
            if failed:
                self._reject(reason, f"from actor {meta['actor_index']}", record=record, count=count)
                return None
        problem = self.limits.check_insert(msg.kind, a)
        if problem is not None:
            self._reject(problem[0], f"{problem[1]}, from actor {meta['actor_index']}", record=record, count=count)
            return None
        return msg, count, record

    def _check_observations(self, msg: Message, count: int) -> tuple[str, str] | None:
        """(reason, detail) when the message's observations do not fit the run's spec, else None."""
        a = msg.arrays
        shape, dtype = self.spec.obs_shape, self.spec.obs_dtype
        if msg.kind == "transitions":
            for name in ("obs", "next_obs"):
                if a[name].shape[1:] != shape or a[name].dtype != dtype:
                    return "wrong_obs_spec", f"{name} {a[name].dtype}{a[name].shape[1:]} vs {dtype}{shape}"
            return None
        if len(shape) != 3:
            return "wrong_obs_spec", f"frames sent for {dtype}{shape} observations, which are not stacked frames"
        frames = a["frames"]
        if frames.ndim != 3 or frames.shape[1:] != shape[1:] or frames.dtype != dtype:
            return "wrong_obs_spec", f"frames {frames.dtype}{frames.shape[1:]} vs {dtype}{shape[1:]}"
        if frames.shape[0] > 2 * shape[0] * count:
            return "bad_frames", f"{frames.shape[0]} frames for {count} transitions"
        for name in ("obs_frames", "next_obs_frames"):
            index = a[name]
            if index.shape != (count, shape[0]):
                return "bad_frames", f"{name} shape {index.shape}, expected {(count, shape[0])}"
            if index.size and (int(index.min()) < 0 or int(index.max()) >= frames.shape[0]):
                return "bad_frames", f"{name} points outside the message's {frames.shape[0]} frames"
        return None

    def _storage_batch(self, msg: Message) -> dict[str, np.ndarray]:
        """The columns the buffer stores, converting between full stacks and distinct frames as needed."""
        a = msg.arrays
        batch = {name: a[name] for name in ("action", "reward", "discount")}
        if isinstance(self.buffer, FrameReplayBuffer):
            if msg.kind == "transitions":  # a producer that sends full stacks: deduplicate them here
                batch["frames"], batch["obs_frames"], batch["next_obs_frames"] = dedup_stacks(a["obs"], a["next_obs"])
            else:
                batch.update(frames=a["frames"], obs_frames=a["obs_frames"], next_obs_frames=a["next_obs_frames"])
        elif msg.kind == "transitions":
            batch.update(obs=a["obs"], next_obs=a["next_obs"])
        else:
            batch.update(obs=a["frames"][a["obs_frames"]], next_obs=a["frames"][a["next_obs_frames"]])
        return batch

    def _store(self, msg: Message, count: int, record: StreamRecord) -> None:
        a = msg.arrays
        try:
            self.buffer.add(self._storage_batch(msg), a["priority"])
        except ValueError as err:  # the decoder and the checks above should leave nothing for here
            self._reject("bad_batch", err, record=record, count=count)
            return
        self.stored_by_actor[msg.meta["actor_index"]] += count
        record.stored += count

    def _end_stream(self, meta: dict) -> None:
        record = self.ledger.ended(meta)
        if record is None:
            self._reject("too_many_streams", f"{self.ledger.max_streams} streams open, stream_end of a new one")
            return
        self._streams_closed += 1
        if self._streams_closed <= STREAM_LINES or self._streams_closed % 1000 == 0:  # churn cannot fill the log
            log.info("stream closed: %s [%d closed so far]", self.ledger.describe(record), self._streams_closed)

    def _can_insert(self, count: int) -> bool:
        if self.limiter is None:
            return True
        return self.limiter.can_insert(self.buffer.inserted_total, self.buffer.sampled_total, count)

    def _ingest_ready(self, budget: int) -> None:
        """Read and store up to `budget` messages, stopping as soon as the limiter says wait."""
        for _ in range(budget):
            if self._held is not None:
                if not self._can_insert(self._held[1]):
                    return
                held, self._held = self._held, None
                self._store(*held)
            try:
                frames = self.ingest.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if self.local_ingest is None:
                    return
                try:
                    frames = self.local_ingest.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
            try:
                decoded = self._decode_insert(frames)
            except Exception as err:  # one message never ends the server: count it and go on
                self._reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
                continue
            if decoded is not None:
                self._held = decoded

    # ---- sampling -----------------------------------------------------------------------------
    def _can_sample(self, count: int) -> bool:
        if self.buffer.size < self.config.replay.min_size:
            return False
        if self.limiter is None:
            return True
        return self.limiter.can_sample(self.buffer.inserted_total, self.buffer.sampled_total, count)

    def _serve_pending(self) -> None:
        if not self._pending or self.buffer.size < self.config.replay.min_size:
            return
        for request in self._pending.take_ready(self._can_sample):
            slot, refused = self._batch_slot(request)
            result = self.buffer.sample(request.batch_size, request.beta, slot)
            arrays = dict(result.data)
            arrays.update(weight=result.weights, index=result.indices, id=result.ids)
            if slot is not None:
                assert request.shm is not None
                for name in ("weight", "index", "id"):  # the stored fields were sampled into the slot already
                    slot[name][...] = arrays[name]
                self.batches_by_shared_memory += 1
                meta = {"size": request.batch_size, "slot": request.shm[2], "token": request.shm[1]}
                self._reply(request.identity, "batch_ref", meta)
            else:
                meta = {"size": request.batch_size, **({"shm_refused": refused} if refused else {})}
                self._reply(request.identity, "batch", meta, arrays)

    def _batch_slot(self, request: PendingSample) -> tuple[dict[str, np.ndarray] | None, str]:
        """(the slot of the learner's batch file to sample into, or None; why not, when it asked for one)."""
        if request.shm is None:
            return None, ""
        if not self.config.net.shared_memory_batches:
            return None, "replay.net.shared_memory_batches is off"
        path, token, slot = request.shm
        # A refusal belongs to what the request said, not to the path: a request with a wrong token must
        # not get the learner's own file refused for the rest of the run.
        key = (path, token, request.batch_size)
        refused = self._batch_file_refusals.get(key)
        if refused is not None:
            self.batch_files_refused += 1
            return None, refused
        mapping = self._batch_files.get(path)
        if mapping is not None and mapping.token != token:  # refused alone, and cheaply: the mapping stays
            self.batch_files_refused += 1
            return None, f"the request's token is not that of the batch file {path}"
        if mapping is None or mapping.batch_size != request.batch_size:
            try:
                mapping = BatchFileMapping(
                    path, token, request.batch_size, self.spec.obs_shape, np.dtype(self.spec.obs_dtype)
                )
            except SharedBatchesUnavailable as err:
                self.batch_files_refused += 1
                self._batch_file_refusals[key] = str(err)[:200]
                if len(self._batch_file_refusals) > BATCH_FILE_REFUSALS_KEPT:
                    self._batch_file_refusals.popitem(last=False)
                log.info("sampled batches go over the socket, not shared memory: %s", err)
                return None, str(err)[:200]
            old = self._batch_files.pop(path, None)
            if old is not None:
                old.close()
            self._batch_files[path] = mapping
            if len(self._batch_files) > BATCH_FILES_KEPT:
                self._batch_files.popitem(last=False)[1].close()
            log.info("writing sampled observations into the learner's batch file %s", path)
        self._batch_files.move_to_end(path)
        try:
            return mapping.views(slot), ""
        except IndexError as err:
            return None, str(err)

    def _reply(self, identity: bytes, kind: str, meta: dict, arrays: dict | None = None) -> None:
        try:
            # NOBLOCK: with ROUTER_MANDATORY a blocking send waits for a peer whose queue is full, so one
            # peer that never reads its replies would freeze the server.
            self.requests.send_multipart([identity, *self._encode(kind, meta, arrays)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as err:  # the peer went away (ROUTER_MANDATORY) or its queue is full
            self.rejected["reply_failed"] += 1
            log.debug("reply %s failed: %s", kind, err)

    def _refuse_sample(self, identity: bytes, reason: str, detail: str) -> None:
        self._reject(reason, detail)
        self._reply(identity, "error", {"reason": reason, "detail": detail})

    def _handle_request(self, frames: list) -> None:
        if len(frames) < 2:
            self._reject("bad_envelope", "no identity")
            return
        identity, body = frames[0].bytes, frames[1:]
        try:
            msg = decode(body, expect=("sample", "priorities", "stats_request", "snapshot_request"))
        except DecodeError as err:
            self._reject(err.reason, err)
            if err.reason in ("wrong_version", "unknown_kind", "unexpected_kind"):
                self._reply(identity, "error", {"reason": err.reason, "detail": str(err)[:200]})
            return
        if self.security is not None and msg.kind in LEARNER_KINDS and peer_role(body[0]) != "learner":
            self._reject("not_learner", f"{msg.kind} from a {peer_role(body[0])} key")
            self._reply(identity, "error", {"reason": "not_learner", "detail": f"{msg.kind} is the learner's"})
            return
        if msg.kind == "sample":
            meta = msg.meta
            size, beta = meta["batch_size"], float(meta["beta"])
            shm_keys = [key in meta for key in ("shm_path", "shm_token", "shm_slot")]
            if not 0 <= beta <= 1 or any(shm_keys) != all(shm_keys):
                self._reject("bad_sample_request", f"batch_size={size} beta={beta} shm keys {shm_keys}")
                self._reply(identity, "error", {"reason": "bad_sample_request"})
                return
            if not 1 <= size <= self.max_batch:
                detail = f"batch_size {size} can never be served: at most {self.max_batch} (capacity, rate limiter)"
                self._refuse_sample(identity, "unservable_sample", detail)
                return
            shm = (meta["shm_path"], meta["shm_token"], meta["shm_slot"]) if all(shm_keys) else None
            refused = self._pending.add(PendingSample(identity, size, beta, time.monotonic(), shm))
            if refused is not None:
                limits = f"at most {self._pending.per_peer} per peer, {self._pending.total} in all"
                self._refuse_sample(identity, refused, f"too many sample requests waiting ({limits})")
        elif msg.kind == "priorities":
            a = msg.arrays
            index = a["index"]
            try:
                require_vectors(msg, "index", "id", "priority")
            except DecodeError as err:
                self._reject("bad_priorities", err)
                return
            if bool(((index < 0) | (index >= self.buffer.capacity)).any()):
                self._reject("bad_priorities", "index out of range")
                return
            problem = self.limits.check_priorities(a["priority"])
            if problem is not None:
                self._reject("bad_priorities", problem)
                return
            self.buffer.update_priorities(index, a["id"], a["priority"])
        elif msg.kind == "snapshot_request":
            if self.snapshot_dir is None:
                detail = "the replay server was started without --run-dir, so it has nowhere to write snapshots"
                self._reply(identity, "error", {"reason": "snapshots_disabled", "detail": detail})
            else:
                self._snapshot_waiters.append(identity)  # answered by the next snapshot to start, not a running one
        else:
            self._reply(identity, "replay_stats", self.stats())

    def _reject(
        self, reason: str, detail: object, meta: dict | None = None, *, record: StreamRecord | None = None, count=0
    ) -> None:
        """Count a refused message by reason, and its transitions in its stream's ledger when it names one.

        `meta` comes from a message whose header was valid but whose arrays were not: its own `count`
        (bounded by the largest insert) says how many transitions the stream loses to the rejection.
        """
        self.rejected[reason] += 1
        claimed = meta.get("count") if meta is not None else None
        attributable = isinstance(claimed, int) and 0 <= claimed <= self.max_insert and meta.get("sent_before", 0) >= 0
        if record is None and attributable:
            record, in_order = self.ledger.arrived(meta, claimed)
            record, count = (record, claimed) if in_order and record is not None else (None, 0)
        if record is not None:
            record.rejected[reason] += count
        total = sum(self.rejected.values())
        if total <= 20 or total % 1000 == 0:
            log.warning("rejected a message (%s): %s [%d rejected so far]", reason, detail, total)

    # ---- snapshots ----------------------------------------------------------------------------
    def _restore(self) -> None:
        """Load the newest readable snapshot; none is a warning, one that does not fit this config is fatal."""
        if self.snapshot_dir is None:
            raise StartupError("--restore needs --run-dir: snapshots live in RUN_DIR/replay/")
        found = load_snapshot(self.snapshot_dir)
        if found is None:
            log.warning("--restore: no readable snapshot in %s; starting empty", self.snapshot_dir)
            return
        state, path = found
        try:
            counts = np.asarray(state.get(ACTOR_COUNTS_KEY, np.zeros((0, 2), np.int64)))
            if counts.dtype != np.int64 or counts.ndim != 2 or counts.shape[1] != 2:
                raise ValueError(f"{ACTOR_COUNTS_KEY} must be int64 (K, 2), got {counts.dtype}{counts.shape}")
            self.buffer.load_state_dict(state)  # checks capacity, mode, alpha and every field's dtype and shape
        except ValueError as err:
            raise StartupError(
                f"replay snapshot {path} does not match this server's config (restore it with the settings it "
                f"was taken with, or start without --restore): {err}"
            ) from None
        self.stored_by_actor = Counter({int(actor): int(n) for actor, n in counts})
        if LEDGER_KEY in state:
            try:
                self.ledger = Ledger.from_array(state[LEDGER_KEY])
            except (ValueError, KeyError, TypeError) as err:
                raise StartupError(f"replay snapshot {path}: unreadable accounting ledger: {err}") from None
        log.info(
            "restored %d transitions from %s (%d inserted, %d sampled so far)",
            self.buffer.size,
            path,
            self.buffer.inserted_total,
            self.buffer.sampled_total,
        )

    def _snapshot_state(self) -> dict:
        """The buffer's state (copies, not views) plus the per-actor counts, all plain arrays and scalars."""
        state: dict = self.buffer.state_dict()
        rows = sorted(self.stored_by_actor.items())
        state[ACTOR_COUNTS_KEY] = np.array(rows, dtype=np.int64).reshape(-1, 2)
        state[LEDGER_KEY] = self.ledger.to_array()
        return state

    def _start_snapshot(self, reason: str, *, background: bool = True) -> _SnapshotJob:
        assert self.snapshot_dir is not None
        start = time.monotonic()
        state = self._snapshot_state()  # the only part that holds up the loop: a memcpy of the storage
        job = _SnapshotJob(self.snapshot_dir, state, self._snapshot_waiters, time.monotonic() - start, reason)
        self._snapshot_waiters = []
        self._next_snapshot = start + self._snapshot_interval
        if background:
            job.thread.start()
        else:
            job.write(self.snapshot_dir, state)
        return job

    def _finish_snapshot(self, job: _SnapshotJob) -> None:
        if job.info is None:
            log.error("snapshot (%s) to %s failed: %s", job.reason, self.snapshot_dir, job.error)
            detail = f"{type(job.error).__name__}: {job.error}"[:200]
            for identity in job.waiters:
                self._reply(identity, "error", {"reason": "snapshot_failed", "detail": detail})
            return
        info = job.info
        log.info(
            "snapshot (%s): %d transitions (%d inserted so far), %.1f MB to %s in %.2f s (copy %.3f s)",
            job.reason,
            info.transitions,
            info.inserted,
            info.bytes / 1e6,
            info.path,
            info.seconds,
            job.copy_s,
        )
        meta = {
            "path": str(info.path),
            "transitions": info.transitions,
            "inserted": info.inserted,
            "bytes": info.bytes,
            "seconds": info.seconds,
        }
        for identity in job.waiters:
            self._reply(identity, "snapshot_done", meta)

    def _tick_snapshots(self) -> None:
        """Collect a finished write, then start one if asked to or the timer is due (one write at a time)."""
        job = self._snapshot_job
        if job is not None:
            if job.thread.is_alive():
                return
            self._snapshot_job = None
            self._finish_snapshot(job)
        timer_due = self._snapshot_interval > 0 and time.monotonic() >= self._next_snapshot
        if self._snapshot_waiters or timer_due:
            self._snapshot_job = self._start_snapshot("request" if self._snapshot_waiters else "timer")

    def _exit_snapshot(self) -> None:
        """At a clean stop: finish the write in progress, then write the final state inline."""
        job = self._snapshot_job
        if job is not None:
            job.thread.join()
            self._snapshot_job = None
            self._finish_snapshot(job)
        if self._snapshot_interval > 0 or self._snapshot_waiters:
            self._finish_snapshot(self._start_snapshot("exit", background=False))

    # ---- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict:
        now = time.monotonic()
        inserted, sampled = self.buffer.inserted_total, self.buffer.sampled_total
        self._rate_marks.append((now, inserted, sampled))
        t0, i0, s0 = self._rate_marks[0]
        span = max(now - t0, 1e-9)
        waiting = ""
        if self._held is not None:
            waiting = "inserts (learner behind the samples-per-insert ratio)"
        elif self._pending:
            waiting = "samples (below min_size or actors behind the ratio)"
        rejected = dict(self.rejected)
        if self.security is not None and self.security.denied:
            rejected["unauthenticated"] = self.security.denied  # counted by the ZAP and monitor threads
        totals = self.ledger.totals()
        return {
            "size": self.buffer.size,
            "capacity": self.buffer.capacity,
            "inserted": inserted,
            "sampled": sampled,
            "rejected": rejected,
            "insert_rate": (inserted - i0) / span if span > 0.5 else 0.0,
            "sample_rate": (sampled - s0) / span if span > 0.5 else 0.0,
            "samples_per_insert": sampled / inserted if inserted else 0.0,
            "waiting": waiting,
            "dropped": totals.get("dropped", 0),
            "lost": totals.get("lost", 0),
        }

    # ---- loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, log_interval_s: float | None = None) -> None:
        interval = log_interval_s or self.config.log_interval_s
        poller = zmq.Poller()
        poller.register(self.requests, zmq.POLLIN)
        ingest_registered = False
        next_log = time.monotonic() + interval
        exporter = start_exporter(self.config.net, "replay")
        log.info("serving: ingest %s, sampling %s", self.ingest_address, self.sample_address)
        while not stop.is_set():
            want_ingest = self._held is None or self._can_insert(self._held[1])
            if want_ingest != ingest_registered:
                for sock in (self.ingest, self.local_ingest):
                    if sock is not None:
                        poller.register(sock, zmq.POLLIN) if want_ingest else poller.unregister(sock)
                ingest_registered = want_ingest
            events = dict(poller.poll(POLL_MS))
            if self.requests in events:
                for _ in range(256):
                    try:
                        frames = self.requests.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._handle_request(frames)
                    except Exception as err:  # one message never ends the server: count it and go on
                        self._reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
            if self.ingest in events or self.local_ingest in events or self._held is not None:
                self._ingest_ready(budget=64)
            self._serve_pending()
            self._tick_snapshots()
            if time.monotonic() >= next_log:
                next_log += interval
                s = self.stats()
                exporter.update(s)
                log.info(
                    "size %d/%d inserted %d (%.0f/s) sampled %d (%.0f/s) ratio %.2f rejected %d%s",
                    s["size"],
                    s["capacity"],
                    s["inserted"],
                    s["insert_rate"],
                    s["sampled"],
                    s["sample_rate"],
                    s["samples_per_insert"],
                    sum(s["rejected"].values()),
                    f" waiting for {s['waiting']}" if s["waiting"] else "",
                )
                if s["lost"]:
                    log.warning("%d transitions lost in transit so far (see %s)", s["lost"], ACCOUNTING_FILE)
                self._write_accounting()
        exporter.close()
        self._drain_at_stop()
        self._exit_snapshot()

    def _drain_at_stop(self) -> None:
        """Close the books: what is held or still arrives is dropped (counted), and late stream_ends land.

        Actors stopping at the same time as replay flush and send their stream_end last, so replay keeps
        reading every ingest socket until no stream is open or replay.stop_grace_s has passed; a stream
        still open then (its actor died, or never heard the stop) stays open in the ledger.
        """
        if self._held is not None:
            _msg, count, record = self._held
            record.dropped += count
            self._held = None
        sockets = [sock for sock in (self.ingest, self.local_ingest) if sock is not None]
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + self.config.replay.stop_grace_s
        while self.ledger.open_streams() and (left := deadline - time.monotonic()) > 0:
            for sock, _event in poller.poll(max(1, min(POLL_MS, int(left * 1000)))):
                self._drain_one(sock)
        for sock in sockets:  # what is queued already is counted too, however the wait ended (bounded)
            for _ in range(DRAIN_QUEUED_MAX):
                if not self._drain_one(sock, zmq.NOBLOCK):
                    break
        if self.ledger.open_streams():
            log.info(
                "stopped with %d streams still open after %.1f s",
                self.ledger.open_streams(),
                self.config.replay.stop_grace_s,
            )
        for line in self.ledger.summary_lines():
            log.info("accounting: %s", line)

    def _drain_one(self, sock: zmq.Socket, flags: int = 0) -> bool:
        try:
            frames = sock.recv_multipart(flags, copy=False)
        except zmq.Again:
            return False
        try:
            decoded = self._decode_insert(frames)
        except Exception as err:  # one message never ends the server: count it and go on
            self._reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
            return True
        if decoded is not None:
            _msg, count, record = decoded
            record.dropped += count
        return True

    def _write_accounting(self) -> None:
        """RUN_DIR/replay/accounting.json: the per-stream ledger, replaced atomically."""
        if self.snapshot_dir is None:
            return
        data = json.dumps({"rejected_messages": dict(self.rejected), **self.ledger.to_json()}, indent=1)
        try:
            write_rotating(self.snapshot_dir, ACCOUNTING_FILE, "accounting.prev.json", lambda f: f.write(data.encode()))
        except OSError as err:
            log.warning("could not write %s: %s", ACCOUNTING_FILE, err)

    def close(self) -> None:
        for sock in (self.ingest, self.requests, self.local_ingest):
            if sock is not None:
                sock.close()
        for mapping in self._batch_files.values():
            mapping.close()
        self._batch_files.clear()
        if self.security is not None:
            if self.security.denied:
                self.rejected["unauthenticated"] = self.security.denied
            self.security.close()
        if self._owns_ctx:
            self.ctx.term()
        self._write_accounting()
        log.info(
            "closed: stored %d transitions (%s), rejected %s",
            self.buffer.inserted_total,
            ", ".join(f"actor {k}: {v}" for k, v in sorted(self.stored_by_actor.items())) or "none",
            dict(self.rejected) or "none",
        )
