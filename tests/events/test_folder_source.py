"""The session-folder watcher against a real folder, real watchfiles and real Redis.

Every test starts the ``watcher`` role, changes files the way a bot does, and
reads what lands on the conversations stream with the codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from events import codec
from events.contract import (
    Event,
    SessionFileRejected,
    SessionFileRemoved,
    SessionFileWritten,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
from events.keys import KeySpace
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sources.folder import run_watcher
from events.sources.folder_scan import FolderView
from tests.conftest import settings_with
from tests.support import eventually, lane_entries

pytestmark = pytest.mark.timeout(180)

KEY = "5511999990000:940740243"
NAME = "whatsapp_5511999990000_940740243.json"


class Stream:
    """Everything published on the conversations stream (both lanes) so far, read incrementally."""

    def __init__(self, redis: Any, keys: KeySpace) -> None:
        self.redis = redis
        self.keys = keys
        self.events: list[Event] = []
        self.after: dict[str, bytes] = {}

    async def read(self) -> list[Event]:
        for _, fields in await lane_entries(self.redis, self.keys, "conversations", self.after):
            self.events.append(codec.decode(fields))
        return self.events

    async def wait_for(self, predicate: Any, message: str, timeout: float = 60) -> Event:
        found: list[Event] = []

        async def check() -> bool:
            found[:] = [e for e in await self.read() if predicate(e)]
            return bool(found)

        await eventually(check, timeout=timeout, message=message)
        return found[-1]

    def of_key(self, key: str, kind: type | tuple[type, ...]) -> list[Any]:
        return [e for e in self.events if e.key == key and isinstance(e, kind)]

    def latest_file_events(self) -> dict[str, Event]:
        latest: dict[str, Event] = {}
        for event in self.events:
            if isinstance(event, SessionFileWritten | SessionFileRemoved | SessionFileRejected):
                latest[event.key] = event
        return latest


@contextlib.asynccontextmanager
async def watching(settings: Settings, redis: Any, stream: Stream) -> AsyncIterator[None]:
    """Run the watcher role until the block ends; wait for its snapshot first."""
    finished = len([e for e in await stream.read() if isinstance(e, SnapshotFinished)])
    stop = asyncio.Event()
    task = asyncio.create_task(run_watcher(settings, redis, stop))
    try:
        await eventually(
            lambda: _count(stream, SnapshotFinished, finished + 1), message="the start-up snapshot")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _count(stream: Stream, kind: type, at_least: int) -> bool:
    return len([e for e in await stream.read() if isinstance(e, kind)]) >= at_least


def write(folder: Path, name: str, flow: str | None, **extra: Any) -> None:
    (folder / name).write_text(json.dumps({"flowId": flow, **extra}))


def is_written(key: str, flow: str | None) -> Any:
    return lambda e: isinstance(e, SessionFileWritten) and e.key == key and e.flow_id == flow


async def flush(stream: Stream, folder: Path, tag: str) -> None:
    """Write a marker file and wait for it: every earlier change has been handled."""
    write(folder, f"whatsapp_1000{tag}_1.json", "marker")
    await stream.wait_for(is_written(f"1000{tag}:1", "marker"), f"marker {tag}")


@pytest.fixture
def stream(redis: Any, keys: KeySpace) -> Stream:
    return Stream(redis, keys)


async def test_create_modify_noop_replace_and_delete(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    folder = settings.sessions_dir
    async with watching(settings, redis, stream):
        write(folder, NAME, "flow-a")
        created = await stream.wait_for(is_written(KEY, "flow-a"), "the created file")
        assert created.name == NAME and created.source == "folder"

        write(folder, NAME, "flow-b")
        await stream.wait_for(is_written(KEY, "flow-b"), "the modified file")

        write(folder, NAME, "flow-b")  # the same bytes again: nothing changed
        await flush(stream, folder, "1")
        assert len(stream.of_key(KEY, SessionFileWritten)) == 2

        tmp = folder / f".{NAME}.tmp"
        tmp.write_text(json.dumps({"flowId": "flow-c"}))
        os.replace(tmp, folder / NAME)
        await stream.wait_for(is_written(KEY, "flow-c"), "the atomically replaced file")

        (folder / NAME).unlink()
        await stream.wait_for(
            lambda e: isinstance(e, SessionFileRemoved) and e.key == KEY, "the removal")
    assert not [e for e in stream.events if isinstance(e, SessionFileRejected)]


async def test_rename_is_a_removal_and_a_write(settings: Settings, redis: Any, stream: Stream) -> None:
    folder = settings.sessions_dir
    write(folder, NAME, "flow-a")
    async with watching(settings, redis, stream):
        os.rename(folder / NAME, folder / "whatsapp_5511888_940740243.json")
        await stream.wait_for(is_written("5511888:940740243", "flow-a"), "the renamed file")
        await stream.wait_for(
            lambda e: isinstance(e, SessionFileRemoved) and e.key == KEY, "the old name removed")

        os.rename(folder / "whatsapp_5511888_940740243.json", folder / "renamed-away.json")
        await stream.wait_for(
            lambda e: isinstance(e, SessionFileRemoved) and e.key == "5511888:940740243",
            "the file renamed to a foreign name removed")
        rejected = await stream.wait_for(
            lambda e: isinstance(e, SessionFileRejected) and e.name == "renamed-away.json",
            "the foreign name reported")
    assert rejected.key == "folder" and rejected.reason == "not_ours"


async def test_ten_thousand_files_written_fast_end_in_their_final_state(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    folder = settings.sessions_dir
    names = {f"55{i:07d}:1": f"whatsapp_55{i:07d}_1.json" for i in range(10_000)}
    async with watching(settings, redis, stream):
        for i, name in enumerate(names.values()):
            write(folder, name, f"flow-{i}")
        for i, name in enumerate(names.values()):
            if i % 7 == 0:
                write(folder, name, f"final-{i}")
            if i % 100 == 1:
                (folder / name).unlink()

        def wrong() -> list[str]:
            latest = stream.latest_file_events()
            return [key for key, name in names.items()
                    if not _matches(latest.get(key), folder / name)]

        async def all_final() -> bool:
            await stream.read()
            return not wrong()

        try:
            await eventually(all_final, timeout=90, interval=0.5, message="every final state")
        except AssertionError as e:
            raise AssertionError(f"{e}: {len(wrong())} wrong, e.g. {wrong()[:5]}") from None


def _matches(event: Event | None, path: Path) -> bool:
    if not path.exists():
        return event is None or isinstance(event, SessionFileRemoved)  # maybe never seen
    flow = json.loads(path.read_text())["flowId"]
    return isinstance(event, SessionFileWritten) and event.flow_id == flow


async def test_changes_made_while_down_are_published_on_start(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    folder = settings.sessions_dir
    write(folder, NAME, "flow-a")
    write(folder, "whatsapp_5511777_1.json", "doomed")
    async with watching(settings, redis, stream):
        pass
    write(folder, NAME, "flow-b")
    write(folder, "whatsapp_5511666_1.json", "new")
    (folder / "whatsapp_5511777_1.json").unlink()

    async with watching(settings, redis, stream):
        starts = [i for i, e in enumerate(stream.events) if isinstance(e, SnapshotStarted)]
        ends = [i for i, e in enumerate(stream.events) if isinstance(e, SnapshotFinished)]
    second = stream.events[starts[1] + 1 : ends[1]]
    assert {(type(e).__name__, e.key, getattr(e, "flow_id", None)) for e in second} == {
        ("SessionFileWritten", KEY, "flow-b"),
        ("SessionFileWritten", "5511666:1", "new"),
        ("SessionFileRemoved", "5511777:1", None),
    }
    assert stream.events[ends[1]].items == 3  # type: ignore[union-attr]


async def test_bad_files_are_reported_never_followed(
    settings: Settings, redis: Any, stream: Stream, tmp_path: Path
) -> None:
    folder = settings.sessions_dir
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"flowId": "secret"}))
    before = _invalid_inputs()
    async with watching(settings, redis, stream):
        (folder / "whatsapp_111_1.json").write_text("{not json")
        with (folder / "whatsapp_222_1.json").open("wb") as big:
            big.truncate(50 * 1024 * 1024)
        (folder / "whatsapp_333_1.json").symlink_to(outside)
        (folder / "../whatsapp_444_1.json").write_text(json.dumps({"flowId": "escaped"}))
        (folder / "whatsapp_5.._1.json").write_text(json.dumps({"flowId": "dots"}))
        (folder / "notes.txt").write_text("one")
        (folder / "notes.txt").write_text("two")
        (folder / "whatsapp_666_1.json.tmp").write_text("{half")

        for key, reason in [("111:1", "invalid_json"), ("222:1", "oversized"),
                            ("333:1", "symlink")]:
            await stream.wait_for(
                lambda e, k=key, r=reason: isinstance(e, SessionFileRejected)
                and e.key == k and e.reason == r, f"{key} rejected as {reason}")
        for name in ("whatsapp_5.._1.json", "notes.txt"):
            await stream.wait_for(
                lambda e, n=name: isinstance(e, SessionFileRejected) and e.name == n
                and e.key == "folder" and e.reason == "not_ours", f"{name} rejected")
        await flush(stream, folder, "2")  # still alive, and everything above handled

    reported = [e for e in stream.events if isinstance(e, SessionFileRejected)]
    assert [e.name for e in reported].count("notes.txt") == 1
    assert not [e for e in stream.events if getattr(e, "flow_id", None) in ("secret", "escaped")]
    assert not [e for e in stream.events if "444" in e.key or "666" in e.key]
    assert _invalid_inputs() - before >= 5


def _invalid_inputs() -> float:
    total = 0.0
    for reason in ("invalid_json", "oversized", "symlink", "not_ours"):
        total += REGISTRY.get_sample_value(
            "reconciler_invalid_inputs_total", {"source": "folder", "reason": reason}) or 0.0
    return total


async def test_folder_deleted_and_created_again(settings: Settings, redis: Any, stream: Stream) -> None:
    folder = settings.sessions_dir
    write(folder, NAME, "flow-a")
    async with watching(settings, redis, stream):
        shutil.rmtree(folder)
        await stream.wait_for(
            lambda e: isinstance(e, SessionFileRemoved) and e.key == KEY, "the removal")
        folder.mkdir()
        write(folder, "whatsapp_5511555_1.json", "after")
        await stream.wait_for(lambda e: isinstance(e, SourceResynced), "the resync marker")
        await stream.wait_for(is_written("5511555:1", "after"), "the file in the new folder")
        write(folder, NAME, "flow-back")  # watched again, not only rescanned
        await stream.wait_for(is_written(KEY, "flow-back"), "a change in the new folder")


async def test_periodic_rescan_publishes_only_differences(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    fast = settings_with(settings, rescan_interval_s=0.2)
    resyncs = REGISTRY.get_sample_value(
        "reconciler_source_resyncs_total", {"source": "folder"}) or 0.0
    write(settings.sessions_dir, NAME, "flow-a")
    async def rescanned_three_times() -> bool:
        after = REGISTRY.get_sample_value("reconciler_source_resyncs_total", {"source": "folder"})
        return after is not None and after - resyncs >= 3

    async with watching(fast, redis, stream):
        await eventually(rescanned_three_times, message="three periodic rescans")
    assert len(stream.of_key(KEY, SessionFileWritten)) == 1


def test_rescan_finds_what_the_watch_missed(tmp_path: Path) -> None:
    """What an inotify overflow would lose, a rescan gives back: writes and removals."""
    view = FolderView(tmp_path, FilePattern("whatsapp_{phone}_{channel}.json"), max_bytes=1024)
    write(tmp_path, "whatsapp_1_1.json", "a")
    write(tmp_path, "whatsapp_2_1.json", "b")
    view.snapshot()
    write(tmp_path, "whatsapp_1_1.json", "a2")
    (tmp_path / "whatsapp_2_1.json").unlink()
    write(tmp_path, "whatsapp_3_1.json", "c")
    found = {(type(e).__name__, e.key) for e in view.rescan()}
    assert found == {("SessionFileWritten", "1:1"), ("SessionFileRemoved", "2:1"),
                     ("SessionFileWritten", "3:1")}
    assert view.rescan() == []
