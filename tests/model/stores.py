"""The real system under the model test: stores, the running roles, and what a user sees.

:class:`Running` owns one asyncio loop in a background thread (hypothesis
drives a state machine synchronously), and per example a fresh table with
the capture trigger, fresh folders and a fresh key prefix, with the relay,
watcher, sessions, consumers and timers roles running in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis

from events import codec
from events.contract import SnapshotFinished, SourceResynced
from events.gateway import GatewaySessions
from events.settings import Settings
from ops import capture_install
from ops.roles import serve_roles
from tests.support import create_conversations_table, eventually, group_caught_up, lane_entries

T = TypeVar("T")
ROLES = ("relay", "watcher", "sessions", "consumers", "timers")
CHANNEL = "940740243"
GROUPS = ("conversations", "sessions")


class Loop:
    """An asyncio loop in a thread, to run coroutines from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="model-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Running:
    """One example's stores and roles."""

    def __init__(self, redis_url: str, database_url: str, partitions: int = 1) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="model-"))
        (self.root / "sessions").mkdir()
        (self.root / "quarantine").mkdir()
        prefix = f"test:model:{uuid.uuid4().hex[:10]}:"
        self.settings = Settings(
            redis_url=redis_url, database_url=database_url, sessions_dir=self.root / "sessions",
            quarantine_dir=self.root / "quarantine", data_dir=self.root / "data",
            key_prefix=prefix, queue_pattern=f"{prefix}queue:{{session}}",
            table=f"crm_model_{uuid.uuid4().hex[:8]}", bot_timeout_s=3600.0,
            flow_timeouts_s={"short": 1.0}, grace_s=0.5, session_ttl_s=300.0,
            rescan_interval_s=0.0, claim_min_idle_s=5.0, concurrency=4,
            stream_partitions=partitions)
        self.keys = self.settings.keys
        self.stop = asyncio.Event()
        self.redis: Any = None
        self.pg: Any = None
        self.roles: asyncio.Task[None] | None = None
        self.gateway: GatewaySessions | None = None

    async def start(self) -> None:
        self.redis = Redis.from_url(self.settings.redis_url or "", decode_responses=False)
        self.pg = await asyncpg.connect(self.settings.database_url)
        await create_conversations_table(self.pg, self.settings.table)
        await capture_install.install(self.pg, self.settings)
        self.gateway = GatewaySessions(self.redis, self.keys, ttl_s=300)
        self.roles = asyncio.create_task(serve_roles(self.settings, self.redis, ROLES, self.stop))
        await eventually(self._ready, timeout=60, message="the roles to be listening")

    async def _ready(self) -> bool:
        seen = {(type(e).__name__, e.source) for e in await self._markers()}
        groups = [await self._group(name, stream) for name in GROUPS
                  for stream in self.keys.live_streams(name)]
        return ({("SnapshotFinished", "folder"), ("SourceResynced", "postgres")} <= seen
                and any(isinstance(e, SourceResynced) for e in await self._markers("sessions"))
                and all(g is not None for g in groups))

    async def _markers(self, stream: str = "conversations") -> list[Any]:
        out = []  # both lanes: snapshots and resync markers are on the bulk one
        for _, fields in await lane_entries(self.redis, self.keys, stream):
            event = codec.decode(fields)
            if isinstance(event, SnapshotFinished | SourceResynced):
                out.append(event)
        return out

    async def _group(self, name: str, stream: str) -> dict[Any, Any] | None:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:  # the stream does not exist yet
            return None
        return next((g for g in groups if g["name"] in (name, name.encode())), None)

    async def quiet(self) -> bool:
        """No entry waits for a group, none is being handled, no deadline is due."""
        for name in GROUPS:
            for stream in self.keys.lanes(name):
                if not await group_caught_up(self.redis, stream, name):
                    return False
        return not any([await self.redis.zrangebyscore(self.keys.deadlines(p), "-inf",
                                                       time.time() * 1000)
                        for p in range(self.keys.partitions)])

    async def close(self) -> None:
        self.stop.set()
        try:
            if self.roles is not None:
                await asyncio.wait_for(self.roles, 60)
        finally:
            await capture_install.uninstall(self.pg, self.settings, force=True)
            await self.pg.execute(f'DROP TABLE IF EXISTS "{self.settings.table}"')
            await self.pg.close()
            async for key in self.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000):
                await self.redis.unlink(key)
            await self.redis.aclose()
            shutil.rmtree(self.root, ignore_errors=True)

    # -- what a user sees ---------------------------------------------------

    def file_name(self, phone: str) -> str:
        return f"whatsapp_{phone}_{CHANNEL}.json"

    def write_file(self, phone: str, flow: str | None) -> None:
        """Atomically, as bots do: a temporary name, then a rename."""
        path = self.settings.sessions_dir / self.file_name(phone)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps({"flowId": flow, "step": 1}))
        os.replace(tmp, path)

    def read_file(self, phone: str) -> tuple[bool, str | None]:
        path = self.settings.sessions_dir / self.file_name(phone)
        try:
            return True, json.loads(path.read_text()).get("flowId")
        except FileNotFoundError:
            return False, None

    def quarantined(self, phone: str) -> int:
        name = self.file_name(phone)
        return sum(1 for p in self.settings.quarantine_dir.iterdir()
                   if p.name.endswith(name) and not p.name.endswith("~record.json"))

    async def row(self, phone: str) -> dict[str, Any] | None:
        record = await self.pg.fetchrow(
            f"SELECT status, assigned_to, bot_flow_id, bot_started_at FROM {self.settings.table} "
            "WHERE phone = $1", phone)
        return dict(record) if record is not None else None

    async def session(self, name: str) -> tuple[bool, list[str], list[str]]:
        live = bool(await self.redis.exists(self.keys.lease(name)))
        queue = [m.decode() for m in await self.redis.lrange(self.keys.queue(name), 0, -1)]
        parked = [m.decode() for m in await self.redis.lrange(self.keys.parked(name), 0, -1)]
        return live, queue, parked
