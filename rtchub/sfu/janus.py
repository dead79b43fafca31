"""A client of the Janus WebSocket API (https://janus.conf.meetecho.com/docs/rest.html).

One :class:`JanusConnection` per Janus server and rtchub node: one WebSocket
(subprotocol ``janus-protocol``), one Janus session on it, every request
matched to its answer by ``transaction``. Plugin messages are asynchronous
in Janus: the request is answered with ``ack`` at once and the result comes
later as an ``event`` with the same transaction, which :meth:`message`
waits for. Events without a transaction (``webrtcup``, ``hangup``,
``trickle``, VideoRoom notifications such as ``updated``) go to the
handle's listener.

Janus ends a session after ``session_timeout`` (60 s) without a request, so
a keepalive goes out every :data:`KEEPALIVE` seconds. When the socket drops
(Janus died or restarted) every pending request fails with
:class:`JanusGone` and ``on_lost`` is called once: the handles died with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger("rtchub.sfu.janus")

#: Seconds between keepalives: well below Janus's default 60 s session timeout.
KEEPALIVE = 20.0
#: Seconds to wait for an answer from Janus before giving up on it.
REQUEST_TIMEOUT = 10.0

EventListener = Callable[[dict[str, Any]], None]


class JanusError(Exception):
    """Janus refused a request (``error``, or a plugin ``error_code``)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"janus error {code}: {reason}")
        self.code = code
        self.reason = reason


class JanusGone(Exception):
    """The connection to Janus is lost (or never came up)."""


def _raise_janus_error(answer: dict[str, Any]) -> None:
    """Janus answers a failed request with ``{"janus": "error", "error": {code, reason}}``."""
    if answer.get("janus") == "error":
        err = answer.get("error") or {}
        raise JanusError(int(err.get("code", 0)), str(err.get("reason", "")))


