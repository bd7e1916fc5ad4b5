"""Samples-per-insert rate limiting (the idea of Reverb's SampleToInsertRatio), in transitions.

Why: with actors and the learner running at whatever speed their machines allow, the replay ratio
(how often each transition is learned from) would drift with the number of actors and the learner's
hardware, and with it the learning curve. The limiter keeps

    diff = inserted * samples_per_insert - sampled

inside [offset - tolerance, offset + tolerance], where offset = samples_per_insert * min_size: inserts
wait when the actors run ahead, samples wait when the learner does.
"""

from __future__ import annotations

from common.errors import ConfigError


class SampleToInsertRatio:
    def __init__(self, samples_per_insert: float, min_size: int, tolerance: float) -> None:
        self.samples_per_insert = samples_per_insert
        self.min_size = min_size
        self.tolerance = tolerance
        offset = samples_per_insert * min_size
        self.min_diff = offset - tolerance
        self.max_diff = offset + tolerance

    @classmethod
    def for_run(
        cls, samples_per_insert: float, min_size: int, tolerance: float, insert_batch: int, sample_batch: int
    ) -> SampleToInsertRatio | None:
        """The limiter for a run, or None when rate limiting is off (samples_per_insert == 0).

        A tolerance of 0 picks the smallest safe one. A tolerance too small for one insert batch and one
        sample batch to fit between the bounds could leave both sides waiting on each other forever, so
        it is refused here, with the numbers.
        """
        if samples_per_insert <= 0:
            return None
        needed = (insert_batch * samples_per_insert + sample_batch) / 2
        if tolerance == 0:
            tolerance = 2 * needed
        if tolerance < needed:
            raise ConfigError(
                f"replay.rate_tolerance: {tolerance:g} could deadlock: with samples_per_insert="
                f"{samples_per_insert:g}, actor.send_size={insert_batch} and learner.batch_size={sample_batch} "
                f"it must be >= ({insert_batch} * {samples_per_insert:g} + {sample_batch}) / 2 = {needed:g}"
            )
        return cls(samples_per_insert, min_size, tolerance)

    def can_insert(self, inserted: int, sampled: int, count: int) -> bool:
        return (inserted + count) * self.samples_per_insert - sampled <= self.max_diff

    def max_sample(self) -> int:
        """The largest batch that can ever be sampled: inserts stop at max_diff, a sample must leave
        diff >= min_diff, so a batch above max_diff - min_diff would wait forever."""
        return int(self.max_diff - self.min_diff)

    def can_sample(self, inserted: int, sampled: int, count: int) -> bool:
        return inserted * self.samples_per_insert - (sampled + count) >= self.min_diff
