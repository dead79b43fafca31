"""Wire protocol v1: message validation, error codes, close codes and codecs."""

from rtchub.protocol.errors import CloseCode, ErrorCode, ProtocolError

__all__ = ["CloseCode", "ErrorCode", "ProtocolError"]
