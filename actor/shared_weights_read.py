"""What an actor does with a shared-memory weights file it follows (the learner's, or its host relay's):
read a whole version out of it, and remember the files it refused so that each is tried once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

from common.safe_log import PeerWarnings, printable
from common.shared_weights import SharedWeightsReader

log = logging.getLogger("actor.link")

REFUSED_TOKENS_KEPT = 64

Load = Callable[[Mapping[str, np.ndarray]], None]  # copies the arrays into the caller's network
Attach = Callable[[Mapping[str, np.ndarray]], None]  # makes the caller's network act with them in place


class RefusedFiles:
    """Tokens of files refused (not ours, not a regular file, ...), the newest kept, with one bounded
    warning line per refusal and a count."""

    def __init__(self) -> None:
        self.count = 0
        self._tokens: OrderedDict[str, None] = OrderedDict()
        self._warnings = PeerWarnings(log)

    def __contains__(self, token: str) -> bool:
        return token in self._tokens

    def add(self, token: str, run_id: str, err: Exception) -> None:
        self.count += 1
        self._tokens[token] = None
        while len(self._tokens) > REFUSED_TOKENS_KEPT:
            self._tokens.popitem(last=False)
        self._warnings.warning(
            b"weights_ref",
            "weights of run %s by broadcast, not from its shared-memory file: %s [%d refused so far]",
            printable(run_id),
            printable(str(err), 300),
            self.count,
        )


def read_version(reader: SharedWeightsReader, load: Load | None) -> tuple[int, dict[str, np.ndarray]] | None:
    """The file's newest whole version: loaded with `load` if given (arrays then empty), else copied.
    None when the writer overtook every attempt (what `load` left in the network is then no version)."""
    version = reader.read_into(load) if load is not None else None
    if version is not None:
        return version, {}
    got = reader.read(attempts=100)  # no `load`, or the writer overtook every attempt: copy, then load
    if got is None:
        log.warning("shared-memory weights changed faster than they could be read; retrying next step")
        return None
    version, arrays = got
    if load is not None:
        load(arrays)
        arrays = {}
    return version, arrays
