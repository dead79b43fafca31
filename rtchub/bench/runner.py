"""The harness of ``rtchub bench``: start servers and the load client, measure, collect.

Layout of one measurement: the server under test runs alone on core 0
(``taskset -c 0``), the Node load client (bench/node/loadgen.js) on core 1.
The client prints ``EVENT`` lines at the edges of its measuring window; at
those moments the harness reads the server's CPU time from
``/proc/<pid>/stat`` (utime + stime, all threads, kernel time included), so
"CPU per message" is the server's own cost and not an estimate. The client
reports its own CPU share, and a client at >= 90 % of its core is flagged as
the likely limit.

Every server is a fresh child process per scenario; every phase has a time
limit; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent.parent / "bench"
LOADGEN = BENCH_DIR / "node" / "loadgen.js"
NODE_RELAY = BENCH_DIR / "node" / "relay.js"
PY_RELAY = BENCH_DIR / "python" / "relay_websockets.py"
PICOWS_RELAY = BENCH_DIR / "python" / "relay_picows.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65536


class BenchError(RuntimeError):
    pass


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (10,000 idle sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, limit)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def steal_ticks(stat: str | None = None) -> tuple[int, int]:
    """(steal, total) clock ticks of the whole machine, from the ``cpu`` line of /proc/stat.

    Steal is time a virtual machine's CPUs were runnable but the hypervisor
    ran something else (proc(5)). On a shared VM it comes in bursts of
    milliseconds that stall client and server alike, so it is reported beside
    the latency rows: a p99 measured during heavy steal says more about the
    host than about the server.
    """
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.readline()
    fields = [int(x) for x in stat.split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time
    # is already counted in user and nice, so the total stops at steal.
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cores() -> int:
    return len(os.sched_getaffinity(0))


def pin(core: int, cmd: list[str]) -> list[str]:
    """Pin to one core when the machine has two or more (server 0, client 1)."""
    if cores() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listened on port {port} within {timeout:.0f}s")


@dataclass
class Server:
    """A server child process (or several: two rtchub nodes and their Redis)."""

    kind: str
    procs: list[subprocess.Popen[Any]]
    ports: list[int]
    logs: list[Any] = field(default_factory=list)
    #: The WebSocket path (``/rtc/ws`` for rtchub mounted in an ASGI app).
    ws_path: str = "/ws"

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}{self.ws_path}" for p in self.ports]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> float:
        return sum(self.cpu_parts().values())

    def cpu_parts(self) -> dict[int, float]:
        """CPU seconds of each process (pid -> seconds), for a breakdown by process."""
        return {pid: cpu_seconds(pid) for pid in self.pids()}

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for log in self.logs:
            log.close()
            Path(log.name).unlink(missing_ok=True)

    def log_tail(self) -> str:
        out = []
        for log in self.logs:
            try:
                log.flush()
                out.append(Path(log.name).read_text(errors="replace")[-2000:])
            except OSError:
                pass
        return "\n".join(out)


def rtchub_cmd(port: int, *, compression: bool = False, broker: str | None = None) -> list[str]:
    """``rtchub serve`` as the benchmark runs it: limits that would throttle a load test
    from one IP are off, validation and identity stay on."""
    cmd = [sys.executable, "-m", "rtchub.cli", "serve", "--max-msg-rate", "0", "--max-msg-burst", "0",
           "--stun-port", "0", "--port", str(port), "--max-connections-per-ip", "0",
           "--max-handshakes-per-ip", "0", "--max-room-members", "1000", "--log-level", "warning"]
    if compression:
        cmd.append("--compression")
    if broker:
        cmd += ["--broker", broker]
    return cmd


def _spawn(kind: str, cmds: list[list[str]], ports: list[int], env: dict[str, str] | None = None,
           wait: list[int] | None = None) -> Server:
    procs, logs = [], []
    for cmd in cmds:
        # Open for the child's whole life; closed and removed by Server.stop().
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix=f"bench-{kind}-", suffix=".log", delete=False)
        logs.append(log)
        procs.append(subprocess.Popen(pin(0, cmd), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=BENCH_DIR))
    server = Server(kind, procs, ports, logs)
    try:
        for port, proc in zip(wait or ports, procs, strict=False):
            wait_port(port, proc)
    except BenchError as exc:
        server.stop()
        raise BenchError(f"{kind}: {exc}\n{server.log_tail()}") from None
    return server


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(kind: str, cmd: list[str], port: int) -> Server:
    """One server child process on core 0, waited for on ``port``."""
    return _spawn(kind, [cmd], [port])


def start_server(kind: str, *, compression: bool = False) -> Server:
    port = free_port()
    if kind == "rtchub":
        return _spawn(kind, [rtchub_cmd(port, compression=compression)], [port])
    if kind == "node-ws":
        cmd = ["node", str(NODE_RELAY), str(port)] + (["--deflate"] if compression else [])
        return _spawn(kind, [cmd], [port])
    if kind == "py-websockets":
        return _spawn(kind, [[sys.executable, str(PY_RELAY), str(port)]], [port])
    if kind == "py-picows":
        return _spawn(kind, [[sys.executable, str(PICOWS_RELAY), str(port)]], [port])
    if kind == "rtchub-asgi":
        # rtchub mounted at /rtc in a FastAPI app under uvicorn (rtchub.bench.asgi_app).
        server = _spawn(kind, [[sys.executable, "-m", "rtchub.bench.asgi_app", str(port)]], [port])
        server.ws_path = "/rtc/ws"
        return server
    raise BenchError(f"unknown server {kind!r}")


def start_cluster(broker_probe_timeout: float = 10.0) -> Server:
    """Two rtchub nodes sharing a private redis-server on a free port (cross-node)."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise BenchError("redis-server is not installed")
    rport, p1, p2 = free_port(), free_port(), free_port()
    url = f"redis://127.0.0.1:{rport}/0"
    redis = _spawn("redis", [[redis_bin, "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"]], [rport])
    try:
        nodes = _spawn("rtchub-cluster", [rtchub_cmd(p1, broker=url), rtchub_cmd(p2, broker=url)],
                       [p1, p2])
    except BenchError:
        redis.stop()
        raise
    return Server("rtchub-cluster", nodes.procs + redis.procs, [p1, p2], nodes.logs + redis.logs)


