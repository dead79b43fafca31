"""One resume decision, with auth on: a resume proves the session's identity on every transport.

Issue 13 item 1 (impersonation): a session that never authenticated must not
be resumable into an authenticated one, and a token whose ``sub`` differs
from the session's identity is refused with ``forbidden``. The same verdict
(:meth:`rtchub.core.hub.Hub.resume_decision`) is asked by the WebSocket
``resume`` message, SSE's ``Last-Event-ID``, a poll of another session and the
cluster's take-over; one test per transport proves it.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests/test_cluster.py are parameters here
from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from rtchub.auth.tokens import mint
from rtchub.client import Client
from rtchub.client.client import ClientError
from rtchub.protocol.constants import SESSION_HEADER
from tests.conftest import Raw, eventually
from tests.redis_fixture import redis_server  # noqa: F401
from tests.test_cluster import broker_url, nodes, peers, room_name  # noqa: F401
from tests.test_sse import SseReader

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(sub: str, ttl: float = 600, **kw: Any) -> str:
    return mint(sub=sub, key=SECRET, ttl=ttl, **kw)


def bearer(sub: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **kw)}"}


async def jwt_server(make_server: Any, **kw: Any) -> Any:
    kw.setdefault("auth", "jwt")
    kw.setdefault("jwt_secret", SECRET)
    kw.setdefault("auth_timeout", 5.0)
    kw.setdefault("grace_period", 10)
    return await make_server(**kw)


async def member(app: Any, room: str, sub: str) -> Raw:
    c = await Raw.open(app, path=f"/ws?token={token(sub)}")
    await c.expect("welcome")
    await c.send({"type": "join", "roomId": room})
    await c.expect("room-info")
    return c


# ------------------------------------------------------------------ WebSocket
async def test_ws_unauthenticated_session_cannot_be_resumed_by_a_token(make_server: Any) -> None:
    """The issue's steps: A opens without a token, B (valid token) resumes A, then joins as anyone."""
    app = await jwt_server(make_server)
    alice = await member(app, "r", "alice")
    a = await Raw.open(app)  # no token: an ``auth`` message is allowed within auth_timeout
    sid_a = (await a.expect("welcome"))["sessionId"]
    b = await Raw.open(app, path=f"/ws?token={token('mallory')}")
    await b.expect("welcome")
    await b.send({"type": "resume", "sessionId": sid_a, "lastSeq": 0, "id": "r1"})
    err = await b.expect("error")
    assert (err["code"], err["id"]) == ("forbidden", "r1")
    await b.send({"type": "join", "roomId": "r", "userId": "ceo", "id": "j1"})
    msg = await b.recv()
    # B kept its own identity: either refused as ceo, or joined as mallory.
    assert msg["type"] == "error" and msg["code"] == "forbidden", msg
    await b.send({"type": "join", "roomId": "r", "id": "j2"})
    assert (await b.expect("room-info"))["roomId"] == "r"
    seen = await alice.expect("user-joined")
    assert seen["userId"] == "mallory"
    assert all(s.user_id != "ceo" for s in app.hub.sessions.values())
    assert sid_a in app.hub.sessions and app.hub.sessions[sid_a].claims is None
    for c in (alice, a, b):
        await c.close()


async def test_ws_resume_with_a_foreign_token_is_forbidden(make_server: Any) -> None:
    app = await jwt_server(make_server)
    victim = await member(app, "r", "alice")
    sid = app.hub.sessions[next(iter(app.hub.sessions))].id
    victim.ws._response.connection.transport.abort()  # noqa: SLF001 - unclean drop: grace period
    await eventually(lambda: app.hub.sessions[sid].sink is None)
    thief = await Raw.open(app, path=f"/ws?token={token('mallory')}")
    await thief.expect("welcome")
    await thief.send({"type": "resume", "sessionId": sid, "lastSeq": 0, "id": 7})
    err = await thief.expect("error")
    assert (err["code"], err["id"]) == ("forbidden", 7)
    assert app.hub.sessions[sid].user_id == "alice" and app.hub.sessions[sid].sink is None
    owner = await Raw.open(app, path=f"/ws?token={token('alice')}")
    await owner.expect("welcome")
    await owner.send({"type": "resume", "sessionId": sid, "lastSeq": 0, "id": 8})
    while (msg := await owner.recv())["type"] != "resumed":
        pass
    assert msg["sessionId"] == sid
    for c in (thief, owner):
        await c.close()
    await victim.http.close()


