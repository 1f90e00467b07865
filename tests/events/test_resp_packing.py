"""Commands packed by hiredis: the bytes redis-py's own packer sends, and real round trips."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from events.resp_packing import HiredisPacking, pack_with_hiredis
from ops.runtime_env import redis_client

COMMANDS = [
    ("XADD", "test:{events}:conversations", "*", "v", b"1", "type", b"conversation.closed",
     "key", b"5511999990001@940740243", "data", '{"nombre":"José 🙂"}'.encode()),
    ("EVALSHA", "0" * 40, 2, "k:one", "k:two", 1_000_000, b"\x00\xff binary"),
    ("CLIENT SETNAME", "reconciler-relay"),
    (b"CONFIG GET", b"notify-keyspace-events"),
    ("ZADD", "test:deadlines", 1764583200123, "session:abc", 0.1, "session:b", 1e20, "c"),
    ("SET", "", ""),
]


def python_packer() -> Connection:
    return Connection()


def hiredis_packer() -> Connection:
    return pack_with_hiredis(Redis()).connection_pool.make_connection()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_same_bytes_as_redis_pys_own_packer(command: tuple[object, ...]) -> None:
    packed = b"".join(hiredis_packer().pack_command(*command))
    assert packed == b"".join(python_packer().pack_command(*command))


def test_a_pipeline_packs_the_same_bytes() -> None:
    assert (b"".join(hiredis_packer().pack_commands(COMMANDS))
            == b"".join(python_packer().pack_commands(COMMANDS)))


def test_an_argument_that_cannot_be_sent_is_a_data_error() -> None:
    with pytest.raises(DataError):
        hiredis_packer().pack_command("SET", "k", None)


async def test_the_roles_client_packs_with_hiredis_and_round_trips(redis_url: str,
                                                                   key_prefix: str) -> None:
    client = redis_client(redis_url)
    stream, data = f"{key_prefix}{{events}}:conversations", '{"nombre":"José 🙂"}'.encode()
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(1000):
            pipe.xadd(stream, {"key": f"5511{n:09d}@940740243", "data": data, "n": n})
        pipe.zadd(f"{key_prefix}deadlines", {"session:a": 0.1, "session:b": 1764583200.123})
        await pipe.execute()
        connection = await client.connection_pool.get_connection()
        assert isinstance(connection, HiredisPacking)
        await client.connection_pool.release(connection)
        entries = await client.xrange(stream)
        assert [fields[b"n"] for _, fields in entries] == [str(n).encode() for n in range(1000)]
        assert {fields[b"data"] for _, fields in entries} == {data}
        assert await client.zscore(f"{key_prefix}deadlines", "session:a") == 0.1
        assert await client.zscore(f"{key_prefix}deadlines", "session:b") == 1764583200.123
    finally:
        await client.delete(stream, f"{key_prefix}deadlines")
        await client.aclose()
