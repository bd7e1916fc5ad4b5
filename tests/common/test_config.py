"""The run config: presets, overrides, validation, serialization, and the one-line CLI errors.

A bad value must stop a launch with one line naming the setting, before any process starts; and the config
travels to remote actors as a plain dict, so to_dict/from_dict and the TOML written into a run directory
must reproduce it exactly.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from common.config import (
    DEFAULT_PRESET,
    PRESETS_DIR,
    NetConfig,
    RunConfig,
    load_config,
    parse_override,
    save_config,
)
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def config_error(overrides: list[str], preset: str = "cartpole") -> str:
    with pytest.raises(ConfigError) as info:
        load_config(preset, overrides)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message


# ---- presets ----------------------------------------------------------------------------------------


def test_cartpole_preset_loads_its_values() -> None:
    config = load_config("cartpole")
    assert isinstance(config, RunConfig)
    assert config.name == "cartpole"
    assert config.env.id == "CartPole-v1"
    assert config.network.hidden == (128, 128)
    assert config.replay.samples_per_insert == 8.0
    assert config.learner.target_update_period == 1000
    assert config.stop.max_wall_s == 900.0
    assert config.learner.lr_final == RunConfig().learner.lr_final  # not in the file: the default


def test_default_preset_is_cartpole() -> None:
    assert DEFAULT_PRESET == "cartpole"
    assert load_config() == load_config("cartpole")


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_preset_validates(path: Path) -> None:
    assert load_config(path.stem) == load_config(str(path))


def test_preset_by_path(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\n[learner]\nbatch_size = 32\n[replay]\nmin_size = 64\n')
    config = load_config(str(path))
    assert (config.name, config.learner.batch_size, config.replay.min_size) == ("tiny", 32, 64)


def test_unknown_preset_lists_the_known_ones() -> None:
    message = config_error([], preset="nonexistent")
    assert message.startswith("preset:") and "'nonexistent'" in message and "cartpole" in message


def test_missing_preset_file(tmp_path: Path) -> None:
    assert "no such file" in config_error([], preset=str(tmp_path / "absent.toml"))


def test_invalid_preset_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[learner\nlr = \n")
    assert "invalid TOML" in config_error([], preset=str(path))


# ---- overrides --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("learner.lr=5e-4", "learner", "lr", 5e-4),
        ("learner.lr=0.01", "learner", "lr", 0.01),
        (" learner.gamma = 0.9 ", "learner", "gamma", 0.9),
        ("replay.alpha=1", "replay", "alpha", 1.0),
        ("learner.batch_size=64", "learner", "batch_size", 64),
        ("replay.capacity=1_000_000", "replay", "capacity", 1_000_000),
        ("learner.double=false", "learner", "double", False),
        ("network.dueling=true", "network", "dueling", True),
        ("network.hidden=[64, 32]", "network", "hidden", (64, 32)),
        ("network.hidden=[512]", "network", "hidden", (512,)),
        ("env.id=MountainCar-v0", "env", "id", "MountainCar-v0"),
        ('env.id="Acrobot-v1"', "env", "id", "Acrobot-v1"),
        ("learner.device=cpu", "learner", "device", "cpu"),
        ("learner.device=cuda:1", "learner", "device", "cuda:1"),
        ("net.public_host=", "net", "public_host", ""),
        ("net.bind_host=0.0.0.0", "net", "bind_host", "0.0.0.0"),
        ("net.bind_host=::1", "net", "bind_host", "::1"),
    ],
)
def test_override_uses_toml_values(override: str, section: str, key: str, expected: Any) -> None:
    value = getattr(getattr(load_config("cartpole", [override]), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_top_level_override_and_later_overrides_win() -> None:
    config = load_config("cartpole", ["seed=7", "learner.lr=0.1", "learner.lr=0.2", "name=probe"])
    assert (config.seed, config.learner.lr, config.name) == (7, 0.2, "probe")


def test_override_keeps_the_rest_of_its_section() -> None:
    config = load_config("cartpole", ["learner.lr=0.1"])
    assert config.learner.target_update_period == 1000  # from the preset, not the dataclass default


def test_parse_override_builds_a_nested_table() -> None:
    assert parse_override("learner.lr=5e-4") == {"learner": {"lr": 5e-4}}
    assert parse_override("seed=3") == {"seed": 3}
    assert parse_override("network.hidden=[1, 2]") == {"network": {"hidden": [1, 2]}}
    assert parse_override("env.id=Pong v5") == {"env": {"id": "Pong v5"}}


@pytest.mark.parametrize("text", ["learner.lr", "=3", "", "  = 1"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        parse_override(text)


def test_unknown_section_names_it_and_the_known_ones() -> None:
    message = config_error(["bogus.lr=1"])
    assert "'bogus'" in message
    for known in ("learner", "replay", "actor", "net", "seed"):
        assert known in message


def test_unknown_key_names_it_and_the_known_ones() -> None:
    message = config_error(["learner.bogus=1"])
    assert "'learner.bogus'" in message
    for known in ("batch_size", "lr", "gamma", "n_step"):
        assert known in message


def test_unknown_top_level_key() -> None:
    assert "'colour'" in config_error(["colour=blue"])


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("learner.lr=abc", "learner.lr"),
        ('learner.lr="0.1"', "learner.lr"),
        ("learner.lr=true", "learner.lr"),
        ("learner.lr=[0.1]", "learner.lr"),
        ("learner.batch_size=true", "learner.batch_size"),
        ("learner.batch_size=64.0", "learner.batch_size"),
        ("learner.batch_size=64.5", "learner.batch_size"),
        ("learner.batch_size=sixty", "learner.batch_size"),
        ("seed=1.0", "seed"),
        ("learner.double=1", "learner.double"),
        ("learner.double=yes", "learner.double"),
        ("network.hidden=128", "network.hidden"),
        ("network.hidden=[128, 1.5]", "network.hidden"),
        ("network.hidden=[true]", "network.hidden"),
        ("env.id=5", "env.id"),
        ("env.id=true", "env.id"),
        ("learner=3", "learner"),
        ("learner.lr.x=1", "learner.lr"),
    ],
)
def test_wrong_types(override: str, setting: str) -> None:
    assert config_error([override]).startswith(f"{setting}:")


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (["learner.lr=2"], "learner.lr"),
        (["learner.lr=0"], "learner.lr"),
        (["learner.gamma=1.5"], "learner.gamma"),
        (["learner.n_step=0"], "learner.n_step"),
        (["learner.device=tpu"], "learner.device"),
        (["replay.min_size=200000"], "replay.min_size"),
        (["replay.capacity=500"], "replay.min_size"),
        (["replay.min_size=64"], "replay.min_size"),  # below learner.batch_size
        (["learner.batch_size=2048"], "replay.min_size"),
        (["replay.alpha=-0.1"], "replay.alpha"),
        (["env.num_envs=0"], "env.num_envs"),
        (["network.hidden=[]"], "network.hidden"),
        (["network.hidden=[0]"], "network.hidden"),
        (["network.torso=resnet"], "network.torso"),
        (["actor.epsilon_base=0"], "actor.epsilon_base"),
        (["eval.epsilon=1.5"], "eval.epsilon"),
        (["stop.max_wall_s=0"], "stop.max_wall_s"),
        (["seed=-1"], "seed"),
        (["seed=2147483648"], "seed"),
        (["net.learner_port=0"], "net.learner_port"),
        (["net.sample_port=70000"], "net.sample_port"),
        (["net.bind_host=not-an-ip"], "net.bind_host"),
        (["net.bind_host=localhost"], "net.bind_host"),
        (["net.max_message_mb=0"], "net.max_message_mb"),
        (["net.io_threads=0"], "net.io_threads"),
        (["net.io_threads=65"], "net.io_threads"),
    ],
)
def test_out_of_range_values(overrides: list[str], setting: str) -> None:
    assert config_error(overrides).startswith(f"{setting}:")


# ---- checks across sections: what a component would otherwise refuse only once started ------------------


def test_a_rate_tolerance_that_could_deadlock_is_refused_with_the_numbers() -> None:
    message = config_error(["replay.samples_per_insert=8", "replay.rate_tolerance=1"])
    assert message.startswith("replay.rate_tolerance: 1 could deadlock") and "= 320" in message
    assert load_config("cartpole", ["replay.samples_per_insert=8", "replay.rate_tolerance=320"])
    assert load_config("cartpole", ["replay.samples_per_insert=0", "replay.rate_tolerance=1"])  # limiter off


def test_an_atari_frame_ring_too_small_for_one_message_is_refused() -> None:
    small = ["replay.capacity=100", "replay.min_size=50", "learner.batch_size=32"]
    message = config_error(small, preset="pong")
    assert message.startswith("replay.capacity: 100 x replay.frames_per_transition") and "512 frames" in message
    assert load_config("pong", [*small, "replay.frame_dedup=false"])  # full stacks: no frame ring


def test_a_frame_ring_too_small_for_stacked_grids_is_refused_before_start() -> None:
    """MinAtar's (C, 10, 10) grids are stored frame by frame when replay.frame_dedup is set; only the env
    tells their shape, so the machine check applies replay's rule, which would otherwise refuse at start."""
    pytest.importorskip("minatar")
    from common.check_config import check_machine
    from common.envs import env_spec
    from common.errors import StartupError
    from replay.storage import make_buffer

    small = ["replay.frame_dedup=true", "replay.capacity=256", "replay.min_size=128"]
    config = load_config("minatar-breakout", small)  # the config alone cannot know the observations' shape
    with pytest.raises(StartupError, match="cannot hold one message"):
        make_buffer(config, env_spec(config.env))  # what replay would do once started
    with pytest.raises(ConfigError) as info:
        check_machine(config)
    assert str(info.value) == (
        "replay.capacity: 256 x replay.frames_per_transition (1) frames cannot hold one message of "
        "actor.send_size=64 stacks of 4 frames (512 frames)"
    )
    check_machine(load_config("minatar-breakout", [*small, "actor.send_size=32"]))  # 256 frames fit


