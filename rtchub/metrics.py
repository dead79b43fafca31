"""Prometheus metrics at ``/metrics`` and one log line per connection event.

Why plain integers instead of prometheus-client ``Counter`` objects: a
labelled ``Counter.labels(...).inc()`` takes a lock and a dict lookup keyed by
a tuple; rtchub relays hundreds of thousands of messages a second on one core
(docs/benchmarks.md), so the hub path only bumps ints in dicts it already
owns (``Hub.sent``) or that this module owns, and a custom collector
(:class:`HubCollector`) turns them into metric families when Prometheus
scrapes. Gauges (connections, rooms, members) are computed at scrape time
from the hub itself, so they can never drift from the truth.

Every :class:`~rtchub.app.RtcHub` gets its own ``CollectorRegistry``: tests
run several servers in one process, and each must report only its own
numbers.

Other parts report through :class:`Metrics` methods (no prometheus import
needed on their side):

* the cluster's ``stats`` counter (``app.cluster.stats``: published,
  received, deliveries, dropped) and ``ready`` flag are read at scrape time;
  the broker may also call ``app.metrics.broker_published(n)``,
  ``app.metrics.broker_received(n)`` and, for the publish-to-receive delay it
  measures, ``app.metrics.broker_lag(seconds)``;
* the STUN server's ``stats`` dict (``rtchub.ice.stun.STAT_KEYS``), the
  webhook sender's ``stats`` dict and the SFU's (``app.sfu``: servers up,
  peers, events, local Janus restarts) are read at scrape time.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from rtchub.core.hub import HubObserver
from rtchub.protocol.messages import RELAY_TYPES

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.room import Member, Room
    from rtchub.core.session import Session

#: Message types whose handling time is the relay latency: what a peer waits
#: between its offer/candidate/message reaching the server and the server
#: handing it to the recipient's transport.
TIMED_TYPES = RELAY_TYPES | {"message"}

#: Relay latency buckets (seconds). In-process relay takes microseconds; the
#: top buckets catch event-loop stalls, which is what an operator looks for.
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                   0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

#: Broker lag buckets (seconds): publish on one node to receive on another.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class FastHistogram:
    """A histogram kept in plain ints: ``observe`` is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class Metrics(HubObserver):
    """Counters fed by hub hooks; exported by :class:`HubCollector`.

    Installed by :func:`setup_metrics`. The counting methods are plain
    attribute arithmetic so that any module may call them on a hot path.
    """

    def __init__(self, app: RtcHub) -> None:
        self.app = app
        self.started = time.time()
        self.received: dict[str, int] = {}
        #: Messages the server emitted that did not go through ``Hub.send``
        #: (``welcome`` is handed to the transport directly).
        self.extra_sent: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.opened: dict[str, int] = {}
        self.ended: dict[str, int] = {}
        self.joins = 0
        self.rejoins = 0
        self.left: dict[str, int] = {}
        self.rooms_created = 0
        self.resumes = 0
        self.relay_latency = FastHistogram(LATENCY_BUCKETS)
        self.broker_published_total = 0
        self.broker_received_total = 0
        self.broker_lag_seconds = FastHistogram(LAG_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(self))
        ProcessCollector(registry=self.registry)

    # ------------------------------------------------------------ for others
    def broker_published(self, n: int = 1) -> None:
        """The broker sent ``n`` messages to other nodes."""
        self.broker_published_total += n

    def broker_received(self, n: int = 1) -> None:
        """The broker received ``n`` messages from other nodes."""
        self.broker_received_total += n

    def broker_lag(self, seconds: float) -> None:
        """One message took ``seconds`` from its publisher's clock to this node."""
        self.broker_lag_seconds.observe(max(0.0, seconds))

    def sent(self) -> dict[str, int]:
        """Messages sent to clients, by type (the hub's counts plus ``welcome``)."""
        out = dict(self.app.hub.sent)
        for k, v in self.extra_sent.items():
            out[k] = out.get(k, 0) + v
        return out

    # ------------------------------------------------------------ hub hooks
    def session_opened(self, session: Session) -> None:
        sink = session.sink
        transport = sink.transport_name if sink is not None else "none"
        self.opened[transport] = self.opened.get(transport, 0) + 1
        if sink is not None:
            self.extra_sent["welcome"] = self.extra_sent.get("welcome", 0) + 1

    def session_ended(self, session: Session, reason: str) -> None:
        self.ended[reason] = self.ended.get(reason, 0) + 1

    def session_resumed(self, session: Session, replayed: int) -> None:
        self.resumes += 1

    def room_created(self, room: Room) -> None:
        self.rooms_created += 1

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        self.joins += 1
        if rejoined:
            self.rejoins += 1

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        self.left[reason] = self.left.get(reason, 0) + 1

    def message_received(self, session: Session, mtype: str) -> None:
        received = self.received
        received[mtype] = received.get(mtype, 0) + 1

    def error_sent(self, session: Session, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # ------------------------------------------------------------ snapshots
    def connections(self) -> dict[str, int]:
        """Attached transports right now, by transport name."""
        out: dict[str, int] = {}
        for session in self.app.hub.sessions.values():
            sink = session.sink
            if sink is not None:
                name = sink.transport_name
                out[name] = out.get(name, 0) + 1
        return out


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        fam.add_metric([key], values[key])
    return fam


class HubCollector(Collector):
    """Turns :class:`Metrics` ints and the hub's state into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        app = m.app
        hub = app.hub
        conns = m.connections()
        fam = GaugeMetricFamily("rtchub_connections", "open transport connections",
                                labels=["transport"])
        for name in sorted(set(conns) | set(m.opened)):
            fam.add_metric([name], conns.get(name, 0))
        yield fam
        yield _counter("rtchub_connections_opened", "connections opened since start",
                       "transport", m.opened)
        sessions = len(hub.sessions)
        detached = sessions - sum(conns.values())
        yield GaugeMetricFamily("rtchub_sessions", "sessions, including those in their grace period",
                                value=sessions)
        yield GaugeMetricFamily("rtchub_sessions_detached",
                                "sessions waiting for a resume (transport gone, grace period)",
                                value=detached)
        yield _counter("rtchub_sessions_ended", "sessions ended, by reason", "reason", m.ended)
        yield CounterMetricFamily("rtchub_resumes", "sessions resumed", value=m.resumes)
        yield GaugeMetricFamily("rtchub_rooms", "rooms with at least one member", value=len(hub.rooms))
        yield GaugeMetricFamily("rtchub_room_members", "members over all rooms",
                                value=sum(len(r.members) for r in hub.rooms.values()))
        yield CounterMetricFamily("rtchub_rooms_created", "rooms created", value=m.rooms_created)
        yield CounterMetricFamily("rtchub_joins", "members admitted to a room", value=m.joins)
        yield _counter("rtchub_members_left", "members that left a room, by reason",
                       "reason", m.left)
        yield _counter("rtchub_messages_received", "client messages accepted for handling, by type",
                       "type", m.received)
        yield _counter("rtchub_messages_sent", "messages sent to clients, by type", "type", m.sent())
        yield _counter("rtchub_errors", "error messages sent to clients, by code", "code", m.errors)
        yield m.relay_latency.family(
            "rtchub_relay_latency_seconds",
            "time from a relayed message reaching the hub to it being handed to the "
            "recipients' transports")
        yield from self._stun(app)
        cluster = app.cluster
        cstats = cluster.stats if cluster is not None else {}
        yield CounterMetricFamily("rtchub_broker_published", "messages published to the broker",
                                  value=m.broker_published_total + cstats.get("published", 0))
        yield CounterMetricFamily("rtchub_broker_received", "messages received from the broker",
                                  value=m.broker_received_total + cstats.get("received", 0))
        if cluster is not None:
            yield CounterMetricFamily("rtchub_broker_deliveries",
                                      "messages from the broker delivered to local sessions",
                                      value=cstats.get("deliveries", 0))
            yield CounterMetricFamily("rtchub_broker_dropped", "broker messages dropped",
                                      value=cstats.get("dropped", 0))
            yield GaugeMetricFamily("rtchub_broker_ready", "1 while the broker link is up",
                                    value=1 if cluster.ready else 0)
        yield m.broker_lag_seconds.family("rtchub_broker_lag_seconds",
                                          "publish-to-receive delay of broker messages")
        yield from self._webhooks(app)
        yield from self._sfu(app)
        yield from self._media(app)

    @staticmethod
    def _stun(app: RtcHub) -> Iterable[Metric]:
        stats: dict[str, int] = {}
        servers = [app.stun] + [s for s in app.services
                                                  if type(s).__name__ == "StunServer"]
        seen: set[int] = set()
        for server in servers:
            if server is None or id(server) in seen or not isinstance(getattr(server, "stats", None),
                                                                      dict):
                continue
            seen.add(id(server))
            for k, v in server.stats.items():
                stats[k] = stats.get(k, 0) + int(v)
        if not stats:
            return
        yield CounterMetricFamily("rtchub_stun_datagrams", "UDP datagrams received by the STUN server",
                                  value=stats.get("datagrams", 0))
        fam = CounterMetricFamily("rtchub_stun_requests", "STUN requests by outcome",
                                  labels=["outcome"])
        for key in ("success", "bad_request", "unknown_attribute"):
            fam.add_metric([key], stats.get(key, 0))
        yield fam
        yield CounterMetricFamily("rtchub_stun_classic_requests",
                                  "Binding requests from RFC 3489 clients", value=stats.get("classic", 0))
        yield CounterMetricFamily("rtchub_stun_ignored", "datagrams silently discarded",
                                  value=stats.get("ignored", 0))
        yield CounterMetricFamily("rtchub_stun_internal_errors", "bugs caught in the STUN path",
                                  value=stats.get("internal_errors", 0))

    @staticmethod
    def _sfu(app: RtcHub) -> Iterable[Metric]:
        sfu = app.sfu
        if sfu is None or not sfu.servers:
            return
        fam = GaugeMetricFamily("rtchub_sfu_up", "1 while rtchub is connected to this Janus server",
                                labels=["server"])
        for key, server in sfu.servers.items():
            fam.add_metric([key], 1 if server.live else 0)
        yield fam
        yield GaugeMetricFamily("rtchub_sfu_peers", "members with media on an SFU, on this node",
                                value=len(sfu.peers))
        yield _counter("rtchub_sfu_events", "SFU publishes, subscription changes, media resets "
                       "(a Janus lost) and refused SFU requests", "event", sfu.stats)
        if sfu.local is not None:
            yield CounterMetricFamily("rtchub_sfu_local_restarts", "restarts of the --sfu local Janus",
                                      value=sfu.local.restarts)
    @staticmethod
    def _media(app: RtcHub) -> Iterable[Metric]:
        media = app.media
        if media is None:
            return
        yield GaugeMetricFamily("rtchub_recordings_active", "rooms being recorded now",
                                value=len(media.active))
        if media.store is not None:
            fam = GaugeMetricFamily("rtchub_recordings", "recordings on disk by state",
                                    labels=["state"])
            counts: dict[str, int] = {"recording": 0, "processing": 0, "ready": 0, "failed": 0}
            for rec in media.store.items.values():
                counts[rec.state.value] += 1
            for state, n in counts.items():
                fam.add_metric([state], n)
            yield fam
        fam = GaugeMetricFamily("rtchub_broadcasts", "HLS broadcasts by state", labels=["state"])
        states: dict[str, int] = {"starting": 0, "live": 0, "stopped": 0, "failed": 0}
        for b in media.broadcasts.values():
            states[b.hls.state] = states.get(b.hls.state, 0) + 1
        for state, n in states.items():
            fam.add_metric([state], n)
        yield fam
        whip = app.whip
        if whip is not None:
            yield GaugeMetricFamily("rtchub_whip_sessions", "WHIP publishers in rooms now",
                                    value=len(whip.sessions))
            yield _counter("rtchub_whip", "WHIP sessions by outcome", "outcome", whip.stats)
        jobs = GaugeMetricFamily("rtchub_media_jobs", "post-processing jobs by state", labels=["state"])
        active = media.jobs.active()
        jobs.add_metric(["queued"], sum(1 for j in active if j.state == "queued"))
        jobs.add_metric(["running"], sum(1 for j in active if j.state == "running"))
        yield jobs

    @staticmethod
    def _webhooks(app: RtcHub) -> Iterable[Metric]:
        sender = app.webhooks
        if sender is None:
            return
        s = sender.stats
        yield CounterMetricFamily("rtchub_webhook_delivered", "webhook events delivered",
                                  value=s["delivered"])
        yield CounterMetricFamily("rtchub_webhook_failures",
                                  "failed webhook attempts (each retry counts)", value=s["failures"])
        yield CounterMetricFamily("rtchub_webhook_dropped",
                                  "webhook events given up (queue full or retries exhausted)",
                                  value=s["dropped"])
        yield GaugeMetricFamily("rtchub_webhook_queue", "webhook events waiting to be sent",
                                value=sender.queued())
        hook = app.join_hook
        if hook is not None:
            yield _counter("rtchub_join_hook", "join hook decisions by outcome", "outcome", hook.stats)


class ConnectionLog(HubObserver):
    """One log line per connection event (``rtchub.events`` logger).

    With ``--log-format json`` every field is its own key (``event``,
    ``session``, ``user``, ``room``, ``transport``, ``code``, ``reason``); in
    text mode the same fields follow the message as ``key=value``. The close
    code is the one the transport saw (the peer's close frame), when known.
    """

    def __init__(self) -> None:
        self.log = logging.getLogger("rtchub.events")
        #: session id -> [sink, rooms it was in when it ended]
        self._live: dict[str, list[Any]] = {}

    def _emit(self, event: str, session: Session, *, sink: Any = None, room: str | None = None,
              **extra: Any) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        sink = sink if sink is not None else session.sink
        fields: dict[str, Any] = {
            "event": event,
            "session": session.id,
            "user": session.user_id,
            "room": room,
            "transport": getattr(sink, "transport_name", None),
            "code": getattr(sink, "close_code", None),
        }
        fields.update(extra)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "event")
        self.log.info("%s %s", event, text, extra=fields)

    def session_opened(self, session: Session) -> None:
        self._live[session.id] = [session.sink, []]
        self._emit("connection-opened", session, peer=getattr(session.sink, "peer", None))

    def session_detached(self, session: Session, reason: str) -> None:
        rec = self._live.get(session.id)
        sink = rec[0] if rec else None
        self._emit("connection-dropped", session, sink=sink, reason=reason,
                   room=",".join(session.rooms) or None)

    def session_resumed(self, session: Session, replayed: int) -> None:
        rec = self._live.setdefault(session.id, [None, []])
        rec[0] = session.sink
        self._emit("session-resumed", session, replayed=replayed,
                   room=",".join(session.rooms) or None)

    def session_ended(self, session: Session, reason: str) -> None:
        rec = self._live.pop(session.id, None) or [None, []]
        self._emit("session-ended", session, sink=rec[0], reason=reason,
                   room=",".join(rec[1]) or None)

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        self._emit("room-joined", member.session, room=room.id,
                   rejoined=True if rejoined else None)

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        session = member.session
        rec = self._live.get(session.id)
        if session.ended and rec is not None:
            rec[1].append(room.id)
        sink = rec[0] if rec else None
        self._emit("room-left", session, sink=sink, room=room.id, reason=reason)


def setup_metrics(app: RtcHub, metrics: Metrics) -> None:
    """Hook ``metrics`` (built by the app) into the hub and serve ``GET /metrics``."""
    app.hub.add_observer(metrics)
    app.hub.add_observer(ConnectionLog())
    app.hub.time_receive(metrics.relay_latency.observe, TIMED_TYPES)

    async def metrics_handler(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app.http.router.add_get("/metrics", metrics_handler)
