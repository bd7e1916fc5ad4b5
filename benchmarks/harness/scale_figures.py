"""The figures of `scale_actors.py` from what its processes recorded: publish -> applied, version lag,
ingest rate, and the replay ledgers' balance.

Why apart: these are pure functions of the records (the learner's publication stamps, each actor's
applied versions, replay's counters, accounting.json), so the way each figure is derived is in one
place and can be read without the orchestration around it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.report import percentiles


def read_stamps(path: Path) -> tuple[dict[int, int], int | None]:
    """The learner's publications {version: monotonic ns} and its control thread's kernel id."""
    published: dict[int, int] = {}
    tid = None
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "v":
            published.setdefault(int(parts[1]), int(parts[2]))
        elif len(parts) == 2 and parts[0] == "control_tid":
            tid = int(parts[1])
    return published, tid


def latency_and_lag(
    published: dict[int, int], actors: Sequence[dict[str, Any]], t0: int, t1: int, settle_ns: int
) -> dict[str, Any]:
    """Publish -> applied over every (version published in [t0, t1 - settle], actor): the time until the
    actor acts with weights at least that new (an actor that drains to a newer version skipped the
    older one, which is then applied with it). Version lag: newest published minus the actor's own, on
    a 50 ms grid over [t0, t1], mean and max over actors and grid points."""
    versions = sorted(v for v, t in published.items() if t0 <= t <= t1 - settle_ns)
    pub_v = np.array(sorted(published), dtype=np.int64)
    pub_t = np.array([published[v] for v in pub_v], dtype=np.int64)
    order = np.argsort(pub_t)
    pub_v, pub_t = pub_v[order], pub_t[order]
    grid = np.arange(t0, t1, 50_000_000, dtype=np.int64)
    newest = pub_v[np.maximum(np.searchsorted(pub_t, grid, side="right") - 1, 0)]
    latencies, missing, exact, lags = [], 0, 0, []
    for actor in actors:
        applied = sorted((int(t), int(v)) for v, t in actor["applied"])
        if not applied:
            missing += len(versions)
            continue
        times = np.array([t for t, _ in applied], dtype=np.int64)
        held = np.maximum.accumulate(np.array([v for _, v in applied], dtype=np.int64))
        seen = {v for _, v in applied}
        for v in versions:
            k = np.searchsorted(held, v, side="left")  # held is non-decreasing: the first time it reaches v
            if k >= len(held) or times[k] > t1:
                missing += 1
                continue
            latencies.append((times[k] - published[v]) / 1e6)
            exact += v in seen
        at = np.searchsorted(times, grid, side="right") - 1
        mine = np.where(at >= 0, held[np.maximum(at, 0)], -1)
        lags.append(newest - mine)
    lag = np.concatenate(lags) if lags else np.zeros(0)
    expected = len(versions) * len(actors)
    return {
        "versions_published": len(versions),
        "publish_to_applied_ms": {**percentiles(latencies, (50, 90, 99)), "max": max(latencies, default=None)},
        "applied": len(latencies),
        "expected": expected,
        "missing": missing,
        "exact_version_fraction": exact / len(latencies) if latencies else None,
        "version_lag_mean": float(lag.mean()) if lag.size else None,
        "version_lag_max": int(lag.max()) if lag.size else None,
    }


def ingest_rate(watch_file: Path, t0_s: float, t1_s: float) -> dict[str, Any]:
    """Transitions stored per second over [t0, t1], summed over shards, from replay's own counters."""
    rows: dict[int, list[dict[str, Any]]] = {}
    text = watch_file.read_text() if watch_file.exists() else ""
    for line in text.splitlines():
        if line.endswith("}"):
            row = json.loads(line)
            rows.setdefault(row["shard"], []).append(row)
    total, per_shard = 0.0, []
    for shard in sorted(rows):
        inside = [r for r in rows[shard] if t0_s <= r["t"] <= t1_s]
        if len(inside) < 2:
            per_shard.append(None)
            continue
        first, last = inside[0], inside[-1]
        rate = (last["inserted"] - first["inserted"]) / (last["t"] - first["t"])
        per_shard.append(rate)
        total += rate
    return {"stored_per_s": total if per_shard and None not in per_shard else None, "per_shard": per_shard}


