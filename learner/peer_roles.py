"""Which role a control-plane peer has, and so what it may do: only an evaluator reports evaluations.

Where the servers authenticate peers, the role is the one in the peer's key's ZAP user id
("ROLE:NAME", read by `common.security.peer_role`), and a hello must declare a role that key may take
(`common.security.ROLE_MAY`). Where
they do not (in-process tests), the role is what the connection's first hello declared: tied to its
ROUTER identity, so a connection that never said hello as an evaluator cannot report evaluations and
none can change its role later.
"""

from __future__ import annotations

from collections import OrderedDict

import zmq

from common.safe_log import printable
from common.security import ROLE_MAY, may_act_as, peer_role
from learner.actors import Refused

ROLES = ("actor", "evaluator")
MAX_PEERS = 4096  # connections whose declared role is remembered, the least recent forgotten first
ASK_HELLO_EVERY_S = 5.0


class PeerRoles:
    def __init__(self) -> None:
        self._declared: OrderedDict[bytes, str] = OrderedDict()
        self._asked: OrderedDict[bytes, float] = OrderedDict()  # connection -> when it was asked for a hello

    @staticmethod
    def authenticated(frame: zmq.Frame) -> str | None:
        """The role of the key that sent `frame` (received with copy=False); None without authentication."""
        return peer_role(frame)

    def declare(self, identity: bytes, role: str, authenticated: str | None) -> bool:
        """A hello's role, True the first time this connection declares it; raises Refused if it is not
        one this peer may take."""
        if role not in ROLES:
            raise Refused("bad_role", f"role {printable(role)}")
        if not may_act_as(authenticated, role):
            raise Refused("role_not_authorized", f"a {printable(authenticated)} key said hello as {role}")
        declared = self._declared.pop(identity, None)
        if declared is not None and declared != role:
            self._declared[identity] = declared
            raise Refused("role_changed", f"this connection joined as {declared}, now says {role}")
        self._declared[identity] = role
        while len(self._declared) > MAX_PEERS:
            self._declared.popitem(last=False)
        return declared is None

    def role_of(self, identity: bytes, authenticated: str | None) -> str | None:
        """The authenticated role where the key has one role only, otherwise (no authentication, or a
        key that may take several: the server pair, a flat allowlist's) what this connection's hello declared."""
        if authenticated is not None and len(ROLE_MAY.get(authenticated, ())) <= 1:
            return authenticated
        return self._declared.get(identity)

    def ask_hello(self, identity: bytes, now: float) -> bool:
        """Whether to ask this unknown connection for its hello now (once per ASK_HELLO_EVERY_S)."""
        asked = self._asked.pop(identity, None)
        if asked is not None and now - asked < ASK_HELLO_EVERY_S:
            self._asked[identity] = asked
            return False
        self._asked[identity] = now
        while len(self._asked) > MAX_PEERS:
            self._asked.popitem(last=False)
        return True
