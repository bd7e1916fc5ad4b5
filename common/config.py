"""The run's configuration: typed, frozen, validated dataclasses built from a TOML preset plus overrides.

The learner owns the resolved config and hands it to every actor (as a plain dict over the wire), so a
remote actor needs only the learner's address. Every value is checked when the config is built: a wrong
value is one `ConfigError` line naming the setting, never a failure deep inside a process.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "cartpole"


def _check(condition: bool, setting: str, why: str) -> None:
    if not condition:
        raise ConfigError(f"{setting}: {why}")


@dataclass(frozen=True)
class EnvConfig:
    id: str = "CartPole-v1"
    """gymnasium environment id"""
    num_envs: int = 4
    """environments stepped together by each actor process (one vector env)"""
    max_episode_steps: int = 0
    """override of the env's time limit; 0 keeps the registered one (Atari: agent steps of 4 frames)"""
    frame_stack: int = 4
    """Atari only (ids 'ALE/...'): frames stacked into one observation"""
    noop_max: int = 30
    """Atari only: a game starts after a random 1..noop_max no-op frames; 0 turns them off"""
    sticky_actions: float = 0.25
    """Atari only: probability that the emulator repeats the previous action (v5's default; DQN used 0)"""

    @property
    def atari(self) -> bool:
        """ALE ids get the DQN preprocessing of common/atari.py; everything else is made as registered."""
        return self.id.startswith("ALE/")

    def __post_init__(self) -> None:
        _check(bool(self.id), "env.id", "must not be empty")
        _check(1 <= self.num_envs <= 1024, "env.num_envs", f"must be in [1, 1024], got {self.num_envs}")
        _check(self.max_episode_steps >= 0, "env.max_episode_steps", "must be >= 0")
        _check(1 <= self.frame_stack <= 32, "env.frame_stack", f"must be in [1, 32], got {self.frame_stack}")
        _check(0 <= self.noop_max <= 1000, "env.noop_max", f"must be in [0, 1000], got {self.noop_max}")
        _check(0 <= self.sticky_actions < 1, "env.sticky_actions", f"must be in [0, 1), got {self.sticky_actions}")


