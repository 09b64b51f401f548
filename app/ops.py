"""Operations: /healthz (open) and /metrics (Prometheus text)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response

from app import metrics
from app.kafka_io import broker_reachable
from app.services import services

bp = Blueprint("ops", __name__)


def _check(fn: Any) -> dict[str, Any]:
    try:
        fn()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": str(exc).splitlines()[0][:200]}


@bp.get("/healthz")
def healthz() -> Any:
    svc = services()

    def pg() -> None:
        with svc.pool.connection(timeout=3) as conn:
            conn.execute("SELECT 1")

    def kafka() -> None:
        if not broker_reachable(svc.settings, timeout_s=2):
            raise RuntimeError(f"no broker at {svc.settings.kafka_bootstrap}")

    checks = {"postgres": _check(pg), "redis": _check(svc.redis.ping), "kafka": _check(kafka)}
    ok = all(c["ok"] for c in checks.values())
    return {"status": "ok" if ok else "degraded", "checks": checks}, 200 if ok else 503


@bp.get("/metrics")
def prometheus() -> Any:
    svc = services()
    lines = []
    try:
        counts = metrics.read(svc.redis, svc.settings.redis_key_prefix)
    except redis.RedisError:
        counts = {}
    lines.append("# TYPE heatreplay_pings_accepted_total counter")
    lines.append(f"heatreplay_pings_accepted_total {counts.get('pings_accepted', 0):.0f}")
    lines.append("# TYPE heatreplay_requests_rejected_total counter")
    for key, value in sorted(counts.items()):
        if key.startswith("requests_rejected:"):
            reason = key.split(":", 1)[1]
            lines.append(f'heatreplay_requests_rejected_total{{reason="{reason}"}} {value:.0f}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
