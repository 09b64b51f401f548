"""Structured logs: one JSON object per line, per event, on stderr.

Log aggregators (Loki, CloudWatch, `jq`) read JSON lines without a parser per service;
Kafka context travels as ``extra`` so a line about a batch can be found by where it came
from::

    log.info("sink batch", extra={"topic": t, "partition": p, "offset": o, "rows": n})

Any ``extra`` key becomes a field of the line. ``LOG_FORMAT=text`` gives the classic
human format for a terminal; ``LOG_LEVEL`` sets the level (default INFO).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

# attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_MARKER = "_heatreplay_handler"


class JsonLinesFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(
    level: str | None = None, fmt: str | None = None, stream: Any = None
) -> logging.Handler:
    """Install one handler on the root logger (idempotent: a second call replaces the
    first handler, so create_app in a CLI process does not double every line)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARKER, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _MARKER, True)
    chosen = (fmt or os.environ.get("LOG_FORMAT", "json")).lower()
    if chosen == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonLinesFormatter())
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LOG_LEVEL", "INFO")).upper())
    return handler
