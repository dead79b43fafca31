"""``rtchub serve --workers N``: N processes on one port, each a node of the cluster.

Python runs one core per process; a machine with more cores runs more nodes.
Every worker listens on the same port with ``SO_REUSEPORT`` (the kernel
spreads new connections over them) and is an ordinary cluster node over the
configured broker, so clients on different workers talk to each other and
resume across them exactly as across machines (docs/scaling.md). The
in-memory broker cannot be shared between processes: N > 1 with it is
refused at start. SIGTERM (or SIGINT) to the parent is passed to every
worker, each of which drains as a single server does (1001 to its clients);
the parent exits when all have.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import secrets
import signal
import sys
from typing import Any

from rtchub.settings import Settings


def refusal(settings: Settings) -> str | None:
    """Why ``settings`` cannot run several workers (None when they can)."""
    if settings.broker in ("", "memory") or settings.broker.startswith("memory://"):
        return (f"--workers {settings.workers} needs a broker the worker processes share: the "
                "in-memory broker lives inside one process. Use --broker redis://host:port/db "
                "(or --workers 1).")
    if settings.port == 0:
        return "--workers needs a fixed --port (every worker listens on the same one)"
    return None


def worker_settings(settings: Settings, index: int, base: str) -> Settings:
    return dataclasses.replace(settings, workers=1, node_id=f"{base}-w{index}")


def run(settings: Settings) -> int:
    """Start the workers and wait for them; the exit code is the worst of theirs."""
    reason = refusal(settings)
    if reason is not None:
        print(f"rtchub serve: {reason}", file=sys.stderr)
        return 2
    base = settings.node_id or secrets.token_hex(4)
    ctx = multiprocessing.get_context("spawn")
    parent = os.getpid()
    procs = [ctx.Process(target=_worker, args=(worker_settings(settings, i, base), parent),
                         name=f"rtchub-worker-{i}") for i in range(settings.workers)]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()  # SIGTERM: the worker drains

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join()
        codes.append(p.exitcode or 0)
    return max((abs(c) for c in codes), default=0)


def _die_with(parent: int) -> None:
    """SIGTERM this worker when the parent dies, even by SIGKILL (Linux prctl(2)
    ``PR_SET_PDEATHSIG``): no worker outlives its ``rtchub serve``."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def _worker(settings: Settings, parent: int) -> None:
    import asyncio

    from rtchub.cli import _install_uvloop, serve
    from rtchub.logs import setup_logging

    _die_with(parent)
    # The parent forwards SIGINT as SIGTERM; a terminal's Ctrl-C must not
    # interrupt the workers a second time mid-drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(settings.log_level, settings.log_format)
    _install_uvloop()
    asyncio.run(serve(settings, reuse_port=True))
