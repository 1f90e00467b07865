"""Junk on the streams, into running consumers: dead-lettered with a reason, and work goes on.

Two ways junk arrives.  Entries that are not events at all (random fields,
random bytes, a known type with a bad payload, a huge payload) must each land
in the dead-letter stream with the reason and the error, while a good event
behind them is still handled.  Events that decode but carry hostile keys or
names (``../``, separators, NUL, unicode) go through the real
``conversations`` handler: they are refused as permanent errors and
dead-lettered, and no file outside the configured folders is read or moved.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from consumers.consumers_role import run_consumers
from consumers.deadletter import list_dead_letters
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events import codec
from events.contract import TAGS, SessionFileRemoved, SessionFileWritten
from events.ids import new_event_id
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from tests.support import create_conversations_table, eventually, request

pytestmark = pytest.mark.timeout(180)

SEED = 20240611


def junk_entries(rng: random.Random, count: int) -> list[dict[bytes, bytes]]:
    """Stream entries that are not events: each one broken in a different way."""
    tags = sorted(TAGS)
    fixed: list[dict[bytes, bytes]] = [
        {b"x": b"y"},
        {b"v": b"2", b"type": b"session.started", b"data": b"{}"},
        {b"v": b"1", b"type": b"no.such.type", b"data": b"{}"},
        {b"v": b"1", b"type": b"session.started", b"data": b"\xff\x00garbage"},
        {b"v": b"1", b"type": b"session.started", b"data": b"[" * 300_000},
        {b"v": b"1", b"type": b"session.started", b"data": b'{"a":' * 5000 + b"1" + b"}" * 5000},
        {b"v": b"1", b"type": b"conversation.closed", b"data": json.dumps(
            {"type": "session.started", "id": "1", "occurred_at": "2024-01-01T00:00:00Z",
             "source": "gateway", "key": "s"}).encode()},
        {b"v": b"1", b"type": b"session.started", b"data": json.dumps(
            {"type": "session.started", "id": "", "occurred_at": "yesterday", "source": "x",
             "key": "s"}).encode()},
        {b"dl_reason": b"forged", b"v": b"1"},
    ]
    while len(fixed) < count:
        entry = {rng.randbytes(rng.randint(1, 6)): rng.randbytes(rng.randint(0, 40))
                 for _ in range(rng.randint(1, 4))}
        if rng.random() < 0.5:
            entry.update({b"v": b"1", b"type": rng.choice(tags).encode(),
                          b"data": rng.randbytes(rng.randint(0, 80))})
        fixed.append(entry)
    return fixed


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_malformed_entries_are_dead_lettered_with_a_reason_and_reading_goes_on(
    redis: Redis, keys: KeySpace
) -> None:
    handled: list[str] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        handled.extend(d.event.id for d in deliveries)

    junk = junk_entries(random.Random(SEED), 60)
    before = metric("reconciler_dead_letters_total", group="fuzz", reason="malformed")
    consumer = GroupConsumer(redis, GroupOptions(
        group="fuzz", streams=(keys.conversations_stream,), deadletter_stream=keys.deadletter_stream,
        read_count=7, concurrency=2, shutdown_deadline_s=5.0), handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for entry in junk:
            await redis.xadd(keys.conversations_stream, entry)
        good = request("5215550101:940740243")
        await Publisher(redis, keys).publish(good)
        await eventually(lambda: _true(good.id in handled), message="the good event to be handled")
        assert not task.done(), "the consumer is still running"
        await eventually(lambda: _len_is(list_dead_letters(redis, keys.deadletter_stream,
                                                           count=1000), len(junk)),
                         message="every junk entry dead-lettered")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    letters = await list_dead_letters(redis, keys.deadletter_stream, count=1000)
    assert handled == [good.id]
    assert all(letter.reason == "malformed" and letter.error for letter in letters)
    assert all(letter.origin_stream == keys.conversations_stream for letter in letters)
    assert metric("reconciler_dead_letters_total", group="fuzz", reason="malformed") - before == len(junk)
    pending = await redis.xpending(keys.conversations_stream, "fuzz")
    assert pending["pending"] == 0, "every entry was acked"


HOSTILE_KEYS = ["../../outside:940740243", "a/b:940740243", "5215550101:../x", "x\x00y:1",
                ":940740243", "5215550101:", "no-colon", "\u0661\u0662:\u0663", "\U0001f4f1:1",
                "5215550101:940740243/..", "." * 200 + ":1"]


async def test_hostile_keys_and_names_are_refused_and_nothing_outside_is_touched(
    redis: Redis, pg: Any, settings: Settings, tmp_path: Path
) -> None:
    await create_conversations_table(pg, settings.table)
    sentinel = tmp_path / "whatsapp_outside_940740243.json"
    sentinel.write_text(json.dumps({"flowId": "sentinel"}))
    os.utime(sentinel, (1_000_000, 1_000_000))
    (tmp_path / "outside").mkdir()
    now = datetime.now(UTC)
    events: list[SessionFileWritten | SessionFileRemoved] = []
    for key in HOSTILE_KEYS:
        envelope: dict[str, Any] = {"occurred_at": now, "source": "folder", "key": key}
        events.append(SessionFileWritten(id=new_event_id(), **envelope, name="../" + sentinel.name,
                                         flow_id="f", content_sha256="0" * 64, size_bytes=1))
        events.append(SessionFileRemoved(id=new_event_id(), **envelope, name=sentinel.name))
    before = metric("reconciler_dead_letters_total", group="conversations", reason="permanent")
    stop = asyncio.Event()
    role = asyncio.create_task(run_consumers(settings, redis, stop))
    try:
        publisher = Publisher(redis, settings.keys)
        for event in events:
            await redis.xadd(settings.keys.conversations_stream, codec.encode(event))
        good_key = "5215550102:940740243"
        good = settings.sessions_dir / "whatsapp_5215550102_940740243.json"
        good.write_text(json.dumps({"flowId": "f"}))
        os.utime(good, (1_000_000, 1_000_000))  # left behind long ago, past the settle window
        await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status) "
                         "VALUES ('5215550102', '940740243', 'closed')")
        await publisher.publish(request(good_key))
        await eventually(lambda: _true(not good.exists()), timeout=60,
                         message="the good key's stale file to be quarantined")
        assert not role.done(), "the consumers role is still running"
    finally:
        stop.set()
        await asyncio.wait_for(role, 30)
    assert sentinel.read_text() == json.dumps({"flowId": "sentinel"})
    assert os.lstat(sentinel).st_mtime == 1_000_000
    assert list((tmp_path / "outside").iterdir()) == []
    assert any(p.name.endswith(good.name) for p in settings.quarantine_dir.iterdir())
    letters = await list_dead_letters(redis, settings.keys.deadletter_stream, count=1000)
    refused = {letter.fields.get("key") for letter in letters if letter.reason == "permanent"}
    # Any phone and channel the database can hold make a conversation key: one that maps to
    # no safe file name still gets the database's actions (and no file is ever touched for
    # it, the asserts above). What can be no row's key at all is refused.
    not_keys = {k for k in HOSTILE_KEYS if not all(k.partition(":")[::2]) or "\x00" in k}
    assert refused, "hostile keys were refused"
    assert all(letter.error for letter in letters)
    assert metric("reconciler_dead_letters_total", group="conversations",
                  reason="permanent") - before == len([x for x in letters if x.reason == "permanent"])
    assert refused == not_keys, refused ^ not_keys


async def _true(value: bool) -> bool:
    return value


async def _len_is(items: Any, n: int) -> bool:
    return len(await items) == n
