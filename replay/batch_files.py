"""The learners' batch files that replay samples into, on their host (common/shared_batches.py).

Each `sample` request that names a file is checked against it (path, token, batch size). A refusal
belongs to what the request said, not to the path: a request with a wrong token must not get the
learner's own file refused for the rest of the run. Files and refusals are both kept in bounded,
least-recently-used order.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from common.envs import EnvSpec
from common.shared_batches import BatchFileMapping, SharedBatchesUnavailable

log = logging.getLogger(__name__)

FILES_KEPT = 4  # one per learner; a restarted learner makes a new one
REFUSALS_KEPT = 64


class BatchFiles:
    def __init__(self, spec: EnvSpec) -> None:
        self.spec = spec
        self._files: OrderedDict[str, BatchFileMapping] = OrderedDict()
        self._refusals: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self.refused = 0  # requests whose batch file was refused (answered over the socket)

    def slot(self, shm: tuple[str, str, int], batch_size: int) -> tuple[dict[str, np.ndarray] | None, str]:
        """(the views of slot `shm[2]` of the file to sample into, or None; why not)."""
        path, token, slot = shm
        key = (path, token, batch_size)
        refused = self._refusals.get(key)
        if refused is not None:
            self.refused += 1
            return None, refused
        mapping = self._files.get(path)
        if mapping is not None and mapping.token != token:  # refused alone, and cheaply: the mapping stays
            self.refused += 1
            return None, f"the request's token is not that of the batch file {path}"
        if mapping is None or mapping.batch_size != batch_size:
            try:
                mapping = BatchFileMapping(path, token, batch_size, self.spec.obs_shape, np.dtype(self.spec.obs_dtype))
            except SharedBatchesUnavailable as err:
                self.refused += 1
                self._refusals[key] = str(err)[:200]
                if len(self._refusals) > REFUSALS_KEPT:
                    self._refusals.popitem(last=False)
                log.info("sampled batches go over the socket, not shared memory: %s", err)
                return None, str(err)[:200]
            self._keep(path, mapping)
        self._files.move_to_end(path)
        try:
            return mapping.views(slot), ""
        except IndexError as err:
            return None, str(err)

    def _keep(self, path: str, mapping: BatchFileMapping) -> None:
        old = self._files.pop(path, None)
        if old is not None:
            old.close()
        self._files[path] = mapping
        if len(self._files) > FILES_KEPT:
            self._files.popitem(last=False)[1].close()
        log.info("writing sampled observations into the learner's batch file %s", path)

    def close(self) -> None:
        for mapping in self._files.values():
            mapping.close()
        self._files.clear()
