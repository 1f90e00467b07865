"""Helpers shared by tests: making events, waiting for conditions, child processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from events import codec
from events.contract import ActionRecorded, ReconcileRequested, SessionStarted
from events.ids import new_event_id
from events.keys import KeySpace
from ops.demo.stage import create_table

TESTS = Path(__file__).parent


def request(key: str, scope: str = "conversations") -> ReconcileRequested:
    """A small, valid event for a key (used where the event type does not matter)."""
    return ReconcileRequested(id=new_event_id(), occurred_at=datetime.now(UTC),
                              source="operator", key=key, scope=scope)  # type: ignore[arg-type]


def session_started(name: str) -> SessionStarted:
    return SessionStarted(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                          key=name)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, interval: float = 0.05,
    message: str = "condition",
) -> None:
    """Wait until ``check()`` is true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


async def group_caught_up(redis: Any, stream: str, group: str) -> bool:
    """The group has read and acked every entry of ``stream``.

    Compares the group's last-delivered id with the stream's last id instead
    of reading ``lag``, which Redis 6.2 does not report in XINFO GROUPS.
    """
    try:
        groups = await redis.xinfo_groups(stream)
        last = (await redis.xinfo_stream(stream))["last-generated-id"]
    except Exception:  # the stream does not exist yet
        return False
    info = next((g for g in groups if g["name"] in (group, group.encode())), None)
    return info is not None and info["pending"] == 0 and info["last-delivered-id"] == last


def spawn_python(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a Python child process running ``script`` with this interpreter.

    Its output goes to a temporary file (a pipe nobody reads would fill up and
    block the child); :func:`output_of` reads it.
    """
    log = tempfile.NamedTemporaryFile(prefix="child-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.log_path = log.name  # type: ignore[attr-defined]
    return process


def output_of(process: subprocess.Popen[bytes]) -> str:
    return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


async def create_conversations_table(pg: object, table: str) -> None:
    """The users' table, as a CRM has it (plus a free-text column we do not care about)."""
    await create_table(pg, table)


async def recorded(redis: Redis, keys: KeySpace) -> list[ActionRecorded]:
    """The audit stream's entries (intents and outcomes), in the order written."""
    entries = await redis.xrange(keys.audit_stream)
    return [e for _, fields in entries if isinstance(e := codec.decode(fields), ActionRecorded)]


def one_line_per_action(entries: list[ActionRecorded], *,
                        allow_open: bool = False) -> list[ActionRecorded]:
    """The audit as its readers show it: each action's outcome (``planned`` in a dry run).

    Checks the promise of :mod:`consumers.actions` on the way: every action that
    is not a dry-run plan has exactly one ``intent`` and exactly one outcome,
    the intent first; an intent still without its outcome fails the test
    (``allow_open``: is left out, for a test still waiting for it).
    """
    by_id: dict[str, list[ActionRecorded]] = {}
    for e in entries:
        assert e.action_id, f"an audit entry without an action id: {e.action} {e.target}"
        by_id.setdefault(e.action_id, []).append(e)
    lines = []
    for action_id, steps in by_id.items():
        kinds = [s.outcome for s in steps]
        if allow_open and kinds == ["intent"]:
            continue
        if kinds == ["planned"]:
            lines.append(steps[0])
            continue
        assert len(kinds) == 2 and kinds[0] == "intent" and kinds[1] != "intent", (
            f"action {action_id} ({steps[0].action} {steps[0].target}): {kinds}, "
            "expected one intent, then one outcome")
        lines.append(steps[1])
    return lines



async def lane_entries(redis: Any, keys: Any, name: str, after: dict[str, bytes] | None = None,
                       ) -> list[tuple[bytes, Any]]:
    """Entries of both lanes of stream ``name`` (live and bulk), merged by entry id;
    ``after`` (stream key -> last id read) is advanced to read incrementally."""
    after = {} if after is None else after
    merged: list[tuple[tuple[int, int], bytes, Any]] = []
    for stream in keys.lanes(name):
        start = after.get(stream)
        for entry_id, fields in await redis.xrange(stream, min=b"(" + start if start else "-"):
            ms, _, seq = entry_id.partition(b"-")
            merged.append(((int(ms), int(seq)), entry_id, fields))
            after[stream] = entry_id
    merged.sort(key=lambda row: row[0])
    return [(entry_id, fields) for _, entry_id, fields in merged]