def test_duplicate_ports() -> None:
    message = config_error(["net.ingest_port=5550"])
    assert message.startswith("net: ") and "must differ" in message
    assert "5550" in message


# ---- serialization ----------------------------------------------------------------------------------


def _is_plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def _configs() -> list[RunConfig]:
    return [
        RunConfig(),
        load_config("cartpole"),
        load_config(
            "cartpole",
            [
                "name=run \"quoted\" with \\ backslash and 'single' quotes",
                "seed=123",
                "learner.lr=1e-05",
                "learner.lr_final=-1",
                "learner.adam_eps=1.5e-4",
                "network.hidden=[64, 64, 32]",
                "network.dueling=false",
                "net.public_host=10.0.0.5",
                "net.bind_host=::",
                "stop.max_env_steps=123456789012",
            ],
        ),
    ]


@pytest.mark.parametrize("config", _configs(), ids=["defaults", "cartpole", "overridden"])
def test_to_dict_from_dict_round_trip(config: RunConfig) -> None:
    data = config.to_dict()
    assert _is_plain(data), "to_dict must be plain lists and dicts (msgpack, JSON and TOML all take them)"
    assert RunConfig.from_dict(data) == config
    # What a remote actor sees: the dict after a trip through the welcome message's msgpack.
    assert RunConfig.from_dict(msgpack.unpackb(msgpack.packb(data))) == config


