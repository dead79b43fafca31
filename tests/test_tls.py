"""TLS served directly: ``--certfile`` / ``--keyfile`` give https:// and wss:// on the one port.

The certificate comes from a throwaway CA made by ``trustme`` for each test
session; clients trust that CA only, so a handshake that succeeds proves the
server presented the configured certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from rtchub.auth.tokens import mint
from rtchub.transports.ws import PicowsEndpoint
from rtchub.transports.ws_aiohttp import AiohttpEndpoint

SECRET = "tls-test-secret-0123456789-0123456789-00"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.mark.parametrize("compression", [False, True], ids=["picows", "aiohttp"])
async def test_wss_and_https(make_server, cert_files, client_ssl, compression):
    certfile, keyfile = cert_files
    app = await make_server(certfile=certfile, keyfile=keyfile, compression=compression)
    assert app.url.startswith("https://") and app.ws_url.startswith("wss://")
    async with aiohttp.ClientSession() as http, http.get(app.url + "/healthz", ssl=client_ssl) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    # A fresh client session: an upgrade on the keep-alive connection above
    # would be served by aiohttp whatever the settings (by design, mux.py).
    async with aiohttp.ClientSession() as http:
        users = []
        for name in ("alice", "bob"):
            ws = await http.ws_connect(app.ws_url, ssl=client_ssl, compress=15 if compression else 0)
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
            await ws.send_json({"type": "join", "roomId": "tls", "userId": name})
            assert (await ws.receive_json(timeout=5))["type"] == "room-info"
            users.append(ws)
        alice, bob = users
        await bob.send_json({"type": "message", "roomId": "tls", "data": "over TLS"})
        msg = await alice.receive_json(timeout=5)
        if msg["type"] == "user-joined":
            msg = await alice.receive_json(timeout=5)
        assert (msg["type"], msg["from"], msg["data"]) == ("message", "bob", "over TLS")
        assert {type(ep) for ep in app.liveness.endpoints} == {
            AiohttpEndpoint if compression else PicowsEndpoint}
        for ws in users:
            await ws.close()


async def test_tls_is_really_required(make_server, cert_files, client_ssl):
    certfile, keyfile = cert_files
    app = await make_server(certfile=certfile, keyfile=keyfile)
    async with aiohttp.ClientSession() as http:
        # A client that does not trust the test CA refuses the certificate.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.ws_connect(app.ws_url, ssl=ssl.create_default_context())
        # Plain text on the TLS port gets nowhere.
        with pytest.raises((aiohttp.ClientError, ConnectionError)):
            ws = await http.ws_connect(f"ws://127.0.0.1:{app.port}/ws")
            await ws.receive_json(timeout=5)
    assert not app.hub.sessions


async def test_wss_with_token(make_server, cert_files, client_ssl):
    certfile, keyfile = cert_files
    app = await make_server(certfile=certfile, keyfile=keyfile, auth="jwt", jwt_secret=SECRET)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(app.ws_url + "?token=" + mint(sub="eve", key="x" * 40), ssl=client_ssl)
        assert err.value.status == 401
        ws = await http.ws_connect(app.ws_url, ssl=client_ssl,
                                   headers={"Authorization": "Bearer " + mint(sub="alice", key=SECRET)})
        assert (await ws.receive_json(timeout=5))["userId"] == "alice"
        await ws.close()


async def test_rtchub_serve_with_certfile(server_process, cert_files, client_ssl):
    certfile, keyfile = cert_files
    proc: Any = server_process("--certfile", certfile, "--keyfile", keyfile)
    url = f"wss://127.0.0.1:{proc.port}/ws"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, ssl=client_ssl)
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        await ws.close()
    assert proc.terminate() == 0
    assert f"https://127.0.0.1:{proc.port}" in proc.output()
