"""The ASGI path as ``rtchub bench`` measures it: FastAPI, rtchub mounted at ``/rtc``, uvicorn.

``python -m rtchub.bench.asgi_app PORT`` serves it with the same limits off
as the native server in the bench (:func:`rtchub.bench.runner.rtchub_cmd`),
on uvicorn's fastest stack (uvloop, httptools, websockets), so the ``asgi``
scenario compares the two paths of one codebase, not two configurations.
"""

from __future__ import annotations

import sys
from typing import Any

#: rtchub settings of every bench server: limits that would throttle one load client off.
BENCH_SETTINGS: dict[str, Any] = {
    "max_msg_rate": 0, "max_msg_burst": 0, "stun_port": 0, "max_connections_per_ip": 0,
    "max_handshakes_per_ip": 0, "max_room_members": 1000, "log_level": "warning"}


def build() -> Any:
    from fastapi import FastAPI

    from rtchub.asgi import create_asgi_app

    rtc = create_asgi_app(**BENCH_SETTINGS)
    app = FastAPI(lifespan=rtc.lifespan)
    app.mount("/rtc", rtc)
    return app


def main(argv: list[str]) -> int:
    import uvicorn

    port = int(argv[0])
    uvicorn.run(build(), host="127.0.0.1", port=port, log_level="warning", loop="uvloop",
                http="httptools", ws="websockets-sansio", access_log=False, backlog=4096)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
