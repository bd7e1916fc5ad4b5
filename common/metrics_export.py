"""Prometheus endpoints for the learner and the replay server (`net.metrics_port`, the `metrics` extra).

The roles hand the exporter plain dicts (the learner its metrics rows and a counter snapshot each second,
replay its `stats()`), and a scrape reads the last values under a lock. The HTTP thread that answers a
scrape thus never touches a role's own objects nor takes time from its loop.

Names follow Prometheus conventions: `distdqn_` prefix, `_total` for counters, base units (`_seconds`),
`_ratio` for fractions; rejected messages carry their reason as a label. Off loopback an endpoint serves
HTTPS and answers only scrapers with a client certificate the configured CA signed, the same rule as
CurveZMQ for the other servers (`NetConfig._check_metrics` refuses the config otherwise).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from common.config import NetConfig
from common.errors import StartupError

log = logging.getLogger(__name__)

# role -> {key in the role's rows or stats: (metric name without the prefix, type, help)}
METRICS: dict[str, dict[str, tuple[str, str, str]]] = {
    "learner": {
        "env_steps": ("env_steps_total", "counter", "environment steps taken by all actors, restarts included"),
        "learner_updates": ("learner_updates_total", "counter", "gradient updates"),
        "wall_time": ("learner_uptime_seconds", "gauge", "seconds since the learner started training"),
        "weight_version": ("learner_weight_version", "gauge", "newest published weight version"),
        "learner_wait_fraction": ("learner_wait_ratio", "gauge", "share of the last interval spent waiting for data"),
        "loss": ("learner_loss", "gauge", "mean TD loss over the last interval"),
        "q_mean": ("learner_q_mean", "gauge", "mean Q of the taken actions over the last interval"),
        "lr": ("learner_learning_rate", "gauge", "current learning rate"),
        "train_return_mean": ("train_return", "gauge", "mean return of the actors' episodes in the last interval"),
        "eval_return_mean": ("eval_return", "gauge", "mean return of the newest greedy evaluation"),
        "eval_weight_version": ("eval_weight_version", "gauge", "weight version of the newest evaluation"),
        "actors_alive": ("actors_alive", "gauge", "actors heard from in the last 10 s"),
        "actor_version_lag": ("actor_version_lag", "gauge", "mean weight-version lag of the live actors"),
        "messages_rejected": ("learner_messages_rejected_total", "counter", "control messages rejected"),
        "learner_unauthenticated": ("learner_unauthenticated_total", "counter", "clients refused by CurveZMQ"),
    },
    "replay": {
        "size": ("replay_size", "gauge", "transitions stored"),
        "capacity": ("replay_capacity", "gauge", "transitions the buffer holds at most"),
        "inserted": ("replay_inserted_total", "counter", "transitions inserted"),
        "sampled": ("replay_sampled_total", "counter", "transitions sampled"),
        "samples_per_insert": ("replay_samples_per_insert_ratio", "gauge", "sampled / inserted transitions"),
        "rejected": ("replay_rejected_messages_total", "counter", "messages rejected, by reason"),
        "dropped": ("replay_dropped_total", "counter", "transitions read but not stored at a stop"),
        "lost": ("replay_lost_total", "counter", "transitions that never arrived (gaps in actors' streams)"),
    },
}
ROLE_PORT_OFFSET = {"learner": 0, "replay": 1}


class NullExporter:
    """What a role holds when metrics are off: every call is a no-op, so the roles need no `if`s."""

    port = 0

    def update(self, values: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsExporter(NullExporter):
    def __init__(self, role: str, net: NetConfig, port: int) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        self.role = role
        self._table = METRICS[role]
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._started = time.time()
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self)
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        tls = {}
        if net.metrics_tls_cert:
            tls = {
                "certfile": net.metrics_tls_cert,
                "keyfile": net.metrics_tls_key,
                "client_cafile": net.metrics_tls_client_ca,
                "client_auth_required": True,
            }
        host = {"*": "0.0.0.0"}.get(net.metrics_bind_host, net.metrics_bind_host)
        self._server, self._thread = start_http_server(port, addr=host, registry=registry, **tls)
        self.port = self._server.server_port
        scheme = "https" if tls else "http"
        log.info("Prometheus metrics on %s://%s:%d/metrics", scheme, host, self.port)

    def update(self, values: Mapping[str, Any]) -> None:
        """Merge the keys this role exports from a row or stats dict (others are ignored)."""
        with self._lock:
            for key, value in values.items():
                if key in self._table and value is not None:
                    self._values[key] = dict(value) if isinstance(value, Mapping) else value

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on each scrape, from its HTTP thread."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            values = dict(self._values)
        yield GaugeMetricFamily(
            f"distdqn_{self.role}_start_time_seconds", "Unix time the process started", value=self._started
        )
        for key, (name, kind, help_text) in self._table.items():
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            value = values.get(key)
            if isinstance(value, Mapping):
                family = family_type(f"distdqn_{name}", help_text, labels=["reason"])
                for reason, count in sorted(value.items()):
                    family.add_metric([str(reason)], float(count))
                yield family
            elif isinstance(value, (int, float)):
                yield family_type(f"distdqn_{name}", help_text, value=float(value))

    def describe(self) -> list[Any]:
        return []  # names depend on which values have arrived; nothing to check at registration

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_exporter(net: NetConfig, role: str) -> NullExporter:
    """The role's endpoint at net.metrics_port (+1 for replay), or a NullExporter when it is off.

    A missing extra or a port in use is a warning, not a failure: training matters more than its metrics."""
    if not net.metrics_port:
        return NullExporter()
    host = net.metrics_bind_host
    loopback = host != "*" and ipaddress.ip_address(host).is_loopback
    if not loopback and not (net.metrics_tls_cert and net.metrics_tls_key and net.metrics_tls_client_ca):
        raise StartupError(f"refusing to serve metrics on {host} without HTTPS and client certificates")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        log.warning("net.metrics_port is set but prometheus_client is missing: pip install -e '.[metrics]'")
        return NullExporter()
    port = net.metrics_port + ROLE_PORT_OFFSET[role]
    try:
        return MetricsExporter(role, net, port)
    except ssl.SSLError as err:  # (an OSError too) bad certificate files: the operator asked for TLS
        raise StartupError(f"net.metrics_tls_*: {err}") from None
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise StartupError(f"metrics endpoint on {host}:{port}: {err}") from None
        log.warning("no Prometheus metrics: %s:%d is in use", host, port)
        return NullExporter()
