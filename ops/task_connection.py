"""A database connection that belongs to the task that opened it.

asyncpg serves one operation at a time per connection: two tasks sharing one
fail with ``InterfaceError: another operation is in progress`` -- but only when
their operations happen to overlap, which a busy machine makes likely and an
idle one rare, so the mistake passes every test on a quiet laptop.
:class:`TaskBound` makes it fail every time: any use from a task other than the
one that opened it raises :class:`SharedConnection` at once.  Every connection
the CLI opens (:func:`ops.runtime_env.connect_pg`) is one; a task that needs the
database opens its own, or takes one from a pool (the consumers role does).
"""

from __future__ import annotations

import asyncio
from typing import Any


class SharedConnection(RuntimeError):
    """A database connection was used by a task other than the one that opened it."""


class TaskBound:
    """An asyncpg connection (or anything with methods) usable only from its owner task."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._owner = asyncio.current_task()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._conn, name)
        if callable(value):
            user = asyncio.current_task()
            if user is not self._owner:
                raise SharedConnection(
                    f"connection opened by task {_name(self._owner)} used by task {_name(user)} "
                    f"({name}): give each task its own connection, or a pool")
        return value


def _name(task: asyncio.Task[Any] | None) -> str:
    return repr(task.get_name()) if task is not None else "none (outside a task)"
