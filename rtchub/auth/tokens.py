"""JSON Web Tokens (RFC 7519): verify the ones clients bring, mint them for development.

rtchub never issues tokens in production: the application's own backend
does, after it has authenticated its user, and rtchub only checks them. The
claims it reads:

``sub``   (required) the userId of every session opened with the token; the
          client cannot pick another one (a ``join`` naming another userId is
          ``forbidden``).
``exp``   (required) expiry, seconds since the epoch (RFC 7519 section 4.1.4).
          An expired token is refused; a session whose token expires is told
          (``token-expiring``) and closed with 4001 unless it sends a fresh
          ``auth`` first.
``name``  (optional) the displayName shown to other members.
``rooms`` (optional) room names or ``fnmatch`` patterns (``team-*``) the
          holder may join; a join elsewhere is ``forbidden``. Without the
          claim every room is allowed (the issuer chose not to restrict).

Algorithms are pinned by configuration, never taken from the token header
alone: HS256 with ``--jwt-secret``; RS256 or ES256 with ``--jwt-public-key``
(the key type decides which). That closes the classic ``alg: none`` and
RSA-public-key-as-HMAC-secret confusions (RFC 8725 section 3.1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from rtchub.settings import Settings

#: Claims a token must carry. ``exp`` is required so that a leaked token
#: stops working by itself (RFC 8725 section 3.10 on bounding lifetimes).
REQUIRED_CLAIMS = ("sub", "exp")
#: Accepted clock difference between the token issuer and this server, seconds.
LEEWAY = 0.0


class TokenError(Exception):
    """A token that must be refused; ``str(exc)`` is safe to show the client."""


def _load_pem(value: str) -> bytes:
    """``--jwt-public-key`` is a PEM file path, or the PEM text itself (handy in env vars)."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


def _public_key_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")
        return "ES256"
    raise ValueError(f"unsupported public key type {type(key).__name__} (RSA or EC P-256)")


class TokenVerifier:
    """Checks tokens against the configured key(s); built once per server."""

    def __init__(self, settings: Settings) -> None:
        #: algorithm -> key, for the algorithms this server accepts.
        self.keys: dict[str, Any] = {}
        if settings.jwt_secret:
            if len(settings.jwt_secret.encode()) < 32:
                # RFC 7518 section 3.2: an HS256 key must be at least 256 bits.
                raise ValueError("--jwt-secret must be at least 32 bytes (RFC 7518 section 3.2)")
            self.keys["HS256"] = settings.jwt_secret.encode()
        if settings.jwt_public_key:
            key = load_pem_public_key(_load_pem(settings.jwt_public_key))
            self.keys[_public_key_algorithm(key)] = key
        if settings.auth == "jwt" and not self.keys:
            raise ValueError("--auth jwt needs --jwt-secret (HS256) or --jwt-public-key (RS256/ES256)")

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`TokenError` saying why it is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        alg = header.get("alg")
        key = self.keys.get(alg) if isinstance(alg, str) else None
        if key is None:
            raise TokenError(f"token algorithm {str(alg)[:16]!r} is not accepted here")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], leeway=LEEWAY,
                                options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad token signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {str(exc)[:80]}") from exc
        check_claims(claims)
        return claims


def check_claims(claims: dict[str, Any]) -> None:
    """The claims rtchub reads must have the types it expects."""
    from rtchub.protocol.messages import ID_PATTERN, MAX_DISPLAY_NAME

    sub = claims.get("sub")
    if type(sub) is not str or ID_PATTERN.fullmatch(sub) is None:
        raise TokenError("token sub must be a valid userId (1-64 of A-Z a-z 0-9 _ . : @ -)")
    name = claims.get("name")
    if name is not None and (type(name) is not str or len(name) > MAX_DISPLAY_NAME):
        raise TokenError(f"token name must be a string of at most {MAX_DISPLAY_NAME} characters")
    rooms = claims.get("rooms")
    if rooms is not None and not (
        type(rooms) is str or (type(rooms) is list and all(type(r) is str for r in rooms))
    ):
        raise TokenError("token rooms must be a list of room names or patterns")
    # SFU grants (docs/sfu.md): booleans, default true; media: the mode of a room it creates.
    for grant in ("canPublish", "canSubscribe"):
        if grant in claims and type(claims[grant]) is not bool:
            raise TokenError(f"token {grant} must be true or false")
    if claims.get("media") not in (None, "mesh", "sfu"):
        raise TokenError("token media must be mesh or sfu")


def room_patterns(claims: dict[str, Any]) -> list[str] | None:
    """The ``rooms`` claim as a list; ``None`` means no restriction."""
    rooms = claims.get("rooms")
    if rooms is None:
        return None
    return [rooms] if isinstance(rooms, str) else list(rooms)


def mint(*, sub: str, key: Any, algorithm: str = "HS256", ttl: float = 3600,
         rooms: list[str] | None = None, name: str | None = None,
         now: float | None = None, extra: dict[str, Any] | None = None) -> str:
    """Sign a token the way an application backend would (for development and tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if rooms is not None:
        claims["rooms"] = rooms
    if name is not None:
        claims["name"] = name
    if extra:
        claims.update(extra)
    return jwt.encode(claims, key, algorithm=algorithm)


# ---------------------------------------------------------------- rtchub token
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", required=True, help="userId the token grants")
    parser.add_argument("--room", action="append", default=None,
                        help="room name or fnmatch pattern allowed (repeatable; default: any room)")
    parser.add_argument("--name", default=None, help="displayName")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (default 3600)")
    parser.add_argument("--secret", default=None,
                        help="HS256 secret (default: $RTCHUB_JWT_SECRET)")
    parser.add_argument("--private-key", default=None,
                        help="PEM private key: signs RS256 (RSA) or ES256 (EC P-256) instead")


def _run(args: argparse.Namespace) -> int:
    if args.private_key:
        key: Any = load_pem_private_key(_load_pem(args.private_key), password=None)
        algorithm = _public_key_algorithm(key.public_key())
    else:
        key = args.secret or os.environ.get("RTCHUB_JWT_SECRET", "")
        algorithm = "HS256"
        if len(key.encode()) < 32:
            print("rtchub token: need --secret (or RTCHUB_JWT_SECRET) of at least 32 bytes, "
                  "or --private-key", file=sys.stderr)
            return 2
    print(mint(sub=args.sub, key=key, algorithm=algorithm, ttl=args.ttl,
               rooms=args.room, name=args.name))
    return 0


def _register() -> None:
    from rtchub.cli import SUBCOMMANDS

    SUBCOMMANDS["token"] = ("mint a JWT for development", _add_arguments, _run)


_register()