class JanusConnection:
    """One WebSocket and one Janus session on one Janus server."""

    def __init__(self, url: str, api_secret: str = "", *,
                 on_lost: Callable[[JanusConnection], None] | None = None) -> None:
        self.url = url
        self.api_secret = api_secret
        self.on_lost = on_lost
        self.session_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        #: transaction -> future for the asynchronous (event) answer of a plugin message.
        self._events: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[int, EventListener] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.lost = False

    # ---------------------------------------------------------------- lifecycle
    async def open(self, timeout: float = 5.0, *, claim: int | None = None) -> JanusConnection:
        """Connect and create the Janus session. Raises :class:`JanusGone` when unreachable.

        ``claim``: take over an existing session instead (one whose connection
        closed: an rtchub node died), with its handles and their media; Janus
        allows it within its ``reclaim_session_timeout``.
        """
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(
                self.url, protocols=("janus-protocol",), timeout=aiohttp.ClientWSTimeout(ws_close=2),
                heartbeat=None, max_msg_size=4 * 1024 * 1024)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await self._http.close()
            raise JanusGone(f"cannot reach Janus at {self.url}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read()))
        try:
            if claim is not None:
                self.session_id = claim
                await self.request({"janus": "claim"}, timeout=timeout)
            else:
                answer = await self.request({"janus": "create"}, session=False, timeout=timeout)
                self.session_id = int(answer["data"]["id"])
        except BaseException:
            await self.close()
            raise
        self._tasks.append(loop.create_task(self._keepalive()))
        return self

    async def close(self) -> None:
        """Destroy the Janus session (its handles go with it) and close the socket."""
        if self.closed:
            return
        self.closed = True
        if self.session_id is not None and not self.lost:
            with contextlib.suppress(Exception):
                await self.request({"janus": "destroy"}, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._fail_all(JanusGone("connection closed"))

    @property
    def alive(self) -> bool:
        return not self.closed and not self.lost and self.session_id is not None

    # ---------------------------------------------------------------- requests
    async def request(self, body: dict[str, Any], *, session: bool = True, handle: int | None = None,
                      timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send one Janus API request and return its (synchronous) answer."""
        ws = self._ws
        if ws is None or self.lost or (self.closed and body.get("janus") != "destroy"):
            raise JanusGone("not connected to Janus")
        tx = secrets.token_hex(8)
        msg = dict(body, transaction=tx)
        if self.api_secret:
            msg["apisecret"] = self.api_secret
        if session:
            msg["session_id"] = self.session_id
        if handle is not None:
            msg["handle_id"] = handle
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[tx] = fut
        try:
            await ws.send_json(msg)
            answer = await asyncio.wait_for(fut, timeout)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise JanusGone(str(exc)) from exc
        except TimeoutError as exc:
            raise JanusGone(f"Janus did not answer {body.get('janus')} in {timeout}s") from exc
        finally:
            self._pending.pop(tx, None)
        _raise_janus_error(answer)
        return answer

    async def attach(self, plugin: str, listener: EventListener | None = None) -> int:
        """Attach a handle to ``plugin``; ``listener`` hears its unsolicited events."""
        answer = await self.request({"janus": "attach", "plugin": plugin})
        handle = int(answer["data"]["id"])
        if listener is not None:
            self._listeners[handle] = listener
        return handle

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        with contextlib.suppress(JanusError, JanusGone):
            await self.request({"janus": "detach"}, handle=handle, timeout=3.0)

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None,
                      timeout: float = REQUEST_TIMEOUT) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request; returns ``(plugin data, jsep or None)``.

        Synchronous plugin requests (``create``, ``listparticipants``) are
        answered with ``success``; the others with ``ack`` and then an
        ``event`` carrying the same transaction. A plugin-level refusal
        (``error_code`` in the data) raises :class:`JanusError`.
        """
        req: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            req["jsep"] = jsep
        ws = self._ws
        if ws is None or self.lost:
            raise JanusGone("not connected to Janus")
        tx = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        event: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._events[tx] = event
        try:
            answer = await self._send_tx(req, tx, handle, timeout)
            if answer.get("janus") == "ack":
                answer = await asyncio.wait_for(event, timeout)
        except TimeoutError as exc:
            raise JanusGone(f"Janus did not answer {body.get('request')} in {timeout}s") from exc
        finally:
            self._events.pop(tx, None)
        _raise_janus_error(answer)
        data = (answer.get("plugindata") or {}).get("data") or {}
        if "error_code" in data:
            raise JanusError(int(data["error_code"]), str(data.get("error", "")))
        return data, answer.get("jsep")

    async def _send_tx(self, req: dict[str, Any], tx: str, handle: int,
                       timeout: float) -> dict[str, Any]:
        ws = self._ws
        assert ws is not None
        msg = dict(req, transaction=tx, session_id=self.session_id, handle_id=handle)
        if self.api_secret:
            msg["apisecret"] = self.api_secret
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[tx] = fut
        try:
            await ws.send_json(msg)
            return await asyncio.wait_for(fut, timeout)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise JanusGone(str(exc)) from exc
        finally:
            self._pending.pop(tx, None)

    async def trickle(self, handle: int, candidate: dict[str, Any] | None) -> None:
        """Hand Janus one ICE candidate of the peer (``None``: gathering completed)."""
        body: dict[str, Any] = {"janus": "trickle",
                                "candidate": candidate if candidate is not None else {"completed": True}}
        await self.request(body, handle=handle)

    # ---------------------------------------------------------------- internals
    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    msg = frame.json()
                except ValueError:
                    continue
                self._dispatch(msg)
        except Exception:  # pragma: no cover - the socket's own errors end the loop below
            log.exception("reading from Janus at %s failed", self.url)
        finally:
            if not self.closed:
                self.lost = True
                log.warning("lost the connection to Janus at %s", self.url)
                self._fail_all(JanusGone(f"Janus at {self.url} is gone"))
                if self.on_lost is not None:
                    self.on_lost(self)

    def listen(self, handle: int, listener: EventListener) -> None:
        """Hear the unsolicited events of ``handle`` (one of a claimed session)."""
        self._listeners[handle] = listener

    def _dispatch(self, msg: dict[str, Any]) -> None:
        tx = msg.get("transaction")
        kind = msg.get("janus")
        if tx is not None:
            if kind == "event" or (kind == "error" and tx in self._events and tx not in self._pending):
                fut = self._events.get(tx)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                    return
            fut = self._pending.get(tx)
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
            if kind == "event":
                pass  # an event for a request we stopped waiting for: hand it to the listener
            else:
                return
        sender = msg.get("sender")
        listener = self._listeners.get(int(sender)) if sender is not None else None
        if listener is not None:
            try:
                listener(msg)
            except Exception:  # pragma: no cover - a listener bug must not stop the reader
                log.exception("Janus event listener failed")

    def _fail_all(self, exc: Exception) -> None:
        for store in (self._pending, self._events):
            for fut in store.values():
                if not fut.done():
                    fut.set_exception(exc)
            store.clear()

    async def _keepalive(self) -> None:
        while not self.closed and not self.lost:
            await asyncio.sleep(KEEPALIVE)
            try:
                await self.request({"janus": "keepalive"})
            except JanusGone:
                return
            except JanusError as exc:
                log.warning("Janus refused a keepalive: %s", exc)
