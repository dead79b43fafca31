"""Media scenarios of ``rtchub bench`` run in a private network namespace.

Chromium, aiortc and Janus gather ICE candidates on every interface but
loopback, so a media benchmark on the bare machine would send its RTP over
the machine's real address. The ``sfu`` and ``auto`` scenarios therefore run
their measuring module as a child under tools/netns-run (which also runs the
test suite), and each module refuses to measure outside one. The child prints
its result as one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
#: The flags TESTING-NOTES.md lists for headless fake-media calls on one machine
#: (tests/e2e/conftest.py launches Chromium with the same list).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    # LocalNetworkAccessChecks: a page served by page.route() has no address
    # space of its own, and Chromium would then refuse its requests to 127.0.0.1.
    "--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks",
    "--autoplay-policy=no-user-gesture-required",
    # Background tabs must keep their timers and media running.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def run_in_namespace(module: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run ``python -m module [--quick]`` under tools/netns-run; its last JSON line."""
    cmd = [str(ROOT / "tools" / "netns-run"), sys.executable, "-m", module]
    if quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1:] or "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def namespace_main(doc: str, measure: Callable[[bool], Coroutine[Any, Any, dict[str, Any]]]) -> int:
    """The child's entry point: refuse outside a namespace, else print ``measure``'s result."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("RTCHUB_NETNS"):
        print("refusing to send media outside a private namespace: run through tools/netns-run",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(measure(args.quick))))
    return 0
