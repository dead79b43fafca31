"""The media side of one server: recordings and broadcasts, their rules and their events.

:class:`MediaService` owns the recordings store, the job runner and the
broadcasts. The API (rtchub.api.media) and, once a room's media runs through
the SFU, the call itself ask it to start and stop things; it answers with a
:class:`MediaError` (HTTP status + error code) when a request cannot be done,
so every entry point refuses in the same words.

Why a recording can be refused:

* ``recording-disabled``: no ``--recordings-dir``;
* ``room-not-found``: nobody is in that room;
* ``mesh-room``: the room's media goes peer to peer and never reaches the
  server, so there is nothing to record (ARCHITECTURE: only SFU rooms pass
  media through Janus);
* ``already-recording`` / ``not-recording``;
* ``disk-full``: free space below ``--recordings-min-free-mb``
  (HTTP 507 Insufficient Storage, RFC 4918 section 11.5).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtchub.core.hub import HubObserver
from rtchub.media.broadcast import RoomBroadcast
from rtchub.media.jobs import JobRunner
from rtchub.media.recordings import ParticipantInfo, RecordingInfo, RecordingStore, State
from rtchub.protocol.errors import ErrorCode, ProtocolError
from rtchub.timers import Periodic

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.room import Member, Room
    from rtchub.core.session import Session

log = logging.getLogger("rtchub.media")

#: How often the disk floor is checked while recording, and retention applied.
DISK_CHECK_INTERVAL = 1.0
RETENTION_INTERVAL = 60.0


@dataclass
class MediaError(Exception):
    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


#: How a refusal reads in the call protocol (``error`` codes of docs/protocol.md).
PROTOCOL_CODES = {"mesh-room": ErrorCode.WRONG_MEDIA_MODE, "wrong-media-mode": ErrorCode.WRONG_MEDIA_MODE,
                  "room-not-found": ErrorCode.NOT_IN_ROOM,
                  "media-server-error": ErrorCode.SFU_UNAVAILABLE}


class MediaService(HubObserver):
    """Recordings and broadcasts of one server (started and stopped with it)."""

    def __init__(self, app: RtcHub) -> None:
        s = app.settings
        self.app = app
        self.jobs = JobRunner(s.media_jobs)
        self.store: RecordingStore | None = None
        if s.recordings_dir:
            self.store = RecordingStore(s.recordings_dir,
                                        min_free_bytes=s.recordings_min_free_mb * 2**20,
                                        retention_seconds=s.recordings_retention_days * 86400)
        #: room id -> id of the recording running in it, and what records it (SFU or AudioBridge).
        self.active: dict[str, str] = {}
        self._recorders: dict[str, Any] = {}
        self._disk = Periodic(DISK_CHECK_INTERVAL, self._check_disk, "recording-disk")
        self._retention = Periodic(RETENTION_INTERVAL, self._sweep, "recording-retention")
        self._tasks: set[asyncio.Task[Any]] = set()
        #: What a previous run left: (to process again, failed now). Read before the
        #: server listens, so the API never shows a recording in a state it no longer has.
        self._recovered: tuple[list[RecordingInfo], list[RecordingInfo]] = ([], [])
        if self.store is not None:
            self.store.load()
            self._recovered = self.store.recover()
        #: room id -> its broadcast (kept after it ends, to show how it ended, until the next).
        self.broadcasts: dict[str, RoomBroadcast] = {}
        self.hub = app.hub
        self.hub.add_observer(self)
        self.hub.register("record", self._on_record)

    # ------------------------------------------------------------- the call
    def _on_record(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        """``{type: "record", roomId, action: "start"|"stop"}``: needs the ``canRecord`` grant.

        Without auth (no claims) anyone in the room may; with a token, only
        one that says ``canRecord: true`` (recording is opt-in, unlike
        publishing: people must agree to it, so the default is no).
        """
        room_id, action = msg.get("roomId"), msg.get("action")
        if action not in ("start", "stop"):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "action must be start or stop", msg_id)
        if type(room_id) is not str or room_id not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)
        if session.claims is not None and session.claims.get("canRecord") is not True:
            raise ProtocolError(ErrorCode.FORBIDDEN, "your token does not grant canRecord", msg_id)

        async def work() -> None:
            try:
                if action == "start":
                    await self.start_recording(room_id, started_by=session.user_id)
                else:
                    await self.stop_recording(room_id)
            except MediaError as exc:
                code = PROTOCOL_CODES.get(exc.code, ErrorCode.FORBIDDEN)
                self.hub.error(session, ProtocolError(code, f"{exc.code}: {exc.message}", msg_id))
                return
            self.hub.accept(session, msg_id)

        self._spawn(work())

    def _notice(self, room_id: str, rec: RecordingInfo | None) -> dict[str, Any]:
        """The ``recording`` server message: everyone in the room must know."""
        out: dict[str, Any] = {"type": "recording", "roomId": room_id, "active": rec is not None}
        if rec is not None:
            out.update(recordingId=rec.id, startedBy=rec.started_by, since=rec.started_at)
        return out

    def _announce(self, room_id: str, rec: RecordingInfo | None) -> None:
        if room_id in self.hub.rooms:
            self.hub.publish(room_id, self._notice(room_id, rec))

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        rec_id = self.active.get(room.id)
        if rec_id is not None and self.store is not None and rec_id in self.store.items:
            rec = self.store.items[rec_id]
            self.hub.send_msg(member.session, self._notice(room.id, rec))
            if room.media == "audio-mix" and not rejoined:
                rec.participants.append(ParticipantInfo(id=member.session.id, user_id=member.user_id,
                                                        display_name=member.display_name,
                                                        joined_at=time.time()))

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        rec_id = self.active.get(room.id)
        if rec_id is not None and self.store is not None and rec_id in self.store.items:
            for p in self.store.items[rec_id].participants:
                if p.id == member.session.id and p.left_at is None:
                    p.left_at = time.time()

    def room_closed(self, room: Room) -> None:
        if room.id in self.active:
            self._spawn(self._stop_quietly(room.id))
        live = self.broadcasts.get(room.id)
        if live is not None and live.hls.state in ("starting", "live"):
            self._spawn(live.stop())

    async def _stop_quietly(self, room_id: str) -> None:
        try:
            await self.stop_recording(room_id)
        except MediaError:
            pass

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.store is None:
            return
        again, failed = self._recovered
        for rec in failed:
            log.warning("recording %s of room %s: %s", rec.id, rec.room_id, rec.reason)
            self.emit("recording_failed", rec)
        for rec in again:
            log.info("recording %s of room %s: processing it again after a restart", rec.id, rec.room_id)
            self._spawn(self.process(rec))
        self._disk.start()
        self._retention.start()

    async def stop(self) -> None:
        """Graceful shutdown: recordings stop at the media server and wait as ``processing``.

        Their processing runs at the next start (:meth:`RecordingStore.recover`
        hands it back), so a restart loses nothing that Janus wrote. The SFU
        stops after this service (services stop in reverse order), so Janus
        is still there to close its files.
        """
        for b in list(self.broadcasts.values()):
            await b.stop()
        store = self.store
        for room_id, rec_id in list(self.active.items()):
            self.active.pop(room_id, None)
            recorder = self._recorders.pop(room_id, None)
            if recorder is not None:
                try:
                    await recorder.stop_recording(room_id)
                except Exception as exc:
                    log.warning("stopping the recording of %s at shutdown: %s", room_id, exc)
            if store is not None and rec_id in store.items:
                store.transition(store.items[rec_id], State.PROCESSING)
                log.info("recording %s of %s: processing resumes at the next start", rec_id, room_id)
        await self._disk.stop()
        await self._retention.stop()
        await self.jobs.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- events
    def emit(self, event: str, rec: RecordingInfo) -> None:
        hooks = self.app.webhooks
        if hooks is None:
            return
        fields: dict[str, Any] = {"recordingId": rec.id, "roomId": rec.room_id}
        if event == "recording_ready":
            fields["files"] = [f.name for f in rec.files]
        if event == "recording_failed":
            fields["reason"] = rec.reason
        hooks.emit(event, **fields)

    def fail(self, rec: RecordingInfo, reason: str) -> None:
        assert self.store is not None
        if rec.state in (State.READY, State.FAILED):
            return
        if self.active.get(rec.room_id) == rec.id:
            del self.active[rec.room_id]
            self._announce(rec.room_id, None)
        self.store.fail(rec, reason)
        log.warning("recording %s of room %s failed: %s", rec.id, rec.room_id, reason)
        self.emit("recording_failed", rec)

    # ------------------------------------------------------------- recordings
    def _require_store(self) -> RecordingStore:
        if self.store is None:
            raise MediaError(409, "recording-disabled",
                             "recording is off on this server (start it with --recordings-dir)")
        return self.store

    def _recorder(self, room_id: str) -> Any:
        """Who records this room: the AudioBridge for audio-mix rooms, else the SFU."""
        room = self.app.hub.rooms.get(room_id)
        if room is not None and room.media == "audio-mix":
            return self.app.audiomix  # type: ignore[attr-defined]
        return self.app.sfu  # type: ignore[attr-defined]

    def recordable(self, room_id: str) -> bool:
        room = self.app.hub.rooms.get(room_id)
        return self.room_on_sfu(room_id) or (room is not None and room.media == "audio-mix"
                                             and self.app.sfu is not None
                                             and self.app.sfu.enabled)  # type: ignore[attr-defined]

    def room_on_sfu(self, room_id: str) -> bool:
        """Whether this room's media passes through the server (an SFU room)."""
        sfu = self.app.sfu
        return sfu is not None and sfu.is_sfu_room(room_id)

    def _not_sfu(self, room_id: str, what: str) -> MediaError:
        room = self.app.hub.rooms.get(room_id)
        mode = room.media if room is not None else "mesh"
        if mode == "mesh":
            return MediaError(409, "mesh-room",
                              f"room {room_id!r} is a mesh room: its media goes peer to peer and "
                              f"never reaches the server, so it cannot be {what} (use media mode sfu)")
        if mode == "auto":
            # An auto room on its peer-to-peer route (two members or fewer): for now
            # its media is a mesh's. It can be once a third member moves it to the SFU.
            return MediaError(409, "mesh-room",
                              f"room {room_id!r} is an auto room that is peer to peer now: its media "
                              f"never reaches the server, so it cannot be {what} until it moves to "
                              f"the SFU (three members or more), or use media mode sfu")
        return MediaError(409, "wrong-media-mode",
                          f"room {room_id!r} is an {mode} room: only sfu rooms can be {what}")

    async def start_recording(self, room_id: str, *, started_by: str | None = None) -> RecordingInfo:
        store = self._require_store()
        if room_id not in self.app.hub.rooms:
            raise MediaError(404, "room-not-found", f"no room {room_id!r}")
        if not self.recordable(room_id):
            raise self._not_sfu(room_id, "recorded")
        if room_id in self.active:
            raise MediaError(409, "already-recording",
                             f"room {room_id!r} is being recorded ({self.active[room_id]})")
        ok, reason = store.disk_ok()
        if not ok:
            raise MediaError(507, "disk-full", reason)
        rec = store.create(room_id, started_by=started_by)
        self.active[room_id] = rec.id
        room = self.app.hub.rooms[room_id]
        if room.media == "audio-mix":  # who is in the mix now; joins and leaves follow
            now = time.time()
            rec.participants = [ParticipantInfo(id=mb.session.id, user_id=mb.user_id,
                                                display_name=mb.display_name, joined_at=now)
                                for mb in room.members.values()]
        try:
            recorder = self._recorders[room_id] = self._recorder(room_id)
            await recorder.start_recording(room_id, store.raw(rec.id))
        except Exception as exc:
            self.fail(rec, f"the media server did not start recording: {exc}")
            raise MediaError(502, "media-server-error", str(exc)) from exc
        self.emit("recording_started", rec)
        self._announce(room_id, rec)
        return rec

    async def stop_recording(self, room_id: str) -> RecordingInfo:
        store = self._require_store()
        rec_id = self.active.pop(room_id, None)
        if rec_id is None or rec_id not in store.items:
            raise MediaError(409, "not-recording", f"room {room_id!r} is not being recorded")
        rec = store.items[rec_id]
        try:
            await self._recorders.pop(room_id, self._recorder(room_id)).stop_recording(room_id)
        except Exception as exc:
            log.warning("stopping the recording of %s at the media server: %s", room_id, exc)
        store.transition(rec, State.PROCESSING)
        self._announce(room_id, None)
        self._spawn(self.process(rec))
        return rec

    async def process(self, rec: RecordingInfo) -> None:
        """Raw media -> per-participant files and the composed recording (rtchub.media.postprocess)."""
        from rtchub.media.postprocess import MediaPipelineError, process_recording

        store = self._require_store()
        ok, reason = store.disk_ok()
        if not ok:
            self.fail(rec, reason)
            return
        try:
            await process_recording(store, rec, self.jobs)
        except MediaPipelineError as exc:
            self.fail(rec, str(exc))
            return
        except OSError as exc:
            # ENOSPC while renaming or writing metadata, a vanished folder: never stuck.
            reason = ("disk full while processing: No space left on device" if exc.errno == errno.ENOSPC
                      else f"processing failed: {exc}")
            self.fail(rec, reason)
            return
        except asyncio.CancelledError:
            raise  # shutdown: it stays processing and the next start does it again
        except Exception as exc:
            log.exception("processing recording %s", rec.id)
            self.fail(rec, f"processing failed: {type(exc).__name__}: {exc}")
            return
        store.transition(rec, State.READY)
        self.emit("recording_ready", rec)

    async def _who(self, rec: RecordingInfo) -> None:
        """Who publishes now (feed -> user), so the files can be named after people."""
        sfu = self.app.sfu
        if sfu is None:
            return
        try:
            feeds = await sfu.feeds(rec.room_id)
        except Exception:  # the broker or Janus is away for a moment: next second
            return
        known = {p.id for p in rec.participants}
        for feed, info in feeds.items():
            if feed not in known:
                member = self.hub.rooms.get(rec.room_id)
                mb = member.members.get(info["user"]) if member is not None else None
                rec.participants.append(ParticipantInfo(
                    id=feed, user_id=info["user"], joined_at=time.time(),
                    display_name=mb.display_name if mb is not None else None))

    def _check_disk(self) -> None:
        """Disk-full policy: stop every running recording, fail it, say why."""
        store = self.store
        if store is None or not self.active:
            return
        for rec_id in self.active.values():
            if rec_id in store.items:
                self._spawn(self._who(store.items[rec_id]))
        ok, reason = store.disk_ok()
        if ok:
            return
        for room_id, rec_id in list(self.active.items()):
            rec = store.items.get(rec_id)
            self.active.pop(room_id, None)
            self._announce(room_id, None)
            recorder = self._recorders.pop(room_id, None)
            if recorder is not None:
                self._spawn(recorder.stop_recording(room_id))
            if rec is not None:
                self.fail(rec, reason)

    def _sweep(self) -> None:
        if self.store is not None:
            for rec_id in self.store.sweep():
                log.info("recording %s deleted (retention)", rec_id)

    async def delete_recording(self, rec_id: str) -> None:
        store = self._require_store()
        rec = store.items.get(rec_id)
        if rec is None:
            raise MediaError(404, "not-found", f"no recording {rec_id!r}")
        if rec.state in (State.RECORDING, State.PROCESSING):
            raise MediaError(409, "recording-busy",
                             f"recording {rec_id} is {rec.state}: stop it and let it finish first")
        await asyncio.to_thread(store.delete, rec_id)

    def progress_of(self, rec: RecordingInfo) -> RecordingInfo:
        return rec

    # ------------------------------------------------------------- broadcasts
    async def start_broadcast(self, room_id: str) -> RoomBroadcast:
        folder = self.app.settings.broadcast_dir
        if not folder:
            raise MediaError(409, "broadcast-disabled",
                             "broadcasting is off on this server (start it with --broadcast-dir)")
        if room_id not in self.hub.rooms:
            raise MediaError(404, "room-not-found", f"no room {room_id!r}")
        if not self.room_on_sfu(room_id):
            raise self._not_sfu(room_id, "broadcast")
        old = self.broadcasts.get(room_id)
        if old is not None and old.hls.state in ("starting", "live"):
            raise MediaError(409, "already-broadcasting", f"room {room_id!r} is being broadcast")
        b = RoomBroadcast(room_id, Path(folder).resolve() / room_id, self.app.sfu)  # type: ignore[attr-defined]
        self.broadcasts[room_id] = b
        try:
            await b.start()
        except Exception as exc:
            await b.stop()
            b.hls.state, b.hls.reason = "failed", f"could not start: {exc}"
            raise MediaError(502, "media-server-error", str(exc)) from exc
        return b

    async def stop_broadcast(self, room_id: str) -> RoomBroadcast:
        b = self.broadcasts.get(room_id)
        if b is None or b.hls.state not in ("starting", "live"):
            raise MediaError(409, "not-broadcasting", f"room {room_id!r} is not being broadcast")
        await b.stop()
        return b
