"""The ``rtchub`` command: ``serve``, ``config show`` (and ``token``, ``bench``).

Flags are generated from :class:`rtchub.settings.Settings`, so a new setting
is a CLI flag, an ``RTCHUB_<NAME>`` environment variable and a ``--config``
file key the day it is added (precedence: :mod:`rtchub.config`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from rtchub import __version__
from rtchub.config import CONFIG_ENV, ConfigError, Resolved, resolve, show_json, show_text
from rtchub.logs import setup_logging
from rtchub.settings import Settings, field_type, fields, parse_value

log = logging.getLogger("rtchub")

#: Extra subcommands: name -> (help, add_arguments(parser), run(args) -> exit code).
#: Modules register here instead of growing this file.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"TOML file of settings, keys named as these flags [env {CONFIG_ENV}]; "
                             "flags and environment variables override it")
    for f in fields():
        kind = field_type(f)
        flag = "--" + f.name.replace("_", "-")
        env = "RTCHUB_" + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} [env {env}]"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif kind == list[str]:
            parser.add_argument(flag, dest=f.name, action="append", default=None,
                                help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, type=lambda raw, k=kind: parse_value(k, raw),
                                default=None, help=help_text)


def resolve_args(args: argparse.Namespace) -> Resolved:
    """Defaults < config file < environment < command line (:func:`rtchub.config.resolve`)."""
    flags = {f.name: getattr(args, f.name) for f in fields()
             if getattr(args, f.name, None) is not None}
    return resolve(flags, config_file=getattr(args, "config", None))


def settings_from_args(args: argparse.Namespace) -> Settings:
    return resolve_args(args).settings


def with_source(message: str, resolved: Resolved) -> str:
    """``--auth must be ...`` -> ``... (auth from file rtchub.toml)``: say where to fix it."""
    flag, _, _ = message.partition(" ")
    name = flag.removeprefix("--").rstrip(":").replace("-", "_")
    source = resolved.sources.get(name) if flag.startswith("--") else None
    return f"{message} ({flag.removeprefix('--').rstrip(':')} from {source})" if source else message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtchub", description="real-time communication server")
    parser.add_argument("--version", action="version", version=f"rtchub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    add_settings_arguments(serve)
    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show", help="print every setting's effective value and where it came from (secrets masked)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_settings_arguments(show)
    for name, (help_text, add_args, _) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    return parser


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    from rtchub.app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:  # a setting the server cannot use (--auth foo, a bad network...)
        raise ConfigError(str(exc)) from exc
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.auth == "none" and not _is_loopback(settings.host):
        log.warning("auth is 'none' and the server listens on %s: anyone who can reach it may "
                    "join any room. Use --auth jwt for anything but development.", settings.host)
    await app.start()
    _tune_gc()
    print(f"rtchub {__version__} serving on {app.url} (WebSocket {app.ws_url})", flush=True)
    await stop.wait()
    log.info("shutting down: closing clients with 1001")
    await app.stop()


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


#: Young-generation threshold of the cyclic GC for ``rtchub serve``.
#: CPython's default (700, 10, 10) collects generation 0 after every 700 net
#: container allocations. A join storm allocates sessions, members and
#: messages that all live on, so it ran ~290 collections per 20,000 joins and
#: spent ~30 % of the core's join time in them (``tools/gc_joins.py`` measures
#: it with gc.callbacks); at (50,000, 20, 100) the same joins take 3
#: collections and ~25 % less CPU. Relaying allocates and
#: frees per message, so its net count barely moves and collections stay rare
#: either way. Memory is not at risk: rtchub makes few reference cycles, and
#: the ones it makes are still collected, only in larger batches.
GC_THRESHOLD = (50_000, 20, 100)


def _tune_gc() -> None:
    """Tune this process's GC once the server has started (``rtchub serve`` only).

    Everything built so far (modules, routes, settings) lives as long as the
    process: frozen out of the collector's sight (the ``gc.freeze()`` recipe of
    the gc module's docs), full collections scan only what connections create.
    Then :data:`GC_THRESHOLD`.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def main(argv: Sequence[str] | None = None) -> int:
    _load_subcommands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "config"):
        try:
            resolved = resolve_args(args)
        except ConfigError as exc:
            parser.exit(2, f"rtchub: configuration error: {exc}\n")
        if args.command == "config":
            print(json.dumps(show_json(resolved), indent=2) if args.json else show_text(resolved))
            return 0
        settings = resolved.settings
        setup_logging(settings.log_level, settings.log_format)
        _install_uvloop()
        try:
            asyncio.run(serve(settings))
        except ConfigError as exc:
            parser.exit(2, f"rtchub: configuration error: {with_source(str(exc), resolved)}\n")
        return 0
    return SUBCOMMANDS[args.command][2](args)


def _load_subcommands() -> None:
    """Import the modules that register subcommands (kept optional and lazy)."""
    import importlib

    for module in ("rtchub.auth.tokens", "rtchub.bench.cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith("rtchub"):
                raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
