"""POST /api/pings: validate all, produce all, answer 202 only once the broker has them."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request

from app import metrics
from app.auth import require_role
from app.errors import InvalidPing, MalformedJson, PayloadTooLarge, ServiceUnavailable
from app.kafka_io import BrokerUnavailable
from app.ping import BodyError, InvalidPings, TooManyPings, finalize, parse_body
from app.services import services
from app.settings import Settings

bp = Blueprint("ingest", __name__)

NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl"}


@bp.post("/api/pings")
@require_role("ingest")
def post_pings() -> Any:
    settings: Settings = current_app.config["SETTINGS"]
    svc = services()
    try:
        body = request.get_data(cache=False)
        pings = parse_body(body, request.mimetype in NDJSON_TYPES, settings.max_pings_per_request)
        wire = finalize(pings, int(time.time() * 1000), int(settings.future_tolerance_s * 1000))
    except TooManyPings as exc:
        metrics.rejected(svc, "too_many_pings", exc.args[0])
        raise PayloadTooLarge(
            f"at most {settings.max_pings_per_request} pings per request (got {exc.args[0]})"
        ) from None
    except BodyError as exc:
        metrics.rejected(svc, "malformed_json")
        raise MalformedJson(f"body is not valid JSON/NDJSON: {exc}") from None
    except InvalidPings as exc:
        metrics.rejected(svc, "invalid_ping", exc.total)
        raise InvalidPing(
            f"{len(exc.problems)} ping(s) invalid; nothing was accepted",
            details=[p.as_json() for p in exc.problems],
        ) from None
    if not wire:
        metrics.rejected(svc, "empty")
        raise InvalidPing("the request holds no pings", details=[])
    try:
        count = svc.producer.send_pings(wire)
    except BrokerUnavailable as exc:
        metrics.rejected(svc, "broker_unavailable", len(wire))
        raise ServiceUnavailable(f"the broker did not acknowledge the pings: {exc}") from None
    metrics.accepted(svc, count)
    return {"accepted": count}, 202
