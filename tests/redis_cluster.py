"""A real three-node Redis Cluster for tests, on free 127.0.0.1 ports.

Three servers with ``--cluster-enabled yes`` (the embedded binary of
:func:`ops.embedded.redis_binary`, Redis 7 or newer, not whatever is first on
PATH) in temporary folders; the slots are split evenly between them and they
are joined with CLUSTER MEET.  Every server is stopped by its pid at the end.
:func:`servers` starts spare ones for a test that changes the cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from ops.embedded import redis_binary
from ops.runtime_env import redis_client

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
    """What ``redis-cli --cluster create`` does: split the 16384 slots, then meet; returns
    once every node says the cluster is ok."""
    step = 16384 // len(ports)
    for i, port in enumerate(ports):
        last = 16383 if i == len(ports) - 1 else (i + 1) * step - 1
        with node(port) as client:
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * step, last)
    for port in ports[1:]:
        with node(port) as client:
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
    for port in ports:
        wait_for(lambda p=port: answers(p, "cluster"), f"cluster state ok on port {port}")


@contextlib.contextmanager
def servers(count: int, folders: Callable[[int], Path], *options: str
            ) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    """``count`` cluster-enabled servers on free ports (not joined yet), by port; each is
    stopped by its pid after (a test may stop one before)."""
    binary = redis_binary().path
    started: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in free_ports(count):
            folder = folders(port)
            started[port] = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                 "--dir", str(folder), "--save", "", "--appendonly", "no",
                 "--logfile", str(folder / "redis.log"), *options],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in started:
            wait_for(lambda p=port: answers(p, "ping"), f"cluster node on port {port}")
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with servers(NODES, lambda port: tmp_path_factory.mktemp(f"cluster-{port}")) as started:
        ports = list(started)
        form_cluster(ports)
        yield ports


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
async def client(cluster: list[int]) -> AsyncIterator[RedisCluster]:
    redis = redis_client(f"redis://127.0.0.1:{cluster[0]}/0", cluster=True)  # the roles' own
    await redis.initialize()
    try:
        yield redis
    finally:
        await redis.aclose()




def keyslot(key: str) -> int:
    return int(key_slot(key.encode()))
