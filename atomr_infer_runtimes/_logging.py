"""``serve``'s log output: fixed-format text, or one JSON object per line.

The JSON form carries ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``event`` (the
message) and, when the line is about a request, the request fields the gateway and the
cluster attach as record attributes: ``request_id``, ``deployment``, ``tenant``,
``method``, ``path``, ``status``, ``latency_ms``, ``tokens_in``, ``tokens_out``. Nothing
else from a record is copied, so a prompt, an answer or a key passed to a logger in an
``extra`` never reaches the output; tracebacks go to ``exception`` as text.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["REQUEST_FIELDS", "JsonFormatter", "configure_logging"]

#: record attributes copied into a JSON line, in this order
REQUEST_FIELDS = (
    "request_id",
    "deployment",
    "tenant",
    "method",
    "path",
    "status",
    "latency_ms",
    "tokens_in",
    "tokens_out",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record to stderr as ``log_format`` (``"text"`` or ``"json"``)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
