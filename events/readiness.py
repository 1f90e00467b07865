"""Readiness: what must hold before this process should receive traffic.

The health endpoint (:mod:`ops.health`) serves ``/readyz`` from this
registry.  It lives at the bottom layer so every part can plug in without
importing ``ops``:

* a **check** is ``async () -> str | None``: ``None`` when ready, otherwise
  the reason it is not (raising counts as not ready, with the error);
  ``READINESS.add("postgres", check)``;
* a **flag** is for work that must finish once, such as a source's first
  snapshot: a role runs its source inside ``READINESS.flagged("source:files",
  "initial scan")`` and the source calls ``READINESS.ready("source:files")``
  once it is caught up (the relay after its first drain of the outbox, the
  folder watcher after its first snapshot, the sessions source after its
  first listing).  When the role ends the flag goes with it.

Every check runs with a timeout, so one hung store never hangs the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

Check = Callable[[], Awaitable[str | None]]

CHECK_TIMEOUT_S = 2.0
"""How long one check may take before it counts as not ready."""


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ok: bool
    detail: str = ""


class Readiness:
    """Named readiness checks and flags of one process."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._flags: dict[str, str | None] = {}
        """Flag name -> why it is not ready yet, or ``None`` once it is."""

    def add(self, name: str, check: Check) -> None:
        """Add (or replace) a check run on every probe."""
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)
        self._flags.pop(name, None)

    def waiting(self, name: str, reason: str) -> None:
        """Mark ``name`` as not ready yet, with why (e.g. "initial scan")."""
        self._flags[name] = reason

    def ready(self, name: str) -> None:
        """Mark a flag ready; a flag nobody raised stays absent (a source run outside a role)."""
        if name in self._flags:
            self._flags[name] = None

    @contextlib.contextmanager
    def flagged(self, name: str, reason: str) -> Iterator[None]:
        """Not ready (``reason``) until :meth:`ready` is called; the flag ends with the block."""
        self.waiting(name, reason)
        try:
            yield
        finally:
            self._flags.pop(name, None)

    def names(self) -> list[str]:
        return sorted({*self._checks, *self._flags})

    async def run(self, timeout_s: float = CHECK_TIMEOUT_S) -> list[Result]:
        """Run every check concurrently; flags are reported as they stand."""
        checks = dict(self._checks)
        outcomes = await asyncio.gather(*(_one(c, timeout_s) for c in checks.values()))
        results = [Result(n, detail is None, detail or "")
                   for n, detail in zip(checks, outcomes, strict=True)]
        results += [Result(n, why is None, why or "") for n, why in self._flags.items()
                    if n not in checks]
        return sorted(results, key=lambda r: r.name)


async def _one(check: Check, timeout_s: float) -> str | None:
    try:
        return await asyncio.wait_for(check(), timeout=timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except Exception as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


READINESS = Readiness()
"""The process-wide registry read by ``/readyz``."""
