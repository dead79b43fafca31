"""The config file (``rtchub serve --config``), precedence and ``rtchub config show``.

The resolution order is unit-tested on :func:`rtchub.config.resolve`; what a
user runs (``rtchub serve``, ``rtchub config show``) is tested as a real
subprocess, with a real file and a real environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtchub.config import MASK, ConfigError, resolve
from rtchub.settings import Settings, fields
from tests.conftest import ROOT, free_port, wait_port

RTCHUB = shutil.which("rtchub", path=str(ROOT / ".venv" / "bin")) or "rtchub"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any RTCHUB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCHUB_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RTCHUB, *args], env=env or clean_env(), capture_output=True, text=True,
                          timeout=60)


def write(tmp_path: Path, text: str, name: str = "rtchub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ resolve()
def test_defaults_when_nothing_is_given() -> None:
    r = resolve({}, environ={})
    assert r.settings == Settings()
    assert set(r.sources.values()) == {"default"}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 1111\nmax-msg-rate = 5\nhost = "0.0.0.0"\n'
                           'allowed-origin = ["https://file"]\n')
    r = resolve({"port": 3333}, config_file=str(path),
                environ={"RTCHUB_PORT": "2222", "RTCHUB_MAX_MSG_RATE": "7.5"})
    s = r.settings
    assert (s.port, s.max_msg_rate, s.host, s.allowed_origin) == (3333, 7.5, "0.0.0.0", ["https://file"])
    assert r.sources["port"] == "flag --port"
    assert r.sources["max_msg_rate"] == "env RTCHUB_MAX_MSG_RATE"
    assert r.sources["host"] == f"file {path}"
    assert r.sources["allowed_origin"] == f"file {path}"
    assert r.sources["heartbeat"] == "default"


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "max-room-members = 3\n")
    assert resolve({}, environ={"RTCHUB_CONFIG": str(path)}).settings.max_room_members == 3


def test_every_setting_can_live_in_the_file(tmp_path: Path) -> None:
    """One key per field, under its flag name, each with a non-default value of its type."""
    samples = {bool: "true", int: "7", float: "0.5", str: '"x"', list[str]: '["a", "b"]'}
    from rtchub.settings import field_type

    lines = [f"{f.name.replace('_', '-')} = {samples[field_type(f)]}" for f in fields()]
    r = resolve({}, config_file=str(write(tmp_path, "\n".join(lines))), environ={})
    for f in fields():
        assert r.sources[f.name] == f"file {tmp_path / 'rtchub.toml'}"
        assert getattr(r.settings, f.name) != getattr(Settings(), f.name), f.name


def test_underscore_keys_are_accepted_but_not_twice(tmp_path: Path) -> None:
    assert resolve({}, config_file=str(write(tmp_path, "max_msg_burst = 9\n")),
                   environ={}).settings.max_msg_burst == 9
    with pytest.raises(ConfigError, match="given twice"):
        resolve({}, config_file=str(write(tmp_path, "max_msg_burst = 9\nmax-msg-burst = 9\n")),
                environ={})


@pytest.mark.parametrize(("text", "reason"), [
    ("max-msg-rat = 20", "key 'max-msg-rat': unknown setting (did you mean 'max-msg-rate'?)"),
    ("[server]\nport = 1", "key 'server': unknown setting"),
    ('port = "80"', "key 'port': expected an integer, got str '80'"),
    ("port = 80.5", "key 'port': expected an integer, got float 80.5"),
    ("port = true", "key 'port': expected an integer, got bool True"),
    ("compression = 1", "key 'compression': expected a boolean, got int 1"),
    ("heartbeat = false", "key 'heartbeat': expected a number, got bool False"),
    ('allowed-origin = "https://a"', "key 'allowed-origin': expected an array of strings"),
    ("allowed-origin = [1]", "key 'allowed-origin': expected an array of strings"),
    ("host = ", "not valid TOML"),
])
def test_bad_file_names_the_file_the_key_and_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        resolve({}, config_file=str(path), environ={})
    assert str(info.value).startswith(f"{path}: ")
    assert reason in str(info.value)


def test_integer_in_a_float_setting_is_a_float(tmp_path: Path) -> None:
    s = resolve({}, config_file=str(write(tmp_path, "heartbeat = 5\n")), environ={}).settings
    assert s.heartbeat == 5.0 and isinstance(s.heartbeat, float)


def test_bad_environment_value_is_reported() -> None:
    with pytest.raises(ConfigError, match="environment RTCHUB_PORT: expected an integer, got 'eighty'"):
        resolve({}, environ={"RTCHUB_PORT": "eighty"})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve({}, config_file=str(tmp_path / "nope.toml"), environ={})


# ------------------------------------------------------------------ the CLI
def test_config_show_prints_values_sources_and_masks_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 1111\njwt-secret = "file-secret"\nturn-secret = ["t1", "t2"]\n'
                           'allowed-origin = ["https://a", "https://b"]\n')
    out = run_cli("config", "show", "--config", str(path), "--host", "0.0.0.0",
                  env=clean_env(RTCHUB_PORT="2222", RTCHUB_API_KEY="env-key"))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert rows["host"].split()[1:] == ["0.0.0.0", "flag", "--host"]
    assert rows["port"].split()[1:] == ["2222", "env", "RTCHUB_PORT"]
    assert rows["allowed-origin"].split(None, 1)[1].split() == [
        "https://a,", "https://b", "file", str(path)]
    assert rows["jwt-secret"].split()[1:] == [MASK, "file", str(path)]
    assert rows["api-key"].split()[1:] == [MASK, "env", "RTCHUB_API_KEY"]
    assert rows["heartbeat"].split()[1:] == ["20.0", "default"]
    for secret in ("file-secret", "t1", "t2", "env-key"):
        assert secret not in out.stdout
    assert f"config file: {path}" in out.stdout

    as_json = json.loads(run_cli("config", "show", "--json", "--config", str(path),
                                 env=clean_env(RTCHUB_API_KEY="env-key")).stdout)
    settings = as_json["settings"]
    assert settings["port"] == {"value": 1111, "source": f"file {path}"}
    assert settings["turn-secret"] == {"value": [MASK, MASK], "source": f"file {path}"}
    assert settings["api-key"]["value"] == MASK
    assert settings["webhook-secret"] == {"value": "", "source": "default"}
    assert len(settings) == len(fields())


@pytest.mark.parametrize("command", ["serve", "config show"])
def test_cli_refuses_a_bad_file_at_start(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, "port = 8080\nmax-msg-rat = 20\n")
    out = run_cli(*command.split(), "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"rtchub: configuration error: {path}: key 'max-msg-rat': "
                                  "unknown setting (did you mean 'max-msg-rate'?)")
    bad_type = write(tmp_path, 'heartbeat = "soon"\n', "typed.toml")
    out = run_cli(*command.split(), "--config", str(bad_type))
    assert out.returncode == 2
    assert f"{bad_type}: key 'heartbeat': expected a number, got str 'soon'" in out.stderr


async def test_serve_uses_the_file_under_env_and_flags(tmp_path: Path) -> None:
    """A real ``rtchub serve --config``: its port from the file, a file value
    overridden by the environment, an environment value overridden by a flag."""
    port = free_port()
    path = write(tmp_path, f'host = "127.0.0.1"\nport = {port}\nstun-port = 0\n'
                           'turn-secret = ["s"]\nturn-url = ["turn:file.invalid"]\n'
                           'stun-url = ["stun:file.invalid"]\n')
    proc = subprocess.Popen(
        [RTCHUB, "serve", "--config", str(path), "--stun-url", "stun:flag.invalid"],
        env=clean_env(RTCHUB_TURN_URL="turn:env.invalid", RTCHUB_STUN_URL="stun:env.invalid"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/ice-servers?userId=u") as resp:
            body: dict[str, Any] = await resp.json()
        urls = [u for server in body["iceServers"] for u in server["urls"]]
        assert urls == ["stun:flag.invalid", "turn:env.invalid"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    from rtchub import __version__

    assert out.stdout.strip() == f"rtchub {__version__}"


def test_serve_names_the_source_of_a_value_the_server_refuses(tmp_path: Path) -> None:
    """A well-typed value the server cannot use still fails at start, saying where it came from."""
    path = write(tmp_path, f'auth = "sometimes"\nport = {free_port()}\nstun-port = 0\n')
    out = run_cli("serve", "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.strip() == ("rtchub: configuration error: --auth must be none or jwt, not "
                                  f"'sometimes' (auth from file {path})")
    out = run_cli("serve", "--port", str(free_port()), "--stun-port", "0",
                  env=clean_env(RTCHUB_FORWARDED_ALLOW_IPS="10.0.0.0/8,proxy.example"))
    assert out.returncode == 2
    assert ("--forwarded-allow-ips: 'proxy.example' does not appear to be an IPv4 or IPv6 network"
            in out.stderr)
    assert out.stderr.strip().endswith("(forwarded-allow-ips from env RTCHUB_FORWARDED_ALLOW_IPS)")


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_config_examples_in_the_docs_are_valid(tmp_path: Path, doc: str) -> None:
    import re

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / doc).read_text(), re.S)
    assert blocks, f"{doc} has no TOML example"
    for i, block in enumerate(blocks):
        r = resolve({}, config_file=str(write(tmp_path, block, f"example{i}.toml")), environ={})
        assert r.settings.forwarded_allow_ips == ["127.0.0.1"]
