"""The samples-per-insert limiter keeps the ratio inside its bounds and refuses deadlocking settings."""

import pytest

from common.errors import ConfigError
from replay.rate_limiter import SampleToInsertRatio


def test_off_when_ratio_is_zero() -> None:
    assert SampleToInsertRatio.for_run(0.0, 100, 0.0, 64, 128) is None


def test_deadlocking_tolerance_is_refused_with_numbers() -> None:
    with pytest.raises(ConfigError, match=r"rate_tolerance.*could deadlock.*64 \* 8 \+ 128"):
        SampleToInsertRatio.for_run(8.0, 1000, 10.0, 64, 128)


@pytest.mark.parametrize("spi", [0.5, 1.0, 8.0, 32.0])
def test_simulated_run_never_deadlocks_and_tracks_ratio(spi: float) -> None:
    insert_batch, sample_batch, min_size = 64, 128, 1000
    limiter = SampleToInsertRatio.for_run(spi, min_size, 0.0, insert_batch, sample_batch)
    assert limiter is not None
    inserted = sampled = 0
    for _ in range(20_000):
        progressed = False
        if limiter.can_insert(inserted, sampled, insert_batch):
            inserted += insert_batch
            progressed = True
        if inserted >= min_size and limiter.can_sample(inserted, sampled, sample_batch):
            sampled += sample_batch
            progressed = True
        assert progressed, f"deadlock at inserted={inserted} sampled={sampled}"
    ratio = sampled / (inserted - min_size)
    assert ratio == pytest.approx(spi, rel=0.05)
    assert limiter.min_diff <= inserted * spi - sampled <= limiter.max_diff
