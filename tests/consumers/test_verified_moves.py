"""Verified moves: a writer racing the quarantine never has its new file moved or lost.

A real writer thread replaces the session file atomically (temporary file +
``rename``, as write-file-atomic and Python's atomic writers do) at random
moments while :meth:`SessionFiles.quarantine` judges, guards (a real
PostgreSQL round trip), moves and verifies; in some rounds the writer is let
in exactly inside the guard's wait, the window the verification closes.  Both
with the quarantine on the same file system and on a second one (a tmpfs the
test mounts, so the ``EXDEV`` copy path is raced too).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consumers.stores.session_folder import FileState, Moved, SessionFiles
from events.settings import Settings
from tests.conftest import settings_with
from tests.consumers.second_fs import second_file_system

pytestmark = pytest.mark.timeout(600)

NAME = "whatsapp_5511999990000_940740243.json"
KEY = "5511999990000:940740243"
ROUNDS = 1000


def body(flow: str) -> bytes:
    return json.dumps({"flowId": flow}).encode()


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def replace_atomically(folder: Path, raw: bytes) -> None:
    tmp = folder / f".{NAME}.{threading.get_ident()}.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / NAME)


class Writer(threading.Thread):
    """Writes ``new-{round}`` once per round, after a random pause of up to ``jitter_s``."""

    def __init__(self, folder: Path, jitter_s: float) -> None:
        super().__init__(daemon=True)
        self.folder, self.jitter_s = folder, jitter_s
        self.go = threading.Semaphore(0)
        self.wrote = threading.Semaphore(0)
        self.round = -1
        self.closing = False

    def run(self) -> None:
        rng = random.Random(self.round)
        while True:
            self.go.acquire()
            if self.closing:
                return
            pause = rng.uniform(0, self.jitter_s)
            if pause:
                threading.Event().wait(pause)  # the writer's own timing, not the test's
            replace_atomically(self.folder, body(f"new-{self.round}"))
            self.wrote.release()

    def write_now(self, round_: int) -> None:
        self.round = round_
        self.go.release()


async def race(settings: Settings, pg: Any) -> Counter[str]:
    files = SessionFiles(settings)
    folder = settings.sessions_dir
    writer = Writer(folder, jitter_s=0.002)
    writer.start()
    outcomes: Counter[str] = Counter()
    try:
        for round_ in range(ROUNDS):
            stale = body(f"stale-{round_}")
            replace_atomically(folder, stale)
            inside_guard = round_ % 4 == 0

            async def guard(_state: FileState, round_: int = round_, inside: bool = inside_guard,
                            calls: list[int] = []) -> bool:  # noqa: B006
                calls.append(1)
                if inside and len(calls) == 1:  # let the writer in while the "database" answers
                    writer.write_now(round_)
                    await asyncio.to_thread(writer.wrote.acquire)
                    writer.wrote.release()
                return bool(await pg.fetchval("SELECT true"))

            if not inside_guard:
                writer.write_now(round_)
            moved = await files.quarantine(NAME, key=KEY, reason="not_bot", cause=None,
                                           expected_fingerprint=sha(stale), guard=guard)
            await asyncio.to_thread(writer.wrote.acquire)
            outcomes[moved.outcome] += 1
            check_round(settings, files, round_, moved, stale, inside_guard)
    finally:
        writer.closing = True
        writer.go.release()
        writer.join(10)
    return outcomes


def check_round(settings: Settings, files: SessionFiles, round_: int, moved: Moved,
                stale: bytes, inside_guard: bool) -> None:
    live = (settings.sessions_dir / NAME).read_bytes()
    assert live == body(f"new-{round_}"), f"round {round_}: the writer's file is not live ({moved})"
    assert moved.outcome != "failed", moved
    if inside_guard:
        assert moved.outcome in ("skipped", "reverted"), f"round {round_}: {moved}"
    for record in files.records.entries(dangling=True):
        content = (settings.quarantine_dir / record.name).read_bytes()
        assert not content.startswith(b'{"flowId": "new'), f"round {round_}: new content quarantined"
        assert sha(content) == record.sha256 or record.superseded, record
    assert sorted(os.listdir(settings.sessions_dir)) == [NAME], "nothing left behind"


async def test_a_writer_racing_quarantines_never_has_its_file_moved(
    settings: Settings, pg: Any
) -> None:
    outcomes = await race(settings, pg)
    assert sum(outcomes.values()) == ROUNDS and outcomes["failed"] == 0
    assert outcomes["reverted"] + outcomes["skipped"] >= ROUNDS // 4, outcomes
    print("same file system:", dict(outcomes))


async def test_a_writer_racing_quarantines_on_another_file_system(
    settings: Settings, pg: Any, tmp_path: Path
) -> None:
    with second_file_system(tmp_path / "other", size="64m") as other:
        outcomes = await race(settings_with(settings, quarantine_dir=other), pg)
    assert sum(outcomes.values()) == ROUNDS and outcomes["failed"] == 0
    print("across file systems:", dict(outcomes))


@pytest.fixture(params=[False, True], ids=["same-fs", "exdev"])
def where(request: Any, settings: Settings, tmp_path: Path) -> Any:
    """The test's settings, with the quarantine on the same or on a second file system."""
    if not request.param:
        yield settings
        return
    with second_file_system(tmp_path / "other", size="8m") as other:
        yield settings_with(settings, quarantine_dir=other)


