"""The learner's guard against non-finite numbers: no step on a non-finite loss or gradient, no
publication or checkpoint of non-finite weights.

Why: one batch of finite but huge values (observations near float32's limit, a reward of 1e30) turns
the loss into inf or NaN, one Adam step with it makes every parameter NaN, and from there the NaN
weights would reach every actor and the checkpoint that a restart resumes from.

The check costs no wait for the device. On a CPU, reading the loss and the gradient norm (computed by
the clipping anyway) is a plain memory read, so the step is skipped in Python. On CUDA reading them
would wait for the GPU, so the flag stays on the device: fused Adam takes it as `found_inf` (as
torch's GradScaler does) and skips the step there, and the flags are summed once per metrics row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
MAX_IDS_LOGGED = 8
FOLD_FLAGS_AT = 1024  # device flags kept before they are summed into one (on the device, no wait)


def finite_arrays(arrays: Mapping[str, np.ndarray]) -> bool:
    """True when every array holds only finite numbers (the weights about to be published)."""
    return all(bool(np.isfinite(a).all()) for a in arrays.values() if a.dtype.kind == "f")


class NonFiniteGuard:
    """Counts and logs (at most once every LOG_EVERY_S) the updates skipped for non-finite numbers."""

    def __init__(self) -> None:
        self.skipped = 0
        """updates whose step was skipped, as far as counted (CUDA: up to the last metrics row)"""
        self.publications_refused = 0
        self._on_device: list[torch.Tensor] = []  # CUDA: one 0/1 flag per update since the last row
        self._unlogged = 0
        self._next_log = 0.0

    def device_flag(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 where the step must be skipped, 0.0 otherwise, without leaving the device (fused Adam's
        `found_inf`). inf + -inf is NaN, so one sum tells whether both are finite."""
        flag = (loss.detach() + grad_norm).isfinite().logical_not().float()
        self._on_device.append(flag)
        if len(self._on_device) >= FOLD_FLAGS_AT:  # a loop that writes no metrics rows keeps no more
            self._on_device = [torch.stack(self._on_device).sum()]
        return flag

    def host_check(self, loss: torch.Tensor, grad_norm: torch.Tensor, ids: np.ndarray, td: torch.Tensor) -> bool:
        """CPU: whether the step may be taken; a refusal is counted and logged with the batch's rows."""
        if math.isfinite(loss.item() + grad_norm.item()):
            return True
        self.skipped += 1
        bad_rows = ~torch.isfinite(td).numpy()
        sources = ids[bad_rows] if bad_rows.any() else ids
        self._report(1, f"loss {loss.item()}, gradient norm {grad_norm.item()}; replay ids {_some(sources)}")
        return False

    def collect(self) -> int:
        """Add the device's flags to the count (once per metrics row: it waits for the device); the total."""
        if self._on_device:
            flags, self._on_device = self._on_device, []
            count = int(torch.stack(flags).sum().item())
            if count:
                self.skipped += count
                self._report(count, "on the device, so the batches are not named")
        return self.skipped

    def refuse_publication(self, version: int) -> None:
        self.publications_refused += 1
        if self.publications_refused == 1 or time.monotonic() >= self._next_log:
            log.error(
                "weights v%d hold non-finite numbers: not published (%d refused so far)",
                version,
                self.publications_refused,
            )
            self._next_log = time.monotonic() + LOG_EVERY_S

    def _report(self, count: int, detail: str) -> None:
        self._unlogged += count
        now = time.monotonic()
        if now < self._next_log:
            return
        log.warning(
            "skipped %d update(s) with a non-finite loss or gradient (%s); %d skipped in all",
            self._unlogged,
            detail,
            self.skipped,
        )
        self._unlogged = 0
        self._next_log = now + LOG_EVERY_S


def _some(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:MAX_IDS_LOGGED])
    return shown + (f" and {len(ids) - MAX_IDS_LOGGED} more" if len(ids) > MAX_IDS_LOGGED else "")
