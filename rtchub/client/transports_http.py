"""SSE and long-polling transports of the Python SDK (docs/transports.md).

Both look to :class:`~rtchub.client.Client` exactly like the WebSocket
transport: an async iterator of server messages plus ``send(msg)``. Upstream
is ``POST /send?session=ID``; sends are queued and posted by one task per
transport, several at a time as one JSON array, so they reach the server in
the order the app sent them (concurrent POSTs on separate connections could
overtake each other).

Resume happens inside the transport first, the way a browser's EventSource
does it: a dropped SSE stream is reopened with ``Last-Event-ID:
<sessionId>.<seq>``; a failed poll is repeated with the same ``after``. The
server replays what was missed, so the Client only sees a ``resumed``
message (SSE) or nothing at all (polling). Only when that fails for longer
than ``RESUME_WINDOW`` seconds, or the server says ``session-expired``, does
the message iterator end, and the Client's own reconnect opens a fresh
transport and sends ``resume``: SSE forwards it to the server like any
message (the server moves the stream onto the old session); polling turns it
into a poll of the old session with ``after=lastSeq`` (the server refuses a
``resume`` message from a polling session, see :mod:`rtchub.transports.poll`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from rtchub.client.transports import TRANSPORTS, Transport, TransportClosed, base_url
from rtchub.protocol.constants import SESSION_HEADER

log = logging.getLogger("rtchub.client.http")

#: Seconds a transport keeps trying to resume on its own before it gives up
#: and lets the Client reconnect (below the server's default 30 s grace period).
RESUME_WINDOW = 10.0
JSON_HEADERS = {"Content-Type": "application/json"}


class HttpRefused(ConnectionError):
    """The server answered a 4xx: retrying the same request will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        try:
            self.error: dict[str, Any] = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.error = {}

    @property
    def expired(self) -> bool:
        return self.status == 404 and self.error.get("code") == "session-expired"


async def _check(resp: aiohttp.ClientResponse, *ok: int) -> None:
    if resp.status not in ok:
        body = await resp.text()
        resp.release()
        if 400 <= resp.status < 500:
            raise HttpRefused(resp.status, body)
        raise ConnectionError(f"HTTP {resp.status}: {body[:200]}")


def _abort_response(resp: aiohttp.ClientResponse | None) -> None:
    """Drop the TCP connection under ``resp`` (tests: a network failure)."""
    if resp is None:
        return
    conn = resp.connection
    if conn is not None and conn.transport is not None:
        conn.transport.abort()
    else:
        resp.close()


