"""What every command needs before it can work: settings, servers, clients.

:func:`open_environment` loads the settings, starts embedded Redis and
PostgreSQL when no URLs are given (saying where), and yields connected
clients.  Everything it started is stopped on exit.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from events.settings import Settings
from ops.config import load_settings
from ops.embedded import EmbeddedServer, start_postgres, start_redis
from ops.redact import redact

log = logging.getLogger(__name__)


@dataclass
class Environment:
    settings: Settings
    redis: Redis
    embedded: list[EmbeddedServer]

    async def connect_pg(self) -> Any:
        """A new asyncpg connection to ``DATABASE_URL``."""
        assert self.settings.database_url is not None
        return await asyncpg.connect(self.settings.database_url)


def redis_client(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=False, health_check_interval=30,
                          socket_keepalive=True)


def settings_from_args(config: str | None, **overrides: Any) -> Settings:
    return load_settings(config_file=Path(config) if config else None,
                         overrides={k: v for k, v in overrides.items() if v is not None})


@contextlib.asynccontextmanager
async def open_environment(settings: Settings, *, need_pg: bool = True) -> AsyncIterator[Environment]:
    embedded: list[EmbeddedServer] = []
    try:
        if settings.redis_url is None:
            server = start_redis(settings.data_dir / "redis")
            embedded.append(server)
            settings = replace(settings, redis_url=server.url)
            _say(f"REDIS_URL not set: started embedded Redis at {server.url} "
                 f"(data in {server.data_dir})")
        if need_pg and settings.database_url is None:
            server = start_postgres(settings.data_dir)
            embedded.append(server)
            settings = replace(settings, database_url=server.url)
            _say(f"DATABASE_URL not set: started embedded PostgreSQL at {server.url}")
        assert settings.redis_url is not None
        redis = redis_client(settings.redis_url)
        try:
            await redis.ping()
        except Exception as e:
            raise ConnectionError(f"cannot reach Redis at {redact(settings.redis_url)}: {e}") from e
        try:
            yield Environment(settings=settings, redis=redis, embedded=embedded)
        finally:
            await redis.aclose()
    finally:
        for server in reversed(embedded):
            server.stop()


def _say(text: str) -> None:
    print(f"reconciler: {text}", file=sys.stderr)
