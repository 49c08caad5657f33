"""``serve_policy.py``'s flags: the API key from the environment, IPv6 hosts, flag typos, and a taken port found
before the model loads."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import draccus
import pytest

from experiments.robot.serving import config as serve_config
from experiments.robot.serving.config import API_KEY_ENV, ServeConfig, api_key, build_server, validate_serve_config
from prismatic.util.cli import UserError, run_cli

ENV_KEY = "key-from-the-environment"


class NoModel:
    """Stands for a loaded policy where the test never reaches the model."""

    unnorm_key = "libero_spatial_no_noops"


def test_api_key_comes_from_the_environment_when_no_flag_names_it(tiny_checkpoint: Path, monkeypatch) -> None:
    exposed = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), host="0.0.0.0", port=0)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(UserError, match=f"pass --api_key KEY or set {API_KEY_ENV}"):
        validate_serve_config(exposed)

    monkeypatch.setenv(API_KEY_ENV, ENV_KEY)
    validate_serve_config(exposed)
    assert api_key(exposed) == ENV_KEY
    assert build_server(exposed, NoModel()).settings.api_key == ENV_KEY
    flagged = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), api_key="key-from-the-flag")
    assert api_key(flagged) == "key-from-the-flag"  # the flag wins

    monkeypatch.setenv(API_KEY_ENV, "short")
    with pytest.raises(UserError, match=f"^{API_KEY_ENV}: expected at least 8 characters$"):
        validate_serve_config(exposed)


def test_the_keepalive_flag_reaches_the_server_and_a_negative_one_is_refused(tiny_checkpoint: Path) -> None:
    cfg = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), port=0, keepalive_timeout_s=0)
    assert build_server(cfg, NoModel()).settings.keepalive_timeout_s == 0
    with pytest.raises(UserError, match=r"^--keepalive_timeout_s -1\.0: expected seconds \(0: no pings\)$"):
        validate_serve_config(ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), keepalive_timeout_s=-1.0))


def test_a_taken_port_is_reported_before_the_model_loads(tiny_checkpoint: Path, monkeypatch) -> None:
    loads = []
    monkeypatch.setattr(serve_config, "load_policy", lambda cfg: loads.append(cfg))
    for flag in ("port", "http_port"):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            cfg = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), **{"port": 0, flag: port})
            with pytest.raises(UserError, match=f"--host 127.0.0.1 --port .*{port}: cannot bind: .*Address already"):
                build_server(cfg)
    assert loads == []


def parsed_by_the_cli(args: list[str], monkeypatch) -> ServeConfig:
    """``args`` parsed as ``serve_policy.py`` parses them (draccus under :func:`run_cli`)."""
    parsed: list[ServeConfig] = []

    def main() -> None:
        parsed.append(draccus.parse(ServeConfig, args=sys.argv[1:]))

    monkeypatch.setattr(sys, "argv", ["serve_policy.py", *args])
    run_cli(main)
    return parsed[0]


@pytest.mark.parametrize("host", ["::", "fe80::", "::1", "0.0.0.0"])
def test_ipv6_hosts_stay_addresses(host: str, monkeypatch) -> None:
    assert parsed_by_the_cli(["--host", host], monkeypatch).host == host
    assert parsed_by_the_cli(["--camera_keys", "[a, b]"], monkeypatch).camera_keys == ["a", "b"]  # YAML still works


def test_a_flag_typo_suggests_the_flag(monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parsed_by_the_cli(["--hots", "::1"], monkeypatch)
    assert exited.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--hots: did you mean --host?: expected the flags and values that --help lists")
    )