@pytest.mark.parametrize("config", _configs(), ids=["defaults", "cartpole", "overridden"])
def test_save_config_writes_toml_that_loads_back(config: RunConfig, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_config(config, path)
    assert load_config(str(path)) == config


def test_from_dict_fills_defaults_and_rejects_unknown_keys() -> None:
    assert RunConfig.from_dict({}) == RunConfig()
    assert RunConfig.from_dict({"learner": {"lr": 0.01}}).learner.lr == 0.01
    with pytest.raises(ConfigError, match="'learner.bogus'"):
        RunConfig.from_dict({"learner": {"bogus": 1}})
    with pytest.raises(ConfigError, match="config: expected a table"):
        RunConfig.from_dict([])  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = load_config("cartpole")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learner.lr = 0.5  # type: ignore[misc]
    assert isinstance(config.network.hidden, tuple)
    hash(config)  # frozen all the way down: usable as a key


def test_with_port_base() -> None:
    net = NetConfig()
    moved = net.with_port_base(6000)
    assert (moved.learner_port, moved.weights_port, moved.ingest_port, moved.sample_port) == (6000, 6001, 6002, 6003)
    assert dataclasses.replace(moved, learner_port=5550, weights_port=5551, ingest_port=5552, sample_port=5553) == net
    assert net.learner_port == 5550  # a new object; the original is untouched
    assert net.with_port_base(65532).sample_port == 65535
    for bad in (0, -1, 65533, 70000):
        with pytest.raises(ConfigError, match="port base"):
            net.with_port_base(bad)


# ---- command lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["-m", "learner", "--preset", "cartpole", "learner.lr=abc"], "learner.lr"),
        (["-m", "learner", "--bogus"], "--bogus"),
        (["-m", "common.check_config", "--preset", "nonexistent"], "nonexistent"),
        (["-m", "common.check_config", "--preset", "cartpole", "net.ingest_port=5550"], "net:"),
        (
            ["-m", "common.check_config", "replay.samples_per_insert=8", "replay.rate_tolerance=1"],
            "replay.rate_tolerance",
        ),
        (["-m", "common.check_config", "env.id=NoSuchEnv-v0"], "env.id: cannot make 'NoSuchEnv-v0'"),
        (["-m", "common.check_config", "net.bind_host=0.0.0.0"], "refusing to listen on 0.0.0.0"),
        (["-m", "common.check_config", "network.torso=nature_cnn"], "network.torso: nature_cnn cannot take"),
        (["-m", "replay", "--preset", "cartpole", "replay.bogus=1"], "replay.bogus"),
        (["-m", "learner", "--seed", "-5"], "--seed"),
        (["-m", "actor", "--learner", "no-port-here"], "--learner"),
    ],
    ids=[
        "bad-value",
        "unknown-flag",
        "unknown-preset",
        "duplicate-ports",
        "rate-deadlock",
        "unmakeable-env",
        "bind-without-curve",
        "cnn-on-vectors",
        "unknown-key",
        "bad-seed",
        "bad-address",
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args: list[str], mentions: str) -> None:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and mentions in lines[0]


