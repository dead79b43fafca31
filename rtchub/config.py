"""Where each setting comes from: command line > environment > config file > default.

A deployment keeps its settings in a TOML file (``rtchub serve --config
rtchub.toml``, or ``RTCHUB_CONFIG``), read with the standard library's
``tomllib``. Its keys are the flag names without the dashes
(``max-msg-rate = 20``; ``max_msg_rate`` is accepted too), so one name works
in all three places. Everything is checked before the server starts: an
unknown key or a value of the wrong type stops ``rtchub serve`` with the
file, the key and the reason, rather than a default silently taking its
place (a misspelt ``max-msg-rat`` would otherwise leave the limit at its
default without anyone noticing).

The environment and the command line override the file because they are
what differs between machines that share one file (a secret from a systemd
``EnvironmentFile``, a port on one node). ``rtchub config show`` prints the
effective value of every setting and where it came from, secrets masked.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtchub.settings import Settings, field_type, fields, parse_value

#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "RTCHUB_CONFIG"
#: How a secret is shown by ``rtchub config show``.
MASK = "********"


class ConfigError(Exception):
    """A setting that cannot be used; the message names where it came from and why."""


@dataclass
class Resolved:
    """The effective settings and, per setting name, where its value came from."""

    settings: Settings
    #: name -> "default" | "file <path>" | "env RTCHUB_<NAME>" | "flag --<name>"
    sources: dict[str, str]
    config_file: str | None = None


def flag_name(name: str) -> str:
    return name.replace("_", "-")


def env_name(name: str) -> str:
    return "RTCHUB_" + name.upper()


def is_secret(name: str) -> bool:
    return bool(next(f for f in fields() if f.name == name).metadata.get("secret"))


def _type_name(kind: Any) -> str:
    if kind == list[str]:
        return "an array of strings"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[kind]


def _check_file_value(kind: Any, value: Any) -> Any:
    """The TOML value as the setting's type, or None when it is not one.

    TOML has its own types, so nothing is parsed from strings here: ``port =
    "80"`` is a mistake to report, not to guess at. bool is a subclass of int
    in Python, hence the explicit exclusions.
    """
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None
    if kind is str:
        return value if isinstance(value, str) else None
    if kind == list[str]:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return list(value) if ok else None
    raise TypeError(kind)  # pragma: no cover - a new field type needs a rule here


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a TOML file, checked: unknown keys and wrong types raise ConfigError."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    known = {f.name: f for f in fields()}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        f = known.get(name)
        if f is None or key.startswith("_"):
            close = difflib.get_close_matches(flag_name(name), [flag_name(n) for n in known], 1)
            hint = f"did you mean {close[0]!r}?" if close else "see `rtchub serve --help` for the names"
            raise ConfigError(f"{path}: key {key!r}: unknown setting ({hint})")
        if name in values:
            raise ConfigError(f"{path}: key {key!r}: given twice ({flag_name(name)} and {name})")
        kind = field_type(f)
        checked = _check_file_value(kind, value)
        if checked is None:
            raise ConfigError(f"{path}: key {key!r}: expected {_type_name(kind)}, "
                              f"got {type(value).__name__} {value!r}")
        values[name] = checked
    return values


def load_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``RTCHUB_<NAME>`` variables, parsed as the flags are; a bad one raises ConfigError."""
    values: dict[str, Any] = {}
    for f in fields():
        raw = environ.get(env_name(f.name))
        if raw is None:
            continue
        kind = field_type(f)
        try:
            values[f.name] = parse_value(kind, raw)
        except ValueError as exc:
            raise ConfigError(f"environment {env_name(f.name)}: expected {_type_name(kind)}, "
                              f"got {raw!r}") from exc
    return values


def resolve(flags: Mapping[str, Any] | None = None, *, config_file: str | None = None,
            environ: Mapping[str, str] | None = None) -> Resolved:
    """Settings from defaults, then the file, then the environment, then ``flags``.

    ``flags`` holds only what was given on the command line (already typed);
    ``config_file`` defaults to ``$RTCHUB_CONFIG``.
    """
    env = os.environ if environ is None else environ
    path = config_file or env.get(CONFIG_ENV) or None
    sources = {f.name: "default" for f in fields()}
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        layers.append((f"file {path}", load_file(path)))
    layers.append(("env", load_env(env)))
    layers.append(("flag", dict(flags or {})))
    for origin, layer in layers:
        for name, value in layer.items():
            values[name] = value
            sources[name] = {"env": f"env {env_name(name)}",
                             "flag": f"flag --{flag_name(name)}"}.get(origin, origin)
    return Resolved(Settings(**values), sources, str(Path(path)) if path else None)


def show_rows(resolved: Resolved) -> list[tuple[str, str, str]]:
    """(name, value, source) per setting, secrets masked: what ``rtchub config show`` prints."""
    rows = []
    for f in fields():
        value = getattr(resolved.settings, f.name)
        if f.metadata.get("secret") and value not in ("", []):
            shown = ", ".join(MASK for _ in value) if isinstance(value, list) else MASK
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, list):
            shown = ", ".join(value)
        else:
            shown = str(value)
        rows.append((flag_name(f.name), shown, resolved.sources[f.name]))
    return rows


def show_text(resolved: Resolved) -> str:
    rows = [("setting", "value", "source"), *show_rows(resolved)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{n:<{widths[0]}}  {v:<{widths[1]}}  {s}".rstrip() for n, v, s in rows]
    if resolved.config_file:
        lines.insert(0, f"# config file: {resolved.config_file}")
    return "\n".join(lines)


def show_json(resolved: Resolved) -> dict[str, Any]:
    """The same as :func:`show_text`, with typed values, for scripts."""
    out: dict[str, Any] = {}
    for f in fields():
        value = getattr(resolved.settings, f.name)
        if f.metadata.get("secret") and value not in ("", []):
            value = [MASK for _ in value] if isinstance(value, list) else MASK
        out[flag_name(f.name)] = {"value": value, "source": resolved.sources[f.name]}
    return {"configFile": resolved.config_file, "settings": out}
