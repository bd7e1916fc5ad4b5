"""Replay shards: K replay servers that together act as one buffer (`replay.shards`).

One replay process is one core's worth of ingest and sampling; Ape-X's shape needs more. Each shard is
its own process with its own ports, directory and ipc socket, and holds its share of the run's data:
actor `i` pushes to shard `i mod K`, so an actor's stream stays whole in one ledger. The learner picks
the shard of each batch by its priority mass (learner/shard_choice.py), which makes every sampled row
distributed as if drawn from one prioritized buffer holding all of the shards' data.

The run's `replay.capacity`, `replay.min_size` and `replay.rate_tolerance` are totals: each shard gets its
share. Each shard enforces `replay.samples_per_insert` on its own inserts and samples, so the ratio holds
for the sums too. A shard still needs one whole batch before it can serve one, so its `min_size` is at
least `learner.batch_size`.
"""

from __future__ import annotations

import dataclasses

from common.config import RunConfig, rate_tolerance_needed, shard_sizes
from common.errors import ConfigError

SNAPSHOT_DIR = "replay"  # shard 0's (an unsharded run's) directory in RUN_DIR; shard k's is replay-k


def shard_of_actor(actor_index: int, shards: int) -> int:
    """The shard an actor pushes to: by its global index, so joiners spread evenly too."""
    return actor_index % shards


def shard_dir_name(shard: int) -> str:
    """The shard's directory in RUN_DIR (snapshots, accounting ledger)."""
    return SNAPSHOT_DIR if shard == 0 else f"{SNAPSHOT_DIR}-{shard}"


def shard_label(shard: int, shards: int) -> str:
    """How logs name a replay server: 'replay' alone, or 'replay shard k/K'."""
    return "replay" if shards == 1 else f"replay shard {shard}/{shards}"


def check_shard(config: RunConfig, shard: int) -> None:
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < config.replay.shards:
        raise ConfigError(f"--shard: must be in [0, replay.shards={config.replay.shards}), got {shard!r}")


def shard_config(config: RunConfig, shard: int) -> RunConfig:
    """The config replay shard `shard` runs with, as a replay server of one buffer (`replay.shards` 1):
    its ports and its share of the data. An unsharded run's config is returned as it is."""
    check_shard(config, shard)
    shards = config.replay.shards
    if shards == 1:
        return config
    rc, net = config.replay, config.net
    capacity, min_size = shard_sizes(config)  # (checked when the run's config was made)
    tolerance = rc.rate_tolerance
    if tolerance and rc.samples_per_insert > 0:
        # each shard's share, but never below what its limiter needs not to deadlock (replay.rate_limiter)
        needed = rate_tolerance_needed(rc.samples_per_insert, config.actor.send_size, config.learner.batch_size)
        tolerance = max(tolerance / shards, needed)
    ingest, sample = net.shard_ports(shard)
    metrics = net.metrics_port + shard if net.metrics_port else 0
    replay = dataclasses.replace(rc, shards=1, capacity=capacity, min_size=min_size, rate_tolerance=tolerance)
    net = dataclasses.replace(net, ingest_port=ingest, sample_port=sample, metrics_port=metrics)
    return dataclasses.replace(config, replay=replay, net=net)