async def test_a_move_the_guard_no_longer_allows_is_put_back(where: Settings) -> None:
    settings = where
    files = SessionFiles(settings)
    replace_atomically(settings.sessions_dir, body("stale"))
    answers = iter([True, False])  # the row became a bot run while the file moved

    async def guard(_state: FileState) -> bool:
        return next(answers)

    moved = await files.quarantine(NAME, key=KEY, reason="not_bot", cause=None,
                                   expected_fingerprint=sha(body("stale")), guard=guard)
    assert (moved.outcome, moved.record) == ("reverted", None)
    assert "guard" in moved.reason
    assert (settings.sessions_dir / NAME).read_bytes() == body("stale")
    assert os.listdir(settings.quarantine_dir) == []


async def test_a_guard_whose_connection_is_cut_after_the_move_puts_the_file_back(
        where: Settings, pg: Any) -> None:
    """The guard's second question is a real query on a connection the database has just
    terminated (as a failover or an idle-session killer would): the move cannot be
    verified, so the file goes back under its name and no record is left for it."""
    settings = where
    files = SessionFiles(settings)
    replace_atomically(settings.sessions_dir, body("stale"))
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url)
    calls = []

    async def guard(_state: FileState) -> bool:
        calls.append(1)
        if len(calls) == 2:  # after the move
            await pg.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        return bool(await conn.fetchval("SELECT true"))

    try:
        moved = await files.quarantine(NAME, key=KEY, reason="not_bot", cause=None,
                                       expected_fingerprint=sha(body("stale")), guard=guard,
                                       action_id="a1")
    finally:
        await conn.close()
    assert len(calls) == 2
    assert (moved.outcome, moved.record) == ("failed", None), moved
    assert "guard could not be asked" in moved.reason and "put back" in moved.reason
    assert (settings.sessions_dir / NAME).read_bytes() == body("stale")
    assert os.listdir(settings.quarantine_dir) == [] and files.records.moved_by("a1") is None


async def test_a_newer_file_is_never_overwritten_by_a_put_back(where: Settings) -> None:
    settings = where
    files = SessionFiles(settings)
    replace_atomically(settings.sessions_dir, body("stale"))
    calls = []

    async def guard(_state: FileState) -> bool:
        calls.append(1)
        if len(calls) == 2:  # after the move: a bot wrote a new file, and the row is a bot's
            replace_atomically(settings.sessions_dir, body("newer"))
            return False
        return True

    moved = await files.quarantine(NAME, key=KEY, reason="not_bot", cause=None,
                                   expected_fingerprint=sha(body("stale")), guard=guard,
                                   action_id="a1")
    assert moved.outcome == "reverted" and moved.record is not None and moved.record.superseded
    assert (settings.sessions_dir / NAME).read_bytes() == body("newer")
    kept = files.records.read(moved.record.name)
    assert kept.superseded and kept.action_id == "a1"
    assert (settings.quarantine_dir / kept.name).read_bytes() == body("stale")
    assert files.records.moved_by("a1") is None  # the action did not stand
    assert sorted(os.listdir(settings.sessions_dir)) == [NAME]


async def test_folders_given_as_relative_paths_keep_a_superseded_entry(
    settings: Settings, monkeypatch: Any
) -> None:
    monkeypatch.chdir(settings.sessions_dir.parent)
    await test_a_newer_file_is_never_overwritten_by_a_put_back(settings_with(
        settings, sessions_dir=Path(settings.sessions_dir.name),
        quarantine_dir=Path(settings.quarantine_dir.name)))
