"""Real atomic writers against a live watcher: their temporary files are never reported.

Each writer here is the library itself (Node's write-file-atomic, Python's
atomicwrites and tempfile idioms), paused while its temporary file exists until
the watcher has certainly looked at the folder (a marker file written after the
temporary one has been published), then allowed to finish its rename.  Names
that are really foreign are still reported, once each.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from atomicwrites import atomic_write
from prometheus_client import REGISTRY

from events.contract import SessionFileRejected
from events.keys import KeySpace
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sources.folder_scan import is_temporary
from tests.events.test_folder_source import Stream, flush, is_written, watching

pytestmark = pytest.mark.timeout(180)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
NAME = "whatsapp_5511999990000_940740243.json"
KEY = "5511999990000:940740243"

# Writes argv[1] once per line read on stdin; prints the temporary file's name and waits
# for "go" before write-file-atomic renames it over the real name.
NODE_WRITER = r"""
const writeFileAtomic = require('write-file-atomic');
const readline = require('readline');
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
(async () => {
  for (let round = 0; ; round++) {
    const order = await lines.next();
    if (order.done || order.value === 'end') break;
    await writeFileAtomic(process.argv[1], JSON.stringify({ flowId: `node-${round}` }), {
      tmpfileCreated: async (tmp) => {
        console.log(tmp);
        const go = await lines.next();
        if (go.done || go.value !== 'go') throw new Error('expected go');
      },
    });
    console.log('written');
  }
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture
def stream(redis: Any, keys: KeySpace) -> Stream:
    return Stream(redis, keys)


def _not_ours() -> float:
    return REGISTRY.get_sample_value(
        "reconciler_invalid_inputs_total", {"source": "folder", "reason": "not_ours"}) or 0.0


def _rejections(stream: Stream) -> list[SessionFileRejected]:
    return [e for e in stream.events if isinstance(e, SessionFileRejected)]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.usefixtures("node_example")
async def test_write_file_atomic_temporaries_are_not_reported(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    assert (EXAMPLE / "node_modules" / "write-file-atomic").is_dir(), (
        f"no npm packages in {EXAMPLE}")
    folder = settings.sessions_dir
    before = _not_ours()
    async with watching(settings, redis, stream):
        writer = await asyncio.create_subprocess_exec(
            str(NODE), "-e", NODE_WRITER, str(folder / NAME), cwd=EXAMPLE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert writer.stdin is not None and writer.stdout is not None
        temporaries = []
        for round_ in range(20):
            writer.stdin.write(b"write\n")
            tmp = Path((await writer.stdout.readline()).decode().strip())
            assert await asyncio.to_thread(tmp.exists), f"write-file-atomic's temporary file {tmp}"
            temporaries.append(tmp.name)
            await flush(stream, folder, f"{round_}")  # the watcher has seen the folder with it
            writer.stdin.write(b"go\n")
            assert (await writer.stdout.readline()).strip() == b"written"
            await stream.wait_for(is_written(KEY, f"node-{round_}"), f"node write {round_}")
        writer.stdin.write(b"end\n")
        writer.stdin.close()
        assert await asyncio.wait_for(writer.wait(), 60) == 0
    assert all(t.startswith(NAME + ".") and t[len(NAME) + 1:].isdigit() for t in temporaries)
    assert _rejections(stream) == []
    assert _not_ours() == before


async def test_python_atomic_writers_temporaries_are_not_reported(
    settings: Settings, redis: Any, stream: Stream
) -> None:
    folder = settings.sessions_dir
    target = folder / NAME
    before = _not_ours()

    def body(flow: str) -> bytes:
        return json.dumps({"flowId": flow}).encode()

    async with watching(settings, redis, stream):
        # atomicwrites: tempfile.mkstemp(prefix="tmp") in the target's folder
        with atomic_write(str(target), mode="wb", overwrite=True) as handle:
            handle.write(body("atomicwrites"))
            await flush(stream, folder, "1")
        # tempfile idioms: NamedTemporaryFile(dir=...), mkstemp(prefix=name[.]), suffix .tmp
        idioms = [{}, {"prefix": NAME}, {"prefix": NAME + "."}, {"prefix": "." + NAME},
                  {"prefix": NAME, "suffix": ".tmp"}]
        for i, options in enumerate(idioms):
            fd, tmp = tempfile.mkstemp(dir=folder, **options)
            os.write(fd, body(f"idiom-{i}"))
            os.close(fd)
            await flush(stream, folder, f"{i + 2}")
            os.replace(tmp, target)
            await stream.wait_for(is_written(KEY, f"idiom-{i}"), f"idiom {options}")
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as handle:
            handle.write(body("named"))
        await flush(stream, folder, "9")
        os.replace(handle.name, target)
        await stream.wait_for(is_written(KEY, "named"), "NamedTemporaryFile")

        for foreign in ("notes.txt", "report.2024", NAME + ".bak", "whatsapp_1.json.123"):
            (folder / foreign).write_text("{}")
        await flush(stream, folder, "10")
    assert sorted(e.name for e in _rejections(stream)) == sorted(
        ["notes.txt", "report.2024", NAME + ".bak", "whatsapp_1.json.123"])
    assert _not_ours() - before == 4


def test_temporary_names_of_atomic_writers() -> None:
    pattern = FilePattern("whatsapp_{phone}_{channel}.json")
    for name in (f"{NAME}.123456789", f"{NAME}.0", f"{NAME}.tmp-1733000000123abcdef",
                 f"{NAME}k3_x9qza", f"{NAME}.k3_x9qza", "tmpab12cd34", f".{NAME}.swp",
                 f"{NAME}.tmp", f"{NAME}~"):
        assert is_temporary(name, pattern), name
    for name in (NAME, "notes.txt", "report.2024", f"{NAME}.bak", "whatsapp_1.json.123",
                 f"{NAME}.12345678901234567890123", "whatsapp_1_2.json.json"):
        assert not is_temporary(name, pattern), name
