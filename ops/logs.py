"""Logging set-up: JSON lines in production, readable text in a terminal.

Only ``ops`` configures handlers.  Every record passes through
:func:`ops.redact.redact`, so a URL with a password never reaches a log.
Context given in ``extra`` (stream, message id, event type, key, group,
loop, source, and an action's name, outcome and cause) is kept as fields
of the JSON line and appended to a text line; any other ``extra`` is left
out, so a message body handed to a log call by mistake never reaches the
output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from ops.redact import redact

CONTEXT_FIELDS = ("stream", "message_id", "event_type", "key", "group", "loop", "source", "action",
                  "outcome", "cause_id")


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None)]
        return redact(f"{text}  [{' '.join(context)}]" if context else text)


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Install one handler on the root logger (idempotent)."""
    level = level or os.environ.get("RECONCILER_LOG_LEVEL", "INFO")
    fmt = fmt or os.environ.get("RECONCILER_LOG_FORMAT") or (
        "text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles logs every batch of changes at INFO; our watcher reports what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
