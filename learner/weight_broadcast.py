"""Where each new weight version goes: the shared-memory file for actors on this host, then the PUB socket.

The update loop writes the file itself (`write_shared`: one copy of the parameters, straight to where
they are going) and the control thread publishes (`publish`): first the small `weights_ref` notice, so
local actors can read the file and unsubscribe from the full weights, then the full weights for actors
elsewhere, copied back out of the file when the update loop handed over no copy of its own. Kept apart
from the control server's message handling because it is the one part that crosses the two threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import zmq

from common.shared_weights import (
    LayoutMismatch,
    NonFinite,
    SharedWeightsReader,
    SharedWeightsUnavailable,
    SharedWeightsWriter,
    available,
)
from common.wire import Encoder

# The control server's logger: these lines have always come from there, and the docs quote them so.
log = logging.getLogger("learner.control")

WeightRef = dict[str, str]  # what a `weights_ref` notice says of the file: path and token


class WeightBroadcast:
    """The PUB socket and the shared-memory file behind it. `write_shared` and `set_shared_memory` run in
    the update loop's thread, the rest in the control thread."""

    def __init__(self, pub: zmq.Socket, encode: Encoder, run_id: str, *, shared_memory: bool) -> None:
        self.pub = pub
        self._encode = encode
        self.run_id = run_id
        self._shared: SharedWeightsWriter | None = None  # written by the update loop's thread
        self._shared_reader: SharedWeightsReader | None = None  # read by the control thread
        self._shared_wanted = shared_memory and available()
        self._shared_announced = False

    # ---- the update loop's thread ---------------------------------------------------------------
    def set_shared_memory(self, enabled: bool) -> None:
        """Turn shared-memory weights on or off from the next publication (the benchmark compares both)."""
        self._shared_wanted = enabled and available()

    def write_shared(self, version: int, arrays: Mapping[str, np.ndarray]) -> WeightRef | None:
        """Write the shared-memory copy; what the notice should say, or None when there is no file to name.

        Once a file has been announced, a learner that stops writing it (turned off, or /dev/shm full)
        says so in every notice from then on (an empty path), so actors that unsubscribed from the full
        weights take the broadcast again instead of waiting on a file that no longer changes."""
        if self._shared_wanted:
            try:
                if self._shared is None:
                    self._shared = SharedWeightsWriter(self.run_id, arrays)
                    self._shared_announced = True
                    log.info("weights also in shared memory for actors on this host: %s", self._shared.path)
                self._shared.write(version, arrays)
                return {"path": self._shared.path, "token": self._shared.token}
            except NonFinite as err:  # the file keeps the last good version; the broadcast's are refused
                log.warning("not sharing weights: %s", err)
                return None
            except (OSError, LayoutMismatch) as err:
                log.warning("shared-memory weights off, the broadcast carries them all: %s", err)
                self._shared_wanted = False
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        return {"path": "", "token": ""} if self._shared_announced else None

    # ---- the control thread ---------------------------------------------------------------------
    def publish(
        self, version: int, arrays: dict[str, np.ndarray] | None, ref: WeightRef | None
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """Announce a version and broadcast it; the version and arrays sent (what `get_weights` answers
        with from now on), or None when the file was overtaken before its copy could be read."""
        meta = {"version": version, "run_id": self.run_id}
        if ref is not None:
            self.pub.send_multipart(self._encode("weights_ref", {**meta, **ref}))
        if arrays is None:  # in the shared-memory file only: copy it out, after local actors have it
            assert ref is not None
            got = self._read_shared(ref["path"], ref["token"])
            if got is None:
                return None  # overtaken by newer versions, which are pending already
            version, arrays = got
            meta["version"] = version
        # PUB filters by subscription: with every actor on this host, these bytes go nowhere.
        self.pub.send_multipart(self._encode("weights", meta, arrays), copy=False)
        return version, arrays

    def stop(self, reason: str) -> None:
        # PUB drops for subscribers that are mid-reconnect; the caller repeats it so everyone hears it.
        self.pub.send_multipart(self._encode("stop", {"reason": reason}))

    def _read_shared(self, path: str, token: str) -> tuple[int, dict[str, np.ndarray]] | None:
        if self._shared_reader is None or self._shared_reader.path != path:
            self._close_shared_reader()
            try:
                self._shared_reader = SharedWeightsReader(path, token)
            except SharedWeightsUnavailable as err:  # removed meanwhile: sharing was just turned off
                log.debug("shared-memory weights gone before the broadcast copy: %s", err)
                return None
        return self._shared_reader.read(attempts=10)

    def _close_shared_reader(self) -> None:
        if self._shared_reader is not None:
            self._shared_reader.close()
            self._shared_reader = None

    def close(self) -> None:
        """Close the socket and the shared-memory file (the writer removes it)."""
        self.pub.close()
        self._close_shared_reader()
        if self._shared is not None:
            self._shared.close()
            self._shared = None
