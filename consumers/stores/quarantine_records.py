"""Quarantine records: the small JSON file kept beside each quarantined session file.

A record says where the file came from, why it was moved, which event and
action moved it, and when.  Records are written atomically (a hidden temporary
file renamed into place without replacing; fsynced when the move is a copy),
so a crash or a full disk never leaves an empty or torn record; they are read
with :data:`RECORD_MAX_BYTES` as the limit through a non-blocking, no-follow
open, so a planted huge file, FIFO or link costs nothing.  The path a record
claims the file came from is never trusted: reading it back replaces
``original_path`` with the path a restore really writes.  A quarantined file
whose record was lost (a power cut before it reached the disk, a deletion) is
still listed, with a record rebuilt from its name.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from consumers.stores.file_moves import hidden_name, rename_no_replace
from events.errors import ReconcilerError
from events.session_file_format import FilePattern, Rejected, path_inside, read_bounded

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

    def write(self, record: QuarantineRecord, *, replace: bool = False, durable: bool = True) -> None:
        """Write a record atomically (renamed into place): never torn.  ``durable``: its bytes
        are fsynced first (the folder is fsynced by the copy that follows); a record that
        does not reach the disk before a power cut is rebuilt from the file's name."""
        path = self._path(record.name + RECORD_SUFFIX)
        partial = hidden_name(self.folder, path.name, "partial")
        try:
            with partial.open("xb") as out:
                out.write(msgspec.json.encode(record))
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            if replace:
                os.replace(partial, path)
            else:
                rename_no_replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def drop(self, qname: str) -> None:
        self._path(qname + RECORD_SUFFIX).unlink(missing_ok=True)

    def entries(self, *, dangling: bool = False) -> list[QuarantineRecord]:
        """Every quarantine entry, oldest first.  A quarantined file whose record is lost or
        unreadable is listed with a record rebuilt from its name (reason ``record lost``);
        records whose file is missing -- a move cut short -- only with ``dangling``."""
        if not self.folder.is_dir():
            return []
        with os.scandir(self.folder) as listing:
            names = {e.name for e in listing if e.is_file(follow_symlinks=False)
                     and not e.name.startswith(".")}
        qnames = {n[: -len(RECORD_SUFFIX)] if n.endswith(RECORD_SUFFIX) else n for n in names}
        records = []
        for qname in qnames:
            if qname not in names and not dangling:
                continue  # a record without its file
            with contextlib.suppress(QuarantineError):
                records.append(self.read(qname))
        return sorted(records, key=lambda r: r.quarantined_at)

    def read(self, qname: str) -> QuarantineRecord:
        """The record of entry ``qname`` (read with a size limit); ``original_path`` is
        where a restore really writes, whatever the file on disk claims."""
        try:
            record = self._decode(qname)
        except QuarantineError:
            rebuilt = self._rebuilt(qname)
            if rebuilt is None:
                raise
            return rebuilt
        real = str(inside(self.sessions_dir, record.original_name))
        if record.original_path != real:
            log.warning("quarantine record %s names %s; a restore writes %s", qname[:120],
                        record.original_path[:200], real, extra={"quarantine": qname[:120]})
        return msgspec.structs.replace(record, original_path=real)

    def _decode(self, qname: str) -> QuarantineRecord:
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
        return record

    def _rebuilt(self, qname: str) -> QuarantineRecord | None:
        """A record for a quarantined file whose own record is lost (a power cut right after
        the move, or a deleted record): from its name ``{time}-{hex}-{original name}``."""
        when, _, rest = qname.partition("-")
        original = rest.partition("-")[2]
        parsed = self.pattern.parse(original)
        path = self._path(qname)
        if parsed is None or not path.is_file() or path.is_symlink():
            return None
        try:
            at = datetime.strptime(when, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return QuarantineRecord(
            name=qname, original_name=original, original_path=str(inside(self.sessions_dir, original)),
            key=parsed.key, reason="record lost", cause_id=None, cause_type=None,
            quarantined_at=at, sha256="")

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
