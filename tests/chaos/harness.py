"""Processes and servers for the fault-injection tests, and the faults themselves.

Every role runs as its own ``python -m ops run --role NAME`` child, so a fault
is what it is in production: a SIGKILL loses whatever the process held in
memory, a killed connection is noticed by the driver, a restarted Redis comes
back from its append-only file.  Redis is a private ``redis-server`` started
here (it is restarted on purpose; the shared one must not be), PostgreSQL is
the test run's database.

The harness's own Redis connections carry the client name ``chaos-harness``
and its PostgreSQL connections are listed by pid, so the faults never cut the
branch the test sits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from events.settings import Settings
from ops.embedded import EmbeddedServer, free_port, start_redis

log = logging.getLogger(__name__)

HARNESS_CLIENT = "chaos-harness"
AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]
"""The documented production setting (README, "Operations")."""
STOP_TIMEOUT_S = 15.0
REDIS_RETRY_FOR_S = 30.0
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

T = TypeVar("T")


class PrivateRedis:
    """A redis-server of the test's own, with AOF on, restartable on the same port and folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.server: EmbeddedServer | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_redis(self.folder, port=self.port, extra=AOF)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # SIGTERM by pid: Redis flushes the AOF and exits
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1


def harness_redis(url: str) -> Redis:
    return Redis.from_url(url, client_name=HARNESS_CLIENT, socket_timeout=10,
                          socket_connect_timeout=5)


async def retrying(call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run a Redis call, retrying while the server restarts (bounded)."""
    deadline = time.monotonic() + REDIS_RETRY_FOR_S
    while True:
        try:
            return await call()
        except REDIS_DOWN:
            if time.monotonic() > deadline:
                raise
            log.info("redis unavailable during %s; retrying", what)
            await asyncio.sleep(0.2)


@dataclass
class RoleProcess:
    """One ``python -m ops run --role ROLE`` child, restartable."""

    name: str
    role: str
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0

    def start(self) -> None:
        self.starts += 1
        out = (self.logs / f"{self.name}.{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops", "run", "--role", self.role],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.logs)
        out.close()

    def kill(self) -> None:
        """SIGKILL, by pid: nothing is flushed, nothing is handed over."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
            self.kills += 1

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = 30) -> str:
        path = self.logs / f"{self.name}.{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def role_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment of every role process: the test's settings, short clocks."""
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "TEST_"))}
    env.update({
        "REDIS_URL": redis_url,
        "DATABASE_URL": settings.database_url,
        "RECONCILER_KEY_PREFIX": settings.key_prefix,
        "RECONCILER_QUEUE_PATTERN": settings.queue_pattern,
        "RECONCILER_TABLE": settings.table,
        "RECONCILER_SESSIONS_DIR": str(settings.sessions_dir),
        "RECONCILER_QUARANTINE_DIR": str(settings.quarantine_dir),
        "RECONCILER_METRICS_ADDR": "127.0.0.1:0",
        "RECONCILER_CLAIM_MIN_IDLE_S": str(settings.claim_min_idle_s),
        "RECONCILER_GRACE_S": str(settings.grace_s),
        "RECONCILER_SESSION_TTL_S": str(settings.session_ttl_s),
        "RECONCILER_BOT_TIMEOUT_S": str(settings.bot_timeout_s),
        "RECONCILER_RESCAN_INTERVAL_S": str(settings.rescan_interval_s),
        "RECONCILER_LOG_FORMAT": "text",
        "RECONCILER_LOG_LEVEL": "WARNING",
    })
    return env


@dataclass
class Cluster:
    """Every role of the reconciler, each in its own process."""

    processes: dict[str, RoleProcess] = field(default_factory=dict)

    @classmethod
    def of(cls, env: dict[str, str], logs: Path, roles: dict[str, str]) -> Cluster:
        return cls({name: RoleProcess(name, role, env, logs) for name, role in roles.items()})

    def start(self) -> None:
        for process in self.processes.values():
            process.start()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    def revive(self) -> dict[str, str]:
        """Start again what exited by itself, as a supervisor (systemd ``Restart=``) does;
        returns the last lines each one logged."""
        exited = self.crashed()
        for name in exited:
            self.processes[name].start()
        return exited

    def crashed(self) -> dict[str, str]:
        """Processes that exited by themselves (a fault must never make one give up)."""
        return {name: p.tail() for name, p in self.processes.items() if p.exited() is not None}


@dataclass
class Faults:
    """Injects the faults, at seeded random moments, and counts what it did."""

    cluster: Cluster
    redis: PrivateRedis
    client: Redis
    database_url: str
    own_pg_pids: list[int]
    rng: random.Random
    redis_gate: asyncio.Lock
    """Held by the load around each Redis write it must count, and by a Redis restart."""
    killable: tuple[str, ...] = ()
    done: dict[str, int] = field(default_factory=dict)

    def _count(self, fault: str) -> None:
        self.done[fault] = self.done.get(fault, 0) + 1

    async def sigkill_and_restart(self) -> None:
        name = self.rng.choice(self.killable)
        process = self.cluster.processes[name]
        await asyncio.to_thread(process.kill)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        process.start()
        self._count(f"sigkill:{process.role}")

    async def kill_pg_connections(self) -> None:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid() AND pid <> ALL($1::int[])", self.own_pg_pids)
        finally:
            await conn.close()
        self._count("pg_terminate_backend")
        self.done["pg_connections_killed"] = self.done.get("pg_connections_killed", 0) + killed

    async def kill_redis_connections(self) -> None:
        try:
            clients = await self.client.client_list(_type="normal")
            victims = [c for c in clients if c.get("name") != HARNESS_CLIENT]
            for victim in victims:
                with contextlib.suppress(*REDIS_DOWN, Exception):
                    await self.client.execute_command("CLIENT", "KILL", "ID", victim["id"])
        except REDIS_DOWN:
            return
        self._count("redis_client_kill")
        self.done["redis_connections_killed"] = (self.done.get("redis_connections_killed", 0)
                                                 + len(victims))

    async def restart_redis(self) -> None:
        async with self.redis_gate:
            await asyncio.to_thread(self.redis.restart)
        self._count("redis_restart")


async def pg_pids(*connections: Any) -> list[int]:
    return [int(await c.fetchval("SELECT pg_backend_pid()")) for c in connections]
