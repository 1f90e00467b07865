"""A CLI database connection is its task's alone: a second task fails at once, not by chance."""

from __future__ import annotations

import asyncio

import pytest

from events.settings import Settings
from ops.runtime_env import connect_pg
from ops.task_connection import SharedConnection


async def test_a_second_task_using_the_connection_fails_every_time(settings: Settings) -> None:
    assert settings.database_url is not None
    pg = await connect_pg(settings.database_url)
    try:
        assert await pg.fetchval("SELECT 1") == 1

        async def other_task() -> object:
            return await pg.fetchval("SELECT 2")  # never overlapping: still refused

        with pytest.raises(SharedConnection, match="give each task its own connection"):
            await asyncio.create_task(other_task(), name="traffic")
        assert await pg.fetchval("SELECT 3") == 3  # the owner goes on
    finally:
        await pg.close()
