"""The session folder and its quarantine: read a session file, move it aside, bring it back.

Nothing here unlinks a session file: a stale one is *moved* into the
quarantine folder under a unique name, with a small JSON record beside it
(``{name}~record.json``: where from, why, which event and action caused it,
when).  Only :meth:`SessionFiles.purge` deletes, and only entries older than
the retention setting.

A move is *verified* (:meth:`SessionFiles.quarantine`).  The file is read and
judged, the caller's ``guard`` re-checks the database, and only then is the
name renamed away -- but a bot may have replaced the file in between, so what
was renamed is read again (the same inode, the same content) and the guard
asked again.  If either says no (or the guard cannot be asked: its connection
was cut), the entry is put back under its name with a rename that never
replaces (a newer file that took the name meanwhile wins, and the moved one
stays in quarantine marked ``superseded``).  The caller gets
a :class:`Moved` saying ``done``, ``reverted``, ``skipped`` or ``failed``, and why.

Across file systems (``EXDEV``) the entry is first renamed to a hidden name in
the sessions folder (so exactly one inode is captured and nothing is ever
unlinked by a name a writer may reuse), opened with ``O_NOFOLLOW |
O_NONBLOCK``, checked by ``fstat`` to be the inode that was judged, and copied
from that descriptor (:mod:`consumers.stores.file_moves`), in a worker thread;
a file over ``max_file_bytes`` is never copied.  Records and copies are fsynced
(a copy with its folder) before the original is unlinked, and a put-back with its
folder; a rename on one file system is atomic, so a power cut can at worst undo
a move (the file is judged again) or lose its record (it is rebuilt from the
file's name), never lose the file -- and the common path pays no fsync.

Safety, since names come from events and folders from settings:

* every path is built by :func:`events.session_file_format.path_inside` from a name
  that matches the file pattern (or a quarantine name we made), so it never
  leaves the configured folders; the path a record says it came from is never
  used -- output names the path actually written;
* symlinks, FIFOs and other non-regular files are never moved, followed or waited on;
* records are written atomically (never an empty record) and read with a size limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec

from consumers.stores.file_moves import (
    Identity,
    copy_from_fd,
    copy_into_place,
    fsync_dir,
    hidden_name,
    recover_moves,
    rename_no_replace,
    same_device,
)
from consumers.stores.quarantine_records import (
    RECORD_SUFFIX,
    QuarantineError,
    QuarantineRecord,
    QuarantineRecords,
    inside,
)
from events.contract import EventBase, tag_of
from events.session_file_format import FilePattern, Rejected, open_regular, parse_session_file
from events.settings import Settings

__all__ = ["RECORD_SUFFIX", "FileState", "Guard", "Moved", "QuarantineError", "QuarantineRecord",
           "SessionFiles"]
log = logging.getLogger(__name__)

MOVABLE_REJECTIONS = ("invalid_json", "oversized")
RECOVER_AFTER_S = 300.0
"""A hidden entry of a move older than this was left by a crash, not by a move under way."""


@dataclass(frozen=True, slots=True)
class FileState:
    """A session file as it is now."""

    name: str
    flow_id: str | None
    fingerprint: str
    """What the content was judged as: the sha256 of its canonical JSON (as events carry
    it), or ``rejected:<reason>`` for content that is no session (``rejected:oversized``...);
    a move goes ahead only while the file still has the fingerprint it was judged by."""
    movable: bool
    """False for what is not a plain file we can read (symlink, directory...)."""
    modified_at: float | None = None
    """Unix time of the file's last change (the settle window runs from it)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """What :meth:`SessionFiles.quarantine` did."""

    outcome: Literal["done", "reverted", "skipped", "failed"]
    reason: str = ""
    record: QuarantineRecord | None = None
    """The entry in quarantine (``done``; ``reverted`` when it stayed there as superseded)."""


@dataclass(frozen=True, slots=True)
class Seen:
    """A file as read just before (or just after) a move."""

    state: FileState
    identity: Identity
    digest: str | None
    """sha256 of the bytes (``None`` when over the size limit)."""

    def same_as(self, other: Seen) -> bool:
        if (self.identity.dev, self.identity.ino) != (other.identity.dev, other.identity.ino):
            return False
        if self.digest is None or other.digest is None:
            return self.identity == other.identity
        return self.digest == other.digest


class _NotDecided(Exception):
    """What was captured by a move is not what was decided on (the message says how)."""


Guard = Callable[[FileState], Awaitable[bool]]

