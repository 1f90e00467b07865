"""The metrics and health endpoint: one small asyncio HTTP server.

Served on ``RECONCILER_METRICS_ADDR`` (``127.0.0.1:9464`` by default):

* ``GET /metrics`` -- the Prometheus exposition of every metric in
  :mod:`events.metrics`;
* ``GET /healthz`` -- 200 while no guarded loop is stuck (see
  :data:`events.loops.HEARTBEATS`), 503 otherwise; the JSON body lists the
  loops.  Wire it to a liveness probe: a stuck process is restarted;
* ``GET /readyz`` -- 200 when every readiness check passes (Redis and
  PostgreSQL reachable, consumer groups present, each source of this process
  past its first snapshot, each role holding its database grants; see
  :mod:`events.readiness` and :mod:`events.grants`), 503 with the failing
  ones otherwise.

No web framework: three GET routes and a probe every few seconds do not
need one, and the server must keep answering while the rest of the process
is busy.  Requests are read with a size limit and a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from consumers.runtime import running_groups
from events.keys import KeySpace
from events.loops import HEARTBEATS, Heartbeats, spawn
from events.readiness import READINESS, Readiness
from events.replies import text
from events.settings import Settings
from events.streamids import EXHAUSTED, describe, find_exhausted
from ops.config import ConfigError
from ops.group_metrics import COLLECT_INTERVAL_S, LOOP_NAME, GroupCollector
from ops.redact import redact
from ops.store_gauges import StoreGauges

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
JSON_TYPE = "application/json"


class HealthServer:
    """Serves /metrics, /healthz and /readyz on one address."""

    def __init__(self, address: str, *, heartbeats: Heartbeats = HEARTBEATS,
                 readiness: Readiness = READINESS) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.heartbeats = heartbeats
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Start listening; returns the bound ``host:port`` (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d", self.host, self.port)
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send_body = True
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, path = _request_line(head)
            send_body = method != "HEAD"
            status, content_type, body = await self.respond(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + (body if send_body else b"")
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The status, content type and body for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if route == "/healthz":
            return self._health()
        if route == "/readyz":
            return await self._ready()
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    def _health(self) -> tuple[int, str, bytes]:
        stuck, exhausted = self.heartbeats.stuck(), sorted(EXHAUSTED)
        body: dict[str, Any] = {
            "status": "stuck" if stuck else "stream ids exhausted" if exhausted else "ok",
            "stuck": {name: round(s, 1) for name, s in stuck.items()},
            "loops": self.heartbeats.report()}
        if exhausted:
            body["exhausted_streams"] = {"streams": exhausted, "detail": describe(exhausted)}
        return (503 if stuck or exhausted else 200), JSON_TYPE, _json(body)

    async def _ready(self) -> tuple[int, str, bytes]:
        results = await self.readiness.run()
        ok = all(r.ok for r in results)
        body = {"status": "ready" if ok else "not ready",
                "checks": {r.name: {"ok": r.ok, **({"detail": r.detail} if r.detail else {})}
                           for r in results}}
        return (200 if ok else 503), JSON_TYPE, _json(body)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[1].startswith("/"):
        raise ValueError("not an HTTP request line")
    return parts[0], parts[1]


def _json(value: Any) -> bytes:
    return redact(json.dumps(value, indent=1, default=str)).encode() + b"\n"


# -- the standard readiness checks -------------------------------------------


def add_standard_checks(
    readiness: Readiness, *, redis: Any, keys: KeySpace, database_url: str | None,
    groups: Callable[[], dict[str, tuple[str, ...]]] = running_groups,
) -> None:
    """Redis reachable, PostgreSQL reachable, this process's consumer groups present."""

    async def redis_check() -> str | None:
        await redis.ping()
        return None

    async def groups_check() -> str | None:
        missing = []
        for group, streams in groups().items():
            for stream in streams:
                present = ({text(g["name"]) for g in await redis.xinfo_groups(stream)}
                           if await redis.exists(stream) else set())
                if group not in present:
                    missing.append(group)
                    break
        return f"missing consumer groups: {', '.join(sorted(missing))}" if missing else None

    async def streams_check() -> str | None:
        found = await find_exhausted(redis, keys.event_streams())
        return describe(found) if found else None

    readiness.add("redis", redis_check)
    readiness.add("consumer_groups", groups_check)
    readiness.add("stream_ids", streams_check)
    if database_url is not None:
        readiness.add("postgres", _postgres_check(database_url))


def _postgres_check(database_url: str) -> Any:
    import asyncpg

    async def check() -> str | None:
        conn = await asyncpg.connect(database_url, timeout=2)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return None

    return check



@contextlib.asynccontextmanager
async def operations(settings: Settings, redis: Any) -> AsyncIterator[HealthServer]:
    """Serve the endpoint and collect the group gauges while the block runs."""
    server = HealthServer(settings.metrics_addr)
    try:
        await server.start()
    except OSError as e:
        raise ConfigError(f"RECONCILER_METRICS_ADDR: cannot listen on {settings.metrics_addr}: "
                          f"{e.strerror or e}") from e
    add_standard_checks(READINESS, redis=redis, keys=settings.keys,
                        database_url=settings.database_url)
    stop = asyncio.Event()
    collector = GroupCollector(redis, settings.keys)
    tasks = [spawn(LOOP_NAME, lambda: collector.run(stop), stall_after_s=60, stop=stop),
             StoreGauges(redis, settings.keys, quarantine_dir=settings.quarantine_dir).spawn(stop)]
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=COLLECT_INTERVAL_S)
        for task in tasks:
            task.cancel()
        await server.close()
