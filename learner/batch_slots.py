"""The learner's batch file in shared memory, and which of its slots a request may name.

With replay on the same host, a sample request names a free slot and replay writes the batch straight
into it (common/shared_batches.py). A slot is free again once its batch has been copied out, or, when
its tensors are the slot itself, once the update loop asks for the next batch. The file is given up as
a whole (a lost request, a restarted replay): late batches then land in a file no batch in use is part
of, and a reply naming it is told apart by its token.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from common.config import RunConfig
from common.envs import EnvSpec
from common.shared_batches import BatchFile, available
from learner.batch import Batch

# The replay client's logger: this is its batch file, and its log lines have always said so.
log = logging.getLogger("learner.replay_client")


class BatchSlots:
    def __init__(self, file: BatchFile) -> None:
        self.file = file
        self.free: deque[int] = deque(range(file.slots))
        self.tensors: dict[int, Batch] = {}  # CPU: each slot's tensors, made once per batch file

    @classmethod
    def open(cls, config: RunConfig, spec: EnvSpec | None) -> BatchSlots | None:
        """A fresh batch file with every slot free (None when shared memory is off or unusable here)."""
        if spec is None or not config.net.shared_memory_batches or not available():
            return None
        # A slot for each request in flight or batch decoded (prefetch in all), one for the batch in use,
        # and one spare; a request that finds none free is answered over the socket.
        slots = config.learner.prefetch + 2
        try:
            file = BatchFile(config.learner.batch_size, spec.obs_shape, spec.obs_dtype, slots)
        except OSError as err:  # /dev/shm full, say: the socket carries everything
            log.warning("no batch file in shared memory (%s); batches come over the socket", err)
            return None
        return cls(file)

    def take(self) -> dict[str, Any]:
        """What a sample request adds to name a free slot (taken from now on); nothing when none is free."""
        if not self.free:
            return {}
        return {"shm_path": self.file.path, "shm_token": self.file.token, "shm_slot": self.free.popleft()}

    def names_ours(self, meta: Mapping[str, Any]) -> bool:
        """Whether a `batch_ref` is for a slot of this file (else for a file given up since)."""
        return meta["token"] == self.file.token and 0 <= meta["slot"] < self.file.slots

    def close(self) -> None:
        self.file.close()
        self.free.clear()
        self.tensors.clear()