@dataclass
class ClientRun:
    result: dict[str, Any]
    server_cpu: float | None = None  # server CPU seconds inside the window
    #: The same by process, in the order of ``Server.procs`` (two nodes, then Redis).
    server_cpu_parts: list[float] | None = None
    rss_before: int | None = None
    rss_after: int | None = None
    #: Share of the machine's CPU time stolen by the hypervisor inside the window.
    steal: float | None = None


def run_client(server: Server, config: dict[str, Any], *, timeout: float = 240.0,
               settle: float = 2.0) -> ClientRun:
    """Run the load client against ``server``; sample the server at the client's events."""
    if not LOADGEN.exists():
        raise BenchError(f"{LOADGEN} is missing")
    if not (BENCH_DIR / "node_modules" / "ws").exists():
        raise BenchError("bench/node_modules is missing: run `npm ci` in bench/ (make bench does)")
    cfg = dict(config, urls=server.urls, hardLimit=timeout)
    run = ClientRun(result={})
    if cfg.get("mode") == "idle":
        run.rss_before = server.rss()
    proc = subprocess.Popen(pin(1, ["node", str(LOADGEN), json.dumps(cfg)]), cwd=BENCH_DIR,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    assert proc.stdout is not None and proc.stdin is not None
    deadline = time.monotonic() + timeout + 10
    cpu0 = None
    parts0: dict[int, float] = {}
    steal0 = (0, 0)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"load client ran past {timeout:.0f}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if not ready:
                if not server.alive():
                    raise BenchError(f"{server.kind} died during the run\n{server.log_tail()}")
                continue
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise BenchError(f"load client exited without a result: {err[-2000:]}")
            line = line.strip()
            if line == "EVENT measure-start":
                parts0 = server.cpu_parts()
                cpu0 = sum(parts0.values())
                steal0 = steal_ticks()
            elif line == "EVENT measure-end" and cpu0 is not None:
                parts1 = server.cpu_parts()
                run.server_cpu = sum(parts1.values()) - cpu0
                run.server_cpu_parts = [parts1[p] - parts0[p] for p in server.pids()]
                steal1 = steal_ticks()
                if steal1[1] > steal0[1]:
                    run.steal = (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
            elif line == "EVENT ready":
                time.sleep(settle)
                run.rss_after = server.rss()
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            elif line.startswith("RESULT "):
                run.result = json.loads(line[7:])
                break
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if run.result.get("error"):
        raise BenchError(f"load client: {run.result['error']}")
    return run


@contextmanager
def serving(kind: str, **kw: Any):
    server = start_cluster() if kind == "rtchub-cluster" else start_server(kind, **kw)
    try:
        yield server
    finally:
        server.stop()


def versions() -> dict[str, str]:
    """Versions of everything measured, for docs/benchmarks.md."""
    import platform
    from importlib import metadata

    from rtchub import __version__

    out = {"rtchub": __version__, "python": platform.python_version()}
    for pkg in ("picows", "aiohttp", "uvloop", "orjson", "websockets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    try:
        out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
        pkg = json.loads((BENCH_DIR / "node_modules" / "ws" / "package.json").read_text())
        out["ws (npm)"] = pkg["version"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        out.setdefault("node", "missing")
    return out


def machine() -> dict[str, Any]:
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_mb": mem,
            "kernel": platform.release(), "os": platform.platform(terse=True),
            "pinned": cores() >= 2 and shutil.which("taskset") is not None}