def test_check_config_accepts_a_good_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "common.check_config", "--preset", "cartpole", "learner.lr=5e-4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_a_welcome_config_with_unknown_settings_is_taken_without_them() -> None:
    """User files stay strict; an actor joining a newer learner skips the settings it does not know."""
    from common.config import RunConfig, load_config

    data = load_config("cartpole", []).to_dict()
    data["learner"]["future_knob"] = 3
    data["telemetry"] = {"on": True}
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_dict(data)
    skipped: list[str] = []
    config = RunConfig.from_dict(data, skipped=skipped)
    assert sorted(skipped) == ["learner.future_knob", "telemetry"]
    assert config == load_config("cartpole", [])


@pytest.mark.parametrize("name", ["max_abs_obs", "max_abs_reward", "max_priority"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_replay_magnitude_limits_must_be_finite_and_positive(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"replay.{name}: must be a finite number > 0"):
        load_config("cartpole", [f"replay.{name}={value}"])


@pytest.mark.parametrize("value", ["-1", "601", "nan"])
def test_stop_grace_must_be_a_bounded_number_of_seconds(value: str) -> None:
    with pytest.raises(ConfigError, match=r"replay.stop_grace_s: must be in \[0, 600\]"):
        load_config("cartpole", [f"replay.stop_grace_s={value}"])
