"""The SFU: group calls forwarded by Janus WebRTC Gateway, with rtchub as the control plane.

Parts, each built once (docs/sfu.md has the operator's view):

- :mod:`rtchub.sfu.janus`: the Janus WebSocket API client (transactions, keepalive);
- :mod:`rtchub.sfu.supervisor`: ``--sfu local``, a supervised Janus child process;
- :mod:`rtchub.sfu.placement`: which Janus server holds which room, in the broker;
- :mod:`rtchub.sfu.service`: the signaling side (publish, subscribe, trickle, tracks).

Media never passes through Python: rtchub only moves SDP and candidates
between clients and Janus, and checks who may do what.
"""

from rtchub.sfu.service import SfuService, setup

__all__ = ["SfuService", "setup"]
