"""The config's sections: one typed, frozen dataclass per part of a run, each checking its own values.

Why apart from common/config.py: these are the settings themselves (every field's docstring says what it
means), read by every process; the whole run's config, its checks across sections and the loading of
presets and overrides sit in common/config.py, which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from common.errors import ConfigError


def check(condition: bool, setting: str, why: str) -> None:
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
        check(bool(self.id), "env.id", "must not be empty")
        check(1 <= self.num_envs <= 1024, "env.num_envs", f"must be in [1, 1024], got {self.num_envs}")
        check(self.max_episode_steps >= 0, "env.max_episode_steps", "must be >= 0")
        check(1 <= self.frame_stack <= 32, "env.frame_stack", f"must be in [1, 32], got {self.frame_stack}")
        check(0 <= self.noop_max <= 1000, "env.noop_max", f"must be in [0, 1000], got {self.noop_max}")
        check(0 <= self.sticky_actions < 1, "env.sticky_actions", f"must be in [0, 1), got {self.sticky_actions}")


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
        check(torso_ok, "network.torso", f"must be 'mlp', 'nature_cnn' or 'minatar_cnn', got {self.torso!r}")
        check(len(self.hidden) >= 1, "network.hidden", "needs at least one layer")
        check(all(1 <= h <= 65536 for h in self.hidden), "network.hidden", "widths must be in [1, 65536]")


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
    shards: int = 1
    """replay servers (processes) the run's data is spread over: actor i pushes to shard i mod shards,
    each holds capacity/shards, and the learner samples them as one buffer (common/shards.py)"""

    def __post_init__(self) -> None:
        check(self.capacity >= 1, "replay.capacity", "must be >= 1")
        check(0.0 <= self.alpha <= 1.0, "replay.alpha", "must be in [0, 1]")
        check(0.0 <= self.beta_start <= 1.0, "replay.beta_start", "must be in [0, 1]")
        check(self.beta_updates >= 1, "replay.beta_updates", "must be >= 1")
        check(1 <= self.min_size <= self.capacity, "replay.min_size", f"must be in [1, capacity={self.capacity}]")
        check(self.samples_per_insert >= 0, "replay.samples_per_insert", "must be >= 0")
        check(self.rate_tolerance >= 0, "replay.rate_tolerance", "must be >= 0")
        check(self.snapshot_interval_s >= 0, "replay.snapshot_interval_s", "must be >= 0 (0: no timed snapshots)")
        check(0 < self.frames_per_transition <= 16, "replay.frames_per_transition", "must be in (0, 16]")
        check(0 <= self.stop_grace_s <= 600, "replay.stop_grace_s", "must be in [0, 600] seconds")
        check(1 <= self.shards <= 64, "replay.shards", f"must be in [1, 64], got {self.shards}")
        for name in ("max_abs_obs", "max_abs_reward", "max_priority"):
            value = getattr(self, name)
            check(0 < value < float("inf"), f"replay.{name}", f"must be a finite number > 0, got {value!r}")


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
        check(1 <= self.batch_size <= 65536, "learner.batch_size", "must be in [1, 65536]")
        check(0 < self.lr < 1, "learner.lr", f"must be in (0, 1), got {self.lr}")
        check(self.lr_final < 1, "learner.lr_final", "must be < 1 (negative: constant lr)")
        check(0 < self.adam_eps < 1, "learner.adam_eps", "must be in (0, 1)")
        check(0 < self.gamma <= 1, "learner.gamma", "must be in (0, 1]")
        check(1 <= self.n_step <= 100, "learner.n_step", "must be in [1, 100]")
        check(self.target_update_period >= 1, "learner.target_update_period", "must be >= 1")
        check(self.max_grad_norm > 0, "learner.max_grad_norm", "must be > 0")
        check(self.publish_period >= 1, "learner.publish_period", "must be >= 1")
        check(1 <= self.prefetch <= 64, "learner.prefetch", "must be in [1, 64]")
        check(0 < self.sample_timeout_s <= 3600, "learner.sample_timeout_s", "must be in (0, 3600]")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "learner.device",
            f"must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )
        check(1 <= self.torch_threads <= 256, "learner.torch_threads", "must be in [1, 256]")
        check(self.checkpoint_interval_s > 0, "learner.checkpoint_interval_s", "must be > 0")


@dataclass(frozen=True)
class ActorConfig:
    num_actors: int = 2
    """actors in the whole run; the Ape-X epsilon ladder is spread over this many global indices"""
    epsilon_base: float = 0.4
    """Ape-X epsilon_i = base ** (1 + alpha * i / (N - 1))"""
    epsilon_alpha: float = 7.0
    """Ape-X epsilon exponent spread"""
    epsilon_over: str = "slots"
    """what the Ape-X ladder is spread over: 'slots' (one epsilon per environment, slot j of actor i being
    g = (i mod N) * E + j of N * E, E = env.num_envs) or 'actors' (one per actor, i of N). 'slots', as in
    Ape-X, whose every actor stepped one environment: a small cluster gets N * E rungs between the same
    ends instead of N (2 actors: 0.4 and 0.4 ** 8 only); on MountainCar and CartPole it reached the goal
    in fewer env steps (docs/benchmarks.md, "Exploration over env slots")"""
    send_size: int = 64
    """transitions per message to the replay server"""
    stats_interval_s: float = 1.0
    """seconds between episode-statistics reports to the learner"""

    def __post_init__(self) -> None:
        check(1 <= self.num_actors <= 100_000, "actor.num_actors", "must be in [1, 100000]")
        check(0 < self.epsilon_base <= 1, "actor.epsilon_base", "must be in (0, 1]")
        check(self.epsilon_alpha >= 0, "actor.epsilon_alpha", "must be >= 0")
        over_ok = self.epsilon_over in ("actors", "slots")
        check(over_ok, "actor.epsilon_over", f"must be 'actors' or 'slots', got {self.epsilon_over!r}")
        check(1 <= self.send_size <= 1_000_000, "actor.send_size", "must be in [1, 1000000]")
        check(self.stats_interval_s > 0, "actor.stats_interval_s", "must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 10
    """greedy episodes per evaluation, run together on fresh environments"""
    interval_s: float = 2.0
    """seconds between the starts of two evaluations"""
    epsilon: float = 0.0
    """evaluation epsilon (0: greedy)"""

    def __post_init__(self) -> None:
        check(1 <= self.episodes <= 1000, "eval.episodes", "must be in [1, 1000]")
        check(self.interval_s >= 0, "eval.interval_s", "must be >= 0")
        check(0 <= self.epsilon <= 1, "eval.epsilon", "must be in [0, 1]")


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
        check(self.eval_consecutive >= 1, "stop.eval_consecutive", "must be >= 1")
        check(self.max_env_steps >= 1, "stop.max_env_steps", "must be >= 1")
        check(self.max_updates >= 1, "stop.max_updates", "must be >= 1")
        check(self.max_wall_s > 0, "stop.max_wall_s", "must be > 0")


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
    shard_port_stride: int = 10
    """replay shard k listens on ingest_port and sample_port plus k * this (and its metrics, when on,
    on the port after the learner's plus k)"""
    max_message_mb: int = 256
    """messages larger than this are dropped by the socket and never reach a decoder"""
    send_hwm: int = 4
    """transition messages queued per actor before it blocks (backpressure)"""
    io_threads: int = 4
    """libzmq I/O threads of the learner and each replay server: CurveZMQ encrypts each connection's copy
    of a message in its I/O thread, so relays' copies of the weights go out in parallel over several"""
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
            check(1 <= port <= 65535, f"net.{name}", f"must be a TCP port in [1, 65535], got {port}")
        ports = [self.learner_port, self.weights_port, self.ingest_port, self.sample_port]
        check(len(set(ports)) == 4, "net", f"the four ports must differ, got {ports}")
        check(1 <= self.shard_port_stride <= 1000, "net.shard_port_stride", "must be in [1, 1000]")
        check(_valid_host(self.bind_host), "net.bind_host", f"not an IP address or '*': {self.bind_host!r}")
        check(1 <= self.max_message_mb <= 4096, "net.max_message_mb", "must be in [1, 4096]")
        check(1 <= self.send_hwm <= 1_000_000, "net.send_hwm", "must be in [1, 1000000]")
        check(1 <= self.io_threads <= 64, "net.io_threads", "must be in [1, 64]")
        curve = {"curve_secret_key": self.curve_secret_key, "curve_server_key": self.curve_server_key}
        curve["curve_authorized_dir"] = self.curve_authorized_dir
        for name, path in curve.items():
            check("\n" not in path and "\0" not in path, f"net.{name}", "must be a file path")
        missing = [name for name, path in curve.items() if not path]
        check(
            len(missing) in (0, 3),
            f"net.{missing[0] if missing else ''}",
            "CurveZMQ needs curve_secret_key, curve_server_key and curve_authorized_dir all set (or none)",
        )
        self._check_metrics(ports)

    def _check_metrics(self, ports: list[int]) -> None:
        """Metrics are read-only but tell how a run is doing: off loopback they are served like the other
        servers, encrypted and to known clients only (HTTPS with a required client certificate)."""
        metrics_ports = [self.metrics_port, self.metrics_port + 1] if self.metrics_port else []
        check(
            0 <= self.metrics_port <= 65534, "net.metrics_port", f"must be 0 or in [1, 65534], got {self.metrics_port}"
        )
        check(not set(metrics_ports) & set(ports), "net.metrics_port", "it and the next port must differ from the four")
        check(
            _valid_host(self.metrics_bind_host),
            "net.metrics_bind_host",
            f"not an IP address: {self.metrics_bind_host!r}",
        )
        tls = [self.metrics_tls_cert, self.metrics_tls_key, self.metrics_tls_client_ca]
        check(all(tls) or not any(tls), "net.metrics_tls_cert", "set metrics_tls_cert, _key and _client_ca together")
        loopback = self.metrics_bind_host != "*" and ipaddress.ip_address(self.metrics_bind_host).is_loopback
        check(
            loopback or all(tls),
            "net.metrics_bind_host",
            f"{self.metrics_bind_host} is not loopback: set metrics_tls_cert, _key and _client_ca "
            "(HTTPS, client certificates required) or keep 127.0.0.1",
        )

    def shard_ports(self, shard: int) -> tuple[int, int]:
        """(ingest, sample) ports of replay shard `shard` (shard 0: ingest_port, sample_port)."""
        offset = shard * self.shard_port_stride
        return self.ingest_port + offset, self.sample_port + offset

    def check_shard_ports(self, shards: int) -> None:
        """Every shard's ports are TCP ports and none is another's, the learner's or a metrics port."""
        if shards == 1:
            return
        taken = {self.learner_port: "net.learner_port", self.weights_port: "net.weights_port"}
        if self.metrics_port:
            taken.update({self.metrics_port + k: "a metrics port" for k in range(shards + 1)})
        for shard in range(shards):
            for port in self.shard_ports(shard):
                check(
                    1 <= port <= 65535,
                    "net.shard_port_stride",
                    f"replay shard {shard} would listen on port {port}, not a TCP port: lower the ports or the stride",
                )
                check(
                    port not in taken,
                    "net.shard_port_stride",
                    f"replay shard {shard}'s port {port} is also {taken.get(port)}: choose another stride",
                )
                taken[port] = f"replay shard {shard}'s"

    def with_port_base(self, base: int) -> NetConfig:
        """Four consecutive ports from `base`: handy to run several clusters side by side."""
        check(1 <= base <= 65532, "port base", f"must be in [1, 65532], got {base}")
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
