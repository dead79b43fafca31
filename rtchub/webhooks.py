"""Webhooks (room and member events) and the join hook (authorize a join).

Event webhooks
    ``room_started``, ``room_finished``, ``user_joined`` and ``user_left``
    (with ``reason``) are POSTed as JSON to every ``--webhook-url``. The body
    is signed: ``X-Rtchub-Signature: sha256=<hex HMAC-SHA256(secret, body)>``
    (RFC 2104 HMAC, the GitHub/Stripe convention), with ``--webhook-secret``
    as key (``--api-key`` when no secret is set; unsigned when neither is).

    Signaling must never wait for a web server somewhere else. The hub's
    observer hook only does ``put_nowait`` into a bounded queue; one sender
    task drains it in order. A failed attempt (connection refused, timeout,
    non-2xx) is retried with exponential backoff (0.5 s doubling to 30 s,
    with jitter) up to ``max_attempts``; while it waits, later events queue
    behind it, so a receiver sees events in the order they happened. When
    the queue is full, new events are dropped and counted
    (``rtchub_webhook_dropped_total``) rather than growing memory without
    bound. Each event carries a unique ``id`` (also in ``X-Rtchub-Delivery``):
    a retry after a lost response can deliver an event twice, and the id is
    how a receiver drops the duplicate.

Join hook
    With ``--join-hook-url``, every join waits for the hook's answer before it
    completes (a :attr:`rtchub.core.hub.Hub.join_gates` gate). The server
    POSTs ``{event: "join", roomId, userId, displayName, sessionId,
    transport, claims}`` (signed like webhooks) and expects a 2xx answer
    ``{"allow": bool, "displayName"?: str, "reason"?: str}``. ``allow: false``
    gives the client ``error`` ``forbidden`` (with ``reason`` as message);
    a ``displayName`` replaces the one the client asked for. If the hook does
    not answer within ``--join-hook-timeout`` seconds, answers non-2xx or
    with a body that is not that object, ``--join-hook-failure`` decides:
    ``deny`` (default: fail closed, the client gets ``forbidden``) or
    ``allow`` (fail open, the join proceeds unchanged).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field

from rtchub.core.hub import HubObserver, JoinRequest
from rtchub.protocol.errors import ErrorCode, ProtocolError
from rtchub.protocol.messages import MAX_DISPLAY_NAME

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.room import Member, Room
    from rtchub.core.session import Session

log = logging.getLogger("rtchub.webhooks")

SIGNATURE_HEADER = "X-Rtchub-Signature"
EVENT_HEADER = "X-Rtchub-Event"
DELIVERY_HEADER = "X-Rtchub-Delivery"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Rtchub-Signature`` value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def _headers(secret: str, body: bytes, event: str, delivery: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: delivery,
               "User-Agent": "rtchub-webhooks"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return headers


class WebhookSender(HubObserver):
    """Queue of room/member events and the one task that POSTs them."""

    def __init__(self, app: RtcHub, *, queue_size: int = 10_000, base_delay: float = 0.5,
                 max_delay: float = 30.0, max_attempts: int = 12, timeout: float = 5.0) -> None:
        s = app.settings
        self.node = app.hub.node_id
        self.cluster = app.cluster
        self.urls = list(s.webhook_url)
        self.secret = s.webhook_secret or s.api_key
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(queue_size)
        self.stats = {"queued": 0, "delivered": 0, "failures": 0, "dropped": 0}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def queued(self) -> int:
        return self.queue.qsize()

    # ------------------------------------------------------------ hub hooks
    def emit(self, event: str, **fields: Any) -> None:
        """Queue ``event`` for every URL; never blocks, drops (and counts) when full."""
        if not self.urls:
            return
        payload = {"id": secrets.token_hex(12), "event": event, "timestamp": time.time(),
                   "node": self.node}
        payload.update((k, v) for k, v in fields.items() if v is not None)
        for url in self.urls:
            try:
                self.queue.put_nowait((url, payload))
                self.stats["queued"] += 1
            except asyncio.QueueFull:
                self.stats["dropped"] += 1
                if self.stats["dropped"] in (1, 10, 100) or self.stats["dropped"] % 1000 == 0:
                    log.warning("webhook queue full; %d events dropped", self.stats["dropped"])

    # In a cluster a room starts and finishes once for all nodes (the broker
    # decides which node reports it: Cluster.first_join / room_finished); the
    # node's own Room object would fire once per node that has members.
    def room_created(self, room: Room) -> None:
        if self.cluster is None:
            self.emit("room_started", roomId=room.id)

    def room_closed(self, room: Room) -> None:
        if self.cluster is None:
            self.emit("room_finished", roomId=room.id)

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        if self.cluster is not None and self.cluster.first_join(room.id, member.session.id):
            self.emit("room_started", roomId=room.id)
        self.emit("user_joined", roomId=room.id, userId=member.user_id,
                  displayName=member.display_name, sessionId=member.session.id,
                  ip=getattr(member.session.sink, "peer", None) or None,
                  rejoined=True if rejoined else None)

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        self.emit("user_left", roomId=room.id, userId=member.user_id,
                  sessionId=member.session.id, reason=reason)

    # ------------------------------------------------------------ sending
    async def start(self) -> None:
        if not self.urls:
            return
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rtchub-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            # Give events of the last moments (the shutdown's user_left) a short chance.
            deadline = time.monotonic() + 1.0
            while not self.queue.empty() and time.monotonic() < deadline and not self._task.done():
                await asyncio.sleep(0.02)
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): doubling, capped, +-20 % jitter."""
        delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return delay * random.uniform(0.8, 1.2)

    async def _run(self) -> None:
        while True:
            url, payload = await self.queue.get()
            try:
                await self._deliver(url, payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - a bug must not stop the sender
                log.exception("webhook sender failed")

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        headers = _headers(self.secret, body, payload["event"], payload["id"])
        assert self._http is not None
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self._http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.stats["delivered"] += 1
                        return
                    problem = f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.stats["failures"] += 1
            if attempt == self.max_attempts:
                break
            delay = self.backoff(attempt)
            log.warning("webhook %s to %s failed (%s); retry %d in %.1fs",
                        payload["event"], url, problem, attempt, delay)
            await asyncio.sleep(delay)
        self.stats["dropped"] += 1
        log.error("webhook %s %s to %s given up after %d attempts",
                  payload["event"], payload["id"], url, self.max_attempts)


class JoinHookAnswer(BaseModel):
    """What the join hook must answer (2xx, JSON)."""

    model_config = ConfigDict(extra="ignore")

    allow: bool
    displayName: str | None = Field(default=None, max_length=MAX_DISPLAY_NAME)
    reason: str | None = Field(default=None, max_length=200)


class JoinHook:
    """A join gate that asks ``--join-hook-url`` (see the module docstring)."""

    def __init__(self, app: RtcHub) -> None:
        s = app.settings
        self.url = s.join_hook_url
        self.timeout = s.join_hook_timeout
        self.fail_open = s.join_hook_failure.strip().lower() == "allow"
        self.secret = s.webhook_secret or s.api_key
        self.stats = {"allow": 0, "deny": 0, "failed": 0}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def gate(self, session: Session, req: JoinRequest, complete: Callable[..., None]) -> None:
        task = asyncio.get_running_loop().create_task(self._ask(session, req, complete))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, session: Session, req: JoinRequest, complete: Callable[..., None]) -> None:
        payload = {
            "event": "join", "roomId": req.room_id, "userId": req.user_id,
            "displayName": req.display_name, "sessionId": session.id,
            "transport": getattr(session.sink, "transport_name", None), "claims": session.claims,
        }
        body = orjson.dumps(payload, default=str)
        headers = _headers(self.secret, body, "join", secrets.token_hex(12))
        try:
            if self._http is None:
                raise RuntimeError("join hook not started")
            async with asyncio.timeout(self.timeout):
                async with self._http.post(self.url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if not 200 <= resp.status < 300:
                        raise RuntimeError(f"HTTP {resp.status}")
            answer = JoinHookAnswer.model_validate_json(raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ValidationError included: a malformed answer is a failure
            self.stats["failed"] += 1
            log.warning("join hook failed for %s in %s (%s: %s); %s", req.user_id, req.room_id,
                        type(exc).__name__, exc, "allowing" if self.fail_open else "denying")
            if self.fail_open:
                complete(True, None)
            else:
                complete(False, ProtocolError(ErrorCode.FORBIDDEN, "join hook unavailable",
                                              req.msg_id))
            return
        if answer.allow:
            self.stats["allow"] += 1
            complete(True, {"displayName": answer.displayName} if answer.displayName else None)
        else:
            self.stats["deny"] += 1
            complete(False, ProtocolError(ErrorCode.FORBIDDEN, answer.reason or "join refused",
                                          req.msg_id))


def setup_webhooks(app: RtcHub, sender: WebhookSender, hook: JoinHook | None) -> None:
    """Hook the webhook sender and, if configured, the join hook (both built by the app)."""
    app.services.append(sender)
    if sender.urls:
        app.hub.add_observer(sender)
        if app.cluster is not None:
            app.cluster.watch_rooms(lambda room_id: sender.emit("room_finished", roomId=room_id))
    if hook is not None:
        app.services.append(hook)
        app.hub.add_join_gate(hook.gate)
