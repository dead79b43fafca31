"""Server settings: one dataclass, exposed as CLI flags, ``RTCHUB_<NAME>`` env vars and config keys.

Every field is an option of ``rtchub serve`` (``max_msg_rate`` ->
``--max-msg-rate`` / ``RTCHUB_MAX_MSG_RATE`` / ``max-msg-rate = ...`` in the
``--config`` file, :mod:`rtchub.config`). List fields are repeatable flags;
in the environment they are comma-separated, in the file TOML arrays. Fields
with ``metadata["secret"]`` are masked by ``rtchub config show``. The defaults are what
``make run`` serves with and are explained in the README's configuration table.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, get_type_hints


@dataclass
class Settings:
    # -- listening -------------------------------------------------------------
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8080, metadata={"help": "HTTP + WebSocket port (0 = any free port)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})
    log_format: str = field(default="text", metadata={"help": "text or json"})
    node_id: str = field(default="", metadata={"help": "name of this node (default: random)"})
    workers: int = field(default=1, metadata={
        "help": "processes on one port (SO_REUSEPORT), each a cluster node; more than 1 needs "
                "--broker redis://"})

    # -- protocol limits (docs/protocol.md "Limits") ----------------------------
    max_message_size: int = field(
        default=64 * 1024, metadata={"help": "bytes per client message; larger closes with 1009"}
    )
    max_room_members: int = field(default=50, metadata={"help": "members per room (room-full)"})
    max_rooms_per_connection: int = field(default=16, metadata={"help": "rooms one session may join"})
    max_msg_rate: float = field(
        default=50.0, metadata={"help": "messages/s per connection, token bucket rate (0 = no limit)"}
    )
    max_msg_burst: int = field(
        default=200, metadata={"help": "token bucket size: messages allowed at once (0 = no limit)"}
    )
    max_byte_rate: float = field(
        default=32 * 1024,
        metadata={"help": "relayed bytes/s per connection, as encoded (0 = no limit); docs/security.md"},
    )
    max_byte_burst: int = field(
        default=72 * 1024,
        metadata={"help": "relayed bytes one connection may send at once (at least one largest message)"},
    )
    abuse_strikes: int = field(
        default=100, metadata={"help": "rate-limited messages in a row before closing with 1008"}
    )

    # -- liveness and sessions --------------------------------------------------
    heartbeat: float = field(default=20.0, metadata={"help": "seconds between protocol pings"})
    heartbeat_timeout: float = field(
        default=20.0, metadata={"help": "seconds without any data after a ping before 4008"}
    )
    grace_period: float = field(
        default=30.0, metadata={"help": "seconds a dropped session is kept for resume (0 = none)"}
    )
    resume_buffer_messages: int = field(
        default=512, metadata={"help": "messages kept per session for resume"}
    )
    resume_buffer_bytes: int = field(
        default=512 * 1024, metadata={"help": "bytes kept per session for resume"}
    )
    max_buffered_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={"help": "bytes all resume buffers may hold together; over it each keeps a fair share"},
    )
    shutdown_timeout: float = field(default=3.0, metadata={"help": "seconds to drain on SIGTERM"})

    # -- transports -------------------------------------------------------------
    compression: bool = field(
        default=False, metadata={"help": "offer permessage-deflate (slower path, more memory)"}
    )
    sse_heartbeat: float = field(default=15.0, metadata={"help": "seconds between SSE comment pings"})
    poll_timeout_max: float = field(default=25.0, metadata={"help": "longest long-poll wait, seconds"})
    request_timeout: float = field(
        default=10.0, metadata={"help": "seconds to receive a request head or body (slowloris)"}
    )
    keepalive_timeout: float = field(
        default=75.0, metadata={"help": "seconds an idle HTTP keep-alive connection is kept"}
    )
    max_body_size: int = field(default=256 * 1024, metadata={"help": "bytes per POST body (413)"})

    # -- broker -------------------------------------------------------------------
    broker: str = field(default="memory", metadata={"help": "memory or redis://host:port/db"})
    node_ttl: float = field(default=6.0, metadata={"help": "seconds before a silent node counts as dead"})

    # -- ICE ----------------------------------------------------------------------
    stun_port: int = field(default=3478, metadata={"help": "UDP port of the built-in STUN server (0 = off)"})
    stun_rate_per_ip: float = field(
        default=100.0, metadata={"help": "STUN requests/s per source address, burst 2x (0 = no limit)"}
    )
    stun_host: str = field(default="", metadata={"help": "address for STUN (default: --host)"})
    stun_url: list[str] = field(default_factory=list, metadata={"help": "extra STUN URL (repeatable)"})
    turn_url: list[str] = field(default_factory=list, metadata={"help": "TURN URL (repeatable)"})
    turn_secret: list[str] = field(
        default_factory=list,
        metadata={"secret": True, "help": "TURN REST shared secret (repeatable; first signs)"}
    )
    turn_ttl: int = field(default=86400, metadata={"help": "seconds TURN credentials stay valid"})
    public_host: str = field(default="", metadata={"help": "host name put into ICE URLs"})

    # -- media: SFU (docs/sfu.md) ---------------------------------------------------
    media_mode: str = field(
        default="", metadata={"help": "media mode of new rooms: mesh (peer-to-peer), sfu, audio-mix, or auto "
                                      "(p2p for two, SFU from three); '' = auto with an SFU, else mesh"}
    )
    auto_sfu_from: int = field(
        default=3, metadata={"help": "auto rooms: members from which media goes through the SFU"}
    )
    auto_p2p_after: float = field(
        default=10.0, metadata={"help": "auto rooms: seconds below --auto-sfu-from before going back to p2p"}
    )
    sfu: str = field(default="", metadata={"help": "'local' starts and supervises a Janus child"})
    sfu_url: list[str] = field(
        default_factory=list, metadata={"help": "Janus WebSocket API URL, ws://host:8188 (repeatable)"}
    )
    sfu_api_secret: str = field(
        default="", metadata={"secret": True, "help": "api_secret of the --sfu-url servers"})
    max_sfu_room_members: int = field(
        default=100, metadata={"help": "members per SFU room (--max-room-members is the mesh limit)"}
    )
    sfu_rtp_ports: str = field(default="20000-40000", metadata={"help": "RTP port range of --sfu local"})
    sfu_ice_ip: str = field(
        default="", metadata={"help": "--sfu local gathers ICE only on this address/interface"}
    )
    sfu_nat_ip: str = field(default="", metadata={"help": "--sfu local: public IP of a 1:1 NAT"})
    sfu_ws_port: int = field(default=0, metadata={"help": "--sfu local API port on 127.0.0.1 (0 = free)"})

    # -- PeerJS compatibility (docs/peerjs.md) ----------------------------------
    peerjs_path: str = field(
        default="/peerjs", metadata={"help": "where the PeerJS server API is served ('' = off)"}
    )
    peerjs_key: str = field(default="peerjs", metadata={"help": "the key PeerJS clients must give"})
    peerjs_discovery: bool = field(
        default=False, metadata={"help": "GET {peerjs-path}/{key}/peers lists the connected peer ids"}
    )
    peerjs_expire_timeout: float = field(
        default=5.0, metadata={"help": "seconds a message waits for a PeerJS peer to connect (EXPIRE)"}
    )
    peerjs_max_peers: int = field(
        default=5000, metadata={"help": "PeerJS peers per key (its room's member limit)"}
    )

    # -- security -----------------------------------------------------------------
    auth: str = field(default="none", metadata={"help": "none or jwt"})
    jwt_secret: str = field(
        default="", metadata={"secret": True, "help": "HS256 secret for --auth jwt"})
    jwt_public_key: str = field(default="", metadata={"help": "PEM file for RS256/ES256 tokens"})
    auth_timeout: float = field(default=5.0, metadata={"help": "seconds to send an auth message"})
    allowed_origin: list[str] = field(
        default_factory=list, metadata={"help": "allowed Origin (repeatable; '*' allows any)"}
    )
    allowed_host: list[str] = field(
        default_factory=list,
        metadata={"help": "allowed Host name (repeatable; '*.example.com' for subdomains); "
                          "empty = any. Against DNS rebinding"},
    )
    forwarded_allow_ips: list[str] = field(
        default_factory=list,
        metadata={"help": "reverse proxies (IPs or networks, repeatable; '*' = any) whose "
                          "client-address header is believed (docs/deploy.md)"})
    forwarded_header: str = field(
        default="x-forwarded-for",
        metadata={"help": "header those proxies append the client to: x-forwarded-for or forwarded"})
    certfile: str = field(default="", metadata={"help": "TLS certificate (serves https/wss)"})
    keyfile: str = field(default="", metadata={"help": "TLS private key"})
    max_connections_per_ip: int = field(
        default=1000, metadata={"help": "open connections per IP (0 = no limit)"}
    )
    max_handshakes_per_ip: float = field(
        default=200.0, metadata={"help": "new connections per IP per second (0 = no limit)"}
    )
    max_pending_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "unsent bytes per connection before 1008"}
    )
    max_joins_per_second: float = field(
        default=20.0, metadata={"help": "join attempts per connection per second (0 = no limit)"}
    )

    # -- server API, hooks ----------------------------------------------------------
    api_key: str = field(
        default="", metadata={"secret": True, "help": "key for /api and /admin (empty = API off)"})
    webhook_url: list[str] = field(default_factory=list, metadata={"help": "webhook target (repeatable)"})
    webhook_secret: str = field(
        default="", metadata={"secret": True, "help": "HMAC-SHA256 key for webhook signatures"})
    join_hook_url: str = field(default="", metadata={"help": "URL asked to allow each join"})
    join_hook_timeout: float = field(default=2.0, metadata={"help": "seconds to wait for the join hook"})
    join_hook_failure: str = field(default="deny", metadata={"help": "allow or deny when the hook fails"})

    # -- recording and broadcast (docs/recording.md, docs/broadcast.md) --------------
    recordings_dir: str = field(
        default="", metadata={"help": "folder for recordings (empty = recording off)"}
    )
    recordings_retention_days: float = field(
        default=0.0, metadata={"help": "days a finished recording is kept (0 = forever)"}
    )
    recordings_min_free_mb: int = field(
        default=500, metadata={"help": "free MiB below which a recording stops and fails"}
    )
    media_jobs: int = field(default=1, metadata={"help": "post-processing jobs run at once"})
    broadcast_dir: str = field(
        default="", metadata={"help": "folder for HLS broadcasts, served at /live (empty = off)"}
    )

    @property
    def rate_limited(self) -> bool:
        return self.max_msg_rate > 0 and self.max_msg_burst > 0


def fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def field_type(f: dataclasses.Field[Any]) -> Any:
    return get_type_hints(Settings)[f.name]


def parse_value(kind: Any, raw: str) -> Any:
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind == list[str]:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return kind(raw)


def from_env(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``RTCHUB_*`` environment variables, then ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields():
        raw = env.get("RTCHUB_" + f.name.upper())
        if raw is not None:
            values[f.name] = parse_value(field_type(f), raw)
    values.update(overrides)
    return Settings(**values)


def markdown_table() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| flag / file key | env | default | meaning |", "|---|---|---|---|"]
    for f in fields():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "" if default in ("", []) else str(default).lower() if isinstance(default, bool) else default
        key = f.name.replace("_", "-")
        rows.append(f"| `--{key}` / `{key}` | `RTCHUB_{f.name.upper()}` | "
                    f"{f'`{shown}`' if shown != '' else '—'} | {f.metadata.get('help', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - `python -m rtchub.settings` prints the table
    print(markdown_table())
