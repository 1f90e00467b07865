"""What every command needs before it can work: settings, servers, clients.

:func:`open_environment` loads the settings, uses the embedded Redis and
PostgreSQL of the data folder when no URLs are given (the running ones, or
started on the same data: :mod:`ops.embedded_state`; saying which), and
yields connected clients.  The last command using the embedded servers stops
them on exit.

Connection failures become one line naming the store, the setting and the
fix (:func:`connect_pg`, :func:`check_redis`), never a driver traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError

from events.errors import ReconcilerError
from events.resp_packing import pack_with_hiredis
from events.settings import Settings
from events.subscriber import is_cluster
from ops.config import ConfigError, load_settings
from ops.embedded_state import Attached, attach, detach
from ops.redact import redact
from ops.task_connection import TaskBound

log = logging.getLogger(__name__)


class StoreUnreachable(ReconcilerError):
    """Redis or PostgreSQL cannot be used; the message names the setting and the fix."""


@dataclass
class Environment:
    settings: Settings
    redis: Redis
    embedded: dict[str, str] = field(default_factory=dict)
    """``{"redis": url, "postgres": url}`` for the embedded servers this command uses."""

    async def connect_pg(self) -> Any:
        """A new asyncpg connection to ``DATABASE_URL``."""
        assert self.settings.database_url is not None
        return await connect_pg(self.settings.database_url)


def redis_client(url: str, *, cluster: bool = False) -> Any:
    """A client of ``url``: a :class:`RedisCluster` that follows the cluster's slots when
    ``cluster`` (``RECONCILER_REDIS_CLUSTER``; ``url`` is then any node of it)."""
    if cluster:
        return pack_with_hiredis(RedisCluster.from_url(
            url, decode_responses=False, health_check_interval=30, socket_keepalive=True))
    return pack_with_hiredis(Redis.from_url(url, decode_responses=False, health_check_interval=30,
                                            socket_keepalive=True))


def settings_from_args(config: str | None, **overrides: Any) -> Settings:
    return load_settings(config_file=Path(config) if config else None,
                         overrides={k: v for k, v in overrides.items() if v is not None})


async def connect_pg(url: str) -> Any:
    """Connect, or raise :class:`StoreUnreachable` saying what is wrong with ``DATABASE_URL``.

    The connection is this task's alone (:class:`ops.task_connection.TaskBound`)."""
    shown = redact(url)
    try:
        return TaskBound(await asyncpg.connect(url, timeout=10))
    except asyncpg.InvalidCatalogNameError as e:
        raise StoreUnreachable(f"PostgreSQL at {shown}: {e}: create it, or fix the database "
                               "name in DATABASE_URL") from e
    except asyncpg.InvalidAuthorizationSpecificationError as e:
        raise StoreUnreachable(f"PostgreSQL at {shown} refused the login: {e}: fix the user "
                               "or password in DATABASE_URL") from e
    except asyncpg.InvalidPasswordError as e:
        raise StoreUnreachable(f"PostgreSQL at {shown} refused the login: {e}: fix the password "
                               "in DATABASE_URL (or DATABASE_URL_FILE)") from e
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise StoreUnreachable(f"cannot reach PostgreSQL at {shown}: {reason}: start it, or fix "
                               "DATABASE_URL (unset it to use the embedded one)") from e


async def check_redis(redis: Any, url: str) -> None:
    """Ping; a node of a Redis Cluster reached with a one-node client is an error too (its
    other slots would answer MOVED), saying which setting to turn on."""
    try:
        await redis.ping()
        in_cluster = not is_cluster(redis) and await _cluster_enabled(redis)
    except (RedisError, RedisClusterException, OSError) as e:
        if is_cluster(redis) and await _slot_map_refused(url):
            raise StoreUnreachable(f"the Redis user of {redact(url)} may not run CLUSTER SLOTS, "
                                   "which a cluster client reads the slot map with: add "
                                   "+cluster|slots to its ACL on every node") from e
        raise StoreUnreachable(f"cannot reach Redis at {redact(url)}: {e}: start it, or fix "
                               "REDIS_URL (unset it to use the embedded one)") from e
    if in_cluster:
        raise StoreUnreachable(f"Redis at {redact(url)} is a node of a Redis Cluster: set "
                               "RECONCILER_REDIS_CLUSTER=true")


async def _slot_map_refused(url: str) -> bool:
    """Whether the node ``url`` names refuses its user CLUSTER SLOTS (redis-py's cluster
    client then says only that cluster mode is not enabled)."""
    node = Redis.from_url(url, socket_timeout=10)
    try:
        await node.execute_command("CLUSTER SLOTS")
    except NoPermissionError:
        return True
    except (RedisError, OSError):
        return False
    finally:
        await node.aclose()
    return False


async def _cluster_enabled(redis: Any) -> bool:
    try:
        return bool((await redis.info("cluster")).get("cluster_enabled"))
    except NoPermissionError:  # an ACL without INFO: the commands will say so if it is
        return False


def require_sessions_dir(settings: Settings) -> None:
    """For commands that read the sessions folder: a folder that is not there is an error."""
    if not settings.sessions_dir.is_dir():
        raise ConfigError(f"RECONCILER_SESSIONS_DIR: {settings.sessions_dir} is not a folder: point "
                          "RECONCILER_SESSIONS_DIR at the bot's sessions folder (or create it)")


@contextlib.asynccontextmanager
async def open_environment(settings: Settings, *, need_pg: bool = True) -> AsyncIterator[Environment]:
    wanted = tuple(name for name, url, needed in (("redis", settings.redis_url, True),
                                                  ("postgres", settings.database_url, need_pg))
                   if needed and url is None)
    attached = attach(settings.data_dir, wanted) if wanted else Attached(settings.data_dir)
    try:
        settings = _with_embedded(settings, attached)
        assert settings.redis_url is not None
        redis = redis_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            await check_redis(redis, settings.redis_url)
            yield Environment(settings=settings, redis=redis, embedded=dict(attached.urls))
        finally:
            await redis.aclose()
    finally:
        detach(attached)


def _with_embedded(settings: Settings, attached: Attached) -> Settings:
    if "redis" in attached.urls:
        settings = replace(settings, redis_url=attached.urls["redis"])
    if "postgres" in attached.urls:
        settings = replace(settings, database_url=attached.urls["postgres"])
    for name, label in (("redis", "Redis"), ("postgres", "PostgreSQL")):
        if name in attached.urls:
            setting = "REDIS_URL" if name == "redis" else "DATABASE_URL"
            verb = "started" if name in attached.started else "using the running"
            _say(f"{setting} not set: {verb} embedded {label} at {attached.urls[name]} "
                 f"(data in {attached.data_dir})")
    return settings


def _say(text: str) -> None:
    print(f"reconciler: {text}", file=sys.stderr)
