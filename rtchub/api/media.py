"""Server API for recordings (issue 17): start/stop, list, read, download, delete.

Declared as :class:`~rtchub.api.openapi.Operation` entries like every other
route, so they are behind the API key and in ``/openapi.json``. The rules
(who may record what) live in :class:`rtchub.media.service.MediaService`;
this module only maps its :class:`~rtchub.media.service.MediaError` onto
HTTP. Downloads are ``FileResponse``: aiohttp answers ``Range`` requests
with 206 / 416 itself (RFC 9110 section 14).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import Field

from rtchub.api.models import ApiModel, ErrorBody, ErrorDetail
from rtchub.api.openapi import Operation
from rtchub.media.broadcast import BroadcastInfo, BroadcastList
from rtchub.media.recordings import RecordingInfo, RecordingList
from rtchub.media.service import MediaError

if TYPE_CHECKING:
    from rtchub.app import RtcHub


class WhipInfo(ApiModel):
    id: str
    room_id: str
    user_id: str
    started_at: float


class WhipList(ApiModel):
    sessions: list[WhipInfo]


class Deleted(ApiModel):
    deleted: bool = Field(description="always true: the recording and its files are gone")


def error_response(status: int, code: str, message: str) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))  # type: ignore[arg-type]
    return web.Response(status=status, body=body.model_dump_json(by_alias=True, exclude_none=True),
                        content_type="application/json")


def _from(exc: MediaError) -> web.Response:
    return error_response(exc.status, exc.code, exc.message)


E409 = (ErrorBody, "refused: recording-disabled, mesh-room, already-recording, not-recording, "
                   "recording-busy (see error.code)")
E404_ROOM = (ErrorBody, "the API is disabled, or room-not-found")
FILE_TYPES = ("video/mp4", "video/x-matroska", "audio/ogg")


def media_operations(app: RtcHub) -> list[Operation]:
    media = app.media

    async def start(roomId: str) -> Any:  # noqa: N803 - the path's name
        try:
            rec = await media.start_recording(roomId, started_by="api")
        except MediaError as exc:
            return _from(exc)
        return web.Response(status=201, body=rec.model_dump_json(by_alias=True),
                            content_type="application/json",
                            headers={"Location": f"/api/recordings/{rec.id}"})

    async def stop(roomId: str) -> Any:  # noqa: N803
        try:
            return await media.stop_recording(roomId)
        except MediaError as exc:
            return _from(exc)

    def listing() -> Any:
        if media.store is None:
            return _from(MediaError(409, "recording-disabled", "recording is off on this server"))
        return RecordingList(recordings=list(media.store.list()))

    def one(recordingId: str) -> Any:  # noqa: N803
        store = media.store
        if store is None:
            return _from(MediaError(409, "recording-disabled", "recording is off on this server"))
        rec = store.items.get(recordingId)
        if rec is None:
            return error_response(404, "not-found", f"no recording {recordingId!r}")
        return rec

    def download(recordingId: str, name: str) -> Any:  # noqa: N803
        store = media.store
        if store is None:
            return _from(MediaError(409, "recording-disabled", "recording is off on this server"))
        path = store.file(recordingId, name)
        if path is None or not path.exists():
            return error_response(404, "not-found", f"no file {name!r} in recording {recordingId!r}")
        rec = store.items[recordingId]
        ctype = next(f.content_type for f in rec.files if f.name == name)
        resp = web.FileResponse(path, headers={"Content-Type": ctype})
        resp.headers["Content-Disposition"] = f'attachment; filename="{rec.id}-{name}"'
        return resp

    async def delete(recordingId: str) -> Any:  # noqa: N803
        try:
            await media.delete_recording(recordingId)
        except MediaError as exc:
            return _from(exc)
        return Deleted(deleted=True)

    async def broadcast(roomId: str) -> Any:  # noqa: N803
        try:
            b = await media.start_broadcast(roomId)
        except MediaError as exc:
            return _from(exc)
        info = b.info()
        return web.Response(status=201, body=info.model_dump_json(by_alias=True),
                            content_type="application/json", headers={"Location": info.playlist})

    async def unbroadcast(roomId: str) -> Any:  # noqa: N803
        try:
            return (await media.stop_broadcast(roomId)).info()
        except MediaError as exc:
            return _from(exc)

    def broadcasts() -> Any:
        return BroadcastList(broadcasts=[b.info() for b in media.broadcasts.values()])

    def whip_sessions() -> Any:
        whip = app.whip
        items = list(whip.sessions.values()) if whip is not None else []
        return WhipList(sessions=[WhipInfo(id=w.id, room_id=w.room_id, user_id=w.session.user_id or "",
                                           started_at=w.started_at) for w in items])

    room = ["roomId"]
    b409 = (ErrorBody, "refused: broadcast-disabled, mesh-room, already-broadcasting, "
                       "not-broadcasting (see error.code)")
    return [
        Operation("POST", "/api/rooms/{roomId}/broadcast", "startBroadcast",
                  "Broadcast a room as HLS", broadcast,
                  {201: (BroadcastInfo, "starting; Location is the playlist"), 404: E404_ROOM,
                   409: b409, 502: (ErrorBody, "media-server-error")},
                  path_params=room, tags=["broadcasts"],
                  description="Janus forwards the room's publishers to one ffmpeg that lays "
                              "them out in a grid and writes HLS to --broadcast-dir, served at "
                              "/live/{roomId}/index.m3u8 and watched at /watch?room={roomId}."),
        Operation("DELETE", "/api/rooms/{roomId}/broadcast", "stopBroadcast", "Stop a broadcast",
                  unbroadcast, {200: (BroadcastInfo, "stopped (the playlist gets EXT-X-ENDLIST)"),
                                409: b409}, path_params=room, tags=["broadcasts"]),
        Operation("GET", "/api/whip", "listWhipSessions", "WHIP publishers now in rooms",
                  whip_sessions, {200: (WhipList, "one entry per live WHIP session")},
                  tags=["broadcasts"]),
        Operation("GET", "/api/broadcasts", "listBroadcasts", "Broadcasts and how they are doing",
                  broadcasts, {200: (BroadcastList, "running ones, and ended ones until restarted")},
                  tags=["broadcasts"]),
        Operation("POST", "/api/rooms/{roomId}/recording", "startRecording", "Start recording a room",
                  start, {201: (RecordingInfo, "recording; Location names it"), 404: E404_ROOM,
                          409: E409, 502: (ErrorBody, "media-server-error"),
                          507: (ErrorBody, "disk-full: free space is below --recordings-min-free-mb")},
                  path_params=room, tags=["recordings"],
                  description="Only rooms whose media runs through the SFU can be recorded: a "
                              "mesh room answers 409 `mesh-room`. Members get a `recording` "
                              "server message while it runs. Webhook `recording_started`."),
        Operation("DELETE", "/api/rooms/{roomId}/recording", "stopRecording", "Stop recording a room",
                  stop, {200: (RecordingInfo, "stopped; post-processing starts (state processing)"),
                         409: E409}, path_params=room, tags=["recordings"],
                  description="Post-processing then runs in the background; the recording "
                              "becomes `ready` (webhook `recording_ready`) or `failed` with a "
                              "`reason` (webhook `recording_failed`)."),
        Operation("GET", "/api/recordings", "listRecordings", "List recordings", listing,
                  {200: (RecordingList, "newest first"), 409: E409}, tags=["recordings"]),
        Operation("GET", "/api/recordings/{recordingId}", "getRecording",
                  "A recording: state, participants, files, progress", one,
                  {200: (RecordingInfo, "the recording"), 409: E409},
                  path_params=["recordingId"], tags=["recordings"]),
        Operation("GET", "/api/recordings/{recordingId}/files/{name}", "downloadRecordingFile",
                  "Download one file of a recording (HTTP Range supported)", download,
                  {200: (ErrorBody, "the whole file"), 206: (ErrorBody, "the requested range"),
                   409: E409},
                  path_params=["recordingId", "name"], tags=["recordings"], media_types=FILE_TYPES,
                  bare={416: "the Range is outside the file"}),
        Operation("DELETE", "/api/recordings/{recordingId}", "deleteRecording",
                  "Delete a recording and its files", delete,
                  {200: (Deleted, "deleted"), 409: E409}, path_params=["recordingId"],
                  tags=["recordings"]),
    ]
