"""The Prometheus exporter on its own: names, types, labels, and the rules for where it may listen."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

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


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_https_endpoint_answers_only_clients_with_a_certificate(tmp_path: Path) -> None:
    """What an off-loopback endpoint runs with (exercised on loopback: tests listen nowhere else)."""
    ca, server, client = (tmp_path / name for name in ("ca", "server", "client"))
    days = ("-days", "2")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", *days,
             "-subj", "/CN=distdqn test CA")  # fmt: skip
    for who, extra in ((server, ["-addext", "subjectAltName=IP:127.0.0.1"]), (client, [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who.name}", *extra)  # fmt: skip
        ext = ["-copy_extensions", "copy"] if who is server else []
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-out", f"{who}.pem", *days, *ext)  # fmt: skip
    port = free_port_base(2)
    net = NetConfig(
        metrics_port=port,
        metrics_tls_cert=f"{server}.pem",
        metrics_tls_key=f"{server}.key",
        metrics_tls_client_ca=f"{ca}.pem",
    )
    exporter = start_exporter(net, "learner")
    try:
        exporter.update({"env_steps": 42})
        url = f"https://127.0.0.1:{port}/metrics"
        context = ssl.create_default_context(cafile=f"{ca}.pem")
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=10, context=context).read()  # no client certificate
        context.load_cert_chain(f"{client}.pem", f"{client}.key")
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            text = response.read().decode()
    finally:
        exporter.close()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert families["distdqn_env_steps"][0].value == 42
