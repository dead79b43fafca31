"""Where a relayed message's CPU goes: rtchub's CPU per message, by stage.

Issue 14 asks for the relay's cost per message broken down by stage, so that
the next optimisation is picked from a profile, not a guess. The total comes
from ``/proc`` exactly as in the ``relay`` scenario (server CPU in the
measuring window / delivered messages); the split comes from py-spy sampling
the same server while the same load runs:

- ``py-spy record --nonblocking`` reads the interpreter's stacks from outside
  without pausing it, so the profile does not slow the process it measures
  (blocking mode would stop the server on every sample);
- idle samples (the loop waiting in ``epoll``) are left out by py-spy, so the
  shares are shares of the server's busy time, which is what the ``/proc``
  total counts too;
- each sample goes to the stage of the innermost frame on its stack that a
  rule below names (rules are matched innermost first, so the encoder that
  ``Hub.deliver`` calls is "encode", not "resume buffer"). A sample with no
  rtchub frame at all is uvloop/picows C code reached straight from the event
  loop: socket reads and the loop itself.

Stage times are ``share × total``: a sampled estimate (a few hundred samples
per second) of a measured total; the table says how many samples it rests on.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The event loop and C code under it (uvloop's socket reads, picows' frame
#: parser before it calls back into Python): samples with no rtchub frame.
LOOP = "event loop, socket reads (uvloop, picows C)"

#: (stage, function-name pattern, file pattern), innermost match wins. The
#: names are py-spy's: ``Class.method (path:line)``.
RULES: tuple[tuple[str, str, str], ...] = (
    ("metrics (counters, relay-latency histogram)",
     r"^(FastHistogram|Metrics|HubObserver)\.|^Hub\.time_receive\.", r""),
    ("encode (JSON, WebSocket frame)", r"^(json_frame|msgpack_frame|Outgoing\.)", r""),
    ("write (coalesce, send)",
     r"^(CoalescingTransport|_Flusher)\.|Endpoint\.(deliver|_send_frame|_pending_bytes)$", r""),
    ("resume buffer, numbering (Hub.deliver)", r"^Hub\.(deliver|_trim)$", r""),
    ("rate limit, byte budget", r"^(Hub\._spend|Hub\._over_rate|TokenBucket\.|ByteBucket\.)", r""),
    ("validate (type, id, payload)", r"", r"protocol/messages\.py"),
    ("route (room, target, stamp)", r"^(Hub|Room|Session|\w*Router)\.", r"core/"),
    ("frame in (read, decode JSON)", r"^(PicowsEndpoint|WsEndpoint)\.|^decode_msgpack$", r""),
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*):\d+\)$")
_COMPILED = tuple((stage, re.compile(fn), re.compile(fp)) for stage, fn, fp in RULES)


def classify(stack: list[str]) -> str:
    """The stage of one sample, ``stack`` listed outermost first (py-spy's raw order)."""
    for frame in reversed(stack):
        m = _FRAME.match(frame.strip())
        if m is None:
            continue
        func, path = m["func"], m["file"]
        for stage, fn, fp in _COMPILED:
            if fn.pattern and not fn.search(func):
                continue
            if fp.pattern and not fp.search(path):
                continue
            return stage
    return LOOP


def tally(raw: str) -> Counter[str]:
    """Samples per stage from py-spy's ``--format raw`` output (``f1;f2;...;fn count``)."""
    out: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out[classify(stack.split(";"))] += int(count)
    return out


@dataclass
class StageProfile:
    """One profiled relay run: the measured total and its sampled split."""

    cpu_us_per_msg: float
    delivered: int
    samples: Counter[str]

    @property
    def total_samples(self) -> int:
        return sum(self.samples.values())

    def us_per_msg(self) -> dict[str, float]:
        """Stage -> µs of server CPU per delivered message (largest first)."""
        n = self.total_samples
        if not n:
            return {}
        return {stage: self.cpu_us_per_msg * count / n for stage, count in self.samples.most_common()}


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the bench extra installs it), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def profile_relay(config: dict[str, Any], rate: int = 250) -> StageProfile:
    """Run the relay load against a fresh rtchub and sample it with py-spy throughout."""
    from rtchub.bench import runner

    spy_bin = py_spy()
    if spy_bin is None:
        raise runner.BenchError("py-spy is not installed (pip install -e '.[bench]')")
    with tempfile.TemporaryDirectory(prefix="rtchub-stages-") as tmp:
        out = Path(tmp) / "stacks.txt"
        with runner.serving("rtchub") as server:
            spy = subprocess.Popen(
                [spy_bin, "record", "--pid", str(server.pids()[0]), "--rate", str(rate),
                 "--format", "raw", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(0.3)  # attached before the load starts
                if spy.poll() is not None:
                    raise runner.BenchError(f"py-spy could not attach: {spy.stderr.read()[-500:]}")
                run = runner.run_client(server, config)
            finally:
                if spy.poll() is None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    _, err = spy.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
        if not out.exists():
            raise runner.BenchError(f"py-spy wrote no profile: {err[-500:]}")
        samples = tally(out.read_text())
    delivered = int(run.result.get("delivered") or 0)
    if not delivered or run.server_cpu is None:
        raise runner.BenchError("the profiled relay run delivered nothing")
    return StageProfile(run.server_cpu / delivered * 1e6, delivered, samples)
