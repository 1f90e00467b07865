"""Named, guarded background loops, visible to the health endpoint.

Every long-running loop in this project runs under :func:`guarded`: when its
body raises, the failure is logged and counted, the loop backs off
(``RESTART_BACKOFF_S``, doubling up to ``RESTART_BACKOFF_MAX_S``) and runs the
body again -- which re-connects and re-lists, since every body starts with its
snapshot.  A body that returns normally has finished its job.  Cancellation is
never swallowed.

The log says each failure once: an unexpected error with its traceback, an
error this project raises on purpose (:class:`events.errors.ReconcilerError`,
whose message says what is wrong and what to do) without one, and the same
error again (a condition that lasts until an operator acts, such as a stream
out of entry ids or a missing grant) as one short line per restart, with the
count, at most every ``RESTART_BACKOFF_MAX_S``.

Loops report progress with :meth:`Heartbeats.beat`; ``/healthz`` reports a
loop as stuck when it has not beaten within its ``stall_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from events import metrics
from events.errors import ReconcilerError

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0


@dataclass
class _Loop:
    stall_after_s: float
    last_beat: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_error: str = ""


class Heartbeats:
    """Last-progress times of the loops of one process."""

    def __init__(self) -> None:
        self._loops: dict[str, _Loop] = {}

    def register(self, name: str, stall_after_s: float) -> None:
        self._loops[name] = _Loop(stall_after_s=stall_after_s)

    def beat(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.last_beat = time.monotonic()
        metrics.LOOP_LAST_TICK.labels(name).set(time.time())

    def failed(self, name: str, error: BaseException) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.failures += 1
            loop.last_error = f"{type(error).__name__}: {error}"
        metrics.LOOP_FAILURES.labels(name).inc()

    def unregister(self, name: str) -> None:
        self._loops.pop(name, None)

    def stuck(self) -> dict[str, float]:
        """Loops that have not beaten in time, with seconds since their last beat."""
        now = time.monotonic()
        return {
            name: now - loop.last_beat
            for name, loop in self._loops.items()
            if now - loop.last_beat > loop.stall_after_s
        }

    def report(self) -> dict[str, dict[str, object]]:
        now = time.monotonic()
        return {
            name: {
                "seconds_since_progress": round(now - loop.last_beat, 3),
                "failures": loop.failures,
                "last_error": loop.last_error,
            }
            for name, loop in self._loops.items()
        }


HEARTBEATS = Heartbeats()
"""The process-wide registry read by the health endpoint."""


async def guarded(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    stall_after_s: float = 60.0,
    heartbeats: Heartbeats = HEARTBEATS,
    backoff_s: float = RESTART_BACKOFF_S,
    backoff_max_s: float = RESTART_BACKOFF_MAX_S,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ``body`` until it returns, restarting it with backoff when it fails.

    Once ``stop`` is set a failure ends the loop instead of restarting it: a
    store that goes away during a shutdown must not keep the process alive.
    """
    heartbeats.register(name, stall_after_s)
    backoff, stop = Backoff(backoff_s, backoff_max_s), stop or asyncio.Event()
    same_again: tuple[str, int] = ("", 0)
    try:
        while True:
            started = time.monotonic()
            try:
                await body()
                return
            except Exception as error:  # a cancellation (BaseException) is never caught
                heartbeats.failed(name, error)
                if stop.is_set():
                    log.warning("loop %s failed while stopping: %s", name, error, extra={"loop": name})
                    return
                if time.monotonic() - started > backoff_max_s:
                    backoff.reset()  # it ran fine for a while: start the backoff over
                delay = backoff.next()
                same_again = _log_failure(name, error, delay, same_again)
            if await sleep_unless_stopped(stop, delay):
                return
            heartbeats.beat(name)  # restarting counts as progress for the health check
    finally:
        heartbeats.unregister(name)


def _log_failure(name: str, error: Exception, delay: float,
                 previous: tuple[str, int]) -> tuple[str, int]:
    """Log one failure of loop ``name`` (see the module docstring); the error as said, and
    how many times in a row it was said."""
    said = f"{type(error).__name__}: {error}"
    times = previous[1] + 1 if said == previous[0] else 1
    extra = {"loop": name, "failures_in_a_row": times}
    if times > 1:
        log.warning("loop %s still failing (%d times in a row): %s; restarting in %.1fs",
                    name, times, said, delay, extra=extra)
    elif isinstance(error, ReconcilerError):
        log.error("loop %s failed: %s; restarting in %.1fs", name, said, delay, extra=extra)
    else:
        log.error("loop %s failed; restarting in %.1fs", name, delay, exc_info=True, extra=extra)
    return said, times


def backoff_delay(first_s: float, max_s: float, attempt: int) -> float:
    """The wait before retry number ``attempt`` (0-based): ``first_s`` doubled per attempt, capped."""
    return min(first_s * 2.0 ** min(attempt, 64), max_s)


class Backoff:
    """Exponential backoff for a loop that reconnects: :meth:`next` waits longer each
    time, :meth:`reset` starts over once the loop has run well for a while."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._attempt = 0

    def next(self) -> float:
        delay = backoff_delay(self.first_s, self.max_s, self._attempt)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first; ``True`` if stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


def spawn(
    name: str, body: Callable[[], Awaitable[None]], *, stop: asyncio.Event | None = None,
    **options: float,
) -> asyncio.Task[None]:
    """Start ``body`` as a named, guarded task."""
    return asyncio.create_task(
        guarded(name, body, stop=stop, **options), name=name)  # type: ignore[arg-type]
