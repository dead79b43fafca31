"""Shared fixtures: real servers on free ports, real sockets, nothing mocked.

``make_server(**settings)`` starts an in-process rtchub (the same
``create_app`` that ``rtchub serve`` uses) on 127.0.0.1 with a free port and
the STUN server off unless asked for; it is stopped after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rtchub.app import RtcHub, create_app

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on every local address (the wildcard bind checks them all).

    Binding 127.0.0.1 alone would only say loopback is free; a server started
    with ``--host 0.0.0.0`` also collides with sockets on the namespace's veth
    addresses (browsers and Janus hold many there during the suite).
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class Servers:
    """``await servers(**settings)`` starts an in-process server; all stop at teardown."""

    def __init__(self) -> None:
        self.started: list[RtcHub] = []

    async def __call__(self, **overrides: Any) -> RtcHub:
        overrides.setdefault("host", "127.0.0.1")
        overrides.setdefault("port", 0)
        overrides.setdefault("stun_port", 0)
        app = create_app(**overrides)
        await app.start()
        self.started.append(app)
        return app

    async def stop(self, app: RtcHub) -> None:
        """Stop one server early (a restart test), leaving the others."""
        if app in self.started:
            self.started.remove(app)
            await app.stop()

    async def stop_all(self) -> None:
        for app in reversed(self.started):
            await app.stop()
        self.started.clear()


@pytest.fixture
async def make_server() -> AsyncIterator[Servers]:
    servers = Servers()
    yield servers
    await servers.stop_all()


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[RtcHub]]) -> RtcHub:
    """A server with the default settings."""
    return await make_server()


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class ServerProcess:
    """``rtchub serve`` as a real child process (for signals, kill -9, restarts)."""

    def __init__(self, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.extra = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.port), "--stun-port", "0", *self.extra]

    def start(self) -> ServerProcess:
        """Start ``rtchub serve`` and wait until it listens.

        ``free_port()`` only says the port was free a moment ago: under a full
        suite, client sockets churn through the same ephemeral range and one
        may take it before the server binds. Then (and only for a port we
        chose) the start is retried on another port; any other early exit
        fails with the server's own output.
        """
        exe = shutil.which("rtchub", path=str(ROOT / ".venv" / "bin")) or "rtchub"
        for _attempt in range(3):
            self.proc = subprocess.Popen([exe, "serve", *self.args], env=self.env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            else:
                self.kill()
                raise TimeoutError(f"rtchub serve did not listen on {self.port} within 20 s:\n"
                                   + self.output()[-3000:])
            out = self.output()
            if self.fixed_port or "address already in use" not in out.lower():
                raise RuntimeError(f"rtchub serve exited with {self.proc.returncode}:\n{out[-3000:]}")
            self.port = free_port()
        raise RuntimeError("rtchub serve found no free port in 3 attempts; its last output:\n"
                           + self.output()[-3000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def output(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")


@pytest.fixture
def server_process() -> Any:
    procs: list[ServerProcess] = []

    def start(*args: str, **kw: Any) -> ServerProcess:
        p = ServerProcess(*args, **kw).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


class Raw:
    """A bare aiohttp WebSocket that shows every frame, for exact assertions."""

    def __init__(self, ws: Any, http: Any) -> None:
        self.ws = ws
        self.http = http

    @classmethod
    async def open(cls, app: RtcHub, path: str = "/ws", **kw: Any) -> Raw:
        import aiohttp

        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{app.port}{path}", **kw)
        return cls(ws, http)

    async def send(self, msg: Any) -> None:
        import json

        await self.ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        import json

        import aiohttp

        frame = await self.ws.receive(timeout)
        if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return json.loads(frame.data)
        return {"type": "_closed", "code": self.ws.close_code, "frame": frame.type}

    async def expect(self, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.recv(timeout)
        assert msg["type"] == mtype, msg
        return msg

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def joined(app: RtcHub, room: str, user: str, name: str | None = None, **kw: Any) -> Raw:
    """A raw client that has seen ``welcome`` and joined ``room`` as ``user``."""
    c = await Raw.open(app, **kw)
    await c.expect("welcome")
    msg: dict[str, Any] = {"type": "join", "roomId": room, "userId": user}
    if name:
        msg["displayName"] = name
    await c.send(msg)
    await c.expect("room-info")
    return c


async def eventually(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> None:
    """Wait until ``check()`` is true; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s: {check}")


class Coturn:
    """A private coturn (Debian /usr/bin/turnserver) on loopback checking TURN REST credentials.

    Flags from TESTING-NOTES.md: ``use-auth-secret`` + ``static-auth-secret``
    (several allowed, for rotation), loopback peers allowed, no TLS.
    """

    def __init__(self, secrets: list[str], workdir: Path) -> None:
        self.port = free_port()
        base = 40000 + (self.port % 200) * 100  # a relay port range of its own
        self.relay_ports = range(base, base + 100)
        self.log_path = workdir / f"turnserver-{self.port}.log"
        self.args = [
            "/usr/bin/turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={self.port}",
            "--relay-ip=127.0.0.1", "--use-auth-secret",
            *[f"--static-auth-secret={s}" for s in secrets], "--realm=test",
            "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
            f"--min-port={base}", f"--max-port={base + 99}", "--log-file=stdout", "--simple-log",
            f"--pidfile={workdir / f'turnserver-{self.port}.pid'}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Coturn:
        assert shutil.which("turnserver"), "coturn is missing (make system-deps installs it)"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT)
        wait_port(self.port)  # it listens on TCP and UDP alike
        return self

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


@pytest.fixture
def coturn(tmp_path: Path) -> Any:
    """Factory: ``coturn(secret, ...)`` starts a TURN server; all are stopped after the test."""
    started: list[Coturn] = []

    def start(*secrets: str) -> Coturn:
        server = Coturn(list(secrets), tmp_path).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
