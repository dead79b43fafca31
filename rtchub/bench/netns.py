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
import shutil
import socket
import subprocess
import sys
import time
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


class SfuServer:
    """``rtchub serve --sfu local`` as a child process in the namespace, limits off.

    ``extra`` are more ``rtchub serve`` flags (the ``auto`` scenario shortens
    ``--auto-p2p-after``).
    """

    def __init__(self, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        exe = shutil.which("rtchub", path=str(Path(sys.executable).parent)) or "rtchub"
        self.proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--stun-port", "0",
             "--sfu", "local", "--sfu-ice-ip", os.environ["RTCHUB_NETNS"], "--max-msg-rate", "0",
             "--max-joins-per-second", "0", "--log-level", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
