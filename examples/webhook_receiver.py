"""An example receiver of the reconciler's webhooks (Python standard library only).

It checks the signature and the timestamp, keeps each notification once
(``Idempotency-Key``) and answers 2xx only after it has kept it, so the
reconciler retries anything it did not answer.  Replace ``handle`` with what
your CRM does: push the change to its realtime layer (see docs/notifications.md).

    WEBHOOK_SECRET=... python examples/webhook_receiver.py --port 8080

The secret can also be read from a file: ``WEBHOOK_SECRET_FILE=/run/secrets/hook``.
Each accepted notification is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock
from typing import Any

TOLERANCE_S = 300
"""Requests signed longer ago than this (or this far in the future) are replays: refused."""
MAX_BODY_BYTES = 1_048_576


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether ``Reconciler-Signature: t=...,v1=...`` signs ``body`` and is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Seen:
    """Idempotency keys already handled.  A real CRM keeps them in its database
    (a unique constraint on the key, in the same transaction as the change)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = Lock()

    def first_time(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True


def handle(notification: dict[str, Any]) -> None:
    """What your CRM does with a notification; here: print it as one JSON line."""
    print(json.dumps(notification, sort_keys=True), flush=True)


def make_handler(secret: str, seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return self._answer(413, {"error": "too large"})
            body = self.rfile.read(length)
            if not verify(secret, self.headers.get("Reconciler-Signature", ""), body):
                return self._answer(401, {"error": "bad or old signature"})
            key = self.headers.get("Idempotency-Key", "")
            try:
                notification = json.loads(body)
            except ValueError:
                return self._answer(400, {"error": "not JSON"})
            if not key or not seen.first_time(key):
                return self._answer(200, {"duplicate": True})
            handle(notification)
            return self._answer(200, {"ok": True})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            print(format % args, file=sys.stderr)

    return Receiver


def read_secret() -> str:
    if "WEBHOOK_SECRET" in os.environ:
        return os.environ["WEBHOOK_SECRET"]
    if "WEBHOOK_SECRET_FILE" in os.environ:
        return Path(os.environ["WEBHOOK_SECRET_FILE"]).read_text().strip()
    raise SystemExit("set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(read_secret(), Seen()))
    print(f"listening on {args.host}:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
