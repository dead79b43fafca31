"""The recordings API (issue 17) on a real server: refusals, reading, Range downloads, deletes,
and what a restart does to a recording it caught half-way (with its signed webhook).

Recordings that a previous server run left behind are written with the same
:class:`RecordingStore` that the server uses, then a new server starts on that folder.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from rtchub.media.recordings import FileInfo, RecordingStore, State
from tests.conftest import eventually, joined
from tests.media_probe import FFMPEG
from tests.test_webhooks import SECRET, Receiver

KEY = "rec-key"
H = {"X-API-Key": KEY}


async def _call(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = H if headers is None else headers
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=sent) as r:
        body = await r.read()
        data = await r.json(content_type=None) if r.content_type == "application/json" else body
        return r.status, data, r.headers


async def test_recording_requests_for_unknown_or_mesh_rooms_get_coded_errors(make_server: Any,
                                                                             tmp_path: Path) -> None:
    app = await make_server(api_key=KEY, recordings_dir=str(tmp_path))
    status, body, _ = await _call("POST", app.url + "/api/rooms/nobody/recording")
    assert status == 404 and body["error"]["code"] == "room-not-found"

    ws = await joined(app, "mesh-room-1", "alice")
    status, body, _ = await _call("POST", app.url + "/api/rooms/mesh-room-1/recording")
    assert status == 409 and body["error"]["code"] == "mesh-room"
    assert "never reaches the server" in body["error"]["message"]
    status, body, _ = await _call("DELETE", app.url + "/api/rooms/mesh-room-1/recording")
    assert status == 409 and body["error"]["code"] == "not-recording"
    status, body, _ = await _call("POST", app.url + "/api/rooms/mesh-room-1/recording", headers={})
    assert status == 401
    # Nothing was created by the refusals.
    status, body, _ = await _call("GET", app.url + "/api/recordings")
    assert status == 200 and body == {"recordings": []}
    assert [p.name for p in tmp_path.iterdir()] == []
    await ws.close()


async def test_recording_is_off_without_a_folder(make_server: Any) -> None:
    app = await make_server(api_key=KEY)
    status, body, _ = await _call("GET", app.url + "/api/recordings")
    assert status == 409 and body["error"]["code"] == "recording-disabled"


def _ready_recording(root: Path) -> tuple[str, bytes]:
    store = RecordingStore(root)
    store.load()
    rec = store.create("room-a", started_by="api")
    store.transition(rec, State.PROCESSING)
    part = store.folder(rec.id) / "composed.mp4.part"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-f", "mp4", str(part)], check=True)
    store.add_file(rec, part, FileInfo(name="composed.mp4", kind="composed", size=0, duration=2.0,
                                       content_type="video/mp4"))
    store.transition(rec, State.READY)
    return rec.id, (store.folder(rec.id) / "composed.mp4").read_bytes()


async def test_list_read_range_download_and_delete(make_server: Any, tmp_path: Path) -> None:
    rec_id, data = _ready_recording(tmp_path)
    app = await make_server(api_key=KEY, recordings_dir=str(tmp_path))
    status, body, _ = await _call("GET", app.url + "/api/recordings")
    assert status == 200 and [r["id"] for r in body["recordings"]] == [rec_id]
    status, body, _ = await _call("GET", app.url + f"/api/recordings/{rec_id}")
    assert body["state"] == "ready" and body["roomId"] == "room-a"
    assert body["files"] == [{"name": "composed.mp4", "kind": "composed", "participant": None,
                              "size": len(data), "duration": 2.0, "contentType": "video/mp4"}]

    url = app.url + f"/api/recordings/{rec_id}/files/composed.mp4"
    status, whole, headers = await _call("GET", url)
    assert status == 200 and whole == data and headers["Content-Type"] == "video/mp4"
    status, part, headers = await _call("GET", url, {**H, "Range": "bytes=100-199"})
    assert status == 206 and part == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, _ = await _call("GET", url, {**H, "Range": f"bytes={len(data) + 10}-"})
    assert status == 416
    status, body, _ = await _call("GET", app.url + f"/api/recordings/{rec_id}/files/recording.json")
    assert status == 404
    status, body, _ = await _call("GET", url, headers={})
    assert status == 401

    status, body, _ = await _call("DELETE", app.url + f"/api/recordings/{rec_id}")
    assert status == 200 and body == {"deleted": True}
    assert not (tmp_path / rec_id).exists()
    status, body, _ = await _call("GET", app.url + f"/api/recordings/{rec_id}")
    assert status == 404
    status, body, _ = await _call("DELETE", app.url + f"/api/recordings/{rec_id}")
    assert status == 404


async def test_a_restart_fails_a_recording_in_progress_with_a_reason_and_a_signed_webhook(
        make_server: Any, tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    store.load()
    caught = store.create("room-b")
    receiver = await Receiver().start()
    try:
        app = await make_server(api_key=KEY, recordings_dir=str(tmp_path), webhook_url=[receiver.url],
                                webhook_secret=SECRET)
        status, body, _ = await _call("GET", app.url + f"/api/recordings/{caught.id}")
        assert body["state"] == "failed"
        assert body["reason"].startswith("interrupted: rtchub stopped while recording")
        await eventually(lambda: any(e["event"] == "recording_failed" for e in receiver.events))
        event = next(e for e in receiver.events if e["event"] == "recording_failed")
        assert event["recordingId"] == caught.id and event["roomId"] == "room-b"
        assert event["reason"] == body["reason"]
        assert receiver.bad_signatures == 0
        # The failed state is on disk too: a second restart reads the same.
        again = RecordingStore(tmp_path)
        again.load()
        assert again.items[caught.id].state is State.FAILED
        # A failed recording can be deleted; a busy one cannot.
        busy = again.create("room-c")
        app.media.store.load()
        status, body, _ = await _call("DELETE", app.url + f"/api/recordings/{busy.id}")
        assert status == 409 and body["error"]["code"] == "recording-busy"
    finally:
        await receiver.stop()


async def test_processing_left_by_a_restart_runs_again_and_bad_raw_media_fails_with_a_reason(
        make_server: Any, tmp_path: Path) -> None:
    """A recording caught in ``processing`` is processed at the next start; raw files that
    janus-pp-rec cannot read end it ``failed`` with janus-pp-rec's reason, never stuck."""
    store = RecordingStore(tmp_path)
    store.load()
    rec = store.create("room-d")
    (store.raw(rec.id) / "videoroom-r-user-f-1-1700000000000000-video-1.mjr").write_bytes(b"not an mjr")
    store.transition(rec, State.PROCESSING)
    app = await make_server(api_key=KEY, recordings_dir=str(tmp_path))
    body: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal body
        _, body, _ = await _call("GET", app.url + f"/api/recordings/{rec.id}")
        return body["state"] != "processing"

    for _ in range(200):
        if await finished():
            break
        await asyncio.sleep(0.05)
    assert body["state"] == "failed"
    assert body["reason"].startswith("janus-pp-rec could not read videoroom-r-user-f-1-"), body["reason"]
    assert body["files"] == []