class _HttpTransport(Transport):
    """What SSE and polling share: the base URL, the ordered upstream, ``/close``."""

    #: Queued sends beyond which ``send`` waits for the POST (back-pressure).
    MAX_QUEUED = 64

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http = http
        self.base = base_url(url)
        self.token = token
        self.session_id: str | None = None
        self.closed = False
        #: Set by :meth:`drain`: finish what is in flight, then end ``messages()``.
        self.draining = False
        self._outq: deque[tuple[dict[str, Any], asyncio.Future[None]]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def _headers(self, session_id: str | None = None, **extra: str) -> dict[str, str]:
        """Credentials travel in headers, never in the URL (PROTOCOL.md "SSE and
        long-polling"): the token as ``Authorization: Bearer`` (RFC 6750 section
        2.1) and the session id as ``X-RtcHub-Session``."""
        headers = dict(extra)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if session_id:
            headers[SESSION_HEADER] = session_id
        return headers

    async def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            raise TransportClosed("transport closed")
        fut = self._push(msg)
        if len(self._outq) > self.MAX_QUEUED:
            # Back-pressure only when the server falls behind; otherwise return
            # at once so that a burst (ICE candidates) goes out as one POST.
            await fut

    def _push(self, msg: dict[str, Any]) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._outq.append((msg, fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        return fut

    async def send_raw(self, data: str | bytes) -> aiohttp.ClientResponse:
        """POST a body as is (tests: malformed input); returns the response, read."""
        async with self.http.post(f"{self.base}/send", data=data,
                                  headers=self._headers(self.session_id, **JSON_HEADERS)) as resp:
            await resp.read()
            return resp

    async def _send_loop(self) -> None:
        while self._outq:
            batch = list(self._outq)
            self._outq.clear()
            msgs = [msg for msg, _ in batch]
            try:
                await self._post(msgs)
            except Exception as exc:
                # Lost sends are the Client's to resend (un-acked after resume).
                log.debug("POST /send failed", exc_info=True)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()  # retrieved: nobody may be awaiting it
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _post(self, msgs: list[dict[str, Any]]) -> None:
        body = orjson.dumps(msgs[0] if len(msgs) == 1 else msgs)
        async with self.http.post(f"{self.base}/send", data=body,
                                  headers=self._headers(self.session_id, **JSON_HEADERS)) as resp:
            await _check(resp, 202)

    async def _post_close(self, session_id: str | None) -> None:
        if session_id is None:
            return
        with contextlib.suppress(Exception):
            async with self.http.post(f"{self.base}/close", headers=self._headers(session_id),
                                      timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()

    async def close(self) -> None:
        """Leave for good: ``POST /close`` ends the session at once (like WebSocket 1000)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = 1000
        await self._post_close(self.session_id)
        self._stop()
        if self._sender is not None:
            self._sender.cancel()

    def drain(self) -> None:
        """Start no new request (poll, SSE reconnect) and end ``messages()`` once the
        one in flight is answered; no ``POST /close``, the session lives on.

        Before the Client resumes the session on another transport: a request
        of this one that reached the server after that ``resume`` would take the
        session back (a poll of a session another transport holds is a resume).
        Sends already queued still go out; the server drops resends by id.
        """
        self.draining = True

    def drop(self) -> None:
        """Stop at once, without ``POST /close`` (a drain that took too long)."""
        self.closed = True
        self._stop()

    def _stop(self) -> None:
        raise NotImplementedError


class SseTransport(_HttpTransport):
    """``GET /sse`` downstream, ``POST /send`` upstream."""

    name = "sse"

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        super().__init__(http, url, token)
        self.resp: aiohttp.ClientResponse | None = None
        self.last_event_id: str | None = None

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, *, codec: str = "json",
                   token: str | None = None) -> SseTransport:
        # SSE is text: the codec is always JSON whatever ``codec`` says.
        transport = cls(http, url, token)
        await transport._connect(None)
        return transport

    async def _connect(self, last_event_id: str | None) -> None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        resp = await self.http.get(
            f"{self.base}/sse", headers=self._headers(**headers),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None))
        await _check(resp, 200)
        self.resp = resp

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str, str | None]]:
        """(event, data, id) per dispatched event (WHATWG HTML "Parsing an event stream")."""
        buf = b""
        event, data, eid = "", [], None
        async for chunk in resp.content.iter_any():
            buf += chunk
            while True:
                cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
                if cut < 0:
                    break
                line = buf[:cut]
                skip = 2 if buf[cut:cut + 2] == b"\r\n" else 1
                buf = buf[cut + skip:]
                if not line:
                    if data:
                        yield event or "message", "\n".join(data), eid
                    event, data, eid = "", [], None
                    continue
                if line.startswith(b":"):
                    continue  # comment: heartbeat
                name, _, value = line.decode().partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    eid = value

    async def messages(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        resuming = False
        while not self.closed:
            resp = self.resp
            assert resp is not None
            expired = False
            try:
                async for event, data, eid in self._events(resp):
                    msg = orjson.loads(data)
                    if event == "close":
                        self.close_code = msg.get("code")
                        return
                    if resuming and event == "error" and msg.get("code") == "session-expired" \
                            and eid is None:
                        # The server cannot resume us; the Client starts over.
                        expired = True
                        break
                    if eid:
                        self.last_event_id = eid
                    mtype = msg.get("type")
                    if mtype == "welcome" or (mtype == "resumed" and msg.get("sessionId")):
                        self.session_id = msg["sessionId"]
                    resuming = False
                    yield msg
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
                log.debug("SSE stream broke", exc_info=True)
            finally:
                resp.release()
            if self.closed or self.draining or expired or self.last_event_id is None:
                break
            if not await self._reconnect():
                break
            if self.draining:
                self._stop()  # reattached meanwhile: that request is answered, so done
                break
            resuming = True
        if self.close_code is None and self.closed:
            self.close_code = 1000

    async def _reconnect(self) -> bool:
        """Reopen the stream with ``Last-Event-ID`` as EventSource would, for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUME_WINDOW
        delay = 0.05
        while not self.closed and not self.draining and loop.time() < deadline:
            try:
                await self._connect(self.last_event_id)
                return True
            except HttpRefused:
                return False
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
        return False

    def drain(self) -> None:
        # The stream's request was answered long ago: only its reconnect is left
        # to prevent, and nothing more should be read.
        super().drain()
        self._stop()

    def _stop(self) -> None:
        if self.resp is not None:
            self.resp.close()

    def abort(self) -> None:
        _abort_response(self.resp)


class PollingTransport(_HttpTransport):
    """``POST /poll/open`` + ``GET /poll`` downstream, ``POST /send`` upstream.

    ``poll_timeout`` 0 is short polling: ask every ``interval`` seconds.
    """

    name = "polling"

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None,
                 poll_timeout: float | None = None, interval: float = 0.25) -> None:
        super().__init__(http, url, token)
        self.after = 0
        self.poll_timeout = poll_timeout
        self.interval = interval
        self._local: deque[dict[str, Any]] = deque()
        self._poll_task: asyncio.Task[list[dict[str, Any]]] | None = None
        self._poll_resp: aiohttp.ClientResponse | None = None

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, *, codec: str = "json",
                   token: str | None = None, poll_timeout: float | None = None,
                   interval: float = 0.25) -> PollingTransport:
        transport = cls(http, url, token, poll_timeout, interval)
        async with http.post(f"{transport.base}/poll/open", headers=transport._headers(),
                             timeout=aiohttp.ClientTimeout(total=10)) as resp:
            await _check(resp, 200)
            welcome = orjson.loads(await resp.read())
        transport.session_id = welcome["sessionId"]
        if transport.poll_timeout is None:
            transport.poll_timeout = float(welcome.get("pollTimeout", 25))
        transport._local.append(welcome)
        return transport

    async def _poll(self, session_id: str, after: int) -> list[dict[str, Any]]:
        timeout = self.poll_timeout or 0.0
        resp = await self.http.get(
            f"{self.base}/poll", params={"after": str(after), "timeout": str(timeout)},
            headers=self._headers(session_id),
            timeout=aiohttp.ClientTimeout(total=timeout + 15))
        self._poll_resp = resp
        try:
            await _check(resp, 200)
            return orjson.loads(await resp.read())
        finally:
            self._poll_resp = None
            resp.release()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        delay = 0.05
        while not self.closed:
            while self._local:
                msg = self._local.popleft()
                seq = msg.get("seq")
                if isinstance(seq, int) and seq > self.after:
                    self.after = seq
                yield msg
            if self.draining:
                return
            sid, after = self.session_id, self.after
            assert sid is not None
            self._poll_task = loop.create_task(self._poll(sid, after))
            try:
                batch = await self._poll_task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                continue  # interrupted to deliver local messages (a resume)
            except HttpRefused as exc:
                if exc.expired and sid == self.session_id:
                    return  # the Client starts over (resume -> session-expired -> rejoin)
                if sid != self.session_id:
                    continue
                raise
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
                # A lost poll loses nothing: ask again with the same ``after``.
                now = loop.time()
                failing_since = failing_since or now
                if now - failing_since > RESUME_WINDOW:
                    return
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            finally:
                self._poll_task = None
            failing_since, delay = None, 0.05
            if sid != self.session_id:
                continue  # answered for a session we left (native resume)
            for msg in batch:
                seq = msg.get("seq")
                if seq is None and msg.get("type") == "close":
                    self.close_code = msg.get("code")
                    return
                if isinstance(seq, int):
                    if seq <= self.after:
                        continue
                    self.after = seq
                yield msg
            if not batch and self.poll_timeout == 0:
                await asyncio.sleep(self.interval)

    async def send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "resume":
            await self._resume(msg)
            return
        await super().send(msg)

    async def _resume(self, msg: dict[str, Any]) -> None:
        """The Client's ``resume`` done the polling way: poll the old session with ``after``."""
        old_id, last_seq, rid = msg.get("sessionId"), msg.get("lastSeq"), msg.get("id")
        try:
            async with self.http.get(
                    f"{self.base}/poll", params={"after": str(last_seq), "timeout": "0"},
                    headers=self._headers(str(old_id)),
                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await _check(resp, 200)
                batch = orjson.loads(await resp.read())
        except HttpRefused as exc:
            err = dict(exc.error) or {"type": "error", "code": "session-expired"}
            err["id"] = rid
            self._push_local([err])
            return
        fresh = self.session_id
        self.session_id, self.after = str(old_id), int(last_seq or 0)
        if not any(m.get("type") == "resumed" for m in batch):
            # The server still had our poller attached (no takeover, so no
            # ``resumed``): tell the Client the resume is done all the same.
            batch.append({"type": "resumed", "sessionId": old_id, "lastSeq": last_seq,
                          "replayed": len(batch)})
        self._push_local(batch)
        await self._post_close(fresh)

    def _push_local(self, msgs: list[dict[str, Any]]) -> None:
        self._local.extend(msgs)
        if self._poll_task is not None:
            self._poll_task.cancel()

    def drain(self) -> None:
        # A ``ping`` makes the server answer the waiting long-poll at once (its
        # ``pong`` is a new message), so the drain takes a round trip, not 25 s.
        super().drain()
        if self._poll_task is not None and not self.closed:
            self._push({"type": "ping"})

    def _stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()

    def abort(self) -> None:
        # A long-poll has no response yet to cut: cancelling the request
        # closes its connection, which to the server is a dropped poll.
        if self._poll_resp is not None:
            _abort_response(self._poll_resp)
        elif self._poll_task is not None:
            self._poll_task.cancel()


async def _open_short_polling(http: aiohttp.ClientSession, url: str, *, codec: str = "json",
                              token: str | None = None) -> PollingTransport:
    transport = await PollingTransport.open(http, url, codec=codec, token=token, poll_timeout=0)
    transport.name = "short-polling"
    return transport


TRANSPORTS["sse"] = SseTransport.open
TRANSPORTS["polling"] = PollingTransport.open
TRANSPORTS["short-polling"] = _open_short_polling
