"""The session folder and its quarantine: read a session file, move it aside, bring it back.

Nothing here unlinks a session file: a stale one is *moved* into the
quarantine folder under a unique name, with a small JSON record beside it
(``{name}~record.json``: where from, why, which event caused it, when).  Only
:meth:`SessionFiles.purge` deletes, and only entries older than the
retention setting.

Safety, since names come from events and folders from settings:

* every path is built by :func:`events.sessionfiles.path_inside` from a name
  that matches the file pattern (or a quarantine name we made), so it never
  leaves the configured folders;
* symlinks and other non-regular files are never moved;
* a move never overwrites (hard link then unlink; copy with ``O_EXCL`` across
  file systems), so two consumers racing on one file move it once;
* just before a move the file is read again and must be the content the
  caller decided on, and the caller's ``guard`` re-checks the database.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from events.contract import EventBase, tag_of
from events.errors import ReconcilerError
from events.sessionfiles import FilePattern, Rejected, path_inside, read_session_file
from events.settings import Settings

RECORD_SUFFIX = "~record.json"
"""Suffix of a quarantine record; ``~`` never occurs in a session file name."""


@dataclass(frozen=True, slots=True)
class FileState:
    """A session file as it is now."""

    name: str
    flow_id: str | None
    sha256: str
    movable: bool
    """False for what is not a plain file we can read (symlink, directory...)."""


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The record kept beside a quarantined file."""

    name: str
    """The file's name inside the quarantine folder."""
    original_name: str
    original_path: str
    key: str
    reason: str
    cause_id: str | None
    cause_type: str | None
    quarantined_at: datetime
    sha256: str
    flow_id: str | None = None


class QuarantineError(ReconcilerError):
    """A quarantine entry cannot be restored or read; the message says why."""


Guard = Callable[[FileState], Awaitable[bool]]

_record_decoder = msgspec.json.Decoder(QuarantineRecord)


class SessionFiles:
    """Reads session files and moves them in and out of quarantine."""

    def __init__(self, settings: Settings) -> None:
        self.sessions_dir = settings.sessions_dir
        self.quarantine_dir = settings.quarantine_dir
        self.pattern = FilePattern(settings.file_pattern)
        self._max_bytes = settings.max_file_bytes

    def name_for(self, phone: str, channel: str) -> str:
        """The session file name of a conversation; ``ValueError`` if unsafe."""
        return self.pattern.name_for(phone, channel)

    def read(self, name: str) -> FileState | None:
        """The file ``name`` in the sessions folder, or ``None`` if there is none."""
        path = self._session_path(name)
        try:
            seen = read_session_file(path, max_bytes=self._max_bytes)
        except FileNotFoundError:
            return None
        if isinstance(seen, Rejected):
            movable = seen.reason in ("invalid_json", "oversized")
            return FileState(name=name, flow_id=None, sha256=f"rejected:{seen.reason}",
                             movable=movable)
        return FileState(name=name, flow_id=seen.flow_id, sha256=seen.content_sha256, movable=True)

    async def quarantine(
        self, name: str, *, key: str, reason: str, cause: EventBase | None,
        expected_sha256: str, guard: Guard,
    ) -> QuarantineRecord | None:
        """Move ``name`` into quarantine; ``None`` if it is gone, changed, or ``guard`` says no."""
        current = self.read(name)
        if current is None or not current.movable or current.sha256 != expected_sha256:
            return None
        if not await guard(current):
            return None
        now = datetime.now(UTC)
        qname = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}-{name}"
        source = self._session_path(name)
        target = self._quarantine_path(qname)
        record = QuarantineRecord(
            name=qname, original_name=name, original_path=str(source), key=key, reason=reason,
            cause_id=cause.id if cause else None, cause_type=tag_of(type(cause)) if cause else None,
            quarantined_at=now, sha256=current.sha256, flow_id=current.flow_id)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        record_path = self._quarantine_path(qname + RECORD_SUFFIX)
        record_path.write_bytes(msgspec.json.encode(record))
        try:
            _move_unique(source, target)
        except FileNotFoundError:
            record_path.unlink(missing_ok=True)  # someone else moved it first
            return None
        return record

    def entries(self) -> list[QuarantineRecord]:
        """Every quarantine entry, oldest first (unreadable records are skipped)."""
        records = []
        if not self.quarantine_dir.is_dir():
            return []
        for entry in os.scandir(self.quarantine_dir):
            if entry.name.endswith(RECORD_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    records.append(self.record(entry.name[: -len(RECORD_SUFFIX)]))
                except QuarantineError:
                    continue
        return sorted(records, key=lambda r: r.quarantined_at)

    def record(self, qname: str) -> QuarantineRecord:
        path = self._quarantine_path(qname + RECORD_SUFFIX)
        try:
            record = _record_decoder.decode(path.read_bytes())
        except FileNotFoundError as e:
            raise QuarantineError(f"no quarantine entry named {qname[:120]!r}") from e
        except (OSError, msgspec.DecodeError) as e:
            raise QuarantineError(f"the record of {qname[:120]!r} is unreadable: {e}") from e
        if record.name != qname or self.pattern.parse(record.original_name) is None:
            raise QuarantineError(f"the record of {qname[:120]!r} does not describe it")
        return record

    def restore(self, qname: str, *, dry_run: bool = False) -> QuarantineRecord:
        """Move a quarantined file back to where it was; never over an existing file."""
        record = self.record(qname)
        source = self._quarantine_path(qname)
        target = self._session_path(record.original_name)
        if not source.is_file() or source.is_symlink():
            raise QuarantineError(f"the quarantined file {qname[:120]!r} is missing")
        if os.path.lexists(target):
            raise QuarantineError(f"{record.original_name} exists in the sessions folder again; "
                                  "move it away first")
        if dry_run:
            return record
        try:
            _move_no_clobber(source, target)
        except FileExistsError as e:
            raise QuarantineError(f"{record.original_name} appeared in the sessions folder") from e
        self._quarantine_path(qname + RECORD_SUFFIX).unlink(missing_ok=True)
        return record

    def expired(self, retention_s: float, now: float | None = None) -> list[QuarantineRecord]:
        """Entries quarantined longer than ``retention_s`` ago."""
        cutoff = (time.time() if now is None else now) - retention_s
        return [r for r in self.entries() if r.quarantined_at.timestamp() <= cutoff]

    def purge(self, qname: str) -> bool:
        """Delete a quarantine entry and its record; ``False`` if it was already gone."""
        self.record(qname)  # validates the name and that it is ours
        try:
            self._quarantine_path(qname).unlink()
        except FileNotFoundError:
            return False
        finally:
            self._quarantine_path(qname + RECORD_SUFFIX).unlink(missing_ok=True)
        return True

    def _session_path(self, name: str) -> Path:
        return _inside(self.sessions_dir, name)

    def _quarantine_path(self, name: str) -> Path:
        return _inside(self.quarantine_dir, name)


def _inside(folder: Path, name: str) -> Path:
    path = path_inside(folder, name)
    if isinstance(path, Rejected):
        raise QuarantineError(f"{name[:120]!r}: {path.detail}")
    return path


def _move_unique(source: Path, target: Path) -> None:
    """Rename ``source`` to a fresh ``target``; of racing callers, one wins, the rest get
    ``FileNotFoundError``."""
    try:
        os.rename(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_then_unlink(source, target)


def _move_no_clobber(source: Path, target: Path) -> None:
    """Move a file without ever replacing ``target`` (``FileExistsError`` instead)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_then_unlink(source, target)
        return
    _unlink_source(source, target)


def _copy_then_unlink(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("xb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    _unlink_source(source, target)


def _unlink_source(source: Path, target: Path) -> None:
    try:
        source.unlink()
    except FileNotFoundError:
        target.unlink(missing_ok=True)  # another mover got there first: keep one copy
        raise
