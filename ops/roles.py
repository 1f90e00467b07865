"""The roles a process can run, and running them until a signal arrives.

A role is ``async def role(settings, redis, stop) -> None``, defined next to
the code it runs: it works until ``stop`` is set, then shuts down within its
own deadline.  ``settings`` carries the resolved URLs (embedded servers
included), so a role that needs PostgreSQL connects to
``settings.database_url`` itself.  ``run --role all`` runs every
role in one process; several processes can each run some of them (see
ARCHITECTURE.md for what may run many times and what runs once).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis.asyncio import Redis

from consumers.consumers_role import run_consumers
from consumers.notifier import run_notifier
from events.layout import claim_layout
from events.settings import Settings
from events.sources.due_timers import run_timers
from events.sources.folder import run_watcher
from events.sources.gateway_leases import run_sessions_source
from events.sources.postgres import run_relay
from ops.health import operations
from ops.prepare import prepare_database
from ops.runtime_env import open_environment
from projections.runner import run_projections

log = logging.getLogger(__name__)

Role = Callable[[Settings, Redis, asyncio.Event], Coroutine[Any, Any, None]]

ROLES: dict[str, Role] = {
    "projections": run_projections,
    "sessions": run_sessions_source,
    "relay": run_relay,
    "watcher": run_watcher,
    "consumers": run_consumers,
    "timers": run_timers,
    "notifier": run_notifier,
}

ROLE_NAMES: tuple[str, ...] = tuple(ROLES)


async def run_roles(settings: Settings, names: Sequence[str], stop: asyncio.Event | None = None) -> None:
    """Open the environment (starting embedded servers if needed) and run roles until a signal."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_environment(settings) as env:
        await claim_layout(env.redis, env.settings.keys)
        await prepare_database(env, names)
        async with operations(env.settings, env.redis):
            await serve_roles(env.settings, env.redis, names, stop)


async def serve_roles(settings: Settings, redis: Redis, names: Sequence[str], stop: asyncio.Event) -> None:
    """Run roles in this process until ``stop`` is set or one of them fails."""
    log.info("running roles: %s", ", ".join(names) or "(none)")
    tasks = [asyncio.create_task(ROLES[n](settings, redis, stop), name=f"role:{n}") for n in names]
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopping.cancel()
    for task in done:
        if task in tasks and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
