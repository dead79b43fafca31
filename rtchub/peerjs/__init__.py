"""A drop-in PeerJS server on rtchub's hub (docs/peerjs.md).

PeerJS clients (the ``peerjs`` npm package) connect unchanged and get what
rtchub has: the same limits, metrics, JWT auth, origin checks and Redis
scale-out. :func:`setup` is the one call ``rtchub.app`` makes.
"""

from rtchub.peerjs.server import PeerJsServer, setup

__all__ = ["PeerJsServer", "setup"]
