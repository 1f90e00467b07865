"""Quarantine records: the small JSON file kept beside each quarantined session file.

A record says where the file came from, why it was moved, which event and
action moved it, and when.  Records are written atomically (a hidden temporary
file, fsynced, renamed into place without replacing, then the folder fsynced),
so a crash or a full disk never leaves an empty or torn record; they are read
with :data:`RECORD_MAX_BYTES` as the limit through a non-blocking, no-follow
open, so a planted huge file, FIFO or link costs nothing.  The path a record
claims the file came from is never trusted: reading it back replaces
``original_path`` with the path a restore really writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import datetime
from pathlib import Path

import msgspec

from consumers.stores.file_moves import fsync_dir, hidden_name, rename_no_replace
from events.errors import ReconcilerError
from events.sessionfiles import FilePattern, Rejected, path_inside, read_bounded

log = logging.getLogger(__name__)

RECORD_SUFFIX = "~record.json"
"""Suffix of a quarantine record; ``~`` never occurs in a session file name."""
RECORD_MAX_BYTES = 64 * 1024
"""A record is a few hundred bytes; anything over this is not one of ours."""


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The record kept beside a quarantined file."""

    name: str
    """The file's name inside the quarantine folder."""
    original_name: str
    original_path: str
    """Where a restore puts it: always ``sessions_dir/original_name`` when read back."""
    key: str
    reason: str
    cause_id: str | None
    cause_type: str | None
    quarantined_at: datetime
    sha256: str
    flow_id: str | None = None
    action_id: str = ""
    """The id of the action that moved it (:mod:`consumers.actions`): how an intent left
    without an outcome is settled."""
    superseded: bool = False
    """Moved, then found not to be what was decided on, and a newer file had taken its name."""


class QuarantineError(ReconcilerError):
    """A quarantine entry cannot be restored or read; the message says why."""


_record_decoder = msgspec.json.Decoder(QuarantineRecord)


class QuarantineRecords:
    """The records of one quarantine folder."""

    def __init__(self, folder: Path, sessions_dir: Path, pattern: FilePattern) -> None:
        self.folder = folder
        self.sessions_dir = sessions_dir
        self.pattern = pattern

    def write(self, record: QuarantineRecord, *, replace: bool = False) -> None:
        """Write a record atomically (fsynced, then renamed into place): never empty or torn."""
        path = self._path(record.name + RECORD_SUFFIX)
        partial = hidden_name(self.folder, path.name, "partial")
        try:
            with partial.open("xb") as out:
                out.write(msgspec.json.encode(record))
                out.flush()
                os.fsync(out.fileno())
            if replace:
                os.replace(partial, path)
            else:
                rename_no_replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        fsync_dir(self.folder)

    def drop(self, qname: str) -> None:
        self._path(qname + RECORD_SUFFIX).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fsync_dir(self.folder)

    def entries(self, *, dangling: bool = False) -> list[QuarantineRecord]:
        """Every quarantine entry, oldest first (unreadable records are skipped, and so are
        records whose file is missing -- a move cut short -- unless ``dangling``)."""
        records = []
        if not self.folder.is_dir():
            return []
        for entry in os.scandir(self.folder):
            if entry.name.endswith(RECORD_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    record = self.read(entry.name[: -len(RECORD_SUFFIX)])
                except QuarantineError:
                    continue
                if dangling or os.path.isfile(self._path(record.name)):
                    records.append(record)
        return sorted(records, key=lambda r: r.quarantined_at)

    def read(self, qname: str) -> QuarantineRecord:
        """The record of entry ``qname`` (read with a size limit); ``original_path`` is
        where a restore really writes, whatever the file on disk claims."""
        path = self._path(qname + RECORD_SUFFIX)
        try:
            found = read_bounded(path, max_bytes=RECORD_MAX_BYTES)
        except FileNotFoundError as e:
            raise QuarantineError(f"no quarantine entry named {qname[:120]!r}") from e
        try:
            if isinstance(found, Rejected):
                raise QuarantineError(f"the record of {qname[:120]!r} is unreadable: {found.detail}")
            record = _record_decoder.decode(found[0])
        except msgspec.DecodeError as e:
            raise QuarantineError(f"the record of {qname[:120]!r} is unreadable: {e}") from e
        if record.name != qname or self.pattern.parse(record.original_name) is None:
            raise QuarantineError(f"the record of {qname[:120]!r} does not describe it")
        real = str(inside(self.sessions_dir, record.original_name))
        if record.original_path != real:
            log.warning("quarantine record %s names %s; a restore writes %s", qname[:120],
                        record.original_path[:200], real, extra={"quarantine": qname[:120]})
        return msgspec.structs.replace(record, original_path=real)

    def moved_by(self, action_id: str) -> QuarantineRecord | None:
        """The entry that the action ``action_id`` moved and kept, if any."""
        for record in self.entries():
            if action_id and record.action_id == action_id and not record.superseded:
                return record
        return None

    def _path(self, name: str) -> Path:
        return inside(self.folder, name)


def inside(folder: Path, name: str) -> Path:
    path = path_inside(folder, name)
    if isinstance(path, Rejected):
        raise QuarantineError(f"{name[:120]!r}: {path.detail}")
    return path
