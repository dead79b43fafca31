"""docs/deploy.md's nginx configuration, run through Debian's nginx, in front of rtchub.

The ``nginx`` block is read from the doc itself, with only what must differ
on a test machine substituted (ports, certificate paths), so a change to the
doc that breaks it breaks this test. rtchub runs with the doc's
``--forwarded-allow-ips 127.0.0.1``; the clients connect to nginx from other
loopback addresses (127.0.0.5, 127.0.0.6: all of 127/8 is loopback on Linux)
and each sends a forged ``X-Forwarded-For``. Over WebSocket, SSE and
long-polling, the server must know each client by the address nginx saw,
never by nginx's own address nor by the forged one, and its per-IP
connection cap must apply per client.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from rtchub.app import RtcHub
from tests.conftest import ROOT, eventually, free_port, wait_port

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY = ROOT / "docs" / "deploy.md"
FORGED = "203.0.113.66"


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DEPLOY.read_text(), re.S)


def doc_nginx_config(*, upstream: int, https: int, http: int, cert: Path, key: Path) -> str:
    """The doc's nginx block with this machine's ports and certificate."""
    [conf] = doc_blocks("nginx")
    subs = [
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream};"),
        (r"listen 443 ssl", f"listen 127.0.0.1:{https} ssl"),
        (r"listen 80;", f"listen 127.0.0.1:{http};"),
        (r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in subs:
        conf, n = re.subn(pattern, replacement, conf)
        assert n == 1, f"docs/deploy.md's nginx block no longer has {pattern!r}"
    return conf


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def nginx(tmp_path: Path, ca: trustme.CA) -> Iterator[Any]:
    """Start nginx with the doc's config in front of an upstream port; yields a starter."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> int:
        cert = ca.issue_cert("127.0.0.1")
        certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        https, http = free_port(), free_port()
        # nginx as the current user, everything it writes under tmp_path.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        temp = "\n".join(f"    {kind}_temp_path {tmp_path}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (tmp_path / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp_path}/access.log;
{temp}
{doc_nginx_config(upstream=upstream, https=https, http=http, cert=certfile, key=keyfile)}
}}
""")
        proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                 "-e", str(tmp_path / "error.log")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        try:
            wait_port(https, timeout=10)
        except TimeoutError:
            proc.kill()
            out = proc.communicate(timeout=5)[0].decode(errors="replace")
            log = (tmp_path / "error.log").read_text() if (tmp_path / "error.log").exists() else ""
            raise AssertionError(f"nginx did not start:\n{out}\n{log}") from None
        return https

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def client(ca: trustme.CA, address: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections leave from ``address``, trusting the test CA."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(address, 0)),
                                 headers={"X-Forwarded-For": FORGED})


def peer_of(app: RtcHub, session_id: str) -> str:
    return app.hub.sessions[session_id].sink.peer


def test_doc_keeps_the_per_ip_limits_on() -> None:
    [serve] = [b for b in doc_blocks("") if "rtchub serve --host 127.0.0.1" in b]
    assert "--forwarded-allow-ips 127.0.0.1" in serve
    assert "per-ip 0" not in serve


async def test_transports_through_the_documented_nginx_see_the_real_client(
        make_server: Any, nginx: Any, ca: trustme.CA) -> None:
    app = await make_server(forwarded_allow_ips=["127.0.0.1"], max_connections_per_ip=2)
    base = f"https://127.0.0.1:{nginx(app.port)}"

    async with client(ca, "127.0.0.5") as http, client(ca, "127.0.0.6") as other:
        # -- WebSocket: the welcome, then a join, through nginx's upgrade location.
        ws = await http.ws_connect(base + "/ws")
        welcome = orjson.loads((await ws.receive(timeout=10)).data)
        assert welcome["type"] == "welcome"
        await ws.send_str(orjson.dumps({"type": "join", "roomId": "lobby", "id": "j1"}).decode())
        joined = orjson.loads((await ws.receive(timeout=10)).data)
        assert joined["type"] == "room-info", joined
        assert peer_of(app, welcome["sessionId"]) == "127.0.0.5"

        # -- SSE: the first event is the welcome, unbuffered by nginx.
        sse = await http.get(base + "/sse", timeout=aiohttp.ClientTimeout(total=None))
        assert sse.status == 200, await sse.text()
        data = b""
        while b"\n\n" not in data:
            data += await asyncio.wait_for(sse.content.readany(), 10)
        sse_welcome = orjson.loads(re.search(rb"^data: (.*)$", data, re.M)[1])  # type: ignore[index]
        assert sse_welcome["type"] == "welcome"
        assert peer_of(app, sse_welcome["sessionId"]) == "127.0.0.5"

        # -- long-polling: open, send a join, poll the answer.
        async with http.post(base + "/poll/open", data=b"{}",
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            poll_welcome = await resp.json()
        sid = poll_welcome["sessionId"]
        assert peer_of(app, sid) == "127.0.0.5"
        async with http.post(f"{base}/send?session={sid}", json={"type": "join", "roomId": "lobby"}) as r:
            assert r.status == 202, await r.text()
        seen: list[str] = []
        after = 0
        while "room-info" not in seen:
            async with http.get(f"{base}/poll?session={sid}&after={after}") as resp:
                assert resp.status == 200, await resp.text()
                batch = await resp.json()
            for msg in batch:
                seen.append(msg["type"])
                after = max(after, msg["seq"])

        # -- the per-IP connection cap counts the real client: a second WebSocket
        # from 127.0.0.5 fits, a third does not; 127.0.0.6 still gets in.
        ws2 = await http.ws_connect(base + "/ws")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(base + "/ws")
        assert refused.value.status == 429
        ws3 = await other.ws_connect(base + "/ws")
        welcome3 = orjson.loads((await ws3.receive(timeout=10)).data)
        assert peer_of(app, welcome3["sessionId"]) == "127.0.0.6"
        limits = app.gatekeeper.limits
        assert limits.connections("127.0.0.5") == 2 and limits.connections("127.0.0.6") == 1
        for ip in ("127.0.0.1", FORGED):
            assert ip not in limits.open and ip not in limits.session_buckets
        assert {s.sink.peer for s in app.hub.sessions.values() if s.sink is not None} == {
            "127.0.0.5", "127.0.0.6"}

        # A closed WebSocket frees its place in the cap.
        await ws2.close()
        await eventually(lambda: limits.connections("127.0.0.5") == 1)
        ws4 = await http.ws_connect(base + "/ws")
        for conn in (ws, ws3, ws4):
            await conn.close()
        sse.close()
