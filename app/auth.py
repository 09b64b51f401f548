"""JWT (HS256) bearer tokens with a ``role`` claim; one guard for every route and socket.

Roles: ``ingest`` may post pings; ``viewer`` may read /api/* and open the sockets (and
read /metrics when that needs a token, see ``require_metrics_access``). Tokens carry
``exp`` and a ``jti`` (the identity sockets-per-token is counted by); JWT_LEEWAY_S
(default 30 s) tolerates clock skew on ``exp``/``iat``/``nbf``. docs/auth.md has it all.
"""

from __future__ import annotations

import time
import uuid
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
    ttl = settings.token_ttl_s if ttl_s is None else ttl_s
    if ttl <= 0:
        raise ValueError("the token lifetime must be positive")
    now = int(time.time())
    claims = {
        "role": role,
        "sub": sub,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
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

        wrapped.required_role = role  # type: ignore[attr-defined]
        return cast(F, wrapped)

    return decorator


def require_metrics_access(view: F) -> F:
    """/metrics needs a viewer token when METRICS_TOKEN_REQUIRED says so (default: yes
    outside development); Prometheus sends it with ``authorization: {credentials: ...}``."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = current_app.config["SETTINGS"]
        if settings.metrics_requires_token:
            g.claims = check_token(settings, bearer_token(), "viewer")
        return view(*args, **kwargs)

    return cast(F, wrapped)
