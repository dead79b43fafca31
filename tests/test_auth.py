"""Tokens: every refusal of issue 8, against a real server over real sockets.

Handshake refusals (HTTP 401 before upgrade) and in-session refusals (an
``error`` and, for a missing or expired authentication, close 4001).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rtchub.auth.tokens import TokenError, TokenVerifier, mint
from rtchub.settings import Settings
from tests.conftest import ROOT

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(sub: str = "alice", *, key: Any = SECRET, alg: str = "HS256", **kw: Any) -> str:
    return mint(sub=sub, key=key, algorithm=alg, **kw)


async def jwt_server(make_server: Any, **kw: Any) -> Any:
    kw.setdefault("auth", "jwt")
    kw.setdefault("jwt_secret", SECRET)
    kw.setdefault("auth_timeout", 0.6)
    return await make_server(**kw)


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return orjson.loads(msg.data)


async def recv_type(ws: aiohttp.ClientWebSocketResponse, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = await recv(ws, timeout)
        if msg["type"] == mtype:
            return msg


async def closed_with(ws: aiohttp.ClientWebSocketResponse,
                      timeout: float = 5.0) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; return the close code and what came before."""
    before = []
    while True:
        msg = await ws.receive(timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            before.append(orjson.loads(msg.data))
            continue
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        return ws.close_code, before


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


# ------------------------------------------------------------------ handshake
@pytest.mark.parametrize("compression", [False, True], ids=["picows", "aiohttp"])
@pytest.mark.parametrize("case", ["bad-signature", "expired", "garbage", "alg-none", "no-exp"])
async def test_bad_token_is_refused_with_401_before_upgrade(make_server, http, case, compression):
    app = await jwt_server(make_server, compression=compression)
    bad = {
        "bad-signature": token(key="another-secret-of-at-least-32-bytes!!"),
        "expired": token(ttl=-5),
        "garbage": "not.a.jwt",
        "alg-none": jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
        "no-exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    }[case]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{app.ws_url}?token={bad}", compress=15 if compression else 0)
    assert err.value.status == 401
    # Bearer header: the same refusal.
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(app.ws_url, headers={"Authorization": f"Bearer {bad}"},
                              compress=15 if compression else 0)
    assert err.value.status == 401


async def test_refusal_reason_is_in_the_401_body(make_server):
    app = await jwt_server(make_server)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /ws?token=" + token(ttl=-5).encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert b"WWW-Authenticate: Bearer" in answer
    assert b"token expired" in answer


@pytest.mark.parametrize("how", ["query", "bearer"])
async def test_valid_token_fixes_user_and_name(make_server, http, how):
    app = await jwt_server(make_server)
    t = token("alice", name="Alice A.")
    if how == "query":
        ws = await http.ws_connect(f"{app.ws_url}?token={t}")
    else:
        ws = await http.ws_connect(app.ws_url, headers={"Authorization": f"Bearer {t}"})
    welcome = await recv(ws)
    assert welcome["type"] == "welcome" and welcome["userId"] == "alice"
    other = await http.ws_connect(f"{app.ws_url}?token={token('bob')}")
    await recv(other)
    await other.send_json({"type": "join", "roomId": "r1"})
    await recv_type(other, "room-info")
    await ws.send_json({"type": "join", "roomId": "r1", "id": 1})
    info = await recv_type(ws, "room-info")
    assert info["users"] == ["bob"]
    joined = await recv_type(other, "user-joined")
    assert joined["userId"] == "alice" and joined["displayName"] == "Alice A."
    # Longer than auth_timeout: an authenticated connection is not closed.
    await asyncio.sleep(0.9)
    await ws.send_json({"type": "ping", "timestamp": 7})
    assert (await recv_type(ws, "pong"))["timestamp"] == 7
    await ws.close()
    await other.close()


# ------------------------------------------------------------ in the session
async def test_no_token_no_auth_message_closes_4001(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(app.ws_url)
    assert (await recv(ws))["type"] == "welcome"
    # Before authenticating, a join is refused but the connection stays open.
    await ws.send_json({"type": "join", "roomId": "r1", "id": "j"})
    err = await recv(ws)
    assert err["type"] == "error" and err["code"] == "unauthorized" and err["id"] == "j"
    code, before = await closed_with(ws)
    assert code == 4001
    assert [m["code"] for m in before if m["type"] == "error"] == ["unauthorized"]
    assert not app.hub.sessions


async def test_bad_auth_message_is_an_error_then_4001(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(app.ws_url)
    await recv(ws)
    wrong = token(key="wrong-secret-wrong-secret-wrong-secret")
    await ws.send_json({"type": "auth", "token": wrong, "id": 1})
    err = await recv(ws)
    assert (err["type"], err["code"], err["id"]) == ("error", "unauthorized", 1)
    assert "signature" in err["message"]
    await ws.send_json({"type": "auth", "token": token(ttl=-1), "id": 2})
    err = await recv(ws)
    assert (err["code"], err["message"]) == ("unauthorized", "token expired")
    code, _ = await closed_with(ws)
    assert code == 4001


async def test_first_message_auth(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(app.ws_url)
    welcome = await recv(ws)
    assert "userId" not in welcome
    await ws.send_json({"type": "auth", "token": token("carol", rooms=["lobby"]), "id": "a"})
    assert await recv(ws) == {"type": "ack", "id": "a", "seq": 1}
    await asyncio.sleep(0.9)  # past auth_timeout: still open
    await ws.send_json({"type": "join", "roomId": "lobby", "id": "j"})
    info = await recv(ws)
    assert info["type"] == "room-info"
    assert app.hub.rooms["lobby"].members["carol"].session.user_id == "carol"
    await ws.close()


async def test_sub_mismatch_is_forbidden(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(f"{app.ws_url}?token={token('alice')}")
    await recv(ws)
    await ws.send_json({"type": "join", "roomId": "r1", "userId": "bob", "id": 5})
    err = await recv(ws)
    assert (err["type"], err["code"], err["id"]) == ("error", "forbidden", 5)
    assert "r1" not in app.hub.rooms
    # An auth message with another user's token cannot switch identity either.
    await ws.send_json({"type": "auth", "token": token("bob"), "id": 6})
    err = await recv(ws)
    assert (err["code"], err["id"]) == ("forbidden", 6)
    # Naming itself is fine.
    await ws.send_json({"type": "join", "roomId": "r1", "userId": "alice", "id": 7})
    assert (await recv(ws))["type"] == "room-info"
    await ws.close()


async def test_room_not_granted_is_forbidden(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(f"{app.ws_url}?token={token('alice', rooms=['team-*', 'lobby'])}")
    await recv(ws)
    for room, ok in [("team-a", True), ("lobby", True), ("other", False), ("team", False),
                     ("TEAM-a", False), ("lobby2", False)]:
        await ws.send_json({"type": "join", "roomId": room, "id": room})
        answer = await recv(ws)
        if ok:
            assert answer["type"] == "room-info", (room, answer)
            assert await recv(ws) == {"type": "ack", "id": room, "seq": answer["seq"] + 1}
        else:
            assert (answer["type"], answer["code"], answer["id"]) == ("error", "forbidden", room)
    assert set(app.hub.sessions[next(iter(app.hub.sessions))].rooms) == {"team-a", "lobby"}
    await ws.close()


async def test_token_expiry_warns_then_closes_4001(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(f"{app.ws_url}?token={token('alice', ttl=2)}")
    await recv(ws)
    await ws.send_json({"type": "join", "roomId": "r1"})
    await recv_type(ws, "room-info")
    code, before = await closed_with(ws, timeout=6)
    assert code == 4001
    types = [m["type"] for m in before]
    assert "token-expiring" in types
    assert before[-1]["type"] == "error" and before[-1]["code"] == "unauthorized"
    assert before[-1]["message"] == "token expired"
    assert types.index("token-expiring") < len(types) - 1


async def test_fresh_auth_keeps_the_session(make_server, http):
    app = await jwt_server(make_server)
    ws = await http.ws_connect(f"{app.ws_url}?token={token('alice', ttl=2)}")
    await recv(ws)
    warning = await recv_type(ws, "token-expiring", timeout=4)
    assert 0 <= warning["expiresIn"] <= 2
    await ws.send_json({"type": "auth", "token": token("alice", ttl=60), "id": "re"})
    assert (await recv_type(ws, "ack"))["id"] == "re"
    await asyncio.sleep(1.5)  # well past the first token's expiry
    await ws.send_json({"type": "ping", "timestamp": 1})
    assert (await recv_type(ws, "pong"))["timestamp"] == 1
    assert not ws.closed
    await ws.close()


async def test_resume_needs_authentication(make_server, http):
    app = await jwt_server(make_server, grace_period=10)
    ws = await http.ws_connect(f"{app.ws_url}?token={token('alice')}")
    sid = (await recv(ws))["sessionId"]
    await ws.send_json({"type": "join", "roomId": "r1"})
    await recv_type(ws, "room-info")
    ws._response.connection.transport.abort()  # unclean drop: grace period
    await asyncio.sleep(0.1)
    thief = await http.ws_connect(app.ws_url)
    await recv(thief)
    await thief.send_json({"type": "resume", "sessionId": sid, "lastSeq": 1, "id": 1})
    err = await recv(thief)
    assert (err["code"], err["id"]) == ("unauthorized", 1)
    mallory = await http.ws_connect(f"{app.ws_url}?token={token('mallory')}")
    await recv(mallory)
    await mallory.send_json({"type": "resume", "sessionId": sid, "lastSeq": 1, "id": 1})
    assert (await recv(mallory))["code"] == "forbidden"
    owner = await http.ws_connect(f"{app.ws_url}?token={token('alice', ttl=600)}")
    await recv(owner)
    await owner.send_json({"type": "resume", "sessionId": sid, "lastSeq": 1, "id": 1})
    resumed = await recv_type(owner, "resumed")
    assert resumed["sessionId"] == sid
    assert app.hub.sessions[sid].claims["exp"] > time.time() + 500
    for w in (thief, mallory, owner):
        await w.close()


# ----------------------------------------------------- /ice-servers, keys, CLI
async def test_http_routes_need_the_token(make_server, http):
    app = await jwt_server(make_server)
    async with http.get(f"{app.url}/ice-servers") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "unauthorized"
    async with http.get(f"{app.url}/ice-servers", params={"token": token(ttl=-1)}) as resp:
        assert resp.status == 401
    async with http.get(f"{app.url}/ice-servers",
                        headers={"Authorization": f"Bearer {token('alice')}"}) as resp:
        assert resp.status == 200


def _pem_pair(kind: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.mark.parametrize("kind,alg", [("rsa", "RS256"), ("ec", "ES256")])
async def test_public_key_tokens(make_server, http, tmp_path, kind, alg):
    private, public = _pem_pair(kind)
    (tmp_path / "pub.pem").write_bytes(public)
    (tmp_path / "priv.pem").write_bytes(private)
    app = await make_server(auth="jwt", jwt_public_key=str(tmp_path / "pub.pem"))
    out = subprocess.run([str(ROOT / ".venv/bin/rtchub"), "token", "--sub", "dave", "--room", "team-*",
                          "--private-key", str(tmp_path / "priv.pem")],
                         capture_output=True, text=True, check=True)
    good = out.stdout.strip()
    assert jwt.get_unverified_header(good)["alg"] == alg
    ws = await http.ws_connect(f"{app.ws_url}?token={good}")
    assert (await recv(ws))["userId"] == "dave"
    await ws.close()
    # An HS256 token signed with the PEM public key as secret (algorithm confusion).
    forged = jwt.encode({"sub": "dave", "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{app.ws_url}?token={forged}")
    assert err.value.status == 401
    other_private, _ = _pem_pair(kind)
    (tmp_path / "other.pem").write_bytes(other_private)
    key = serialization.load_pem_private_key(other_private, None)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{app.ws_url}?token={mint(sub='dave', key=key, algorithm=alg)}")
    assert err.value.status == 401


def test_token_cli_mints_what_the_server_accepts():
    out = subprocess.run([str(ROOT / ".venv/bin/rtchub"), "token", "--sub", "alice", "--room", "team-*",
                          "--ttl", "3600", "--name", "Alice"],
                         env={"RTCHUB_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    claims = TokenVerifier(Settings(auth="jwt", jwt_secret=SECRET)).verify(out.stdout.strip())
    assert claims["sub"] == "alice" and claims["rooms"] == ["team-*"] and claims["name"] == "Alice"
    assert 3590 <= claims["exp"] - time.time() <= 3600
    with pytest.raises(TokenError, match="signature"):
        TokenVerifier(Settings(auth="jwt", jwt_secret="z" * 40)).verify(out.stdout.strip())
    refused = subprocess.run([str(ROOT / ".venv/bin/rtchub"), "token", "--sub", "alice"],
                             env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert refused.returncode == 2 and "secret" in refused.stderr


def test_verifier_configuration_errors():
    with pytest.raises(ValueError, match="jwt-secret"):
        TokenVerifier(Settings(auth="jwt"))
    with pytest.raises(ValueError, match="32 bytes"):
        TokenVerifier(Settings(auth="jwt", jwt_secret="short"))
    v = TokenVerifier(Settings(auth="jwt", jwt_secret=SECRET))
    for claims, match in [({"sub": "a b"}, "sub"), ({"sub": "a", "rooms": 3}, "rooms"),
                          ({"sub": "a", "name": "x" * 65}, "name"), ({"exp": 2**31}, "sub")]:
        with pytest.raises(TokenError, match=match):
            v.verify(jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256"))


def test_auth_none_warns_on_non_loopback_host(server_process):
    loud = server_process("--host", "0.0.0.0")
    assert loud.terminate() == 0
    assert "auth is 'none'" in loud.output()
    quiet = server_process()
    assert quiet.terminate() == 0
    assert "auth is 'none'" not in quiet.output()
    secure = server_process("--host", "0.0.0.0", "--auth", "jwt", "--jwt-secret", SECRET)
    assert secure.terminate() == 0
    assert "auth is 'none'" not in secure.output()


async def test_sse_and_polling_take_the_same_tokens(make_server, http):
    app = await jwt_server(make_server)
    async with http.post(f"{app.url}/poll/open") as resp:
        assert resp.status == 401
    async with http.post(f"{app.url}/poll/open", params={"token": token(key="x" * 40)}) as resp:
        assert resp.status == 401
    async with http.post(f"{app.url}/poll/open",
                         headers={"Authorization": f"Bearer {token('pat', rooms=['a'])}"}) as resp:
        assert resp.status == 200
        sid = (await resp.json())["sessionId"]
    assert app.hub.sessions[sid].user_id == "pat"
    async with http.get(f"{app.url}/sse") as resp:
        assert resp.status == 401
    async with http.get(f"{app.url}/sse", params={"token": token("sam")}) as resp:
        assert resp.status == 200
        line = b""
        while b"welcome" not in line:
            line = await asyncio.wait_for(resp.content.readline(), 5)
        assert any(s.user_id == "sam" and s.claims for s in app.hub.sessions.values())
