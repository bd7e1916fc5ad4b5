"""Who gets the whole network in answer to a 38-byte `get_weights`, and how often.

A late joiner needs the current weights once; after that the broadcast brings every version. So a
peer gets at most one reply per `MIN_INTERVAL_S`, the same version again only after `REPEAT_S` (its
first reply may have been lost), and nothing while its previous reply has not left this process:
a peer that does not read holds one reply at most, not a queue of them. Replies are sent without
copying and so keep their version's arrays alive until they leave; at most `MAX_PENDING` of them may
be waiting at once, in all, which bounds what unread replies can keep in memory to that many versions.
What is refused is counted; the peer asks again, and the broadcast still reaches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import zmq

MIN_INTERVAL_S = 0.5
REPEAT_S = 1.5
MAX_PENDING = 8
MAX_PEERS = 4096


@dataclass
class _Peer:
    version: int
    sent_at: float
    tracker: zmq.MessageTracker | None


class WeightReplies:
    def __init__(self) -> None:
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self._pending: list[zmq.MessageTracker] = []

    def refusal(self, peer: bytes, version: int, now: float) -> str | None:
        """Why this peer gets no weights now, or None if it may have them."""
        last = self._peers.get(peer)
        if last is not None:
            if last.tracker is not None and not last.tracker.done:
                return "weights_unread"
            if now - last.sent_at < MIN_INTERVAL_S or (last.version == version and now - last.sent_at < REPEAT_S):
                return "weights_rate_limited"
        self._pending = [t for t in self._pending if not t.done]
        if len(self._pending) >= MAX_PENDING:
            return "weights_busy"
        return None

    def send(self, sock: zmq.Socket, peer: bytes, version: int, encode: Callable[[], list], now: float) -> str | None:
        """Reply to `peer` on ROUTER `sock` with `encode()`'s frames unless refused; the refusal's reason
        ("reply_dropped" when the peer is gone or its queue is full), or None when sent."""
        refusal = self.refusal(peer, version, now)
        if refusal is not None:
            return refusal
        try:
            tracker = send_tracked(sock, [peer, *encode()])
        except zmq.ZMQError:
            return "reply_dropped"
        self.sent(peer, version, tracker, now)
        return None

    def sent(self, peer: bytes, version: int, tracker: zmq.MessageTracker | None, now: float) -> None:
        self._peers.pop(peer, None)
        self._peers[peer] = _Peer(version, now, tracker)
        while len(self._peers) > MAX_PEERS:
            self._peers.popitem(last=False)
        if tracker is not None and not tracker.done:
            self._pending.append(tracker)


def send_tracked(sock: zmq.Socket, frames: list) -> zmq.MessageTracker:
    """Send without copying, non-blocking; the tracker is done once ZeroMQ has let go of every frame.

    Only the last frame is tracked (frames leave in order), and it is made a tracked frame by hand:
    pyzmq copies small frames, and a copied frame's tracker says done at once."""
    *head, last = frames
    for frame in head:
        sock.send(frame, zmq.SNDMORE | zmq.NOBLOCK, copy=False)
    tracked = zmq.Frame(last, copy=False, track=True)
    sock.send(tracked, zmq.NOBLOCK, copy=False, track=True)
    return tracked.tracker
