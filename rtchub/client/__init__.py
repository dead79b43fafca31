"""Python asyncio SDK for rtchub (also what the tests and the bench use)."""

from rtchub.client import transports_http  # noqa: F401 - registers "sse", "polling"
from rtchub.client.client import Client, ClientError

__all__ = ["Client", "ClientError"]
