"""The replay server process: ingests actors' transitions, serves prioritized batches to the learner.

One thread, one poll loop, over the sockets of replay/endpoints.py. The parts: the intake of inserts
and its backpressure (replay/ingest.py, checks in replay/insert_checks.py, storage in
replay/storage.py), the books (replay/accounting.py), the pacing (replay/rate_limiter.py), waiting
sample requests (replay/pending.py), learners' batch files (replay/batch_files.py) and snapshots
(replay/snapshot_schedule.py). This module answers the learner's requests and ties the parts together."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from pathlib import Path

import zmq

from common.config import RunConfig
from common.durable import write_rotating
from common.envs import EnvSpec
from common.errors import StartupError
from common.metrics_export import NullExporter, start_exporter
from common.security import peer_role
from common.shards import shard_dir_name
from common.sockets import require_secure_bind
from common.wire import DecodeError, Encoder, Message, decode, require_vectors
from replay.accounting import Books, Ledger
from replay.batch_files import BatchFiles
from replay.endpoints import ReplayEndpoints
from replay.ingest import Ingest
from replay.insert_checks import InsertChecks
from replay.pending import PendingSample, PendingSamples
from replay.rate_limiter import SampleToInsertRatio
from replay.snapshot_schedule import ACTOR_COUNTS_KEY, SnapshotSchedule, restore_server_state, server_state
from replay.storage import make_buffer, transition_fields, uses_frame_storage
from replay.validation import MagnitudeLimits

__all__ = ["ACTOR_COUNTS_KEY", "ReplayServer", "make_buffer", "transition_fields", "uses_frame_storage"]

log = logging.getLogger(__name__)

POLL_MS = 50
ACCOUNTING_FILE = "accounting.json"
LEARNER_KINDS = ("sample", "priorities", "snapshot_request")  # with authentication on, the learner key's only


class ReplayServer:
    def __init__(
        self,
        config: RunConfig,
        spec: EnvSpec,
        *,
        ctx: zmq.Context | None = None,
        run_dir: Path | None = None,
        restore: bool = False,
        shard: int = 0,
    ) -> None:
        """`config` is this server's own: for shard `shard` of a sharded run, `common.shards.shard_config`'s."""
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
        self.checks = InsertChecks(spec, self.max_insert, self.limits)
        self.books = Books(self.max_insert)
        self._reject = self.books.reject
        self._pending = PendingSamples()
        # The largest batch this server could ever serve: a larger request would wait forever.
        self.max_batch = min(self.buffer.capacity, self.limiter.max_sample() if self.limiter else self.buffer.capacity)
        self._encode = Encoder("replay")
        self._rate_marks: deque[tuple[float, int, int]] = deque(maxlen=64)
        self.batch_files = BatchFiles(spec)
        self.batches_by_shared_memory = 0
        # Without a run directory there is nowhere durable to write, so snapshots are off entirely.
        self.shard = shard
        self.snapshot_dir = run_dir / shard_dir_name(shard) if run_dir is not None else None
        self.snapshots = None
        if self.snapshot_dir is not None:
            self.snapshots = SnapshotSchedule(
                self.snapshot_dir,
                rc.snapshot_interval_s,
                lambda: server_state(self.buffer, self.stored_by_actor, self.books.ledger),
                self._reply,
            )
        self._round_totals: dict[str, int] | None = None  # the ledger's totals for this round of requests
        self._handlers = {
            "sample": self._on_sample,
            "priorities": self._on_priorities,
            "snapshot_request": self._on_snapshot_request,
            "stats_request": self._on_stats_request,
        }
        restored = self._restore() if restore else None  # before any socket: a misfit costs nothing to refuse
        self.endpoints = ReplayEndpoints.open(config, ctx, shard)
        self.security = self.endpoints.security
        self.ingest, self.local_ingest = self.endpoints.ingest, self.endpoints.local_ingest
        self.requests = self.endpoints.requests
        self.ingest_address, self.sample_address = self.endpoints.ingest_address, self.endpoints.sample_address
        self.local_ingest_address = self.endpoints.local_ingest_address
        self.inserts = Ingest(
            self.buffer, self.limiter, self.checks, self.books, self.endpoints.ingest_sockets, restored
        )

    @property
    def rejected(self) -> Counter[str]:
        return self.books.rejected

    @property
    def ledger(self) -> Ledger:
        return self.books.ledger

    @property
    def stored_by_actor(self) -> Counter[int]:
        return self.inserts.stored_by_actor

    @property
    def _held(self) -> tuple | None:
        return self.inserts.held

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
            # A learner sampling shards chooses each batch's shard by mass: the newest, with every batch.
            mass = {"mass": self.buffer.mass, "stored": self.buffer.size} if request.with_mass else {}
            if slot is not None:
                assert request.shm is not None
                for name in ("weight", "index", "id"):  # the stored fields were sampled into the slot already
                    slot[name][...] = arrays[name]
                self.batches_by_shared_memory += 1
                meta = {"size": request.batch_size, "slot": request.shm[2], "token": request.shm[1], **mass}
                self._reply(request.identity, "batch_ref", meta)
            else:
                meta = {"size": request.batch_size, **mass, **({"shm_refused": refused} if refused else {})}
                self._reply(request.identity, "batch", meta, arrays)

    def _batch_slot(self, request: PendingSample) -> tuple[dict | None, str]:
        """(the slot of the learner's batch file to sample into, or None; why not, when it asked for one)."""
        if request.shm is None:
            return None, ""
        if not self.config.net.shared_memory_batches:
            return None, "replay.net.shared_memory_batches is off"
        return self.batch_files.slot(request.shm, request.batch_size)

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
            msg = decode(body, expect=tuple(self._handlers))
        except DecodeError as err:
            self._reject(err.reason, err)
            if err.reason in ("wrong_version", "unknown_kind", "unexpected_kind"):
                self._reply(identity, "error", {"reason": err.reason, "detail": str(err)[:200]})
            return
        if self.endpoints.security is not None and msg.kind in LEARNER_KINDS and peer_role(body[0]) != "learner":
            self._reject("not_learner", f"{msg.kind} from a {peer_role(body[0])} key")
            self._reply(identity, "error", {"reason": "not_learner", "detail": f"{msg.kind} is the learner's"})
            return
        self._handlers[msg.kind](identity, msg)

    def _on_sample(self, identity: bytes, msg: Message) -> None:
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
        with_mass = meta.get("with_mass", False)
        refused = self._pending.add(PendingSample(identity, size, beta, time.monotonic(), shm, with_mass))
        if refused is not None:
            limits = f"at most {self._pending.per_peer} per peer, {self._pending.total} in all"
            self._refuse_sample(identity, refused, f"too many sample requests waiting ({limits})")

    def _on_priorities(self, identity: bytes, msg: Message) -> None:
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

    def _on_snapshot_request(self, identity: bytes, msg: Message) -> None:
        if self.snapshots is None:
            detail = "the replay server was started without --run-dir, so it has nowhere to write snapshots"
            self._reply(identity, "error", {"reason": "snapshots_disabled", "detail": detail})
        else:
            self.snapshots.request(identity)

    def _on_stats_request(self, identity: bytes, msg: Message) -> None:
        # The ledger changes only on ingest, never while requests are read: one sum serves every
        # stats_request of a round, so a flood of them costs one pass over the streams, not one each.
        if self._round_totals is None:
            self._round_totals = self.ledger.totals()
        stats = self.stats(self._round_totals)
        if msg.meta.get("with_mass", False):  # asked by a learner sampling shards (older ones refuse the key)
            stats["mass"] = self.buffer.mass
        self._reply(identity, "replay_stats", stats)

    # ---- snapshots ----------------------------------------------------------------------------
    def _restore(self) -> Counter[int] | None:
        """The per-actor counts of the newest snapshot, loaded into the buffer and the books."""
        if self.snapshot_dir is None:
            raise StartupError("--restore needs --run-dir: snapshots live in RUN_DIR/replay/")
        restored = restore_server_state(self.snapshot_dir, self.buffer)
        if restored is None:
            return None
        stored_by_actor, ledger = restored
        if ledger is not None:
            self.books.ledger = ledger
        return stored_by_actor

    # ---- statistics ---------------------------------------------------------------------------
    def stats(self, totals: dict[str, int] | None = None) -> dict:
        """`totals`: the ledger's, when the caller has them (summing 4,096 streams takes milliseconds)."""
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
        if self.endpoints.denied:
            rejected["unauthenticated"] = self.endpoints.denied
        totals = self.ledger.totals() if totals is None else totals
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
            want_ingest = self.inserts.wants_input()
            if want_ingest != ingest_registered:
                for sock in self.endpoints.ingest_sockets:
                    poller.register(sock, zmq.POLLIN) if want_ingest else poller.unregister(sock)
                ingest_registered = want_ingest
            events = dict(poller.poll(POLL_MS))
            if self.requests in events:
                self._round_totals = None
                for _ in range(256):
                    try:
                        frames = self.requests.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._handle_request(frames)
                    except Exception as err:  # one message never ends the server: count it and go on
                        self._reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
                self._round_totals = None
            if self.ingest in events or self.local_ingest in events or self.inserts.held is not None:
                self.inserts.read(budget=64)
            self._serve_pending()
            if self.snapshots is not None:
                self.snapshots.tick()
            if time.monotonic() >= next_log:
                next_log += interval
                self._log_progress(exporter)
        exporter.close()
        self.inserts.drain_at_stop(self.config.replay.stop_grace_s)
        if self.snapshots is not None:
            self.snapshots.at_exit()

    def _log_progress(self, exporter: NullExporter) -> None:
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
        self.batch_files.close()
        if self.endpoints.denied:
            self.rejected["unauthenticated"] = self.endpoints.denied
        self.endpoints.close()
        self._write_accounting()
        log.info(
            "closed: stored %d transitions (%s), rejected %s",
            self.buffer.inserted_total,
            ", ".join(f"actor {k}: {v}" for k, v in sorted(self.stored_by_actor.items())) or "none",
            dict(self.rejected) or "none",
        )
