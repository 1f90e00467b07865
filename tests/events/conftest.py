"""Fixtures the events tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from events.settings import Settings
from ops import capture_install
from tests.support import create_conversations_table


@pytest.fixture
async def table(pg: Any, settings: Settings) -> AsyncIterator[str]:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    yield settings.table
    await capture_install.uninstall(pg, settings, force=True)
    await pg.execute(f'DROP TABLE IF EXISTS "{settings.table}"')
