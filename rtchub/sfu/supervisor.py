"""``--sfu local``: rtchub runs its own Janus as a supervised child process.

The config is generated into a private temporary folder on each start
(TESTING-NOTES.md "Janus WebRTC Gateway as an SFU" has the checked recipe):
only the VideoRoom plugin (``string_ids``, so rtchub picks opaque room and
feed ids) and the WebSocket transport, bound to 127.0.0.1 on a free port
with a random API secret, so no client can reach the Janus API; every other
transport, logger and event handler is off. ICE is restricted with
``ice_enforce_list`` / ``nat_1_1_mapping`` when configured (``--sfu-ice-ip``,
``--sfu-nat-ip``): Janus falls back to *every* interface when nothing in the
enforce list matches, which is why tests name the namespace's address
rather than ``lo``.

When the child dies, :class:`LocalJanus` starts it again (with a fresh API
port and secret: the old sessions are gone anyway) and tells its listeners,
so the SFU service can move the rooms it held and clients re-publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rtchub.settings import Settings

log = logging.getLogger("rtchub.sfu.supervisor")

PLUGINS_DIR = "/usr/lib/x86_64-linux-gnu/janus/plugins"
TRANSPORTS_DIR = "/usr/lib/x86_64-linux-gnu/janus/transports"
#: Plugins other than the VideoRoom and the AudioBridge (audio-mix rooms, rtchub.media.audiomix),
#: disabled so Janus loads nothing it does not need.
OTHER_PLUGINS = ("duktape", "echotest", "lua", "nosip", "recordplay", "sip",
                 "streaming", "textroom", "videocall", "voicemail")
OTHER_TRANSPORTS = ("http", "mqtt", "nanomsg", "pfunix", "rabbitmq")
PR_SET_PDEATHSIG = 1
RECLAIM_TIMEOUT = 30
#: Seconds to wait for a fresh Janus to accept WebSocket connections.
START_TIMEOUT = 10.0


def _die_with_parent() -> None:
    """In the child, before exec: own process group (a Ctrl-C of rtchub's terminal is
    rtchub's to handle), and SIGTERM when rtchub dies, even by kill -9: an orphaned
    Janus would keep its ports and nobody would supervise it (prctl(2) PR_SET_PDEATHSIG)."""
    os.setsid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop() still ends it
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lib_dir(default: str) -> str:
    """Debian's multiarch path, or the first janus/<kind> folder found elsewhere."""
    if Path(default).is_dir():
        return default
    kind = Path(default).name
    for base in ("/usr/lib", "/usr/local/lib", "/opt/janus/lib"):
        for cand in Path(base).glob(f"**/janus/{kind}"):
            return str(cand)
    return default


def janus_config(folder: Path, *, ws_port: int, api_secret: str, rtp_ports: str,
                 ice_ip: str = "", nat_ip: str = "", debug_level: int = 3,
                 reclaim_timeout: int = RECLAIM_TIMEOUT) -> None:
    """Write janus.jcfg, the VideoRoom and the WebSocket transport configs into ``folder``.

    ``reclaim_timeout``: seconds Janus keeps a session whose WebSocket closed, so
    that another rtchub node can ``claim`` it (and its media keeps flowing) when
    the node that made it died.
    """
    plugins = ",".join(f"libjanus_{p}.so" for p in OTHER_PLUGINS)
    transports = ",".join(f"libjanus_{t}.so" for t in OTHER_TRANSPORTS)
    nat = ['\tnice_debug = false', '\tice_ignore_list = "vmnet"']
    if ice_ip:
        nat.append(f'\tice_enforce_list = "{ice_ip}"')
    if nat_ip:
        nat.append(f'\tnat_1_1_mapping = "{nat_ip}"')
    (folder / "janus.jcfg").write_text(f"""general: {{
\tconfigs_folder = "{folder}"
\tplugins_folder = "{_lib_dir(PLUGINS_DIR)}"
\ttransports_folder = "{_lib_dir(TRANSPORTS_DIR)}"
\tevents_folder = "/nonexistent"
\tloggers_folder = "/nonexistent"
\tdebug_level = {debug_level}
\tapi_secret = "{api_secret}"
\tserver_name = "rtchub-local"
\tsession_timeout = 60
\treclaim_session_timeout = {reclaim_timeout}
\tprotected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var"]
}}
media: {{
\trtp_port_range = "{rtp_ports}"
}}
nat: {{
{chr(10).join(nat)}
}}
plugins: {{
\tdisable = "{plugins}"
}}
transports: {{
\tdisable = "{transports}"
}}
loggers: {{
\tdisable = "libjanus_jsonlog.so"
}}
events: {{
\tbroadcast = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        "general: {\n\tstring_ids = true\n}\n")
    (folder / "janus.plugin.audiobridge.jcfg").write_text(
        "general: {\n\tstring_ids = true\n}\n")
    (folder / "janus.transport.websockets.jcfg").write_text(f"""general: {{
\tjson = "plain"
\tws = true
\tws_port = {ws_port}
\tws_ip = "127.0.0.1"
\twss = false
}}
admin: {{
\tadmin_ws = false
\tadmin_wss = false
}}
""")


class LocalJanus:
    """A Janus child process, restarted when it dies. A service of the app (start/stop)."""

    def __init__(self, settings: Settings, *, binary: str = "janus", api_secret: str = "",
                 restart: bool = True, reclaim_timeout: int = RECLAIM_TIMEOUT) -> None:
        """``api_secret``: a fixed one (default: random per start); ``restart=False`` runs
        a Janus that stays dead when killed (a stand-alone server for ``--sfu-url`` tests)."""
        self.settings = settings
        self.fixed_secret = api_secret
        self.restart = restart
        self.reclaim_timeout = reclaim_timeout
        self.binary = shutil.which(binary) or binary
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.api_secret = ""
        self.folder: Path | None = None
        #: Starts so far (1 after the first start): a restart bumps it.
        self.generation = 0
        self.restarts = 0
        self.started_at = 0.0
        #: ``listener(url)`` when a (re)started Janus accepts connections.
        self.on_up: list[Callable[[LocalJanus], None]] = []
        #: ``listener(url)`` when the child died (before it is restarted).
        self.on_down: list[Callable[[LocalJanus], None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        if not Path(self.binary).exists():
            raise RuntimeError(f"--sfu local needs Janus: {self.binary} not found "
                               "(apt-get install janus; make run installs it)")
        self.folder = Path(tempfile.mkdtemp(prefix="rtchub-janus-"))
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        assert self.folder is not None
        s = self.settings
        port = s.sfu_ws_port or _free_port()
        self.api_secret = self.fixed_secret or secrets.token_urlsafe(24)
        janus_config(self.folder, ws_port=port, api_secret=self.api_secret,
                     rtp_ports=s.sfu_rtp_ports, ice_ip=s.sfu_ice_ip, nat_ip=s.sfu_nat_ip,
                     reclaim_timeout=self.reclaim_timeout)
        log_path = self.folder / "janus.log"
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-F", str(self.folder), "-C", str(self.folder / "janus.jcfg"), "-o",
            "-N", "-L", str(log_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.url = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            log.error("Janus did not listen on %s within %ss", self.url, START_TIMEOUT)
        if self.proc.returncode is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"Janus exited at start (code {self.proc.returncode}):\n{tail}")
        self.generation += 1
        self.started_at = time.monotonic()
        self.ready = True
        log.info("Janus %s started (pid %s, generation %d)", self.url, self.proc.pid, self.generation)
        for cb in list(self.on_up):
            cb(self)

    async def _supervise(self) -> None:
        backoff = 0.1
        while not self._stopping:
            proc = self.proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            self.ready = False
            log.error("Janus (pid %s) exited with %s%s", proc.pid, code,
                      "; restarting" if self.restart else "")
            for cb in list(self.on_down):
                cb(self)
            if not self.restart:
                return
            # A child that keeps dying at once is retried ever more slowly (up to 5 s).
            if time.monotonic() - self.started_at < 5.0:
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            else:
                backoff = 0.1
            try:
                self.restarts += 1
                await self._spawn()
            except Exception:
                log.exception("restarting Janus failed")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopping = True
        self.ready = False
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.folder is not None and not os.environ.get("RTCHUB_KEEP_JANUS_DIR"):
            shutil.rmtree(self.folder, ignore_errors=True)
