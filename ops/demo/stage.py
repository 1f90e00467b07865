"""Staging the demo: a CRM table, a few hundred healthy conversations, and the incidents.

The incidents are the ones DESIGN.md names:

* a chat stuck "waiting on the bot": active, ``assigned_to='bot'``,
  ``bot_flow_id`` NULL, its file naming ``promotoras-v2-mw7rpy``;
* a file left behind after the flow was cleared and the chat closed;
* nine messages in ``queue:940740243`` for a session that no longer exists.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from events.keys import KeySpace, conversation_key
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sql import quote_table
from ops.prepare import conversations_ddl

CHANNEL = "109876543210"
STUCK_FLOW = "promotoras-v2-mw7rpy"
LOST_SESSION = "940740243"
FLOWS = ("bienvenida-v3", "cobranza-v1", "encuesta-nps", STUCK_FLOW)


@dataclass
class Staged:
    healthy: list[str] = field(default_factory=list)
    """Keys of conversations that start out consistent."""
    stuck_key: str = ""
    left_behind_key: str = ""
    lost_queue: list[bytes] = field(default_factory=list)


LEFT_OVER_S = 3600.0
"""How old the incidents' files are: left over from an outage, not just written."""


def phone_number(n: int) -> str:
    return f"52155{n:08d}"


def write_session_file(folder: Path, pattern: FilePattern, phone: str, flow: str, *,
                       age_s: float = 0.0) -> Path:
    """Write a session file the way a bot runtime does: temp file, then atomic rename.

    ``age_s`` dates it back, as a file left over from before the reconciler ran
    (a fresh file is inside the settle window and is not judged yet)."""
    path = folder / pattern.name_for(phone, CHANNEL)
    temporary = folder / f".{path.name}.tmp"
    temporary.write_text(json.dumps({"flowId": flow, "step": "menu", "vars": {}}))
    if age_s:
        then = time.time() - age_s
        os.utime(temporary, (then, then))
    os.replace(temporary, path)
    return path


async def create_table(pg: Any, table: str) -> None:
    """The users' table as a CRM has it: the documented shape plus a column this project does not watch."""
    await pg.execute(conversations_ddl(Settings(table=table)))
    await pg.execute(f"ALTER TABLE {quote_table(table)} ADD COLUMN IF NOT EXISTS notes text")


async def stage_healthy(pg: Any, settings: Settings, count: int, rng: random.Random) -> list[str]:
    """Consistent conversations: bots with their files, closed chats, agent chats."""
    pattern = FilePattern(settings.file_pattern)
    now = datetime.now(UTC)
    rows: list[tuple[str, str, str | None, str | None, datetime | None]] = []
    for n in range(count):
        phone = phone_number(n + 1000)
        kind = rng.random()
        if kind < 0.6:
            flow = rng.choice(FLOWS[:3])
            rows.append((phone, "active", "bot", flow, now - timedelta(seconds=rng.randint(1, 600))))
            write_session_file(settings.sessions_dir, pattern, phone, flow)
        elif kind < 0.85:
            rows.append((phone, "closed", None, None, None))
        else:
            rows.append((phone, "active", f"agent-{rng.randint(1, 9)}", None, None))
    await pg.executemany(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, $3, $4, $5, $6)",
        [(p, CHANNEL, s, a, f, t) for p, s, a, f, t in rows],
    )
    return [conversation_key(p, CHANNEL) for p, *_ in rows]


async def stage_incidents(pg: Any, redis: Redis, settings: Settings, staged: Staged) -> None:
    """The three incidents, made while nothing watches (as after an outage)."""
    pattern = FilePattern(settings.file_pattern)
    stuck = phone_number(1)
    await pg.execute(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, 'active', 'bot', NULL, now())", stuck, CHANNEL)
    write_session_file(settings.sessions_dir, pattern, stuck, STUCK_FLOW, age_s=LEFT_OVER_S)
    staged.stuck_key = conversation_key(stuck, CHANNEL)

    left_behind = phone_number(2)
    await pg.execute(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, 'closed', NULL, NULL, NULL)", left_behind, CHANNEL)
    write_session_file(settings.sessions_dir, pattern, left_behind, "cobranza-v1",
                       age_s=LEFT_OVER_S)
    staged.left_behind_key = conversation_key(left_behind, CHANNEL)

    keys: KeySpace = settings.keys
    staged.lost_queue = [
        json.dumps({"to": phone_number(100 + n), "text": f"Hola! mensaje {n + 1} de 9"}).encode()
        for n in range(9)
    ]
    await redis.rpush(keys.queue(LOST_SESSION), *staged.lost_queue)


async def leave_a_file_behind(pg: Any, settings: Settings, healthy: list[str]) -> str | None:
    """Live incident: the CRM clears a bot's flow and closes the chat, but the file stays."""
    for key in healthy:
        phone, channel = key.split(":", 1)
        closed = await pg.fetchval(
            f"UPDATE {settings.table} SET status = 'closed', assigned_to = NULL, bot_flow_id = NULL,"
            " bot_started_at = NULL WHERE phone = $1 AND phone_number_id = $2"
            " AND assigned_to = 'bot' RETURNING id", phone, channel)
        if closed is not None:
            healthy.remove(key)
            return key
    return None