class SessionFiles:
    """Reads session files and moves them in and out of quarantine."""

    def __init__(self, settings: Settings) -> None:
        self.sessions_dir = settings.sessions_dir
        self.quarantine_dir = settings.quarantine_dir
        self.pattern = FilePattern(settings.file_pattern)
        self._max_bytes = settings.max_file_bytes
        self.records = QuarantineRecords(self.quarantine_dir, self.sessions_dir, self.pattern)

    def name_for(self, phone: str, channel: str) -> str:
        """The session file name of a conversation; ``ValueError`` if unsafe."""
        return self.pattern.name_for(phone, channel)

    def read(self, name: str) -> FileState | None:
        """The file ``name`` in the sessions folder, or ``None`` if there is none."""
        seen = self._look(self._session_path(name), name)
        return seen.state if isinstance(seen, Seen) else seen

    # -- quarantine ------------------------------------------------------

    async def quarantine(
        self, name: str, *, key: str, reason: str, cause: EventBase | None,
        expected_fingerprint: str, guard: Guard, action_id: str = "",
    ) -> Moved:
        """Move ``name`` into quarantine if it is still ``expected_fingerprint`` and ``guard``
        agrees, before and after the move; see the module's docstring."""
        source = self._session_path(name)
        seen = self._look(source, name)
        if not isinstance(seen, Seen) or not seen.state.movable:
            return Moved("skipped", "the file is gone" if seen is None else "not a plain file")
        if seen.state.fingerprint != expected_fingerprint:
            return Moved("skipped", "the file changed since it was judged")
        cross_device = self._cross_device()
        if cross_device and seen.digest is None:
            return Moved("skipped", f"over the {self._max_bytes}-byte limit: never copied to "
                                    "a quarantine on another file system")
        if not await guard(seen.state):
            return Moved("skipped", "no longer to be moved")
        record = self._new_record(name, seen, key=key, reason=reason, cause=cause,
                                  action_id=action_id)
        try:
            if cross_device:  # fsynced: in a thread
                await asyncio.to_thread(self.records.write, record)
            else:
                self.records.write(record, durable=False)
        except OSError as e:
            return Moved("failed", f"cannot write the quarantine record: {e}")
        try:
            return await self._move_verified(source, seen, record, guard, cross_device)
        except OSError as e:
            self.records.drop(record.name)
            return Moved("failed", f"cannot move {name}: {e}")

    async def _move_verified(self, source: Path, seen: Seen, record: QuarantineRecord,
                             guard: Guard, cross_device: bool) -> Moved:
        target = self._quarantine_path(record.name)
        captured = hidden_name(self.sessions_dir, seen.state.name, "moving") if cross_device else target
        try:
            rename_no_replace(source, captured)
        except FileNotFoundError:
            self.records.drop(record.name)  # someone else moved it first
            return Moved("skipped", "the file is gone")
        try:
            if cross_device:
                await asyncio.to_thread(self._copy_captured, captured, target, seen)
            else:
                self._check_captured(target, seen)
        except _NotDecided as e:
            return await asyncio.to_thread(self._put_back, captured, source, record,
                                           f"{e}; put back")
        except OSError as e:  # ENOSPC...: no copy is left, the original goes back
            undone = await asyncio.to_thread(self._put_back, captured, source, record,
                                             "the original was put back")
            return Moved("failed", f"cannot copy {seen.state.name} into quarantine: {e}; "
                                   f"{undone.reason}")
        try:
            holds = await guard(seen.state)
        except Exception as e:  # e.g. its database connection was cut: the move is unverified
            undone = await asyncio.to_thread(
                self._put_back, captured, source, record,
                f"the guard could not be asked after the move ({type(e).__name__}); put back",
                target if cross_device else None)
            # put back: retried later; a newer file took the name: reverted, as a writer's would be
            return undone if undone.record is not None else Moved("failed", undone.reason)
        if not holds:
            return await asyncio.to_thread(
                self._put_back, captured, source, record,
                "the guard no longer holds after the move; put back",
                target if cross_device else None)
        if cross_device:
            await asyncio.to_thread(self._settle, captured)
        return Moved("done", record=record)

    def _settle(self, captured: Path | None) -> None:
        """Drop the captured original of a cross-device copy (the copy and its folder are
        fsynced already), durably.  A rename on one file system needs nothing: a power cut
        leaves the file under one of its two names, never neither."""
        if captured is not None:
            os.unlink(captured)
            fsync_dir(self.sessions_dir)

    def _check_captured(self, path: Path, seen: Seen) -> None:
        now = self._look(path, seen.state.name)
        if not isinstance(now, Seen):
            raise _NotDecided("what was moved is not a plain file")
        if not now.same_as(seen):
            raise _NotDecided("the file was replaced or rewritten while it was being moved")

    def _copy_captured(self, captured: Path, target: Path, seen: Seen) -> None:
        """Copy the captured entry from one checked descriptor; ``_NotDecided`` if it is not
        the inode and content judged (nothing is copied then)."""
        opened = open_regular(captured)
        if isinstance(opened, Rejected):
            raise _NotDecided(f"what was moved is not a plain file ({opened.reason})")
        fd, info = opened
        try:
            if (info.st_dev, info.st_ino) != (seen.identity.dev, seen.identity.ino):
                raise _NotDecided("the file was replaced while it was being moved")
            digest = copy_from_fd(fd, info, target)
        finally:
            os.close(fd)
        if digest != seen.digest:
            os.unlink(target)
            raise _NotDecided("the file was rewritten while it was being moved")

    def _put_back(self, moved: Path, source: Path, record: QuarantineRecord, why: str,
                  copy: Path | None = None) -> Moved:
        """Undo a move without replacing a newer file; ``reverted`` either way.  ``copy``:
        the quarantine copy already made of a cross-device move (``moved`` is the original)."""
        try:
            rename_no_replace(moved, source)
        except FileExistsError:
            if copy is not None:  # the copy in quarantine is the one kept
                os.unlink(moved)
            elif moved != self._quarantine_path(record.name):  # a captured original
                log.warning("%s: a newer file took its name; the moved entry is left as %s",
                            record.original_name, moved.name)
                self.records.drop(record.name)
                return Moved("reverted", f"{why} failed: a newer file took its name; the "
                                         f"moved entry is left as {moved.name}")
            kept = msgspec.structs.replace(record, superseded=True)
            self.records.write(kept, replace=True)
            return Moved("reverted", f"{why} failed: a newer file took its name; the moved one "
                                     "stays in quarantine as superseded", kept)
        if copy is not None:
            os.unlink(copy)
        fsync_dir(self.sessions_dir)
        self.records.drop(record.name)
        return Moved("reverted", why)

    def _cross_device(self) -> bool:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        return not same_device(self.sessions_dir, self.quarantine_dir)

    def _look(self, path: Path, name: str) -> Seen | FileState | None:
        """The entry at ``path`` read through one descriptor: a :class:`Seen` for a plain
        file, a not-movable :class:`FileState` for anything else, ``None`` if there is none."""
        try:
            opened = open_regular(path)
        except FileNotFoundError:
            return None
        if isinstance(opened, Rejected):
            return FileState(name=name, flow_id=None, fingerprint=f"rejected:{opened.reason}",
                             movable=False)
        fd, info = opened
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(self._max_bytes + 1) if info.st_size <= self._max_bytes else b""
        if info.st_size > self._max_bytes or len(raw) > self._max_bytes:
            state = FileState(name=name, flow_id=None, fingerprint="rejected:oversized", movable=True,
                              modified_at=info.st_mtime)
            return Seen(state, Identity.of(info), None)
        parsed = parse_session_file(raw)
        if isinstance(parsed, Rejected):
            state = FileState(name=name, flow_id=None, fingerprint=f"rejected:{parsed.reason}",
                              movable=parsed.reason in MOVABLE_REJECTIONS, modified_at=info.st_mtime)
        else:
            state = FileState(name=name, flow_id=parsed.flow_id, fingerprint=parsed.content_sha256,
                              movable=True, modified_at=info.st_mtime)
        return Seen(state, Identity.of(info), hashlib.sha256(raw).hexdigest())

    # -- records ---------------------------------------------------------

    def _new_record(self, name: str, seen: Seen, *, key: str, reason: str,
                    cause: EventBase | None, action_id: str) -> QuarantineRecord:
        now = datetime.now(UTC)
        return QuarantineRecord(
            name=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}-{name}", original_name=name,
            original_path=str(self._session_path(name)), key=key, reason=reason,
            cause_id=cause.id if cause else None, cause_type=tag_of(type(cause)) if cause else None,
            quarantined_at=now, sha256=seen.state.fingerprint, flow_id=seen.state.flow_id,
            action_id=action_id)

    def recover(self, *, older_than_s: float = RECOVER_AFTER_S) -> list[str]:
        """Finish the moves a crash cut short (run at start); see
        :func:`consumers.stores.file_moves.recover_moves`.  One line per entry handled."""
        return recover_moves((self.sessions_dir, self.quarantine_dir), self._session_path,
                             older_than_s=older_than_s)

    # -- restore, retention ------------------------------------------------

    def restore(self, qname: str, *, dry_run: bool = False) -> QuarantineRecord:
        """Move a quarantined file back to where it was; never over an existing file.
        The record returned names the path written (``original_path``)."""
        record = self.records.read(qname)
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
            if same_device(self.quarantine_dir, self.sessions_dir):
                rename_no_replace(source, target)
            else:
                opened = open_regular(source)
                if isinstance(opened, Rejected):
                    raise QuarantineError(f"the quarantined file {qname[:120]!r}: {opened.detail}")
                copy_into_place(*opened, hidden_name(self.sessions_dir, target.name, "restoring"),
                                target)
                os.unlink(source)
        except FileExistsError as e:
            raise QuarantineError(f"{record.original_name} appeared in the sessions folder") from e
        fsync_dir(self.sessions_dir)
        self.records.drop(qname)
        return record

    def expired(self, retention_s: float, now: float | None = None) -> list[QuarantineRecord]:
        """Entries quarantined longer than ``retention_s`` ago (records of moves cut short too)."""
        cutoff = (time.time() if now is None else now) - retention_s
        return [r for r in self.records.entries(dangling=True) if r.quarantined_at.timestamp() <= cutoff]

    def purge(self, qname: str) -> bool:
        """Delete a quarantine entry and its record; ``False`` if it was already gone."""
        self.records.read(qname)  # validates the name and that it is ours
        try:
            self._quarantine_path(qname).unlink()
        except FileNotFoundError:
            return False
        finally:
            self.records.drop(qname)
        return True

    def _session_path(self, name: str) -> Path:
        return inside(self.sessions_dir, name)

    def _quarantine_path(self, name: str) -> Path:
        return inside(self.quarantine_dir, name)
