"""JWT (HS256) bearer tokens with a ``role`` claim; one guard for every route and socket.

Roles: ``ingest`` may post pings; ``viewer`` may read /api/* and open the sockets.
Tokens carry ``exp``; JWT_LEEWAY_S (default 30 s) tolerates clock skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import jwt
from flask import current_app, g, request

from app.errors import Forbidden, Unauthorized
from app.settings import Settings

ROLES = ("viewer", "ingest")
F = TypeVar("F", bound=Callable[..., Any])


def mint_token(settings: Settings, role: str, ttl_s: int | None = None, sub: str = "local") -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {"role": role, "sub": sub, "iat": now, "exp": now + (ttl_s or settings.token_ttl_s)}
    return jwt.encode(claims, settings.secret, algorithm="HS256")


def check_token(settings: Settings, token: str | None, role: str) -> dict[str, Any]:
    """Return the claims, or raise Unauthorized (missing/bad/expired) / Forbidden (role)."""
    if not token:
        raise Unauthorized("missing bearer token")
    try:
        claims = jwt.decode(
            token,
            settings.secret,
            algorithms=["HS256"],
            leeway=settings.jwt_leeway_s,
            options={"require": ["exp", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    if claims.get("role") != role:
        raise Forbidden(f"this needs the {role!r} role; the token has {claims.get('role')!r}")
    return cast(dict[str, Any], claims)


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require_role(role: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            settings: Settings = current_app.config["SETTINGS"]
            g.claims = check_token(settings, bearer_token(), role)
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorator
