"""The quarantine against hostile and unlucky folders: links swapped in, a full disk,
huge files, tampered and planted records; modes and owners kept.

The cross-device cases use a second file system the test mounts (a tmpfs), so
the copy path (``EXDEV``) is the one exercised.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from consumers.stores.session_folder import RECORD_SUFFIX, FileState, SessionFiles
from events.settings import Settings
from tests.conftest import settings_with
from tests.consumers.second_fs import second_file_system
from tests.consumers.test_conversations import cli_env
from tests.support import recorded

pytestmark = pytest.mark.timeout(300)

NAME = "whatsapp_5511999990000_940740243.json"
KEY = "5511999990000:940740243"


async def allow(_state: FileState) -> bool:
    return True


def write(path: Path, raw: bytes, mode: int = 0o600) -> str:
    path.write_bytes(raw)
    os.chmod(path, mode)
    return hashlib.sha256(raw).hexdigest()


async def quarantine(files: SessionFiles, sha: str) -> Any:
    return await files.quarantine(NAME, key=KEY, reason="not_bot", cause=None,
                                  expected_fingerprint=sha, guard=allow)


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n != NAME)


@pytest.mark.parametrize("cross_device", [False, True], ids=["same-fs", "exdev"])
async def test_mode_and_owner_are_kept_there_and_back(
    settings: Settings, tmp_path: Path, cross_device: bool
) -> None:
    with second_file_system(tmp_path / "other", size="8m") as other:
        if cross_device:
            settings = settings_with(settings, quarantine_dir=other)
        files = SessionFiles(settings)
        sha = write(settings.sessions_dir / NAME, json.dumps({"flowId": "f"}).encode(), 0o600)
        os.chown(settings.sessions_dir / NAME, 1234, 2345)
        moved = await quarantine(files, sha)
        assert moved.outcome == "done", moved
        kept = os.stat(settings.quarantine_dir / moved.record.name)
        assert (stat.S_IMODE(kept.st_mode), kept.st_uid, kept.st_gid) == (0o600, 1234, 2345)
        files.restore(moved.record.name)
        back = os.stat(settings.sessions_dir / NAME)
        assert (stat.S_IMODE(back.st_mode), back.st_uid, back.st_gid) == (0o600, 1234, 2345)
        assert leftovers(settings.sessions_dir) == [] and os.listdir(settings.quarantine_dir) == []


async def test_a_full_quarantine_leaves_nothing_behind_and_the_original_stays(
    settings: Settings, tmp_path: Path
) -> None:
    with second_file_system(tmp_path / "small", size="64k") as small:
        files = SessionFiles(settings_with(settings, quarantine_dir=small))
        raw = json.dumps({"flowId": "f", "pad": "x" * 200_000}).encode()
        sha = write(settings.sessions_dir / NAME, raw)
        moved = await quarantine(files, sha)
        assert moved.outcome == "failed" and "No space left" in moved.reason, moved
        assert (settings.sessions_dir / NAME).read_bytes() == raw
        assert leftovers(settings.sessions_dir) == [] and os.listdir(small) == []
        assert files.records.entries(dangling=True) == []

        (small / "filler").write_bytes(b"\0" * 60_000)  # now not even a record fits
        with pytest.raises(OSError):
            (small / "more").write_bytes(b"\0" * 8192)
        (small / "more").unlink(missing_ok=True)
        moved = await quarantine(files, sha)
        assert moved.outcome == "failed", moved
        assert (settings.sessions_dir / NAME).read_bytes() == raw
        assert sorted(os.listdir(small)) == ["filler"] and leftovers(settings.sessions_dir) == []


async def test_a_file_over_the_limit_is_never_copied_to_another_file_system(
    settings: Settings, tmp_path: Path
) -> None:
    with second_file_system(tmp_path / "other", size="8m") as other:
        files = SessionFiles(settings_with(settings, quarantine_dir=other, max_file_bytes=1024))
        with (settings.sessions_dir / NAME).open("wb") as big:
            big.truncate(4 * 1024 * 1024)
        current = files.read(NAME)
        assert current is not None and current.fingerprint == "rejected:oversized" and current.movable
        moved = await quarantine(files, current.fingerprint)
        assert moved.outcome == "skipped" and "never copied" in moved.reason
        assert os.listdir(other) == [] and (settings.sessions_dir / NAME).stat().st_size > 1024


async def test_a_symlink_swapped_in_never_brings_an_outside_file_in(
    settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    write(secret, json.dumps({"flowId": "SECRET"}).encode(), 0o600)
    folder = settings.sessions_dir
    with second_file_system(tmp_path / "other", size="16m") as other:
        files = SessionFiles(settings_with(settings, quarantine_dir=other))
        for round_ in range(300):
            sha = write(folder / NAME, json.dumps({"flowId": f"stale-{round_}"}).encode())
            link = folder / ".link"
            link.unlink(missing_ok=True)
            link.symlink_to(secret)
            swap = threading.Thread(target=os.replace, args=(link, folder / NAME))
            swap.start()
            await quarantine(files, sha)
            await asyncio.to_thread(swap.join)
            (folder / NAME).unlink(missing_ok=True)
        for entry in os.listdir(other):
            path = other / entry
            assert not path.is_symlink() and b"SECRET" not in path.read_bytes(), entry
        for record in files.records.entries():
            files.restore(record.name)
            assert b"SECRET" not in (folder / NAME).read_bytes()
            assert stat.S_IMODE((folder / NAME).stat().st_mode) == 0o600
            (folder / NAME).unlink()
    assert leftovers(folder) == []


def test_a_planted_huge_record_is_refused_without_reading_it(settings: Settings) -> None:
    with (settings.quarantine_dir / f"20260101T000000-00000000-{NAME}{RECORD_SUFFIX}").open("wb") as f:
        f.truncate(200 * 1024 * 1024)
    files = SessionFiles(settings)
    tracemalloc.start()
    try:
        assert files.records.entries(dangling=True) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"listing read {peak} bytes"


async def test_a_tampered_record_names_the_path_really_written(
    settings: Settings, redis: Any
) -> None:
    files = SessionFiles(settings)
    sha = write(settings.sessions_dir / NAME, json.dumps({"flowId": "f"}).encode())
    moved = await quarantine(files, sha)
    assert moved.outcome == "done"
    record_path = settings.quarantine_dir / (moved.record.name + RECORD_SUFFIX)
    tampered = {**json.loads(record_path.read_bytes()), "original_path": "/etc/evil.json"}
    record_path.write_text(json.dumps(tampered))
    real = str(settings.sessions_dir.resolve() / NAME)

    listing = json.loads(reconciler(settings, "--json", "quarantine", "list"))
    assert [row["original_path"] for row in listing] == [real]
    out = reconciler(settings, "quarantine", "restore", moved.record.name)
    assert real in out and "/etc/evil.json" not in out
    assert await asyncio.to_thread(lambda: (settings.sessions_dir / NAME).exists())
    assert not await asyncio.to_thread(Path("/etc/evil.json").exists)
    restores = [e for e in await recorded(redis, settings.keys) if e.action == "restore_file"]
    assert restores and all("/etc/evil" not in json.dumps([e.target, e.after]) for e in restores)
    assert any(real == e.target for e in restores)


def reconciler(settings: Settings, *args: str) -> str:
    """``python -m ops ARGS`` from this checkout, as an operator runs it."""
    result = subprocess.run([sys.executable, "-m", "ops", *args], env=cli_env(settings),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_quarantined_file_whose_record_was_lost_is_still_listed_and_restorable(
    settings: Settings
) -> None:
    files = SessionFiles(settings)
    sha = write(settings.sessions_dir / NAME, json.dumps({"flowId": "f"}).encode())
    moved = await quarantine(files, sha)
    assert moved.outcome == "done"
    (settings.quarantine_dir / (moved.record.name + RECORD_SUFFIX)).write_bytes(b"")  # torn
    [entry] = files.records.entries()
    assert (entry.name, entry.key, entry.reason) == (moved.record.name, KEY, "record lost")
    assert entry.quarantined_at.replace(microsecond=0) == moved.record.quarantined_at.replace(
        microsecond=0)
    files.restore(entry.name)
    assert (settings.sessions_dir / NAME).exists() and os.listdir(settings.quarantine_dir) == []


def test_what_a_crash_left_mid_move_is_recovered(settings: Settings) -> None:
    folder, quarantine_dir = settings.sessions_dir, settings.quarantine_dir
    other = "whatsapp_5511888880000_940740243.json"
    (folder / f".{NAME}.reconciler-moving-0123456789ab").write_text('{"flowId": "captured"}')
    (folder / f".{other}.reconciler-moving-0123456789ab").write_text('{"flowId": "older"}')
    (folder / other).write_text('{"flowId": "newer"}')
    (folder / f".{NAME}.reconciler-restoring-0123456789ab").write_text("{}")
    (quarantine_dir / ".x.json.reconciler-partial-0123456789ab").write_text("{")
    (folder / ".editor-swap").write_text("not ours")
    files = SessionFiles(settings)
    assert files.recover() == []  # too fresh: maybe another process's move under way
    lines = files.recover(older_than_s=0)
    assert (folder / NAME).read_text() == '{"flowId": "captured"}'
    assert (folder / other).read_text() == '{"flowId": "newer"}'  # never replaced
    assert sorted(os.listdir(folder)) == sorted(
        [".editor-swap", f".{other}.reconciler-moving-0123456789ab", NAME, other])
    assert os.listdir(quarantine_dir) == [] and len(lines) == 3
