"""The metrics and health endpoint, and the group gauges, against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer, running_groups
from events import metrics
from events.keys import KeySpace
from events.loops import Heartbeats
from events.publisher import Publisher
from events.readiness import Readiness
from events.settings import Settings
from ops.group_metrics import GroupCollector
from ops.health import HealthServer, add_standard_checks, operations
from tests.support import eventually, request


async def get(address: str, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One HTTP request; returns status, content type and body."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServer, Heartbeats, Readiness]]:
    heartbeats, readiness = Heartbeats(), Readiness()
    server = HealthServer("127.0.0.1:0", heartbeats=heartbeats, readiness=readiness)
    await server.start()
    try:
        yield server, heartbeats, readiness
    finally:
        await server.close()


async def test_metrics_are_exposed_in_prometheus_format(
    served: tuple[HealthServer, Heartbeats, Readiness]
) -> None:
    server, _, _ = served
    metrics.ACTIONS.labels("quarantine_file", "done").inc()
    status, content_type, body = await get(f"127.0.0.1:{server.port}", "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'reconciler_actions_total{action="quarantine_file",outcome="done"}' in text
    assert "# TYPE reconciler_group_lag_entries gauge" in text


async def test_healthz_turns_503_when_a_loop_is_stuck_and_names_it(
    served: tuple[HealthServer, Heartbeats, Readiness]
) -> None:
    server, heartbeats, _ = served
    address = f"127.0.0.1:{server.port}"
    heartbeats.register("source:files", stall_after_s=0.2)
    status, content_type, body = await get(address, "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"
    last: tuple[int, bytes] = (0, b"")

    async def stuck() -> bool:
        nonlocal last
        status, _, body = await get(address, "/healthz")
        last = (status, body)
        return status == 503

    await eventually(stuck, message="/healthz to report the loop that stopped beating")
    assert "source:files" in json.loads(last[1])["stuck"]
    heartbeats.beat("source:files")
    assert (await get(address, "/healthz"))[0] == 200


async def test_unknown_paths_and_methods_and_garbage(
    served: tuple[HealthServer, Heartbeats, Readiness]
) -> None:
    server, _, _ = served
    address = f"127.0.0.1:{server.port}"
    assert (await get(address, "/nope"))[0] == 404
    assert (await get(address, "/metrics", method="POST"))[0] == 405
    status, _, body = await get(address, "/healthz", method="HEAD")
    assert (status, body) == (200, b"")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"hello\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_readyz_reports_each_check_and_flag(
    served: tuple[HealthServer, Heartbeats, Readiness], redis: Redis, keys: KeySpace,
    database_url: str,
) -> None:
    server, _, readiness = served
    address = f"127.0.0.1:{server.port}"
    add_standard_checks(readiness, redis=redis, keys=keys, database_url=database_url)
    status, _, body = await get(address, "/readyz")
    assert status == 200, body
    assert set(json.loads(body)["checks"]) == {"redis", "postgres", "consumer_groups", "stream_ids"}

    readiness.waiting("source:files", "initial scan")
    status, _, body = await get(address, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["source:files"] == {"ok": False, "detail": "initial scan"}
    readiness.ready("source:files")

    add_standard_checks(readiness, redis=redis, keys=keys,
                        database_url="postgresql://app:hunter2@127.0.0.1:1/nothing")
    status, _, body = await get(address, "/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["postgres"]["ok"] is False and checks["redis"]["ok"] is True
    assert "hunter2" not in body.decode()


async def idle(key: str, deliveries: Sequence[Delivery]) -> None:
    await asyncio.sleep(0)


async def test_readyz_waits_for_the_groups_this_process_runs(
    served: tuple[HealthServer, Heartbeats, Readiness], redis: Redis, keys: KeySpace
) -> None:
    server, _, readiness = served
    address = f"127.0.0.1:{server.port}"
    add_standard_checks(readiness, redis=redis, keys=keys, database_url=None,
                        groups=lambda: {"health-test": (keys.sessions_stream,)})
    status, _, body = await get(address, "/readyz")
    assert status == 503
    assert "health-test" in json.loads(body)["checks"]["consumer_groups"]["detail"]
    await redis.xgroup_create(keys.sessions_stream, "health-test", id="0", mkstream=True)
    assert (await get(address, "/readyz"))[0] == 200


async def test_a_running_consumer_is_known_to_the_groups_check(redis: Redis, keys: KeySpace) -> None:
    consumer = GroupConsumer(redis, GroupOptions(
        group="health-test", streams=(keys.conversations_stream,),
        deadletter_stream=keys.deadletter_stream, concurrency=1), idle)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async def known() -> bool:
            return "health-test" in running_groups()

        await eventually(known, message="the consumer's group in running_groups()")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert "health-test" not in running_groups()


async def test_group_gauges_come_from_redis(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, "gauges", id="0", mkstream=True)
    await Publisher(redis, keys).publish_many([request(f"k{n}") for n in range(5)])
    await redis.xreadgroup("gauges", "someone", {stream: ">"}, count=2)
    await redis.xadd(keys.deadletter_stream, {"dl_reason": "permanent"})
    collector = GroupCollector(redis, keys)

    async def pending_has_aged() -> bool:  # the idle time is counted in whole milliseconds
        return all(s.oldest_pending_age_s > 0 for s in await collector.collect()
                   if s.group == "gauges")

    await eventually(pending_has_aged, message="the pending entry to be a millisecond old")
    states = await collector.collect()

    (state,) = [s for s in states if s.group == "gauges"]
    assert (state.lag, state.pending, state.consumers) == (3, 2, 1)
    assert 0 < state.oldest_pending_age_s < 60
    labels = ("conversations", "gauges")
    assert metrics.GROUP_LAG.labels(*labels)._value.get() == 3
    assert metrics.GROUP_PENDING.labels(*labels)._value.get() == 2
    assert metrics.DEADLETTER_ENTRIES._value.get() == 1

    assert "gauges" in _exposed_groups()
    await redis.xgroup_destroy(stream, "gauges")
    await collector.collect()
    assert "gauges" not in _exposed_groups()


def _exposed_groups() -> set[str]:
    return {s.labels.get("group", "") for m in metrics.GROUP_LAG.collect() for s in m.samples}


async def test_lag_is_counted_when_redis_cannot_tell(redis: Redis, keys: KeySpace) -> None:
    stream = keys.sessions_stream
    ids = [await redis.xadd(stream, {"n": str(n)}) for n in range(4)]
    await redis.xgroup_create(stream, "counted", id="0")
    await redis.xdel(stream, ids[1])  # a deletion makes XINFO's lag unknown
    (state,) = [s for s in await GroupCollector(redis, keys).collect() if s.group == "counted"]
    assert state.lag == 3


async def test_run_roles_serves_the_endpoint(settings: Settings) -> None:
    """The wiring users get from ``reconciler run``: endpoint and collector start with the process."""
    from ops.roles import run_roles

    stop = asyncio.Event()
    settings = replace(settings, metrics_addr=f"127.0.0.1:{free_port()}")
    task = asyncio.create_task(run_roles(settings, [], stop))
    try:
        async def serving() -> bool:
            try:
                return (await get(settings.metrics_addr, "/healthz"))[0] == 200
            except OSError:
                return False

        await eventually(serving, message="the endpoint of run_roles")
        status, _, body = await get(settings.metrics_addr, "/metrics")
        assert status == 200 and b"reconciler_deadletter_entries" in body
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_operations_refuses_a_busy_address_naming_the_setting(
    settings: Settings, redis: Redis
) -> None:
    from ops.config import ConfigError

    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConfigError, match="RECONCILER_METRICS_ADDR"):
            async with operations(replace(settings, metrics_addr=f"127.0.0.1:{port}"), redis):
                pass
    finally:
        holder.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