def ledger_balance(run_dir: Path, actor_totals: dict[str, int]) -> dict[str, Any]:
    """Sum the replay ledgers (RUN_DIR/replay*/accounting.json) and check each stream and the whole:
    sent = stored + rejected + dropped + lost, every stream closed, and the actors' own count of what
    they sent equal to the ledgers'. `problems` lists what does not add up (empty: balanced)."""
    files = sorted(run_dir.glob("replay*/accounting.json"))
    columns = {"sent": 0, "stored": 0, "rejected": 0, "dropped": 0, "lost": 0, "actor_dropped": 0}
    problems, streams = [], 0
    if not files:
        problems.append(f"no accounting.json under {run_dir}/replay*")
    for path in files:
        data = json.loads(path.read_text())
        for row in data["streams"]:
            streams += 1
            sent = (row["sent"] if row["sent"] is not None else row["received_upto"]) - row["base"]
            columns["sent"] += sent
            for name in ("stored", "dropped", "lost", "actor_dropped"):
                columns[name] += row[name]
            columns["rejected"] += sum(row["rejected"].values())
            if not row["closed"]:
                problems.append(f"{path.parent.name}: actor {row['actor_index']}'s stream never ended")
            if not row["balanced"]:
                problems.append(f"{path.parent.name}: actor {row['actor_index']}'s stream does not balance")
        if data.get("forgotten"):
            problems.append(f"{path.parent.name}: streams forgotten (ledger full): {data['forgotten']}")
    accounted = columns["stored"] + columns["rejected"] + columns["dropped"] + columns["lost"]
    if accounted != columns["sent"]:
        problems.append(f"sent {columns['sent']} != stored + rejected + dropped + lost = {accounted}")
    if actor_totals["sent"] != columns["sent"]:
        problems.append(f"the actors sent {actor_totals['sent']}, the ledgers account for {columns['sent']}")
    if actor_totals["streams"] != streams:
        problems.append(f"{actor_totals['streams']} actors ran, the ledgers have {streams} streams")
    if columns["rejected"] or columns["lost"]:
        problems.append(f"rejected {columns['rejected']}, lost {columns['lost']}: a clean run has neither")
    return {**columns, "streams": streams, "ledgers": len(files), "problems": problems}


def actor_totals_of(actors: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What the actors themselves say they sent, and how many streams they opened (one each that joined)."""
    return {"sent": sum(a["sent"] for a in actors), "streams": sum(1 for a in actors if a["state"] != "failed")}


def read_hop_stamps(learner: Path, relays: Sequence[Path]) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
    """When each version's full weights left the learner's control thread {version: ns}, and when each
    relay received it and sent its notice {version: [(received ns, notice ns), ...]}."""
    sent: dict[int, int] = {}
    for line in (learner.read_text() if learner.exists() else "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "sent":
            sent.setdefault(int(parts[1]), int(parts[2]))
    relayed: dict[int, list[tuple[int, int]]] = {}
    for path in relays:
        for line in (path.read_text() if path.exists() else "").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "r":
                relayed.setdefault(int(parts[1]), []).append((int(parts[2]), int(parts[3])))
    return sent, relayed


def hops(
    published: dict[int, int],
    sent: dict[int, int],
    relayed: dict[int, list[tuple[int, int]]],
    actors: Sequence[dict[str, Any]],
    t0: int,
    t1: int,
) -> dict[str, dict[str, float | None]]:
    """Publish -> applied cut at its hops, for the versions published in [t0, t1] that every stamp saw
    (ms percentiles): the learner (update loop hands over -> broadcast sent), the transport (sent -> a
    relay has it: CURVE on both ends, the network, decoding), each relay (received -> notice out) and
    the actors (the version's first notice -> each actor acting with it, as it appears in `applied`)."""
    versions = [v for v, t in published.items() if t0 <= t <= t1 and v in sent and v in relayed]
    applied: dict[int, list[int]] = {}
    for actor in actors:
        for v, t in actor["applied"]:
            applied.setdefault(int(v), []).append(int(t))
    learner, transport, relay, take = [], [], [], []
    for v in versions:
        learner.append(sent[v] - published[v])
        transport += [received - sent[v] for received, _ in relayed[v]]
        relay += [notice - received for received, notice in relayed[v]]
        first_notice = min(notice for _, notice in relayed[v])
        take += [t - first_notice for t in applied.get(v, [])]
    ms = lambda xs: percentiles([x / 1e6 for x in xs])  # noqa: E731
    return {"learner": ms(learner), "transport": ms(transport), "relay": ms(relay), "actors": ms(take)}
