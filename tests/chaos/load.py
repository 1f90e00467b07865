"""The steady load of the fault-injection tests, and the ledger that checks it.

Three writers run side by side, each the way its real counterpart writes:

* a CRM changing conversations (rows first, then the bot's file; a clean
  finish removes the file first) with, now and then, one of the incidents the
  reconciler exists for: a chat closed with its file left behind, a flow
  cleared while the file still names it, a chat handed to an agent;
* bot runtimes rewriting their session files (temporary file, then atomic
  replace), every content unique so a quarantined file tells whose it was;
* producers pushing messages (each with a unique id) to live sessions, which
  a fake gateway drains, and to sessions that are gone.

The ledger remembers every file content per bot run, and when each run was
ended, so a quarantine of a file that was still a live run's is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from events.gateway import GatewaySessions
from events.keys import KeySpace, conversation_key
from events.session_file_format import FilePattern
from events.settings import Settings
from tests.chaos.harness import retrying

CHANNEL = "109876543210"
FLOWS = ("bienvenida-v3", "cobranza-v1", "encuesta-nps")


def phone(n: int) -> str:
    return f"52155{n:08d}"


@dataclass
class Run:
    """One bot run of a conversation: the contents written for it, and when it ended."""

    key: str
    flow: str
    started_at: datetime | None = None
    contents: set[str] = field(default_factory=set)
    flow_clears: int = 0
    """How often the CRM cleared ``bot_flow_id`` during the run (each may be backfilled once)."""
    ended_at: float | None = None
    """Set just before the write that ends it (close, hand-over): a move after it is fair."""


@dataclass
class Ledger:
    """What the load did, to compare with what the stores show at the end."""

    runs: dict[str, Run] = field(default_factory=dict)
    """content sha256 -> the run it was written for."""
    started: dict[tuple[str, datetime], Run] = field(default_factory=dict)
    """(conversation key, bot_started_at) -> the run."""
    pushed: dict[str, set[str]] = field(default_factory=dict)
    """session -> message ids pushed."""
    uncertain: set[str] = field(default_factory=set)
    """Ids whose push raised: they may or may not be in Redis."""
    orphan_contents: set[str] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=dict)

    def count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1


class SessionFolder:
    """Writes session files like a bot runtime: temporary file, then atomic replace.

    A content names its phone and a serial number, so it is unique in the run.
    """

    def __init__(self, settings: Settings) -> None:
        self.folder = settings.sessions_dir
        self.pattern = FilePattern(settings.file_pattern)
        self.serial = 0

    def path(self, number: int) -> Path:
        return self.folder / self.pattern.name_for(phone(number), CHANNEL)

    def write(self, number: int, flow: str) -> str:
        self.serial += 1
        content = {"flowId": flow, "step": f"s{self.serial}", "vars": {"phone": phone(number)}}
        body = json.dumps(content).encode()
        path = self.path(number)
        temporary = self.folder / f".{path.name}.{self.serial}.tmp"
        temporary.write_bytes(body)
        os.replace(temporary, path)
        return hashlib.sha256(body).hexdigest()


class Crm:
    """Changes conversations of a fixed set of phone numbers, knowing what it wrote."""

    def __init__(self, pg: Any, settings: Settings, ledger: Ledger, rng: random.Random,
                 numbers: range) -> None:
        self.pg = pg
        self.table = settings.table
        self.files = SessionFolder(settings)
        self.ledger = ledger
        self.rng = rng
        self.numbers = numbers
        self.state: dict[int, str] = {}
        """number -> "none" | "bot" | "closed" | "agent", as this CRM last wrote it."""
        self.current: dict[int, Run] = {}

    def _write_file(self, number: int, run: Run) -> None:
        sha = self.files.write(number, run.flow)
        run.contents.add(sha)
        self.ledger.runs[sha] = run

    async def _set(self, number: int, sql: str, *args: Any) -> None:
        await self.pg.execute(f"UPDATE {self.table} SET {sql} WHERE phone = $1 AND phone_number_id = $2",
                              phone(number), CHANNEL, *args)

    async def start_bot(self, number: int) -> None:
        """Row first, then the file: the file of a live run is never there before its row."""
        if self.files.path(number).exists():
            return  # a stale file still waits for its quarantine
        now = datetime.now(UTC)
        run = Run(conversation_key(phone(number), CHANNEL), self.rng.choice(FLOWS), now)
        self.ledger.started[(run.key, now)] = run
        if self.state.get(number, "none") == "none":
            await self.pg.execute(
                f"INSERT INTO {self.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
                " bot_started_at) VALUES ($1, $2, 'active', 'bot', $3, $4)",
                phone(number), CHANNEL, run.flow, now)
        else:
            await self._set(number, "status = 'active', assigned_to = 'bot', bot_flow_id = $3,"
                            " bot_started_at = $4", run.flow, now)
        self.state[number], self.current[number] = "bot", run
        self._write_file(number, run)
        self.ledger.count("start_bot")

    async def end_run(self, number: int) -> None:
        run = self.current.pop(number)
        run.ended_at = time.time()
        choice = self.rng.random()
        if choice < 0.4:  # clean finish: file first, then the row
            self.files.path(number).unlink(missing_ok=True)
            await self._set(number, "status = 'closed', assigned_to = NULL, bot_flow_id = NULL,"
                            " bot_started_at = NULL")
            self.state[number] = "closed"
            self.ledger.count("finish_clean")
        elif choice < 0.7:  # incident 1: closed, the file stays behind
            await self._set(number, "status = 'closed', bot_flow_id = NULL")
            self.state[number] = "closed"
            self.ledger.count("close_leaving_file")
        else:  # handed to an agent, the file stays behind
            await self._set(number, "assigned_to = 'agent-7', bot_flow_id = NULL,"
                            " bot_started_at = NULL")
            self.state[number] = "agent"
            self.ledger.count("hand_to_agent")

    async def step(self) -> None:
        number = self.rng.choice(self.numbers)
        if self.state.get(number, "none") != "bot":
            await self.start_bot(number)
            return
        choice = self.rng.random()
        if choice < 0.5:
            self._write_file(number, self.current[number])
            self.ledger.count("rewrite_file")
        elif choice < 0.65:  # incident 2: the flow cleared while the file names it
            self.current[number].flow_clears += 1
            await self._set(number, "bot_flow_id = NULL")
            self.ledger.count("clear_flow")
        else:
            await self.end_run(number)


class FakeGateway:
    """Holds live sessions (leases kept by :class:`GatewaySessions`) and drains their queues.

    Delivering is ``BLMOVE queue -> delivered list``: a message is in exactly one
    Redis list at every moment, so a reply lost to a fault loses nothing.
    """

    def __init__(self, redis: Redis, keys: KeySpace, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.sessions = GatewaySessions(redis, keys, gateway="chaos-gateway", ttl_s=ttl_s)
        self.stop = asyncio.Event()

    def delivered_key(self, session: str) -> str:
        return f"{self.keys.prefix}chaos:delivered:{session}"

    async def serve(self, session: str) -> None:
        async with self.sessions.keep_alive(session):
            queue, delivered = self.keys.queue(session), self.delivered_key(session)
            while not self.stop.is_set():
                with contextlib.suppress(Exception):
                    await self.redis.blmove(queue, delivered, 0.2, "LEFT", "RIGHT")


async def push_messages(redis: Redis, keys: KeySpace, sessions: list[str], ledger: Ledger,
                        rng: random.Random, gate: asyncio.Lock, stop: asyncio.Event) -> None:
    serial = 0
    while not stop.is_set():
        session = rng.choice(sessions)
        batch = [f"{session}-{serial + n}" for n in range(rng.randint(1, 5))]
        serial += len(batch)
        ledger.pushed.setdefault(session, set()).update(batch)
        body = [json.dumps({"id": i, "text": "hola"}) for i in batch]
        async with gate:
            try:
                await retrying(lambda s=session, b=body: redis.rpush(keys.queue(s), *b),  # type: ignore[misc]
                               what="push")
            except Exception:
                ledger.uncertain.update(batch)
                raise
        await asyncio.sleep(rng.uniform(0.005, 0.03))


async def run_crm(crm: Crm, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await crm.step()
        await asyncio.sleep(crm.rng.uniform(0.005, 0.03))


def burst(settings: Settings, numbers: range, ledger: Ledger, *, orphans: range) -> None:
    """Thousands of files at once: bot files of rows already committed, plus a few orphans."""
    folder = SessionFolder(settings)
    for number in numbers:
        run = Run(conversation_key(phone(number), CHANNEL), FLOWS[number % len(FLOWS)])
        sha = folder.write(number, run.flow)
        run.contents.add(sha)
        ledger.runs[sha] = run
    for number in orphans:
        ledger.orphan_contents.add(folder.write(number, FLOWS[0]))
