"""Live traffic for the demo: bots starting and finishing, messages sent, a gateway.

Healthy traffic is written the way a well-behaved CRM writes it (a bot's file
before its row, the file removed before the row is closed), so the
reconciler has nothing to do for it; the incidents are what it must heal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from events.gateway import GatewaySessions
from events.keys import split_conversation_key
from events.loops import sleep_unless_stopped
from events.session_file_format import FilePattern
from events.settings import Settings
from ops.demo.stage import CHANNEL, FLOWS, write_session_file

LIVE_SESSION = "default"


@dataclass
class TrafficCounts:
    bot_runs_started: int = 0
    bot_runs_finished: int = 0
    messages_pushed: int = 0
    messages_delivered: int = 0
    delivered_by_session: dict[str, list[bytes]] = field(default_factory=dict)


class DemoGateway:
    """Holds WhatsApp sessions "in memory" and drains their queues, as a gateway does."""

    def __init__(self, redis: Redis, settings: Settings, counts: TrafficCounts) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._sessions = GatewaySessions(redis, self._keys, ttl_s=settings.session_ttl_s)
        self._counts = counts
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def open(self, name: str) -> None:
        await self._sessions.start(name)
        self._tasks[name] = asyncio.create_task(self._serve(name), name=f"demo-gateway:{name}")

    async def _serve(self, name: str) -> None:
        queue = self._keys.queue(name)
        delivered = self._counts.delivered_by_session.setdefault(name, [])
        heartbeat_every = max(1.0, self._sessions.ttl_s / 3)
        next_beat = asyncio.get_running_loop().time() + heartbeat_every
        while True:
            popped = await self._redis.blpop([queue], timeout=0.2)
            if popped is not None:
                delivered.append(popped[1])
                self._counts.messages_delivered += 1
            if asyncio.get_running_loop().time() >= next_beat:
                await self._sessions.heartbeat(name)
                next_beat += heartbeat_every

    async def close(self) -> None:
        for name, task in self._tasks.items():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._sessions.stop(name)
        self._tasks.clear()


async def run_traffic(
    pg: Any, redis: Redis, settings: Settings, healthy: list[str], counts: TrafficCounts,
    stop: asyncio.Event, rng: random.Random,
) -> None:
    """Bots start and finish and messages are sent until ``stop`` is set."""
    pattern = FilePattern(settings.file_pattern)
    queue = settings.keys.queue(LIVE_SESSION)
    while not stop.is_set():
        phone, _ = split_conversation_key(rng.choice(healthy))
        row = await pg.fetchrow(
            f"SELECT status, assigned_to FROM {settings.table} WHERE phone = $1 AND phone_number_id = $2",
            phone, CHANNEL)
        if row is not None and row["assigned_to"] == "bot":
            (settings.sessions_dir / pattern.name_for(phone, CHANNEL)).unlink(missing_ok=True)
            await pg.execute(
                f"UPDATE {settings.table} SET status = 'closed', assigned_to = NULL, bot_flow_id = NULL,"
                " bot_started_at = NULL WHERE phone = $1 AND phone_number_id = $2", phone, CHANNEL)
            counts.bot_runs_finished += 1
        elif row is not None:
            flow = rng.choice(FLOWS[:3])
            write_session_file(settings.sessions_dir, pattern, phone, flow)
            await pg.execute(
                f"UPDATE {settings.table} SET status = 'active', assigned_to = 'bot', bot_flow_id = $3,"
                " bot_started_at = $4 WHERE phone = $1 AND phone_number_id = $2",
                phone, CHANNEL, flow, datetime.now(UTC))
            counts.bot_runs_started += 1
        await redis.rpush(queue, json.dumps({"to": phone, "text": "¿En qué te ayudo?"}))
        counts.messages_pushed += 1
        await sleep_unless_stopped(stop, rng.uniform(0.01, 0.05))
