"""PostgreSQL roles of a test's own: unique names, dropped with everything they own.

Roles are cluster-wide, so each carries this run's id and a counter, and
:meth:`Roles.drop` removes what they own in the test database before the
roles themselves.  The test server accepts local connections without a
password, so :meth:`Roles.url` is the test database URL with the user swapped.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


class Roles:
    def __init__(self, pg: Any, database_url: str) -> None:
        self._pg = pg
        self._url = database_url
        self._tag = uuid.uuid4().hex[:8]
        self.created: list[str] = []

    async def create(self, what: str, *grants: str) -> str:
        """A LOGIN role named after ``what``; each grant has ``{role}`` filled in."""
        name = f"t_{self._tag}_{what}"
        await self._pg.execute(f'CREATE ROLE "{name}" LOGIN')
        self.created.append(name)
        for grant in grants:
            await self._pg.execute(grant.format(role=f'"{name}"'))
        return name

    def url(self, role: str) -> str:
        parts = urlsplit(self._url)
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f"{role}@{host}"))

    async def connect(self, role: str) -> Any:
        return await asyncpg.connect(self.url(role))

    async def drop(self) -> None:
        for name in reversed(self.created):
            await self._pg.execute(f'REASSIGN OWNED BY "{name}" TO CURRENT_USER')
            await self._pg.execute(f'DROP OWNED BY "{name}"')
            await self._pg.execute(f'DROP ROLE "{name}"')


@pytest.fixture
async def roles(pg: Any, database_url: str) -> AsyncIterator[Roles]:
    made = Roles(pg, database_url)
    try:
        yield made
    finally:
        await made.drop()
