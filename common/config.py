"""The run's configuration: typed, frozen, validated dataclasses built from a TOML preset plus overrides.

The learner owns the resolved config and hands it to every actor (as a plain dict over the wire), so a
remote actor needs only the learner's address. Every value is checked when the config is built: a wrong
value is one `ConfigError` line naming the setting, never a failure deep inside a process. The sections
(one dataclass each, every setting documented) are in common/config_sections.py and re-exported here;
this module holds the whole run's config, its checks across sections, and preset loading and overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config_sections import (
    ActorConfig,
    EnvConfig,
    EvalConfig,
    LearnerConfig,
    NetConfig,
    NetworkConfig,
    ReplayConfig,
    StopConfig,
)
from common.config_sections import check as _check
from common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS_DIR",
    "ActorConfig",
    "EnvConfig",
    "EvalConfig",
    "LearnerConfig",
    "NetConfig",
    "NetworkConfig",
    "ReplayConfig",
    "RunConfig",
    "StopConfig",
    "check_frame_ring",
    "load_config",
    "parse_override",
    "rate_tolerance_needed",
    "resolve_preset",
    "save_config",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "cartpole"


@dataclass(frozen=True)
class RunConfig:
    name: str = "cartpole"
    """preset name, used in run directory names"""
    seed: int = 0
    """seeds envs, network initialization and sampling (each process derives its own stream)"""
    log_interval_s: float = 5.0
    """seconds between progress lines and metrics rows"""
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    net: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**31, "seed", "must be in [0, 2**31)")
        _check(self.log_interval_s > 0, "log_interval_s", "must be > 0")
        _check(
            self.replay.min_size >= self.learner.batch_size,
            "replay.min_size",
            f"must be >= learner.batch_size ({self.learner.batch_size}), got {self.replay.min_size}",
        )
        self._check_rate_tolerance()
        self._check_frame_ring()
        if self.replay.shards > 1:
            self.net.check_shard_ports(self.replay.shards)
            shard_sizes(self)  # refuses shares too small to serve a batch

    def _check_rate_tolerance(self) -> None:
        """A tolerance too small for one insert message and one sample batch between the limiter's bounds
        could leave actors and learner waiting on each other forever (replay.rate_limiter)."""
        rc, send, batch = self.replay, self.actor.send_size, self.learner.batch_size
        if rc.samples_per_insert <= 0 or rc.rate_tolerance == 0:
            return
        needed = rate_tolerance_needed(rc.samples_per_insert, send, batch)
        _check(
            rc.rate_tolerance >= needed,
            "replay.rate_tolerance",
            f"{rc.rate_tolerance:g} could deadlock: with samples_per_insert={rc.samples_per_insert:g}, "
            f"actor.send_size={send} and learner.batch_size={batch} it must be >= "
            f"({send} * {rc.samples_per_insert:g} + {batch}) / 2 = {needed:g}",
        )

    def _check_frame_ring(self) -> None:
        """Atari frames are stored once each (replay.frame_dedup): the ring must hold one whole message."""
        if self.env.atari and self.replay.frame_dedup:
            check_frame_ring(self.replay, self.actor.send_size, self.env.frame_stack)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that survives msgpack, JSON and TOML."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, skipped: list[str] | None = None) -> RunConfig:
        """Strict unless `skipped` is given: then unknown settings (a newer learner's) are left out and
        named in it, so an actor can still join a run whose config it only partly knows."""
        return _build(cls, data, "", skipped)


def check_frame_ring(replay: ReplayConfig, send_size: int, stack: int) -> None:
    """Replay's rule for a frame-stored buffer (replay/storage.py): its ring must hold the frames of one
    whole message of `send_size` stacks of `stack` frames. The config applies it to Atari ids; the machine
    check (common/check_config.py) to any env whose observations turn out to be stacks (K, H, W)."""
    needed = 2 * stack * send_size  # the most frames one message can carry
    _check(
        replay.capacity * replay.frames_per_transition >= needed,
        "replay.capacity",
        f"{replay.capacity} x replay.frames_per_transition ({replay.frames_per_transition:g}) frames cannot hold "
        f"one message of actor.send_size={send_size} stacks of {stack} frames ({needed} frames)",
    )


def shard_sizes(config: RunConfig) -> tuple[int, int]:
    """(capacity, min_size) of each of `replay.shards` shards (common/shards.py): its share of the run's,
    with at least one batch to serve before it serves."""
    rc, shards = config.replay, config.replay.shards
    capacity = math.ceil(rc.capacity / shards)
    min_size = max(math.ceil(rc.min_size / shards), config.learner.batch_size)
    _check(
        min_size <= capacity,
        "replay.capacity",
        f"{rc.capacity} over {shards} shards is {capacity} each, less than a shard's min_size {min_size} "
        "(at least learner.batch_size): raise the capacity or use fewer shards",
    )
    return capacity, min_size


def rate_tolerance_needed(samples_per_insert: float, send_size: int, batch_size: int) -> float:
    """The smallest replay.rate_tolerance that cannot deadlock (see RunConfig._check_rate_tolerance)."""
    return (send_size * samples_per_insert + batch_size) / 2


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, setting: str) -> Any:
    """Check one value against its field type; ints may widen to float, lists become tuples."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        _check(isinstance(value, bool), setting, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), setting, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, setting, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), setting, f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        _check(isinstance(value, (list, tuple)), setting, f"expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, setting) for v in value)
    raise ConfigError(f"{setting}: unsupported type {annotation!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str, skipped: list[str] | None = None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown and skipped is not None:
        skipped.extend(prefix + name for name in unknown)
        data = {k: v for k, v in data.items() if k in known}
    elif unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"unknown setting '{prefix}{unknown[0]}' ({where} knows: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.", skipped)
        else:
            kwargs[name] = _coerce(value, annotation, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith((prefix, prefix.rstrip(".") + ":")):
            raise ConfigError(f"{prefix}{err}") from None
        raise


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """'learner.lr=5e-4' -> {'learner': {'lr': 0.0005}}; the value uses TOML syntax, bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    _check(bool(sep) and bool(key), f"override {text!r}", "expected SECTION.KEY=VALUE, e.g. learner.lr=5e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def resolve_preset(preset: str) -> Path:
    """A preset is a name from configs/ ('cartpole') or a path to a TOML file."""
    candidate = Path(preset)
    if candidate.suffix == ".toml" or candidate.exists():
        _check(candidate.is_file(), "preset", f"no such file: {preset}")
        return candidate
    path = PRESETS_DIR / f"{preset}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        raise ConfigError(f"preset: unknown preset {preset!r} (known: {', '.join(names)}; or give a .toml path)")
    return path


def load_config(preset: str = DEFAULT_PRESET, overrides: Iterable[str] = ()) -> RunConfig:
    """Preset file, then each override in order; the result is fully validated."""
    path = resolve_preset(preset)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"preset {path}: invalid TOML: {err}") from None
    for text in overrides:
        data = _merge(data, parse_override(text))
    return RunConfig.from_dict(data)


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as TOML so that a run can be repeated from its directory."""
    lines: list[str] = []
    sections: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            sections.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, values in sections:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string, control characters escaped, is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