# ------------------------------------------------------------------------ SSE
async def test_sse_resume_needs_the_sessions_own_identity(make_server: Any) -> None:
    app = await jwt_server(make_server)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(app.url + "/sse", params={"token": token("alice")})
        sse = SseReader(resp)
        sid = (await sse.next())["data"]["sessionId"]
        sse.abort()
        await eventually(lambda: app.hub.sessions[sid].sink is None)
        last = {"Last-Event-ID": f"{sid}.0"}
        async with http.get(app.url + "/sse", params={"token": token("mallory")}, headers=last) as r:
            assert r.status == 403 and (await r.json())["code"] == "forbidden"
        async with http.get(app.url + "/sse", headers=last) as r:
            assert r.status == 401
        # A WebSocket that never authenticated cannot be resumed over SSE either.
        raw = await Raw.open(app)
        unauth = (await raw.expect("welcome"))["sessionId"]
        async with http.get(app.url + "/sse", params={"token": token("mallory"),
                                                       "lastEventId": f"{unauth}.0"}) as r:
            assert r.status == 403
        assert app.hub.sessions[unauth].claims is None and app.hub.sessions[sid].sink is None
        # The owner's own (fresh) token resumes it.
        resp = await http.get(app.url + "/sse", params={"token": token("alice", ttl=900)},
                              headers=last)
        own = SseReader(resp)
        assert (await own.until("resumed"))["data"]["sessionId"] == sid
        assert app.hub.sessions[sid].claims["exp"] > time.time() + 800
        own.resp.close()
        await raw.close()


# -------------------------------------------------------------------- polling
async def poll_open(http: aiohttp.ClientSession, app: Any, sub: str, **kw: Any) -> str:
    async with http.post(app.url + "/poll/open", headers=bearer(sub, **kw)) as resp:
        assert resp.status == 200
        return (await resp.json())["sessionId"]


