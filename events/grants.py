"""The PostgreSQL and Redis rights each role needs, checked before it starts working.

A role that lacks a grant would otherwise fail on every outbox batch (the
relay restarting in a loop) or on every handler write (one dead letter per
event).  Instead the role checks its rights from the catalog first; while
any is missing it logs one clear line naming the ``GRANT`` that fixes it,
keeps ``/readyz`` failing with the same text (flag ``grants:<role>``), and
rechecks every :data:`RECHECK_S` until an operator grants it.

The rights, which docs/security.md lists for the operator:

* **relay** -- ``USAGE`` on schema ``reconciler``; ``SELECT, UPDATE, DELETE``
  on the table's outbox (``LISTEN`` needs no grant);
* **consumers** -- ``SELECT`` on the watched columns of the conversations
  table and ``UPDATE`` on the four it writes (a table-wide grant does too).
  The capture trigger runs with its installer's rights, so writing the
  table needs nothing on the outbox.

In Redis, the consumers (scheduling a deadline publishes on the timer
wheel's wake-up channel) and the timers role (subscribed to it) need that
channel; :func:`missing_redis_rights` finds out by publishing an empty
wake-up (harmless: a timer loop only looks at the wheel once more).  The
keyspace notifications of the sessions source are optional and handled
there (:mod:`events.sources.gateway_leases`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg
from redis.exceptions import NoPermissionError

from events.keys import KeySpace
from events.loops import sleep_unless_stopped
from events.readiness import READINESS, Readiness
from events.settings import Settings
from events.sources.outbox import SCHEMA, outbox_names
from events.sql import quote_ident, quote_table

log = logging.getLogger(__name__)

GrantedRole = Literal["relay", "consumers"]
RECHECK_S = 10.0
"""How often a role waiting for a grant asks again."""
READ_COLUMNS = ("id", "phone", "channel", "status", "assigned_to", "bot_flow_id", "bot_started_at")
WRITTEN_COLUMNS = ("status", "assigned_to", "bot_flow_id", "bot_started_at")

_COLUMN_SQL = "SELECT bool_and(has_column_privilege($1, c, $2)) FROM unnest($3::text[]) AS c"


async def missing_grants(conn: Any, settings: Settings, role: GrantedRole) -> list[str]:
    """What ``conn``'s role lacks for ``role``: one ``GRANT`` (or fix) per line, empty when none."""
    me = quote_ident(await conn.fetchval("SELECT current_user"))
    if role == "relay":
        return await _relay(conn, settings, me)
    return await _consumers(conn, settings, me)


async def _relay(conn: Any, settings: Settings, me: str) -> list[str]:
    names = outbox_names(settings.table)
    no_outbox = [f"no outbox for table {settings.table}: run `reconciler migrate`"]
    if await conn.fetchval("SELECT to_regnamespace($1)", SCHEMA) is None:
        return no_outbox
    if not await conn.fetchval("SELECT has_schema_privilege($1, 'USAGE')", SCHEMA):
        return [f"GRANT USAGE ON SCHEMA {quote_ident(SCHEMA)} TO {me}"]
    if await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.{names.outbox}") is None:
        return no_outbox
    lacking = [p for p in ("SELECT", "UPDATE", "DELETE") if not await conn.fetchval(
        "SELECT has_table_privilege($1, $2)", names.qualified_outbox, p)]
    return [f"GRANT {', '.join(lacking)} ON {names.qualified_outbox} TO {me}"] if lacking else []


async def _consumers(conn: Any, settings: Settings, me: str) -> list[str]:
    table = quote_table(settings.table)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return [f"table {settings.table} does not exist (RECONCILER_TABLE)"]
    except asyncpg.InsufficientPrivilegeError:
        schema = quote_ident(settings.table.split(".", 1)[0])
        return [f"GRANT USAGE ON SCHEMA {schema} TO {me}"]
    lacking = []
    for privilege, columns in (("SELECT", READ_COLUMNS), ("UPDATE", WRITTEN_COLUMNS)):
        names = [getattr(settings.columns, c) for c in columns]
        if not await conn.fetchval(_COLUMN_SQL, table, privilege, names):
            lacking.append(f"{privilege} ({', '.join(quote_ident(n) for n in names)})")
    return [f"GRANT {', '.join(lacking)} ON {table} TO {me}"] if lacking else []


async def missing_redis_rights(redis: Any, keys: KeySpace) -> list[str]:
    """The Redis ACL rule the consumers and timers roles lack, if any."""
    try:
        await redis.execute_command("PUBLISH", keys.deadlines_wake, "")  # a cluster client has no publish()
    except NoPermissionError:
        return [f"the Redis user may not use channel {keys.deadlines_wake!r}: "
                f"ACL SETUSER <user> '&{keys.deadlines_wake}'"]
    return []


async def confirm_subscribed(pubsub: Any, count: int, *, timeout_s: float = 5.0) -> None:
    """Read the confirmations of ``count`` (p)subscriptions just sent.

    redis-py sends SUBSCRIBE without reading the reply, so a refusal by the
    ACL would otherwise surface later, inside the loop reading messages.
    Raises ``NoPermissionError`` when refused, ``TimeoutError`` when silent.
    """
    loop = asyncio.get_running_loop()
    deadline, confirmed = loop.time() + timeout_s, 0
    while confirmed < count:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"no confirmation of {count} subscription(s) within {timeout_s:g}s")
        message = await pubsub.get_message(timeout=left)
        if message is not None and message.get("type") in ("subscribe", "psubscribe"):
            confirmed += 1


async def wait_until_granted(
    probe: Callable[[], Awaitable[list[str]]], *, role: str, stop: Any,
    readiness: Readiness = READINESS, recheck_s: float | None = None,
    beat: Callable[[], None] = lambda: None,
) -> bool:
    """Return ``True`` once ``probe`` finds nothing missing, ``False`` if ``stop`` is set first.

    While something is missing: one error line per distinct problem (not per
    recheck), and the readiness flag ``grants:<role>`` names it.
    """
    flag, reported = f"grants:{role}", ""
    recheck_s = RECHECK_S if recheck_s is None else recheck_s
    while not stop.is_set():
        problems = await probe()
        if not problems:
            if reported:
                log.info("%s: the missing rights are granted now; starting", role)
            readiness.remove(flag)
            return True
        detail = "; ".join(problems)
        readiness.waiting(flag, f"missing: {detail}")
        if detail != reported:
            log.error("%s cannot start until it has its rights: %s "
                      "(checking again every %gs)", role, detail, recheck_s, extra={"role": role})
            reported = detail
        beat()
        if await sleep_unless_stopped(stop, recheck_s):
            break
    readiness.remove(flag)
    return False
