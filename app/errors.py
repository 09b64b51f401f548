"""One exception hierarchy for the API and one JSON error handler for all of it."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from replay.heat import ViewError


class ApiError(Exception):
    status = 400
    error = "bad_request"

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.extra}


class BadRequest(ApiError):
    status, error = 400, "bad_request"


class MalformedJson(ApiError):
    status, error = 400, "malformed_json"


class InvalidParameter(ApiError):
    status, error = 400, "invalid_parameter"


class Unauthorized(ApiError):
    status, error = 401, "unauthorized"


class Forbidden(ApiError):
    status, error = 403, "forbidden"


class NotFound(ApiError):
    status, error = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, error = 413, "payload_too_large"


class InvalidPing(ApiError):
    status, error = 422, "invalid_ping"


class TooManyRequests(ApiError):
    status, error = 429, "too_many_requests"


class ServiceUnavailable(ApiError):
    status, error = 503, "unavailable"

    def __init__(self, message: str, retry_after: int = 2, **extra: Any):
        super().__init__(message, **extra)
        self.retry_after = retry_after


class QueryTimeout(ServiceUnavailable):
    error = "query_timeout"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        response = jsonify(exc.body())
        response.status_code = exc.status
        if isinstance(exc, ServiceUnavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="heatreplay"'
        return response

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def _redis_unavailable(exc: redis.RedisError) -> Any:
        # the live state (and the socket slots) live in Redis: down means try again soon
        return _api_error(ServiceUnavailable(f"the live state is unavailable: {exc}"))

    @app.errorhandler(ViewError)
    def _view_error(exc: ViewError) -> Any:
        response = jsonify({"error": "invalid_parameter", "field": exc.field, "message": str(exc)})
        response.status_code = 400
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        name = (exc.name or "error").lower().replace(" ", "_")
        response = jsonify({"error": name, "message": exc.description})
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        app.logger.exception("unhandled error")
        response = jsonify({"error": "internal", "message": "internal server error"})
        response.status_code = 500
        return response
