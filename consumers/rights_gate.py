"""Holding a group's work while its role lacks a right it needs.

The consumers check their rights before they start (:mod:`events.grants`).  A
grant revoked (or a Redis ACL rule removed) while they run shows up as a
handler error on every entry instead; counted as an ordinary retry, each entry
would reach ``max_deliveries`` and be dead-lettered although nothing is wrong
with it.  So a handler's :class:`~consumers.errors.RightsMissing` (or Redis's
``NoPermissionError``) closes the gate: the group reads nothing new, reclaims
nothing and retries nothing, the entries it holds stay pending, and
:func:`events.grants.wait_until_granted` logs the missing ``GRANT`` once and
keeps ``/readyz`` failing on ``grants:<role>`` while it rechecks.  When the
rights are back the gate opens and the held entries are retried, once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import NoPermissionError

from consumers.errors import RightsMissing
from events.grants import wait_until_granted

log = logging.getLogger(__name__)

BEAT_S = 5.0

Probe = Callable[[], Awaitable[list[str]]]
"""What the role lacks, one ``GRANT`` (or ACL rule) per line; empty when nothing."""


def is_refusal(error: BaseException) -> bool:
    """The store refused the role, not the entry."""
    return isinstance(error, (RightsMissing, NoPermissionError))


class RightsGate:
    """Open while the role has its rights; closed from a refusal until the probe finds none missing."""

    def __init__(self, probe: Probe, *, role: str, stop: asyncio.Event) -> None:
        self._probe, self._role, self._stop = probe, role, stop
        self._waiting: asyncio.Task[bool] | None = None

    @property
    def closed(self) -> bool:
        return self._waiting is not None and not self._waiting.done()

    def refused(self, error: BaseException) -> None:
        """A store refused the role: close the gate until the rights are back."""
        if self.closed:
            return
        log.warning("%s: a store refused this role (%s); holding work until the rights "
                    "are back", self._role, error, extra={"role": self._role})
        self._waiting = asyncio.create_task(
            wait_until_granted(self._probe, role=self._role, stop=self._stop),
            name=f"rights:{self._role}")

    async def wait(self, beat: Callable[[], None] = lambda: None) -> None:
        """Return at once while open; else when the rights are back (or the process stops),
        calling ``beat`` meanwhile: a loop held here is waiting, not stuck."""
        while self._waiting is not None and not self._waiting.done():
            beat()
            await asyncio.wait([self._waiting], timeout=BEAT_S)
