"""The Prometheus exporter on its own: names, types, labels, and the rules for where it may listen."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import NetConfig
from common.errors import ConfigError, StartupError
from common.metrics_export import NullExporter, start_exporter
from common.sockets import free_port_base


def _scrape(port: int) -> dict[str, tuple[str, list]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def test_off_by_default() -> None:
    assert isinstance(start_exporter(NetConfig(), "learner"), NullExporter)


def test_replay_values_scrape_with_prometheus_names_and_labels() -> None:
    port = free_port_base(2)
    exporter = start_exporter(NetConfig(metrics_port=port), "replay")
    try:
        assert exporter.port == port + 1  # replay serves next to the learner's port
        exporter.update({"size": 640, "inserted": 1000, "rejected": {"bad_shape": 2, "bad_action": 1}, "waiting": ""})
        families = _scrape(exporter.port)
    finally:
        exporter.close()
    assert families["distdqn_replay_size"][0] == "gauge"
    assert families["distdqn_replay_size"][1][0].value == 640
    kind, samples = families["distdqn_replay_inserted"]
    assert (kind, samples[0].name, samples[0].value) == ("counter", "distdqn_replay_inserted_total", 1000)
    rejected = {s.labels["reason"]: s.value for s in families["distdqn_replay_rejected_messages"][1]}
    assert rejected == {"bad_shape": 2, "bad_action": 1}
    assert "distdqn_replay_start_time_seconds" in families
    assert "process_cpu_seconds" in families  # the process collector comes along


def test_a_port_in_use_is_a_warning_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port_base(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with caplog.at_level(logging.WARNING):
            exporter = start_exporter(NetConfig(metrics_port=port), "learner")
    assert isinstance(exporter, NullExporter) and "in use" in caplog.text


def test_off_loopback_needs_https_with_client_certificates() -> None:
    with pytest.raises(ConfigError, match="net.metrics_bind_host: 0.0.0.0 is not loopback"):
        NetConfig(metrics_port=9100, metrics_bind_host="0.0.0.0")
    with pytest.raises(ConfigError, match="together"):
        NetConfig(metrics_port=9100, metrics_tls_cert="server.pem")
    with pytest.raises(ConfigError, match="net.metrics_port"):
        NetConfig(metrics_port=5551)  # replay's endpoint would take the weights port
    # Even a config built around the check cannot make the exporter listen in the open.
    net = NetConfig(metrics_port=9100)
    object.__setattr__(net, "metrics_bind_host", "0.0.0.0")
    with pytest.raises(StartupError, match="refusing"):
        start_exporter(net, "learner")