async def poll(http: aiohttp.ClientSession, app: Any, sid: str, after: int,
               headers: dict[str, str], timeout: float = 0) -> tuple[int, Any]:
    async with http.get(app.url + "/poll", params={"after": str(after), "timeout": str(timeout)},
                        headers={SESSION_HEADER: sid, **headers}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def send(http: aiohttp.ClientSession, app: Any, sid: str, body: Any,
               headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(app.url + "/send", data=orjson.dumps(body),
                         headers={SESSION_HEADER: sid, **headers}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_poll_send_and_close_need_the_sessions_own_identity(make_server: Any) -> None:
    app = await jwt_server(make_server)
    alice = await member(app, "r", "bob")
    async with aiohttp.ClientSession() as http:
        sid = await poll_open(http, app, "alice")
        mine, theirs = bearer("alice"), bearer("mallory")
        assert (await send(http, app, sid, {"type": "join", "roomId": "r"}, mine))[0] == 202
        assert (await alice.expect("user-joined"))["userId"] == "alice"
        # Someone else's token: refused on every route, nothing reaches the room.
        status, err = await poll(http, app, sid, 0, theirs)
        assert (status, err["code"]) == (403, "forbidden")
        status, err = await send(http, app, sid, {"type": "message", "roomId": "r", "data": "x"},
                                 theirs)
        assert (status, err["code"]) == (403, "forbidden")
        async with http.post(app.url + "/close", headers={SESSION_HEADER: sid, **theirs}) as r:
            assert r.status == 403
        # No token, or a bad one: 401, as at the handshake.
        for bad in ({}, bearer("alice", ttl=-5), {"Authorization": "Bearer x.y.z"}):
            assert (await poll(http, app, sid, 0, bad))[0] == 401
            assert (await send(http, app, sid, {"type": "ping"}, bad))[0] == 401
        # ``?session=`` and ``?token=`` in the URL still work for outside clients.
        async with http.post(app.url + "/send", params={"session": sid, "token": token("alice")},
                             data=orjson.dumps({"type": "message", "roomId": "r", "data": "ok"})
                             ) as r:
            assert r.status == 202
        msg = await alice.expect("message")
        assert (msg["from"], msg["data"]) == ("alice", "ok")
        # A WebSocket session that never authenticated is nobody's to poll.
        raw = await Raw.open(app)
        unauth = (await raw.expect("welcome"))["sessionId"]
        assert (await poll(http, app, unauth, 0, mine))[0] == 403
        assert (await send(http, app, unauth, {"type": "join", "roomId": "r"}, mine))[0] == 403
        assert app.hub.sessions[unauth].claims is None
        await raw.close()
    await alice.close()


async def test_poll_token_expiry_ends_the_session(make_server: Any) -> None:
    """Issue 13 item 2: an expired poll session delivers nothing either way, and members see it leave."""
    app = await jwt_server(make_server, grace_period=1)
    bob = await member(app, "r", "bob")
    async with aiohttp.ClientSession() as http:
        expiring = bearer("alice", ttl=2)
        sid = await poll_open(http, app, "alice", ttl=2)
        assert (await send(http, app, sid, {"type": "join", "roomId": "r"}, expiring))[0] == 202
        await bob.expect("user-joined")
        got: list[dict[str, Any]] = []
        after = 0
        while not any(m.get("type") == "close" for m in got):
            status, batch = await poll(http, app, sid, after, expiring, timeout=5)
            assert status == 200
            got += batch
            after = max([after] + [m["seq"] for m in batch if "seq" in m])
        types = [m["type"] for m in got]
        assert "token-expiring" in types
        assert got[-2]["code"] == "unauthorized" and got[-1]["code"] == 4001
        # The expired token can neither poll (no re-resume) nor send.
        assert (await poll(http, app, sid, after, expiring))[0] == 401
        status, _ = await send(http, app, sid, {"type": "message", "roomId": "r", "data": "late"},
                               expiring)
        assert status == 401
        left = await bob.expect("user-left", timeout=5)
        assert (left["userId"], left["reason"]) == ("alice", "disconnected")
        assert sid not in app.hub.sessions
    await bob.close()


async def test_fresh_auth_over_send_extends_a_poll_session(make_server: Any) -> None:
    app = await jwt_server(make_server, grace_period=1)
    bob = await member(app, "r", "bob")
    async with aiohttp.ClientSession() as http:
        sid = await poll_open(http, app, "alice", ttl=2)
        fresh_token = token("alice", ttl=600)
        fresh = {"Authorization": f"Bearer {fresh_token}"}
        assert (await send(http, app, sid, [{"type": "join", "roomId": "r"},
                                            {"type": "auth", "token": fresh_token, "id": "a"}],
                           fresh))[0] == 202
        await bob.expect("user-joined")
        await asyncio.sleep(3)  # past the first token's expiry
        status, batch = await poll(http, app, sid, 0, fresh)
        assert status == 200
        assert not any(m["type"] == "close" or m.get("code") == "unauthorized" for m in batch)
        assert (await send(http, app, sid, {"type": "message", "roomId": "r", "data": "hi"},
                           fresh))[0] == 202
        assert (await bob.expect("message"))["data"] == "hi"
    await bob.close()


# ------------------------------------------------------------------ cross-node
async def test_cross_node_resume_and_requests_need_the_sessions_own_identity(
        nodes: Any) -> None:
    """Node B holds nothing of alice's session: its take-over (and a forwarded
    ``/send`` or ``/close``) still gets the hub's verdict, so a foreign token
    is refused on every transport there."""
    a, b = await nodes(2, grace_period=10, auth="jwt", jwt_secret=SECRET, auth_timeout=5.0)
    room = room_name()
    async with aiohttp.ClientSession() as http:
        # An HTTP session on A, used through B: foreign tokens refused by A's hub.
        sid = await poll_open(http, a, "alice")
        mine, theirs = bearer("alice"), bearer("mallory")
        status, err = await send(http, b, sid, {"type": "join", "roomId": room}, theirs)
        assert (status, err["code"]) == (403, "forbidden")
        assert not a.hub.sessions[sid].rooms
        async with http.post(b.url + "/close", headers={SESSION_HEADER: sid, **theirs}) as r:
            assert r.status == 403
        assert (await send(http, b, sid, {"type": "join", "roomId": room}, mine))[0] == 202
        await eventually(lambda: room in a.hub.sessions[sid].rooms)
        # The poller goes quiet: its session is up for resume, on any node.
        a.hub.detach(a.hub.sessions[sid], clean=False)
        status, err = await poll(http, b, sid, 0, theirs)
        assert (status, err["code"]) == (403, "forbidden")
        async with http.get(b.url + "/sse", params={"token": token("mallory"),
                                                     "lastEventId": f"{sid}.0"}) as r:
            assert r.status == 403
        thief = await Raw.open(b, path=f"/ws?token={token('mallory')}")
        await thief.expect("welcome")
        await thief.send({"type": "resume", "sessionId": sid, "lastSeq": 0, "id": "r"})
        err = await thief.expect("error")
        assert (err["code"], err["id"]) == ("forbidden", "r")
        await thief.close()
        # Refused by the node that holds it: the session did not even move.
        assert sid in a.hub.sessions and sid not in b.hub.sessions
        # The owner's token resumes it on B, with nothing missed.
        status, batch = await poll(http, b, sid, 0, mine)
        assert status == 200 and batch[-1]["type"] == "resumed"
        assert [m["type"] for m in batch][:1] == ["room-info"]
        assert sid in b.hub.sessions and b.hub.sessions[sid].user_id == "alice"


async def test_cross_node_foreign_resume_does_not_disturb_a_live_session(nodes: Any) -> None:
    """A foreign token's ``resume`` on another node must not take the session over
    (which would close its live connection with 4009)."""
    a, b = await nodes(2, grace_period=10, auth="jwt", jwt_secret=SECRET, auth_timeout=5.0)
    alice = await Raw.open(a, path=f"/ws?token={token('alice')}")
    sid = (await alice.expect("welcome"))["sessionId"]
    await alice.send({"type": "join", "roomId": room_name()})
    await alice.expect("room-info")
    await eventually(lambda: sid in a.cluster.meta_known)
    thief = await Raw.open(b, path=f"/ws?token={token('mallory')}")
    await thief.expect("welcome")
    await thief.send({"type": "resume", "sessionId": sid, "lastSeq": 0, "id": "r"})
    err = await thief.expect("error")
    assert (err["code"], err["id"]) == ("forbidden", "r")
    await alice.send({"type": "ping", "timestamp": 5})
    assert (await alice.expect("pong"))["timestamp"] == 5
    assert a.hub.sessions[sid].sink is not None and sid not in b.hub.sessions
    for c in (alice, thief):
        await c.close()


# ------------------------------------------------------------------ Python SDK
@pytest.mark.parametrize("transport", ["websocket", "sse", "polling"])
async def test_python_sdk_keeps_credentials_out_of_urls(make_server: Any, transport: str) -> None:
    """The SDK proves its identity on every request with auth on, and neither the
    token nor the session id is ever in a URL it requests."""
    app = await jwt_server(make_server)
    bob = await member(app, "r", "bob")
    urls: list[str] = []

    async def on_start(_session: Any, _ctx: Any, params: Any) -> None:
        urls.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        client = Client(app.url, transport=transport, token=token("alice"), session=http)
        await client.connect()
        await client.join("r")
        assert (await bob.expect("user-joined"))["userId"] == "alice"
        await client.request({"type": "message", "roomId": "r", "data": "hello"})
        msg = await bob.expect("message")
        assert (msg["from"], msg["data"]) == ("alice", "hello")
        await client.close()
    assert urls
    for url in urls:
        assert "token=" not in url and "session=" not in url, url
    await bob.close()


@pytest.mark.parametrize("transport", ["websocket", "sse", "polling"])
async def test_python_sdk_refreshes_its_token_before_expiry(make_server: Any, transport: str) -> None:
    app = await jwt_server(make_server, grace_period=1)
    bob = await member(app, "r", "bob")
    async with Client(app.url, transport=transport, token=token("alice", ttl=3)) as client:
        warned = asyncio.Event()
        client.on("token-expiring", lambda _m: warned.set())
        await client.join("r")
        await bob.expect("user-joined")
        await asyncio.wait_for(warned.wait(), 5)
        assert (await client.refresh_token(token("alice", ttl=600)))["type"] == "ack"
        await asyncio.sleep(3)  # past the first token's expiry
        await client.request({"type": "message", "roomId": "r", "data": "still here"})
        assert (await bob.expect("message"))["data"] == "still here"
        assert "closed" not in client.states and "reconnecting" not in client.states, client.states
        with pytest.raises(ClientError) as refused:
            await client.refresh_token(token("mallory"))
        assert refused.value.code == "forbidden"
    await bob.close()


@pytest.mark.parametrize("transport", ["websocket", "sse", "polling"])
async def test_python_sdk_resumes_under_auth_after_a_server_close(make_server: Any,
                                                                 transport: str) -> None:
    """The SDK's own resume (a ``resume`` message, or a poll of the old session) proves
    the identity like any other request: with its token it gets its session back."""
    app = await jwt_server(make_server, max_msg_rate=0)
    bob = await member(app, "r", "bob")
    async with Client(app.url, transport=transport, token=token("alice"),
                      backoff_base=0.05) as client:
        await client.join("r")
        await bob.expect("user-joined")
        old = client.session_id
        app.hub.close(app.hub.sessions[old], 1011, "test")
        for i in range(3):
            await bob.send({"type": "message", "roomId": "r", "to": "alice", "data": i})
        got = [(await client.recv_type("message", timeout=10))["data"] for _ in range(3)]
        assert got == [0, 1, 2]
        await eventually(lambda: "resumed" in client.states)
        assert client.session_id == old and "rejoined" not in client.states
    await bob.close()
