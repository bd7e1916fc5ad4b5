"""An actor's view of its host's weight relay (`actor.relay`): is it serving, or should we go direct?

Why a separate judge: a relay that died, hangs, or lost its learner must not leave the actors behind it
acting with old weights. The relay repeats its newest `weights_ref` every second, so silence means it is
gone; a socket file that vanished means the same at once. A relay that still talks but has had no new
version for STALE_S, nor the learner's word that its version is still the newest (the relay asks every
few seconds while the learner is quiet), is followed no longer either (its learner connection may be
broken): the link then subscribes to the learner directly, and comes back once the relay delivers a
version it had not announced before the fallback, as new as the actor's own. Until its first notice a
relay may be silent (it has no version until the learner answers or publishes): then only STALE_S
applies, and a missing socket after SILENT_S.
"""

from __future__ import annotations

import os
import time

import zmq

from common.sockets import make_socket
from common.wire import Message, kind_prefix

SILENT_S = 3.0  # the relay announces every second: three missed notices and it is taken for dead
STALE_S = 15.0  # no new or confirmed version from it this long: go to the learner directly


def _news(msg: Message) -> tuple:
    return msg.meta["run_id"], msg.meta["version"], msg.meta.get("confirmed", 0)


class RelayWatch:
    def __init__(self, ctx: zmq.Context, path: str, max_message_bytes: int) -> None:
        self.path = path
        self.sub = make_socket(ctx, zmq.SUB, hwm=4, max_message_bytes=max_message_bytes, heartbeats=False)
        for kind in ("stop", "weights_ref"):
            self.sub.setsockopt(zmq.SUBSCRIBE, kind_prefix(kind))
        self.sub.connect(f"ipc://{path}")
        self.heard_at = self.new_at = self.fallback_at = self.started_at = time.monotonic()
        self.latest: Message | None = None
        self.serving = True

    def note(self, msg: Message) -> None:
        """Anything from the relay shows it alive; a newer notice, or the learner's word that the relay's
        version is still its newest (a grown `confirmed`), shows it following the learner."""
        self.heard_at = time.monotonic()
        if msg.kind != "weights_ref":
            return
        if self.latest is None or _news(msg) != _news(self.latest):
            self.new_at = self.heard_at
        self.latest = msg

    def failing(self) -> str | None:
        """Why the relay should not be followed now, or None while it serves."""
        now = time.monotonic()
        if (self.latest is not None or now - self.started_at > SILENT_S) and not os.path.exists(self.path):
            return "its socket is gone"
        if self.latest is not None and now - self.heard_at > SILENT_S:
            return f"nothing from it for {SILENT_S:g} s"
        if now - self.new_at > STALE_S:
            return f"no new or confirmed version from it for {STALE_S:g} s"
        return None

    def fall_back(self) -> None:
        self.serving = False
        self.fallback_at = time.monotonic()

    def caught_up(self, version: int, run_id: str) -> bool:
        """Back in service: alive, and announcing a version that is new since the fallback and not behind."""
        latest = self.latest
        if latest is None or self.new_at <= self.fallback_at or self.failing() is not None:
            return False
        return latest.meta["run_id"] != run_id or latest.meta["version"] >= version

    def back(self) -> None:
        self.serving = True
        self.new_at = time.monotonic()

    def close(self) -> None:
        self.sub.close()
