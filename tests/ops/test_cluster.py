"""The hash tags, proven on a real three-node Redis Cluster.

The test starts three servers with ``--cluster-enabled yes`` (the embedded
binary of :func:`ops.embedded.redis_binary`, Redis 7 or newer, not whatever is
first on PATH) on free 127.0.0.1 ports in temporary folders, splits the slots
between them and joins them with CLUSTER MEET, and runs
the real code with ``redis.asyncio.cluster.RedisCluster``:
publishing, a consumer group reading several streams in one XREADGROUP, a
dead letter written and acked in one MULTI, the parked-queue Lua scripts
(queue and parked list in one slot) and the timer script (deadlines and
streams in one slot).  A key outside its slot would fail with CROSSSLOT.
Every server is stopped by its pid at the end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
import redis as sync_redis
from redis.asyncio.cluster import RedisCluster

from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.keys import KeySpace
from events.publisher import Publisher
from ops.embedded import redis_binary
from ops.group_metrics import GroupCollector
from tests.support import eventually, request

NODES = 3
CLUSTER_READY_TIMEOUT_S = 60.0


def free_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def node(port: int) -> sync_redis.Redis:
    return sync_redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)


def answers(port: int, check: str) -> bool:
    try:
        with node(port) as client:
            if check == "ping":
                return bool(client.ping())
            return bool(client.execute_command("CLUSTER INFO").get("cluster_state") == "ok")
    except sync_redis.RedisError:
        return False


def form_cluster(ports: list[int]) -> None:
    """What ``redis-cli --cluster create`` does: split the 16384 slots, then meet."""
    step = 16384 // len(ports)
    for i, port in enumerate(ports):
        last = 16383 if i == len(ports) - 1 else (i + 1) * step - 1
        with node(port) as client:
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * step, last)
    for port in ports[1:]:
        with node(port) as client:
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    binary = redis_binary().path
    ports = free_ports(NODES)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            folder = tmp_path_factory.mktemp(f"cluster-{port}")
            servers.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                 "--dir", str(folder), "--save", "", "--appendonly", "no",
                 "--logfile", str(folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            wait_for(lambda p=port: answers(p, "ping"), f"cluster node on port {port}")
        form_cluster(ports)
        for port in ports:
            wait_for(lambda p=port: answers(p, "cluster"), f"cluster state ok on port {port}")
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
async def client(cluster: list[int]) -> AsyncIterator[RedisCluster]:
    redis = RedisCluster(host="127.0.0.1", port=cluster[0], decode_responses=False)
    await redis.initialize()
    try:
        yield redis
    finally:
        await redis.aclose()


KEYS = KeySpace(prefix="cluster:", queue_pattern="queue:{session}")


def _keyslot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


async def test_the_streams_share_a_slot_and_other_keys_are_spread() -> None:
    tagged = {_keyslot(KEYS.stream(n)) for n in ("conversations", "sessions", "audit", "deadletter")}
    tagged |= {_keyslot(KEYS.deadlines), _keyslot(KEYS.deadline_payloads)}
    assert len(tagged) == 1
    assert _keyslot(KEYS.queue("940740243")) == _keyslot(KEYS.parked("940740243"))
    assert _keyslot(KEYS.queue("940740243")) == _keyslot(KEYS.lease("940740243"))
    assert _keyslot(KEYS.queue("940740243")) == _keyslot(KEYS.parked_meta("940740243"))
    assert len({_keyslot(KEYS.queue(f"s{n}")) for n in range(20)}) > 1


async def test_a_consumer_group_runs_on_the_cluster(client: RedisCluster) -> None:
    handled: set[str] = set()

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if key == "poison":
            raise PermanentError("this key cannot be handled")
        handled.add(key)

    options = GroupOptions(group="cluster-test", streams=(KEYS.conversations_stream, KEYS.sessions_stream),
                           deadletter_stream=KEYS.deadletter_stream, concurrency=4,
                           claim_interval_s=0.5, shutdown_deadline_s=5)
    consumer = GroupConsumer(client, options, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        keys = [f"k{n}" for n in range(50)]
        await Publisher(client, KEYS).publish_many([request(k) for k in [*keys, "poison"]])
        await Publisher(client, KEYS).publish_many([request("s1", scope="sessions")])

        async def all_done() -> bool:
            return handled >= {*keys, "s1"} and await client.xlen(KEYS.deadletter_stream) == 1

        await eventually(all_done, timeout=60, message="every key handled and one dead letter")
        letter = (await client.xrange(KEYS.deadletter_stream))[0][1]
        assert letter[b"key"] == b"poison" and letter[b"dl_reason"] == b"permanent"

        async def nothing_pending() -> bool:
            summary = await client.xpending(KEYS.conversations_stream, "cluster-test")
            return int(summary["pending"]) == 0

        await eventually(nothing_pending, timeout=30, message="every entry acked")
        states = {s.stream: s for s in await GroupCollector(client, KEYS).collect()}
        assert states["conversations"].lag == 0 and states["conversations"].pending == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.mark.skipif(importlib.util.find_spec("consumers.stores.parked_queues") is None,
                    reason="the parked-queue store is not in this tree")
async def test_parking_and_restoring_a_queue_on_the_cluster(client: RedisCluster) -> None:
    from consumers.stores.parked_queues import ParkedQueues

    queue = KEYS.queue("940740243")
    await client.delete(queue, KEYS.parked("940740243"), KEYS.parked_meta("940740243"))
    await client.rpush(queue, b"m1", b"m2", b"m3")
    parked = ParkedQueues(client, KEYS)
    assert await parked.park("940740243", now=time.time(), cause="cluster-test") == 3
    assert await client.llen(queue) == 0
    assert await parked.parked("940740243") == [b"m1", b"m2", b"m3"]
    await client.rpush(queue, b"m4")
    assert await parked.restore("940740243") == 3
    assert await client.lrange(queue, 0, -1) == [b"m1", b"m2", b"m3", b"m4"]


async def test_the_gateway_start_handshake_runs_in_one_slot_on_the_cluster(
    client: RedisCluster,
) -> None:
    from consumers.stores.parked_queues import ParkedQueues
    from events.gateway import GatewaySessions

    session = "returning"
    queue = KEYS.queue(session)
    await client.delete(queue, KEYS.parked(session), KEYS.parked_meta(session), KEYS.lease(session))
    await client.rpush(queue, b"p1", b"p2")
    assert await ParkedQueues(client, KEYS).park(session, now=time.time(), cause="cluster") == 2
    await client.rpush(queue, b"newer")
    started = await GatewaySessions(client, KEYS, ttl_s=30).start(session)  # type: ignore[arg-type]
    assert started.restored == 2
    assert await client.lrange(queue, 0, -1) == [b"p1", b"p2", b"newer"]
    assert await client.exists(KEYS.lease(session)) == 1
    await client.rpush(queue, b"while-live")
    assert await ParkedQueues(client, KEYS).park(session, now=time.time(), cause="late") == 0


@pytest.mark.skipif(importlib.util.find_spec("events.timer_wheel") is None,
                    reason="the timer wheel is not in this tree")
async def test_a_due_timer_fires_into_its_stream_on_the_cluster(client: RedisCluster) -> None:
    from events.timer_wheel import TimerWheel

    wheel = TimerWheel(client, KEYS)
    before = await client.xlen(KEYS.conversations_stream)
    event = request("timer-key")
    await wheel.schedule("cluster-test:timer-key", time.time() - 1, event)
    fired = await wheel.fire_due()
    assert fired.fired == 1
    last = (await client.xrevrange(KEYS.conversations_stream, count=1))[0][1]
    assert last[b"key"] == b"timer-key"
    assert await client.xlen(KEYS.conversations_stream) == before + 1
    assert (await wheel.fire_due()).fired == 0  # exactly once

