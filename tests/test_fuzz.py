"""Protocol fuzzing against a live ``rtchub serve``: 100,000+ hostile messages.

How the messages are made
    Hypothesis strategies (wrong types, huge numbers, NaN/Infinity, unknown
    fields, odd unicode, nested values) generate a seed corpus through
    ``@given`` with a fixed seed. Hypothesis spends milliseconds per example,
    far too slow for 100,000 of them in a minute, so a structure-aware
    mutator driven by a seeded ``random.Random`` multiplies the corpus:
    message objects built from protocol field names and corpus values,
    nesting deeper than the encoders allow, byte-level damage (flips,
    truncation, invalid UTF-8 sequences) sent as binary frames, random
    bytes, MessagePack with bin/ext values and integer map keys, and a few
    frames over ``max_message_size``.

What is checked, for every message
    After each hostile message the client sends a sentinel ``ping``; the
    server handles a connection's messages in order, so everything between
    two sentinel ``pong`` s answers exactly one hostile message. Each answer
    must be a PROTOCOL.md message with the next ``seq``; errors carry a code
    from the list (and never ``internal``); a message that is not JSON gets
    exactly one ``invalid-json``, a non-object or a non-string type exactly
    one ``invalid-message``, an unknown type exactly one ``unknown-type``; the
    connection stays open, except after an oversize frame (1009, abuse).
    Meanwhile two honest clients in their own room exchange numbered
    messages: none lost, none out of order. At the end the server process
    is still up, answers /healthz and logged no traceback.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from rtchub.protocol.codec import decode_json, decode_msgpack
from rtchub.protocol.errors import ErrorCode
from rtchub.protocol.messages import CLIENT_TYPES
from tests.conftest import ROOT

TOTAL = int(os.environ.get("RTCHUB_FUZZ_MESSAGES", "100000"))
CONNECTIONS = 4            # two JSON, two MessagePack
BATCH = 250
MAX_MESSAGE = 64 * 1024
SEED = int(os.environ.get("RTCHUB_FUZZ_SEED", "20240611"))

FIELDS = ["type", "roomId", "userId", "to", "sdp", "candidate", "data", "content", "id", "token",
          "sessionId", "lastSeq", "timestamp", "displayName", "echo", "seq", "from"]
TYPES = sorted(CLIENT_TYPES)
SERVER_TYPES = {"welcome", "room-info", "user-joined", "user-left", "offer", "answer", "candidate",
                "signal", "message", "pong", "ack", "error", "resumed", "token-expiring"}
UNSOLICITED = {"user-joined", "user-left", "offer", "answer", "candidate", "signal", "message"}
ROOMS = ["fz-a", "fz-b", "fz-c"]
USERS = ["u1", "u2", "u3", "u4"]

# ------------------------------------------------------------ hypothesis corpus
scalars = (st.none() | st.booleans() | st.integers()
           | st.sampled_from([2**53, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, 10**400])
           | st.floats() | st.text(max_size=12)
           | st.sampled_from(ROOMS + USERS + ["", "a" * 65, "💥", "\x00", "room/../x", "\ud800",
                                             "a b", "<script>", "x" * 64]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6),
                                                                inner, max_size=3),
    max_leaves=6)
messages = st.builds(
    lambda t, fields: {"type": t, **fields},
    st.sampled_from(TYPES) | st.sampled_from(["welcome", "ack", "error", "JOIN", "", " join"]) | scalars,
    st.dictionaries(st.sampled_from(FIELDS[1:]) | st.text(max_size=8), values, max_size=5))


def hypothesis_corpus(n: int) -> list[Any]:
    found: list[Any] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @seed(SEED)
    @given(messages | values)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def leaves(value: Any, out: list[Any]) -> None:
    out.append(value)
    if isinstance(value, dict):
        for v in value.values():
            leaves(v, out)
    elif isinstance(value, list):
        for v in value:
            leaves(v, out)


# ------------------------------------------------------------------- mutator
class Mutator:
    """Many hostile frames from a corpus, reproducibly (seeded)."""

    def __init__(self, rnd: random.Random, corpus: list[Any]) -> None:
        self.rnd = rnd
        self.corpus = corpus
        self.pool: list[Any] = []
        for c in corpus:
            leaves(c, self.pool)
        self.pool += [float("inf"), float("nan"), -0.0, 1e308, 2**1000, "é" * 40, [[[]]], {}]

    def value(self) -> Any:
        r = self.rnd.random()
        if r < 0.03:
            return self.deep(self.rnd.randint(200, 600))
        if r < 0.05:
            return "z" * self.rnd.randint(100, 20000)
        return self.rnd.choice(self.pool)

    def deep(self, depth: int) -> Any:
        v: Any = self.rnd.choice([1, "x", None, {}])
        for _ in range(depth):
            v = [v] if self.rnd.random() < 0.5 else {"data": v}
        return v

    def message(self) -> Any:
        rnd = self.rnd
        r = rnd.random()
        if r < 0.15:
            return rnd.choice(self.corpus)
        if r < 0.25:
            return self.value()
        msg: dict[str, Any] = {"type": rnd.choice(TYPES) if rnd.random() < 0.85 else self.value()}
        for name in rnd.sample(FIELDS[1:], rnd.randint(0, 6)):
            msg[name] = self.plausible(name) if rnd.random() < 0.7 else self.value()
        if rnd.random() < 0.2:
            msg["x-" + str(rnd.randint(0, 999))] = self.value()  # unknown fields
        return msg

    def plausible(self, name: str) -> Any:
        rnd = self.rnd
        if name == "roomId":
            return rnd.choice(ROOMS)
        if name in ("data", "content"):
            return rnd.choice([{"n": rnd.randint(0, 9)}, "hi", self.value()])
        if name == "candidate":
            return rnd.choice(["candidate:1 1 udp 1 127.0.0.1 9 typ host", None, {"candidate": ""}])
        if name in ("userId", "to"):
            return rnd.choice(USERS)
        if name == "sdp":
            return "v=0\r\n" + "a=x\r\n" * rnd.randint(0, 5)
        if name == "id":
            return rnd.choice([rnd.randint(-5, 10**6), "m" + str(rnd.randint(0, 10**6))])
        if name == "lastSeq":
            return rnd.randint(-3, 50)
        return self.value()

    def frame(self, msgpack_conn: bool) -> tuple[bool, bytes]:
        """(binary, payload). Text frames are valid UTF-8 (RFC 6455 section 8.1)."""
        rnd = self.rnd
        r = rnd.random()
        if r < 0.06:
            return True, rnd.randbytes(rnd.randint(0, 80))
        if r < 0.10:
            depth = rnd.randint(100, 5000)
            return False, (b"[" * depth + b"]" * depth) if rnd.random() < 0.5 else b'{"a":' * depth
        msg = self.message()
        if msgpack_conn and rnd.random() < 0.85:
            return True, self.pack(msg)
        try:
            body = json.dumps(msg, allow_nan=True, ensure_ascii=rnd.random() < 0.5).encode(
                "utf-8", "surrogatepass")
        except RecursionError:
            body = b'{"type":"ping","timestamp":' + b"[" * 900 + b"]" * 900 + b"}"
        if r < 0.22:
            return True, self.damage(body)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return True, body
        return False, body

    def pack(self, msg: Any) -> bytes:
        rnd = self.rnd
        if rnd.random() < 0.1 and isinstance(msg, dict):
            msg = dict(msg)
            msg[rnd.choice(["data", "timestamp", "sdp"])] = rnd.choice(
                [b"\xff\x00bin", msgpack.ExtType(5, b"ext"), {1: 2}, [b"\xc0"]])
        try:
            return msgpack.packb(msg, use_bin_type=True,
                                 unicode_errors="surrogatepass")
        except (OverflowError, ValueError, TypeError, RecursionError):
            return self.damage(msgpack.packb({"type": "ping", "timestamp": 1}))

    def damage(self, body: bytes) -> bytes:
        rnd = self.rnd
        data = bytearray(body)
        for _ in range(rnd.randint(1, 4)):
            op = rnd.random()
            pos = rnd.randint(0, len(data)) if data else 0
            if op < 0.3 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rnd.randint(0, 7)
            elif op < 0.6:
                data[pos:pos] = rnd.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                            b"\x80", b"\x00", b"\xe2\x82"])
            elif op < 0.8:
                del data[pos:]
            else:
                data[pos:pos] = bytes(rnd.randbytes(rnd.randint(1, 8)))
        return bytes(data)


# ------------------------------------------------------------------- oracle
def decode_like_the_server(binary: bool, data: bytes, msgpack_conn: bool) -> tuple[bool, Any]:
    try:
        if msgpack_conn and binary:
            return True, decode_msgpack(data)
        return True, decode_json(data)
    except RecursionError:
        raise
    except Exception:
        return False, None


def expected_error(binary: bool, data: bytes, msgpack_conn: bool) -> str | None:
    """The one error PROTOCOL.md requires, or None when the outcome depends on state."""
    try:
        ok, msg = decode_like_the_server(binary, data, msgpack_conn)
    except RecursionError:
        # The MessagePack check walks the value recursively; whether ~1000
        # levels fit depends on the caller's stack (the server's is shallower
        # than pytest's), so either outcome is right here.
        return None
    if not ok:
        return ErrorCode.INVALID_JSON
    if type(msg) is not dict or type(msg.get("type")) is not str:
        return ErrorCode.INVALID_MESSAGE
    if msg["type"] not in CLIENT_TYPES:
        return ErrorCode.UNKNOWN_TYPE
    return None


# ------------------------------------------------------------------ clients
class FuzzConnection:
    def __init__(self, http: aiohttp.ClientSession, url: str, index: int, mutator: Mutator,
                 stats: dict[str, int]) -> None:
        self.http = http
        self.url = url
        self.index = index
        self.msgpack = index % 2 == 1
        self.mutator = mutator
        self.stats = stats
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = -1

    def encode(self, msg: dict[str, Any]) -> tuple[bool, bytes]:
        return (True, msgpack.packb(msg)) if self.msgpack else (False, orjson.dumps(msg))

    def decode(self, msg: aiohttp.WSMessage) -> dict[str, Any]:
        if msg.type == aiohttp.WSMsgType.BINARY:
            assert self.msgpack, "binary frame on a JSON connection"
            return msgpack.unpackb(msg.data, raw=False)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        return orjson.loads(msg.data)

    async def connect(self) -> None:
        proto = "rtchub.v1.msgpack" if self.msgpack else "rtchub.v1.json"
        self.ws = await self.http.ws_connect(self.url, protocols=(proto,), max_msg_size=0)
        welcome = self.decode(await self.ws.receive(timeout=10))
        assert welcome["type"] == "welcome" and welcome["seq"] == 0
        self.seq = 0
        self.stats["connections"] += 1

    async def send(self, binary: bool, data: bytes) -> None:
        assert self.ws is not None
        if binary:
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data.decode())

    async def run(self, count: int) -> None:
        await self.connect()
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            await self.batch(done, size)
            done += size

    async def batch(self, start: int, size: int) -> None:
        assert self.ws is not None
        rnd = self.mutator.rnd
        sent: list[tuple[bool, bytes]] = []
        oversize = rnd.random() < 0.02
        try:
            for i in range(size):
                frame = self.mutator.frame(self.msgpack)
                sent.append(frame)
                await self.send(*frame)
                await self.send(*self.encode({"type": "ping", "timestamp": f"S{self.index}:{start + i}"}))
            if oversize:
                await self.send(False, b'{"type":"message","data":"' + b"o" * MAX_MESSAGE + b'"}')
        except aiohttp.ClientConnectionResetError:
            pass  # closed by the server: check_answers says after which message
        await self.check_answers(start, sent, oversize)
        self.stats["messages"] += size + oversize

    async def check_answers(self, start: int, sent: list[tuple[bool, bytes]], oversize: bool) -> None:
        assert self.ws is not None
        i = 0
        answers: list[dict[str, Any]] = []
        while True:
            raw = await self.ws.receive(timeout=30)
            if raw.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                # picows drops the frame read just before an oversize one when it
                # fails the connection (its parser stops at the bad header), so the
                # last sentinel may go unanswered: 1009 ends the connection anyway.
                assert oversize and i >= len(sent) - 1, (
                    f"conn {self.index} closed ({self.ws.close_code}) after message {start + i}: "
                    f"{sent[i] if i < len(sent) else 'oversize'!r:.300}")
                assert self.ws.close_code == 1009, self.ws.close_code
                self.stats["closed-1009"] += 1
                await self.connect()
                return
            msg = self.decode(raw)
            assert type(msg) is dict and msg.get("type") in SERVER_TYPES, msg
            assert msg["seq"] == self.seq + 1, (self.seq, msg)
            self.seq = msg["seq"]
            if msg["type"] == "pong" and msg.get("timestamp") == f"S{self.index}:{start + i}":
                self.judge(sent[i], answers)
                answers = []
                i += 1
                if i == len(sent) and not oversize:
                    return
                continue
            if msg["type"] in UNSOLICITED and "from" in msg or msg["type"] in ("user-joined", "user-left"):
                self.stats["relayed-in"] += 1
                continue
            answers.append(msg)

    def judge(self, frame: tuple[bool, bytes], answers: list[dict[str, Any]]) -> None:
        binary, data = frame
        errors = [a for a in answers if a["type"] == "error"]
        for e in errors:
            assert e["code"] in ErrorCode.ALL and e["code"] != ErrorCode.INTERNAL, (e, data[:300])
            assert isinstance(e["message"], str)
        assert len(errors) <= 1, (errors, data[:300])
        want = expected_error(binary, data, self.msgpack)
        if want is not None:
            assert [e["code"] for e in errors] == [want], (want, answers, data[:300])
            assert len(answers) == 1, answers
        for a in answers:
            assert a["type"] in ("error", "ack", "pong", "room-info", "resumed"), (a, data[:300])
        for e in errors:
            self.stats["error:" + e["code"]] += 1
        if not errors:
            self.stats["accepted"] += 1


async def honest_pair(http: aiohttp.ClientSession, url: str, stop: asyncio.Event,
                      stats: dict[str, int]) -> None:
    """Two well-behaved clients talking in their own room the whole time."""
    room = "honest-" + os.urandom(4).hex()
    a = await http.ws_connect(url)
    b = await http.ws_connect(url)
    for ws, user in ((a, "alice"), (b, "bob")):
        await ws.receive_json(timeout=10)
        await ws.send_json({"type": "join", "roomId": room, "userId": user})
    got: dict[str, list[int]] = {"alice": [], "bob": []}
    acks: dict[str, int] = {"alice": 0, "bob": 0}

    async def read(ws: aiohttp.ClientWebSocketResponse, me: str) -> None:
        async for raw in ws:
            msg = orjson.loads(raw.data)
            if msg["type"] == "message":
                got[me].append(msg["data"]["n"])
            elif msg["type"] == "ack":
                acks[me] += 1
            elif msg["type"] == "error":
                raise AssertionError(f"honest client {me} got {msg}")

    readers = [asyncio.create_task(read(a, "alice")), asyncio.create_task(read(b, "bob"))]
    await asyncio.sleep(0.2)
    n = 0
    while not stop.is_set() or n < 50:
        await a.send_json({"type": "message", "roomId": room, "to": "bob", "data": {"n": n}, "id": n})
        await b.send_json({"type": "message", "roomId": room, "to": "alice", "data": {"n": n}, "id": n})
        n += 1
        await asyncio.sleep(0.01)
    deadline = time.monotonic() + 20
    while (len(got["alice"]) < n or len(got["bob"]) < n) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for r in readers:
        r.cancel()
    assert got["bob"] == list(range(n)), f"bob lost messages: {len(got['bob'])}/{n}"
    assert got["alice"] == list(range(n)), f"alice lost messages: {len(got['alice'])}/{n}"
    assert acks["alice"] == acks["bob"] == n
    stats["honest-exchanged"] = 2 * n
    await a.close()
    await b.close()


@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_fuzz_live_server(server_process: Any) -> None:
    from collections import Counter

    # --log-level warning: the child's stdout is a pipe read only at the end;
    # thousands of INFO join lines would fill it and block the server.
    # Errors and tracebacks are still logged, and checked below.
    proc = server_process("--max-msg-rate", "0", "--max-joins-per-second", "0",
                          "--max-message-size", str(MAX_MESSAGE), "--log-level", "warning")
    started = time.monotonic()
    rnd = random.Random(SEED)
    corpus = hypothesis_corpus(400)
    assert len(corpus) >= 200
    mutator = Mutator(rnd, corpus)
    stats: Counter[str] = Counter()
    stop = asyncio.Event()
    per_conn = math.ceil(TOTAL / CONNECTIONS)
    async with aiohttp.ClientSession() as http:
        honest = asyncio.create_task(honest_pair(http, proc.ws_url, stop, stats))
        conns = [FuzzConnection(http, proc.ws_url, i, mutator, stats) for i in range(CONNECTIONS)]
        try:
            await asyncio.gather(*(c.run(per_conn) for c in conns))
        finally:
            stop.set()
        await honest
        async with http.get(proc.url + "/healthz") as resp:
            assert resp.status == 200
    assert proc.proc.poll() is None, "the server died"
    assert stats["messages"] >= TOTAL
    # Every kind of refusal was exercised, and plenty was accepted too.
    for code in ("invalid-json", "invalid-message", "unknown-type", "not-in-room"):
        assert stats["error:" + code] > TOTAL // 1000, stats
    assert stats["accepted"] > TOTAL // 100 and stats["closed-1009"] >= 1
    assert proc.terminate() == 0
    log = proc.output()
    assert "Traceback" not in log and "exception" not in log.lower(), log[-3000:]
    print(f"\nfuzz: {stats['messages']} hostile messages in {time.monotonic() - started:.1f} s",
          dict(sorted(stats.items())))


# -------------------------------------------------------------------- atheris
ATHERIS_HARNESS = textwrap.dedent('''
    import sys
    import atheris

    with atheris.instrument_imports():
        import msgpack
        import orjson
        from rtchub.core.hub import Hub
        from rtchub.protocol.codec import decode_json, decode_msgpack
        from rtchub.protocol.errors import ErrorCode, ProtocolError
        from rtchub.settings import Settings

    hub = Hub(Settings(max_msg_rate=0, max_joins_per_second=0, grace_period=0))

    class Sink:
        transport_name = "fuzz"
        resume_hint = None
        def __init__(self):
            self.session = None
            self.out = []
        def deliver(self, seq, out):
            self.out.append(out)
        def close(self, code, reason):
            pass

    sinks = [Sink() for _ in range(3)]
    sessions = [hub.open(s) for s in sinks]

    def one_input(data):
        fdp = atheris.FuzzedDataProvider(data)
        who = fdp.ConsumeIntInRange(0, 2)
        binary = fdp.ConsumeBool()
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        sink = sinks[who]
        session = sink.session
        try:
            msg = decode_msgpack(payload) if binary else decode_json(payload)
        except Exception:
            hub.error(session, ProtocolError(ErrorCode.INVALID_JSON, "bad frame"))
            return
        hub.receive(session, msg)   # must never raise for any input
        for s in sinks:
            for out in s.out:
                body = orjson.loads(out.json)
                assert isinstance(body.get("type"), str)
                if body["type"] == "error":
                    assert body["code"] in ErrorCode.ALL and body["code"] != "internal", body
            s.out.clear()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
''')


def test_atheris_core(tmp_path: Any) -> None:
    """Coverage-guided fuzzing of decode + Hub.receive (in-process core, no sockets)."""
    import atheris  # noqa: F401 - in the [test] extra: a missing fuzzer is a failure, not a skip
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed_msg in enumerate([b'{"type":"join","roomId":"r","userId":"a"}',
                                  b'{"type":"message","roomId":"r","data":1}',
                                  b'{"type":"offer","roomId":"r","to":"a","sdp":"x"}',
                                  b'{"type":"resume","sessionId":"x","lastSeq":0}']):
        (corpus / f"seed{i}").write_bytes(b"\x00\x00" + seed_msg)
    result = subprocess.run(
        [sys.executable, str(harness), "-runs=300000", "-max_total_time=30", "-max_len=2048",
         "-seed=1", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr, result.stderr[-2000:]