@dataclass(frozen=True)
class NetworkConfig:
    torso: str = "mlp"
    """'mlp' for vector observations, 'nature_cnn' for stacked image frames, 'minatar_cnn' for MinAtar grids"""
    hidden: tuple[int, ...] = (256, 256)
    """MLP layer widths (the CNN's dense layer uses the last one)"""
    dueling: bool = True
    """dueling value/advantage head (Wang et al. 2016)"""

    def __post_init__(self) -> None:
        torso_ok = self.torso in ("mlp", "nature_cnn", "minatar_cnn")
        _check(torso_ok, "network.torso", f"must be 'mlp', 'nature_cnn' or 'minatar_cnn', got {self.torso!r}")
        _check(len(self.hidden) >= 1, "network.hidden", "needs at least one layer")
        _check(all(1 <= h <= 65536 for h in self.hidden), "network.hidden", "widths must be in [1, 65536]")


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = 100_000
    """transitions held; the oldest are evicted first"""
    prioritized: bool = True
    """proportional prioritized sampling; false samples uniformly"""
    alpha: float = 0.6
    """priority exponent"""
    beta_start: float = 0.4
    """importance-sampling exponent at the first update, annealed linearly to 1"""
    beta_updates: int = 20_000
    """learner updates over which beta reaches 1"""
    min_size: int = 1_000
    """transitions stored before the first sample is served"""
    samples_per_insert: float = 0.0
    """target ratio of sampled to inserted transitions; 0 turns rate limiting off"""
    rate_tolerance: float = 0.0
    """how far (in sampled transitions) the ratio may drift before one side waits; 0 picks a safe value"""
    snapshot_interval_s: float = 60.0
    """seconds between buffer snapshots to RUN_DIR/replay/, plus one at a clean exit; 0 turns both off (a
    restarted replay server comes back from the newest; Atari presets space them out: each copies the buffer)"""
    frame_dedup: bool = True
    """store stacked-frame observations (K, H, W) as distinct frames, rebuilt into stacks when sampled"""
    frames_per_transition: float = 1.0
    """frame_dedup's frame ring size per transition slot (Pong and Breakout use 0.8-1.0; if a game
    needs more, fewer transitions fit)"""
    max_abs_obs: float = 1e6
    """float observations beyond +-this (where the env's observation space is unbounded) are refused:
    finite but huge values would poison the learner"""
    max_abs_reward: float = 1e6
    """transitions whose |reward| exceeds this are refused"""
    max_priority: float = 1e6
    """priorities (from actors or the learner) above this are refused"""
    stop_grace_s: float = 3.0
    """at a stop, how long replay keeps reading ingest for the stream_end of streams still open (it
    stops sooner once they have all ended) before it writes the accounting ledger"""

    def __post_init__(self) -> None:
        _check(self.capacity >= 1, "replay.capacity", "must be >= 1")
        _check(0.0 <= self.alpha <= 1.0, "replay.alpha", "must be in [0, 1]")
        _check(0.0 <= self.beta_start <= 1.0, "replay.beta_start", "must be in [0, 1]")
        _check(self.beta_updates >= 1, "replay.beta_updates", "must be >= 1")
        _check(1 <= self.min_size <= self.capacity, "replay.min_size", f"must be in [1, capacity={self.capacity}]")
        _check(self.samples_per_insert >= 0, "replay.samples_per_insert", "must be >= 0")
        _check(self.rate_tolerance >= 0, "replay.rate_tolerance", "must be >= 0")
        _check(self.snapshot_interval_s >= 0, "replay.snapshot_interval_s", "must be >= 0 (0: no timed snapshots)")
        _check(0 < self.frames_per_transition <= 16, "replay.frames_per_transition", "must be in (0, 16]")
        _check(0 <= self.stop_grace_s <= 600, "replay.stop_grace_s", "must be in [0, 600] seconds")
        for name in ("max_abs_obs", "max_abs_reward", "max_priority"):
            value = getattr(self, name)
            _check(0 < value < float("inf"), f"replay.{name}", f"must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 128
    """transitions per gradient update"""
    lr: float = 1e-3
    """Adam learning rate"""
    lr_final: float = -1.0
    """learning rate reached linearly at stop.max_updates; negative keeps lr constant"""
    adam_eps: float = 1e-5
    """Adam epsilon (larger than torch's default, as in Rainbow, for stability)"""
    gamma: float = 0.99
    """discount per environment step"""
    n_step: int = 3
    """steps summed before bootstrapping"""
    double: bool = True
    """Double DQN targets: online net picks the action, target net values it"""
    target_update_period: int = 500
    """updates between target-network copies"""
    max_grad_norm: float = 10.0
    """gradient-norm clip"""
    publish_period: int = 25
    """updates between weight publications to actors"""
    prefetch: int = 4
    """sample requests kept in flight to the replay server"""
    sample_timeout_s: float = 5.0
    """a sample request unanswered this long is taken as lost and sent again on a fresh connection,
    whatever replay reports (the wait doubles, up to 60 s, while none is answered)"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    bf16: bool = False
    """CUDA only: forward passes under bfloat16 autocast (the loss and optimizer stay float32)"""
    compile: bool = False
    """CUDA only: torch.compile the networks' forward passes (the first updates pay the compilation)"""
    torch_threads: int = 1
    """CPU threads for the learner's torch ops (actors always use one)"""
    checkpoint_interval_s: float = 120.0
    """seconds between checkpoints (one is always written at exit)"""

    def __post_init__(self) -> None:
        _check(1 <= self.batch_size <= 65536, "learner.batch_size", "must be in [1, 65536]")
        _check(0 < self.lr < 1, "learner.lr", f"must be in (0, 1), got {self.lr}")
        _check(self.lr_final < 1, "learner.lr_final", "must be < 1 (negative: constant lr)")
        _check(0 < self.adam_eps < 1, "learner.adam_eps", "must be in (0, 1)")
        _check(0 < self.gamma <= 1, "learner.gamma", "must be in (0, 1]")
        _check(1 <= self.n_step <= 100, "learner.n_step", "must be in [1, 100]")
        _check(self.target_update_period >= 1, "learner.target_update_period", "must be >= 1")
        _check(self.max_grad_norm > 0, "learner.max_grad_norm", "must be > 0")
        _check(self.publish_period >= 1, "learner.publish_period", "must be >= 1")
        _check(1 <= self.prefetch <= 64, "learner.prefetch", "must be in [1, 64]")
        _check(0 < self.sample_timeout_s <= 3600, "learner.sample_timeout_s", "must be in (0, 3600]")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "learner.device",
            f"must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )
        _check(1 <= self.torch_threads <= 256, "learner.torch_threads", "must be in [1, 256]")
        _check(self.checkpoint_interval_s > 0, "learner.checkpoint_interval_s", "must be > 0")


@dataclass(frozen=True)
class ActorConfig:
    num_actors: int = 2
    """actors in the whole run; the Ape-X epsilon ladder is spread over this many global indices"""
    epsilon_base: float = 0.4
    """Ape-X epsilon_i = base ** (1 + alpha * i / (N - 1))"""
    epsilon_alpha: float = 7.0
    """Ape-X epsilon exponent spread"""
    send_size: int = 64
    """transitions per message to the replay server"""
    stats_interval_s: float = 1.0
    """seconds between episode-statistics reports to the learner"""

    def __post_init__(self) -> None:
        _check(1 <= self.num_actors <= 100_000, "actor.num_actors", "must be in [1, 100000]")
        _check(0 < self.epsilon_base <= 1, "actor.epsilon_base", "must be in (0, 1]")
        _check(self.epsilon_alpha >= 0, "actor.epsilon_alpha", "must be >= 0")
        _check(1 <= self.send_size <= 1_000_000, "actor.send_size", "must be in [1, 1000000]")
        _check(self.stats_interval_s > 0, "actor.stats_interval_s", "must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 10
    """greedy episodes per evaluation, run together on fresh environments"""
    interval_s: float = 2.0
    """seconds between the starts of two evaluations"""
    epsilon: float = 0.0
    """evaluation epsilon (0: greedy)"""

    def __post_init__(self) -> None:
        _check(1 <= self.episodes <= 1000, "eval.episodes", "must be in [1, 1000]")
        _check(self.interval_s >= 0, "eval.interval_s", "must be >= 0")
        _check(0 <= self.epsilon <= 1, "eval.epsilon", "must be in [0, 1]")


@dataclass(frozen=True)
class StopConfig:
    eval_return: float = 475.0
    """the run is solved when evaluations reach this mean return ..."""
    eval_consecutive: int = 3
    """... this many times in a row"""
    max_env_steps: int = 1_000_000
    """give up after this many environment steps"""
    max_updates: int = 1_000_000
    """give up after this many learner updates"""
    max_wall_s: float = 3600.0
    """give up after this many seconds"""

    def __post_init__(self) -> None:
        _check(self.eval_consecutive >= 1, "stop.eval_consecutive", "must be >= 1")
        _check(self.max_env_steps >= 1, "stop.max_env_steps", "must be >= 1")
        _check(self.max_updates >= 1, "stop.max_updates", "must be >= 1")
        _check(self.max_wall_s > 0, "stop.max_wall_s", "must be > 0")


@dataclass(frozen=True)
class NetConfig:
    bind_host: str = "127.0.0.1"
    """interface the servers listen on; loopback unless actors run on other machines"""
    public_host: str = ""
    """address actors should use for the replay server and weights; empty: the host they reached the learner at"""
    replay_host: str = ""
    """address actors should use for the replay server when it runs on another host than the learner"""
    learner_port: int = 5550
    """learner control socket (hello, config, weights on request, statistics)"""
    weights_port: int = 5551
    """learner weight and stop broadcasts (PUB)"""
    ingest_port: int = 5552
    """replay server: transitions from actors (PULL)"""
    sample_port: int = 5553
    """replay server: sample requests and priority updates from the learner (ROUTER)"""
    max_message_mb: int = 256
    """messages larger than this are dropped by the socket and never reach a decoder"""
    send_hwm: int = 4
    """transition messages queued per actor before it blocks (backpressure)"""
    shared_memory_weights: bool = True
    """actors on the learner's host read new weights from a file in /dev/shm, not the broadcast socket"""
    shared_memory_batches: bool = True
    """a learner on replay's host receives sampled observations in a file in /dev/shm, not the socket"""
    curve_secret_key: str = ""
    """path to this server's NAME.key_secret (CurveZMQ); the learner also uses it as replay's client"""
    curve_server_key: str = ""
    """path to the servers' public NAME.key, for the learner's connection to replay"""
    curve_authorized_dir: str = ""
    """directory of client public keys (*.key) the servers accept; the server's own key is implied"""
    metrics_port: int = 0
    """learner's Prometheus endpoint (HTTP /metrics), replay's on the next port; 0: off (needs the metrics extra)"""
    metrics_bind_host: str = "127.0.0.1"
    """interface the metrics endpoints listen on; any other than loopback needs the three metrics_tls_* files"""
    metrics_tls_cert: str = ""
    """PEM certificate the metrics endpoints serve HTTPS with"""
    metrics_tls_key: str = ""
    """PEM private key of metrics_tls_cert"""
    metrics_tls_client_ca: str = ""
    """PEM CA bundle: only scrapers presenting a client certificate it signed are answered"""

    def __post_init__(self) -> None:
        for name in ("learner_port", "weights_port", "ingest_port", "sample_port"):
            port = getattr(self, name)
            _check(1 <= port <= 65535, f"net.{name}", f"must be a TCP port in [1, 65535], got {port}")
        ports = [self.learner_port, self.weights_port, self.ingest_port, self.sample_port]
        _check(len(set(ports)) == 4, "net", f"the four ports must differ, got {ports}")
        _check(_valid_host(self.bind_host), "net.bind_host", f"not an IP address or '*': {self.bind_host!r}")
        _check(1 <= self.max_message_mb <= 4096, "net.max_message_mb", "must be in [1, 4096]")
        _check(1 <= self.send_hwm <= 1_000_000, "net.send_hwm", "must be in [1, 1000000]")
        curve = {"curve_secret_key": self.curve_secret_key, "curve_server_key": self.curve_server_key}
        curve["curve_authorized_dir"] = self.curve_authorized_dir
        for name, path in curve.items():
            _check("\n" not in path and "\0" not in path, f"net.{name}", "must be a file path")
        missing = [name for name, path in curve.items() if not path]
        _check(
            len(missing) in (0, 3),
            f"net.{missing[0] if missing else ''}",
            "CurveZMQ needs curve_secret_key, curve_server_key and curve_authorized_dir all set (or none)",
        )
        self._check_metrics(ports)

    def _check_metrics(self, ports: list[int]) -> None:
        """Metrics are read-only but tell how a run is doing: off loopback they are served like the other
        servers, encrypted and to known clients only (HTTPS with a required client certificate)."""
        metrics_ports = [self.metrics_port, self.metrics_port + 1] if self.metrics_port else []
        _check(
            0 <= self.metrics_port <= 65534, "net.metrics_port", f"must be 0 or in [1, 65534], got {self.metrics_port}"
        )
        _check(
            not set(metrics_ports) & set(ports), "net.metrics_port", "it and the next port must differ from the four"
        )
        _check(
            _valid_host(self.metrics_bind_host),
            "net.metrics_bind_host",
            f"not an IP address: {self.metrics_bind_host!r}",
        )
        tls = [self.metrics_tls_cert, self.metrics_tls_key, self.metrics_tls_client_ca]
        _check(all(tls) or not any(tls), "net.metrics_tls_cert", "set metrics_tls_cert, _key and _client_ca together")
        loopback = self.metrics_bind_host != "*" and ipaddress.ip_address(self.metrics_bind_host).is_loopback
        _check(
            loopback or all(tls),
            "net.metrics_bind_host",
            f"{self.metrics_bind_host} is not loopback: set metrics_tls_cert, _key and _client_ca "
            "(HTTPS, client certificates required) or keep 127.0.0.1",
        )

    def with_port_base(self, base: int) -> NetConfig:
        """Four consecutive ports from `base`: handy to run several clusters side by side."""
        _check(1 <= base <= 65532, "port base", f"must be in [1, 65532], got {base}")
        return dataclasses.replace(
            self, learner_port=base, weights_port=base + 1, ingest_port=base + 2, sample_port=base + 3
        )


def _valid_host(host: str) -> bool:
    if host == "*":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
        rc, stack, send = self.replay, self.env.frame_stack, self.actor.send_size
        if not (self.env.atari and rc.frame_dedup):
            return
        needed = 2 * stack * send  # the most frames one message can carry
        _check(
            rc.capacity * rc.frames_per_transition >= needed,
            "replay.capacity",
            f"{rc.capacity} x replay.frames_per_transition ({rc.frames_per_transition:g}) frames cannot hold one "
            f"message of actor.send_size={send} stacks of {stack} frames ({needed} frames)",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that survives msgpack, JSON and TOML."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, skipped: list[str] | None = None) -> RunConfig:
        """Strict unless `skipped` is given: then unknown settings (a newer learner's) are left out and
        named in it, so an actor can still join a run whose config it only partly knows."""
        return _build(cls, data, "", skipped)


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
