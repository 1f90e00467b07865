"""The ``consumers`` role: the ``conversations`` and ``sessions`` consumer groups in one process.

It opens what the handlers share (an asyncpg pool, the publisher and the
action executor, the timer wheel), waits until its database role holds the grants it
needs (:mod:`events.grants`: one clear line and a failing ``/readyz`` meanwhile,
never a dead letter per event), purges quarantine entries past their retention
(the list before the watch: deadlines cover the rest), and runs one
:class:`GroupConsumer` per group until ``stop``, with the table's listing
beside them (:mod:`events.sources.table_listing`: on the first start, then on
a long jittered period; this role already reads the table, the relay only
its outbox).  Several processes may run
this role; the groups split the keys between them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from consumers.actions import Actions
from consumers.conversation_group import ConversationsHandler
from consumers.gateway_session_group import SessionsHandler
from consumers.options import GroupOptions
from consumers.relist import Relister, conversation_keys, session_names
from consumers.rights_gate import RightsGate
from consumers.runtime import GroupConsumer
from consumers.stores.conversations_sql import ConversationsSql
from consumers.stores.pauses import PauseStore, settling_expiries
from consumers.stores.session_folder import SessionFiles
from events import wiring
from events.grants import missing_grants, missing_redis_rights, wait_until_granted
from events.loops import guarded
from events.settings import Settings
from events.sources.outbox import CONSUMERS_APPLICATION_NAME
from events.sources.table_listing import serve_listing

log = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10


async def _no_session_state(connection: Any) -> None:
    """The pool's reset on release: nothing to undo.

    The handlers' stores run single statements through the pool (no SET, LISTEN,
    cursors or advisory locks), and asyncpg still rolls back an open transaction
    on release; its default reset query would cost one more round trip per call.
    """


async def run_consumers(settings: Settings, redis: Any, stop: asyncio.Event) -> None:
    """Role ``consumers``: react to conversation and session events until ``stop``."""
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is needed by the consumers role")
    actions = Actions.for_settings(redis, settings)
    publisher = actions.publisher
    timers = wiring.timer_wheel(settings, redis)
    pool = await asyncpg.create_pool(settings.database_url, min_size=POOL_MIN_SIZE,
                                     max_size=max(POOL_MIN_SIZE, min(POOL_MAX_SIZE,
                                                                     settings.concurrency)),
                                     reset=_no_session_state,
                                     server_settings={"application_name": CONSUMERS_APPLICATION_NAME})
    try:
        if not await wait_until_granted(lambda: _missing(pool, redis, settings), role="consumers",
                                        stop=stop):
            return
        conversations = ConversationsHandler(
            settings=settings, sql=ConversationsSql(pool, settings), files=SessionFiles(settings),
            redis=redis, actions=actions, timers=timers)
        await _tidy_quarantine(conversations)
        sessions = SessionsHandler(settings=settings, redis=redis, actions=actions, timers=timers)
        relisters = [Relister(scope="conversations", keys=conversation_keys(settings, pool),
                              publisher=publisher),
                     Relister(scope="sessions", keys=session_names(settings, redis), publisher=publisher)]
        pauses = PauseStore(redis, settings.keys)
        rights = RightsGate(lambda: _missing(pool, redis, settings), role="consumers", stop=stop)
        groups = [
            GroupConsumer(redis, _options(settings, scope), settling_expiries(handler, pauses, actions),
                          on_gap=relister.request, rights=rights)
            for scope, handler, relister in (("conversations", conversations, relisters[0]),
                                             ("sessions", sessions, relisters[1]))
        ]
        listing = asyncio.create_task(guarded(
            f"listing:{settings.table}", lambda: serve_listing(settings, redis, publisher, stop),
            stall_after_s=float("inf"), stop=stop), name=f"listing:{settings.table}")
        await asyncio.gather(*(group.run(stop) for group in groups))
        await listing
        for relister in relisters:
            await relister.stop()
    finally:
        await pool.close()


async def _tidy_quarantine(conversations: ConversationsHandler) -> None:
    """At start: finish the moves a crash cut short, and purge what is past its retention."""
    for line in conversations.files.recover():
        log.warning("session files: %s", line)
    purged = await conversations.purge_expired()
    if purged:
        log.info("purged %d quarantine entries past their retention", purged)


async def _missing(pool: Any, redis: Any, settings: Settings) -> list[str]:
    async with pool.acquire() as conn:
        database = await missing_grants(conn, settings, "consumers")
    return [*database, *await missing_redis_rights(redis, settings.keys)]


def _options(settings: Settings, group: str) -> GroupOptions:
    """The options of the group named after its stream: the live stream and its bulk lane
    of every partition."""
    return GroupOptions(
        group=group,
        streams=settings.keys.lanes(group),
        bulk_streams=settings.keys.bulk_streams(group),
        deadletter_stream=settings.keys.deadletter_stream,
        deadletter_max_len=settings.deadletter_max_len,
        concurrency=settings.concurrency,
        max_deliveries=settings.max_deliveries,
        claim_min_idle_s=settings.claim_min_idle_s,
        gaps_key=settings.keys.stream_gaps,
    )
