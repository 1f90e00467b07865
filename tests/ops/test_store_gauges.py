"""Parked messages and quarantined files are read from the stores, so every process agrees."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from events.keys import KeySpace
from ops.group_metrics import GroupCollector


async def test_parked_and_quarantined_gauges_follow_the_stores(
    redis: Redis, keys: KeySpace, tmp_path: Path
) -> None:
    await redis.rpush(keys.parked("940740243"), *[f"m{n}" for n in range(9)])
    await redis.rpush(keys.parked("default"), "m")
    (tmp_path / "whatsapp_1_2.json.0001").write_text("{}")
    (tmp_path / "whatsapp_1_2.json.0001~record.json").write_text("{}")
    collector = GroupCollector(redis, keys, quarantine_dir=tmp_path)
    await collector.collect()
    assert REGISTRY.get_sample_value("reconciler_parked_messages") == 10
    assert REGISTRY.get_sample_value("reconciler_quarantined_files") == 1
    await redis.delete(keys.parked("940740243"))
    await collector.collect()
    assert REGISTRY.get_sample_value("reconciler_parked_messages") == 1
