"""A FIFO swapped in for a session file never blocks a reader.

Opening a FIFO for reading waits for a writer; a FIFO renamed over a session
file between the ``lstat`` and the ``open`` used to block the watcher's worker
thread and the consumers' event loop for good.  Here a thread swaps a FIFO and
a file under one name as fast as it can while the live watcher, and the
consumers' reader, look at it; both keep answering and stop when asked, and a
running ``reconciler run`` still exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.stores.session_folder import SessionFiles
from events.contract import SnapshotFinished
from events.keys import KeySpace
from events.loops import HEARTBEATS
from events.session_file_format import Rejected, open_regular, read_session_file
from events.settings import Settings
from events.sources.folder import LOOP_NAME
from tests.consumers.test_conversations import cli_env
from tests.events.test_folder_source import Stream, flush, watching
from tests.support import create_conversations_table

pytestmark = pytest.mark.timeout(240)

NAME = "whatsapp_5511999990000_940740243.json"
SWAPS = 3000
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stream(redis: Any, keys: KeySpace) -> Stream:
    return Stream(redis, keys)


class Swapper(threading.Thread):
    """Renames a FIFO and a regular file over ``folder/NAME`` in turn, ``SWAPS`` times."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.swaps = 0
        self.stop = threading.Event()

    def run(self) -> None:
        fifo, plain = self.folder / ".fifo", self.folder / ".plain"
        while self.swaps < SWAPS and not self.stop.is_set():
            os.mkfifo(fifo)
            os.replace(fifo, self.folder / NAME)
            plain.write_text(json.dumps({"flowId": f"f-{self.swaps}"}))
            os.replace(plain, self.folder / NAME)
            self.swaps += 1


@pytest.fixture
def swapper(settings: Settings) -> Iterator[Swapper]:
    thread = Swapper(settings.sessions_dir)
    yield thread
    thread.stop.set()
    thread.join(30)


def test_opening_a_fifo_returns_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert open_regular(tmp_path / "fifo") == Rejected("not_a_file", "not a regular file")
    assert read_session_file(tmp_path / "fifo", max_bytes=1024) == Rejected(
        "not_a_file", "not a regular file")


async def test_consumers_reads_never_block_on_a_swapped_fifo(
    settings: Settings, swapper: Swapper
) -> None:
    files = SessionFiles(settings)
    swapper.start()
    reads = 0
    while swapper.is_alive():
        files.read(NAME)  # in the event loop, as the handler does
        reads += 1
        await asyncio.sleep(0)
    assert swapper.swaps == SWAPS and reads > 0


async def test_watcher_keeps_going_and_stops_while_a_fifo_is_swapped_in(
    settings: Settings, redis: Any, stream: Stream, swapper: Swapper
) -> None:
    async with watching(settings, redis, stream):
        swapper.start()
        rounds = 0
        while swapper.is_alive():
            await flush(stream, settings.sessions_dir, str(rounds))
            rounds += 1
        await flush(stream, settings.sessions_dir, "x")  # still publishing after the swaps
        assert LOOP_NAME not in HEARTBEATS.stuck()
    assert swapper.swaps == SWAPS  # and `watching` stopped the watcher within its deadline


async def test_sigterm_stops_a_running_reconciler_while_a_fifo_is_swapped_in(
    settings: Settings, redis: Any, pg: Any, swapper: Swapper, tmp_path: Path
) -> None:
    await create_conversations_table(pg, settings.table)
    process = start_run(settings, tmp_path / "run.log")
    stream = Stream(redis, settings.keys)
    try:
        await stream.wait_for(lambda e: isinstance(e, SnapshotFinished), "the watcher's snapshot")
        swapper.start()
        await asyncio.to_thread(swapper.join, 180)
        assert swapper.swaps == SWAPS and process.poll() is None
        await flush(stream, settings.sessions_dir, "after")  # the watcher still publishes
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]


def start_run(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m ops run`` (watcher and consumers) from this checkout, logging to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ops", "run", "--role", "watcher", "--role", "consumers"],
            env=cli_env(settings, RECONCILER_LOG_LEVEL="INFO"), stdout=log,
            stderr=subprocess.STDOUT, cwd=ROOT)
