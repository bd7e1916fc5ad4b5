"""The replay server's sockets: where actors push (tcp, and ipc on its host) and where the learner asks.

Actors PUSH to a PULL socket (bulk data); the learner talks to a ROUTER socket (sample requests,
priority updates, statistics) so that several requests can be in flight and a learner that dies never
wedges the server in a REQ/REP lockstep. Actors on this host push to an ipc socket in the private
run-keys directory instead, which costs no CURVE encryption (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from common.config import RunConfig
from common.run_keys import local_ingest_address
from common.security import ServerSecurity, secure_server
from common.sockets import BULK_KERNEL_BUFFER, bind, make_socket

REQUEST_HWM = 1024


@dataclass
class ReplayEndpoints:
    ctx: zmq.Context
    owns_ctx: bool
    security: ServerSecurity | None
    ingest: zmq.Socket
    requests: zmq.Socket
    local_ingest: zmq.Socket | None
    ingest_address: str
    sample_address: str
    local_ingest_address: str | None

    @classmethod
    def open(cls, config: RunConfig, ctx: zmq.Context | None = None, shard: int = 0) -> ReplayEndpoints:
        owns_ctx, ctx = ctx is None, ctx or zmq.Context(io_threads=config.net.io_threads)
        net = config.net
        security = ServerSecurity.from_config(net, ctx)
        max_bytes = net.max_message_mb << 20
        ingest = make_socket(
            ctx,
            zmq.PULL,
            hwm=net.send_hwm,
            max_message_bytes=max_bytes,
            kernel_buffer_bytes=BULK_KERNEL_BUFFER,
            heartbeats=False,  # see make_socket: on the bulk path they lose data
        )
        requests = make_socket(ctx, zmq.ROUTER, hwm=REQUEST_HWM, max_message_bytes=max_bytes)
        secure_server(ingest, security, "replay ingest")
        secure_server(requests, security, "replay sampling")
        ingest_address = bind(ingest, net.bind_host, net.ingest_port, "replay ingest")
        sample_address = bind(requests, net.bind_host, net.sample_port, "replay sampling")
        local, local_address = None, local_ingest_address(shard)
        if local_address is not None and not net.curve_secret_key:
            local = make_socket(ctx, zmq.PULL, hwm=net.send_hwm, max_message_bytes=max_bytes, heartbeats=False)
            local.bind(local_address)
        return cls(ctx, owns_ctx, security, ingest, requests, local, ingest_address, sample_address, local_address)

    @property
    def ingest_sockets(self) -> list[zmq.Socket]:
        return [sock for sock in (self.ingest, self.local_ingest) if sock is not None]

    @property
    def denied(self) -> int:
        """Connections refused by CURVE (counted by the ZAP and monitor threads)."""
        return self.security.denied if self.security is not None else 0

    def close(self) -> None:
        for sock in self.ingest_sockets:
            sock.close()
        # Replies still queued at exit are dropped, not flushed: the learner re-asks a restarted server
        # anyway, and libzmq 4.3.5 can abort the process (assertion !_io_error) flushing to a peer
        # whose input it had stopped, which a peer that floods requests and never reads brings about.
        self.requests.close(linger=0)
        if self.security is not None:
            self.security.close()
        if self.owns_ctx:
            self.ctx.term()
