"""rtchub: a real-time communication server (WebRTC signaling, chat, presence, push).

The public surface is small on purpose:

* :func:`rtchub.app.create_app` builds a server from :class:`rtchub.settings.Settings`;
* :class:`rtchub.core.hub.Hub` is the I/O-free heart that decides everything;
* :class:`rtchub.client.Client` is the asyncio SDK.
"""

__version__ = "0.1.0"
SERVER_NAME = "rtchub"
