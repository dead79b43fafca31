"""The Python asyncio SDK: a session that survives reconnects.

Delivery contract (docs/protocol.md "Delivery guarantee"): every message the
app sends (except ``ping``/``resume``/``auth``) gets an ``id`` and stays in
``unacked`` until the server's ``ack``. After a reconnect the client sends
``resume {sessionId, lastSeq}``; the server replays what this client missed,
and the client resends everything still un-acked (the server drops the ones
it had already accepted, by id). If the session is gone (``session-expired``)
the client adopts the new session, joins its rooms again and resends what
still means something in the new session: chat and app messages, and joins
not yet answered. Un-acked signaling (``offer``/``answer``/``candidate``/
``signal``) is dropped and its sender told ``session-expired``: it belonged
to peer connections that the peers tear down when they see the rejoin, and
an old offer arriving after that would start a negotiation nobody expects.
Un-acked ``leave`` is done (the new session is in no room). The browser SDK
does the same (rtchub/web/sdk/hub.js ``_resumeFailed``).
Incoming messages with ``seq <= lastSeq`` are duplicates and are dropped.

(Over 500 lines on purpose: the delivery contract, resume, the transport
switch and the rejoin after ``session-expired`` are one state machine that
reads best in one place; the transports themselves are in transports*.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from rtchub.client.transports import TRANSPORTS, Transport, TransportClosed, make_transport
from rtchub.protocol.constants import RELAY_TYPES
from rtchub.protocol.errors import CloseCode, ErrorCode

log = logging.getLogger("rtchub.client")

#: Server messages the SDK consumes itself rather than handing to the app.
_INTERNAL = frozenset({"welcome", "ack", "resumed", "pong"})
#: 1000 we closed; 4001/4003 auth refused (retrying cannot help); 4009 another
#: connection resumed this session - reconnecting would steal it back.
NO_RECONNECT_CODES = frozenset({CloseCode.NORMAL, CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN,
                                CloseCode.TAKEN_OVER})
#: States in which the session is usable (the browser SDK's ``online``).
_ONLINE = frozenset({"connected", "resumed", "rejoined"})
#: Defaults of the browser SDK (rtchub/web/sdk/hub.js): ``probeIntervalMs``
#: and ``welcomeTimeoutMs``.
PROBE_INTERVAL = 60.0
WELCOME_TIMEOUT = 4.0


#: SFU messages that describe a room's tracks (docs/protocol.md "SFU media").
TRACK_EVENTS = frozenset({"tracks", "tracks-published", "tracks-unpublished", "track-muted"})
#: Past this many announcements without a new snapshot the oldest are dropped.
MAX_TRACK_EVENTS = 1024


class ClientError(Exception):
    """An ``error`` answer from the server."""

    def __init__(self, code: str, message: str = "", msg: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg = msg or {}


class Client:
    """A connection to an rtchub server.

    ``url`` is the server's base (``http://host:port``) or a WebSocket URL
    (``ws://host:port/ws``). ``transport`` is ``websocket``, ``sse``,
    ``polling`` or ``auto`` (WebSocket, falling back to SSE, then polling).

    On ``auto``, a session that landed on SSE or polling tries WebSocket again
    every ``probe_interval`` seconds (twice that after a failed try; ``None``
    never) and, when it gets through, moves the session onto it with
    ``resume``, as the browser SDK does: a proxy that refused the upgrade
    once should not pin the session to a slower transport for good.
    """

    def __init__(
        self,
        url: str,
        *,
        transport: str = "websocket",
        codec: str = "json",
        token: str | None = None,
        reconnect: bool = True,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        ack_timeout: float = 10.0,
        probe_interval: float | None = PROBE_INTERVAL,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.transport_kind = transport
        self.codec = codec
        self.token = token
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.ack_timeout = ack_timeout
        self.probe_interval = probe_interval
        self._http = session
        self._own_http = session is None
        self.session_id: str | None = None
        self.user_id: str | None = None
        self.last_seq = 0
        self.state = "new"
        self.rooms: dict[str, dict[str, Any]] = {}   # roomId -> join message
        self.unacked: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._waiters: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}
        #: roomId -> the SFU track announcements heard in it, from its latest ``tracks``
        #: snapshot on: the server sends that snapshot right after a join, usually
        #: before the app has made its ``SfuMedia``, which replays them (rtchub.client.media).
        self.track_events: dict[str, list[dict[str, Any]]] = {}
        self._transport: Transport | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        #: One ordered queue and one writer task per transport: resends after a
        #: resume must reach the server before anything the app sends next.
        self._outq: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._welcome: asyncio.Future[dict[str, Any]] | None = None
        self._resume_id: str | None = None
        self._pending_new_session: tuple[str | None, int] = (None, 0)
        self._ice: tuple[float, dict[str, Any]] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._switching = False
        self.transport_name: str | None = None
        self.close_code: int | None = None
        self.states: list[str] = []

    # ------------------------------------------------------------------ events
    def on(self, event: str, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``callback(msg)`` for server messages of type ``event`` or for ``state``."""
        self._listeners.setdefault(event, []).append(callback)

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        for cb in self._listeners.get(event, ()):
            try:
                cb(payload)
            except Exception:  # pragma: no cover - an app bug must not kill the reader
                log.exception("listener for %s failed", event)

    def _set_state(self, state: str, **extra: Any) -> None:
        self.state = state
        self.states.append(state)
        # Like the browser SDK: probe from every fresh start online, never while
        # (re)connecting, so a probe cannot race a reconnect.
        self._cancel_probe()
        if state in _ONLINE and self._probe_wanted():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())
        self._emit("state", {"state": state, "transport": self.transport_name, **extra})

    # ------------------------------------------------------------- lifecycle
    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Open the transport and wait for ``welcome``; returns it."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._set_state("connecting")
        welcome = await asyncio.wait_for(self._open(), timeout)
        self._set_state("connected")
        return welcome

    async def _open(self) -> dict[str, Any]:
        assert self._http is not None
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        transport = await make_transport(self.transport_kind, self._http, self.url,
                                         codec=self.codec, token=self.token,
                                         welcome_timeout=WELCOME_TIMEOUT)
        self._use(transport)
        self._reader = loop.create_task(self._read(transport))
        welcome = await self._welcome
        return welcome

    def _use(self, transport: Transport) -> None:
        """Make ``transport`` the one sends go to, with a fresh ordered write queue."""
        self._transport = transport
        self.transport_name = transport.name
        if self._writer is not None:
            self._writer.cancel()
        self._outq = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(transport, self._outq))

    async def close(self) -> None:
        """Close cleanly (code 1000): the server ends the session at once."""
        self._closing = True
        self._cancel_probe()
        if self._transport is not None:
            await self._transport.close()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("client closed"))
        if self._own_http and self._http is not None:
            await self._http.close()
        self._set_state("closed")

    async def abort(self) -> None:
        """Drop the connection without a close frame (tests: a network failure)."""
        if self._transport is not None:
            self._transport.abort()

    # ---------------------------------------------------------------- reading
    async def _read(self, transport: Transport,
                    messages: AsyncIterator[dict[str, Any]] | None = None) -> None:
        try:
            async for msg in messages or transport.messages():
                if transport is not self._transport:
                    # Switched away (probe): the new transport's resume replays
                    # everything after lastSeq, so nothing here is needed.
                    break
                self._handle(msg)
        except TransportClosed:
            pass
        except Exception:
            log.debug("transport read failed", exc_info=True)
        if transport is not self._transport:
            return
        self.close_code = transport.close_code
        if self._closing:
            return
        if self._switching and transport.close_code not in NO_RECONNECT_CODES:
            return  # drained for a switch: the probe resumes the session on its transport
        self._connected.clear()
        if self.reconnect and transport.close_code not in NO_RECONNECT_CODES:
            asyncio.get_running_loop().create_task(self._reconnect())
        else:
            self._set_state("closed", code=transport.close_code)
            self._inbox.put_nowait({"type": "_closed", "code": transport.close_code})

    def _handle(self, msg: dict[str, Any]) -> None:
        mtype = msg.get("type")
        seq = msg.get("seq")
        if mtype == "welcome":
            fut = self._welcome
            if self.session_id is None:
                self.session_id = msg.get("sessionId")
                self.last_seq = 0
                self.user_id = msg.get("userId", self.user_id)
                self._connected.set()
            self._pending_new_session = (msg.get("sessionId"), 0)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if self._resume_id is not None and mtype == "error" and msg.get("id") == self._resume_id:
            # The old session is gone: this connection's own session takes over.
            self._resume_id = None
            new_id, _ = self._pending_new_session
            self.session_id = new_id
            self.last_seq = seq if isinstance(seq, int) else 0
            asyncio.get_running_loop().create_task(self._rejoin())
            return
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return  # replayed twice: already delivered
            self.last_seq = seq
        if mtype == "resumed":
            self._resume_id = None
            self._connected.set()
            self._set_state("resumed", replayed=msg.get("replayed", 0))
            self._resend()
            return
        consumed = False
        if mtype == "ack" or (mtype == "error" and "id" in msg) or (mtype == "pong" and "id" in msg):
            mid = msg.get("id")
            self.unacked.pop(mid, None)
            fut = self._waiters.pop(mid, None)
            if fut is not None and not fut.done():
                consumed = True
                if mtype == "error":
                    fut.set_exception(ClientError(msg.get("code", ""), msg.get("message", ""), msg))
                else:
                    fut.set_result(msg)
        elif mtype == "room-info":
            fut = self._waiters.get(("join", msg.get("roomId")))
            if fut is not None and not fut.done():
                fut.set_result(msg)
                consumed = True
        # Answers a caller awaited are theirs; everything else is the app's.
        if mtype in TRACK_EVENTS and isinstance(msg.get("roomId"), str):
            events = self.track_events.setdefault(msg["roomId"], [])
            if mtype == "tracks" or len(events) >= MAX_TRACK_EVENTS:
                events.clear()  # a snapshot supersedes what came before it
            events.append(msg)
        self._emit(mtype or "", msg)
        if consumed or mtype in _INTERNAL:
            return
        self._inbox.put_nowait(msg)

    # ------------------------------------------------------------- reconnect
    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            attempt += 1
            # Exponential backoff with full jitter (AWS architecture blog's
            # "Exponential Backoff And Jitter"): spreads a reconnect storm.
            delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
            self._set_state("reconnecting", attempt=attempt, delay=delay)
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self._open(), 10)
            except Exception:
                log.debug("reconnect attempt %d failed", attempt, exc_info=True)
                continue
            if self.session_id is not None:
                self._send_resume()
            return

    def _send_resume(self) -> None:
        self._resume_id = f"resume-{next(self._ids)}"
        self._enqueue({"type": "resume", "sessionId": self.session_id,
                       "lastSeq": self.last_seq, "id": self._resume_id})

    # ------------------------------------------------------------ probe upward
    def _probe_wanted(self) -> bool:
        return (self.transport_kind == "auto" and self.probe_interval is not None
                and self.transport_name not in (None, "websocket") and not self._closing)

    def _cancel_probe(self) -> None:
        task = self._probe_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._probe_task = None

    async def _probe_loop(self) -> None:
        assert self.probe_interval is not None
        delay = self.probe_interval
        while True:
            await asyncio.sleep(delay)
            if not self._connected.is_set() or not self._probe_wanted():
                return
            if await self._probe():
                return
            # As the browser SDK: after a failed probe, wait twice as long.
            delay = self.probe_interval * 2

    async def _probe(self) -> bool:
        """Try WebSocket while on SSE/polling; on ``welcome``, switch the session to it."""
        assert self._http is not None
        http = self._http
        probe: Transport | None = None
        messages: AsyncIterator[dict[str, Any]] | None = None

        async def attempt() -> dict[str, Any]:
            nonlocal probe, messages
            probe = await TRANSPORTS["websocket"](http, self.url, codec=self.codec, token=self.token)
            messages = probe.messages()
            return await anext(messages)

        try:
            welcome: dict[str, Any] | None = await asyncio.wait_for(attempt(), WELCOME_TIMEOUT)
        except asyncio.CancelledError:
            if probe is not None:
                probe.abort()
            raise
        except Exception:  # refused upgrade, unreachable, no welcome in time
            log.debug("probe for websocket failed", exc_info=True)
            welcome = None
        if probe is None or messages is None:
            return False
        if (welcome is None or welcome.get("type") != "welcome"
                or not self._connected.is_set() or not self._probe_wanted()):
            await probe.close()  # 1000: the server drops the probe's fresh session at once
            return False
        old, old_reader = self._transport, self._reader
        assert old is not None
        # Resume only once the old transport has nothing in flight (drain): a
        # poll of it reaching the server after the resume would take the session back.
        self._switching = True
        try:
            old.drain()
            if old_reader is not None:
                await asyncio.wait_for(asyncio.shield(old_reader), WELCOME_TIMEOUT)
        except TimeoutError:
            log.debug("old transport did not drain in time; dropping it")
        except asyncio.CancelledError:
            probe.abort()
            raise
        finally:
            self._switching = False
        if self._closing or self._transport is not old:
            await probe.close()
            return False
        self._switch(probe, messages, welcome)
        return True

    def _switch(self, transport: Transport, messages: AsyncIterator[dict[str, Any]],
                welcome: dict[str, Any]) -> None:
        """Move the session onto ``transport``: resume there, then drop the old one.

        The old transport (drained) is dropped without ``/close``, the session
        must live on; the server replays everything after ``lastSeq`` on the
        new transport and un-acked sends are resent after ``resumed``, in
        order, deduplicated by id.
        """
        old = self._transport
        loop = asyncio.get_running_loop()
        self._connected.clear()
        self._use(transport)
        self._handle(welcome)  # the probe's own session, adopted if the resume fails
        self._send_resume()
        self._reader = loop.create_task(self._read(transport, messages))
        if old is not None:
            old.drop()

    async def _rejoin(self) -> None:
        """Fresh session after ``session-expired``: join the rooms again, then resend."""
        self._drop_stale()
        for join in list(self.rooms.values()):
            msg = dict(join)
            msg["id"] = f"rejoin-{next(self._ids)}"
            self._enqueue(msg)
        self._connected.set()
        self._set_state("rejoined")
        self._resend()

    def _drop_stale(self) -> None:
        """Forget the un-acked messages that have no meaning in a new session (module doc)."""
        for mid, msg in list(self.unacked.items()):
            mtype = msg.get("type")
            if mtype in RELAY_TYPES:
                outcome: dict[str, Any] | ClientError = ClientError(
                    ErrorCode.SESSION_EXPIRED, "session expired before the server took it", msg)
            elif mtype == "leave" or (mtype == "join" and msg.get("roomId") in self.rooms):
                outcome = {"type": "ack", "id": mid}  # the rejoin below stands for it
            else:
                continue
            del self.unacked[mid]
            fut = self._waiters.pop(mid, None)
            if fut is not None and not fut.done():
                if isinstance(outcome, ClientError):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    def _resend(self) -> None:
        for msg in list(self.unacked.values()):
            self._enqueue(msg)

    # ---------------------------------------------------------------- sending
    def _enqueue(self, msg: dict[str, Any]) -> None:
        self._outq.put_nowait(msg)

    async def _write_loop(self, transport: Transport, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            msg = await queue.get()
            try:
                await transport.send(msg)
            except Exception:
                # The transport died: what mattered is still in ``unacked``
                # and is resent after the resume.
                log.debug("write failed; will resend after reconnect", exc_info=True)
                return

    async def _write(self, msg: dict[str, Any]) -> None:
        self._enqueue(msg)

    def _track(self, msg: dict[str, Any]) -> Any:
        if "id" not in msg:
            msg = dict(msg)
            msg["id"] = next(self._ids)
        self.unacked[msg["id"]] = msg
        return msg

    async def send(self, msg: dict[str, Any]) -> Any:
        """Send without waiting for the ack; returns the id. Resent after a resume."""
        if msg.get("type") in ("ping", "resume", "auth"):
            await self._write(msg)
            return msg.get("id")
        msg = self._track(msg)
        if self._connected.is_set():
            await self._write(msg)
        return msg["id"]

    async def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send and wait for the ``ack`` (or raise :class:`ClientError`)."""
        msg = self._track(msg)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[msg["id"]] = fut
        if self._connected.is_set():
            await self._write(msg)
        return await asyncio.wait_for(fut, timeout or self.ack_timeout)

    async def join(self, room_id: str, user_id: str | None = None,
                   display_name: str | None = None, timeout: float | None = None,
                   media: str | None = None) -> dict[str, Any]:
        """Join a room; returns ``room-info`` (raises :class:`ClientError` on refusal).

        ``media`` (``mesh`` or ``sfu``) is the mode asked for if this join creates the room.
        """
        msg: dict[str, Any] = {"type": "join", "roomId": room_id}
        if media is not None:
            msg["media"] = media
        if user_id is not None:
            msg["userId"] = user_id
        if display_name is not None:
            msg["displayName"] = display_name
        info_fut = asyncio.get_running_loop().create_future()
        self._waiters[("join", room_id)] = info_fut
        try:
            await self.request(msg, timeout)
            info = await asyncio.wait_for(info_fut, timeout or self.ack_timeout)
        finally:
            self._waiters.pop(("join", room_id), None)
        self.rooms[room_id] = {k: v for k, v in msg.items() if k != "id"}
        if user_id is not None:
            self.user_id = user_id
        return info

    async def refresh_token(self, token: str) -> dict[str, Any]:
        """Replace the session's token before it expires (answer to ``token-expiring``).

        Sends an ``auth`` message with it (under the current token, which is
        still valid when this answers ``token-expiring``) and, once the server
        accepted it, uses it from then on: for every HTTP request of SSE and
        polling (which prove the identity per request) and for reconnects.
        Returns the ``ack``; a token for another user raises :class:`ClientError`
        ``forbidden`` and the current token stays.
        """
        ack = await self.request({"type": "auth", "token": token})
        self.token = token
        if self._transport is not None:
            self._transport.token = token
        return ack

    async def leave(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)
        await self.request({"type": "leave", "roomId": room_id})
        self.track_events.pop(room_id, None)

    async def relay(self, mtype: str, room_id: str, to: str, **fields: Any) -> Any:
        return await self.send({"type": mtype, "roomId": room_id, "to": to, **fields})

    async def ice_servers(self) -> dict[str, Any]:
        """``GET /ice-servers``: STUN URLs and TURN credentials for this user (cached until
        shortly before their ``ttl`` runs out)."""
        from rtchub.ice.client import fetch_ice_servers

        loop = asyncio.get_running_loop()
        cached = self._ice
        if cached is not None and loop.time() < cached[0]:
            return cached[1]
        answer = await fetch_ice_servers(self.url, token=self.token, user_id=self.user_id)
        ttl = float(answer.get("ttl") or 0)
        self._ice = (loop.time() + max(0.0, ttl * 0.8), answer)
        return answer

    async def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        mid = f"ping-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._waiters[mid] = fut
        await self._write({"type": "ping", "id": mid, "timestamp": asyncio.get_running_loop().time()})
        return await asyncio.wait_for(fut, timeout)

    # -------------------------------------------------------------- receiving
    async def recv(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """Next app-level message (``welcome``/``ack``/``pong``/``resumed`` are consumed)."""
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def recv_type(self, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
        """Next message of type ``mtype``, skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.0, deadline - loop.time()))
            if msg.get("type") == mtype:
                return msg

    def pending(self) -> list[dict[str, Any]]:
        """Messages received and not yet taken with :meth:`recv`."""
        out = []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await self._inbox.get()
            if msg.get("type") == "_closed":
                return
            yield msg

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
