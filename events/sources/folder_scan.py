"""What the sessions folder holds, compared with what was last seen.

:class:`FolderView` is the folder watcher's memory, kept apart from the
watching so it can be driven by anything that names entries: a watchfiles
change set, a periodic rescan, the start-up snapshot.  It is level-triggered:
a change notification only says *which* name to look at; the view then reads
the entry as it is now and emits an event only if the result differs from the
last one seen for that name.  So a missed, doubled or reordered notification
costs nothing, and a write that changed nothing (same content hash) is silent.

Each name maps to a *token*: ``sha256:<hex>`` for a good session file, or
``rejected:<reason>:<size>:<mtime>:<inode>`` for a bad one, so a bad file is
reported once and again only when it changes.  Tokens are plain strings so the
watcher can persist them (a Redis hash) and a restarted process can tell which
files were removed while it was down.

Names are untrusted input:

* temporary files of writers (``.name``, ``tmp*``, ``*.tmp``, ``*~``, ``name.<digits>``
  of write-file-atomic, ``name<random>`` of Python's ``tempfile``, ...) are ignored
  quietly -- an atomic replace goes through one (see :func:`is_temporary`);
* other names that are not ours are reported once (reason ``not_ours``, key
  ``folder``) and never read;
* our names are read with :func:`events.session_file_format.read_session_file`, which
  refuses symlinks, non-files and oversized files without following them.

A file that is not valid JSON and was modified less than ``SETTLE_S`` ago is
probably still being written; it is re-examined later (:meth:`due_rechecks`)
instead of being reported at once.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from events.contract import (
    EventBase,
    RejectReason,
    SessionFileRejected,
    SessionFileRemoved,
    SessionFileWritten,
)
from events.envelope import new_event
from events.session_file_format import FilePattern, Rejected, SessionFile, path_inside, read_session_file

SOURCE: Final = "folder"
FOLDER_KEY = "folder"
"""Event key of a rejected entry whose name is not a session file name."""

SETTLE_S = 1.0
"""How long an unparsable file may be mid-write before it is reported."""

TEMP_NAME = re.compile(
    r"^(\.|tmp)|(~|\.tmp|\.temp|\.swp|\.swx|\.part|\.partial|\.crdownload)$|\.tmp\.|\.tmp-[0-9a-f]+$",
    re.IGNORECASE,
)
"""Names writers use for a file being written, whatever they are a copy of; ignored without
a report.  ``….tmp-<digits+hex>`` is Node's ``atomically``; ``tmp…`` covers Python's
``tempfile`` defaults (and so ``atomicwrites``), ``.…`` steno, renameio and most editors."""
TEMP_TAIL = re.compile(r"[0-9]{1,20}|[a-z0-9_]{8}")
"""What an atomic writer appends to the name it writes: write-file-atomic's
``name.<32-bit hash in decimal>``, Python ``tempfile``'s eight random characters
(``prefix=name`` or ``prefix=name + "."``)."""


def is_temporary(name: str, pattern: FilePattern | None = None) -> bool:
    """Whether ``name`` is a writer's temporary file: a generic temporary name, or (with
    ``pattern``) one of our names plus a writer's tail.  A name that is ours is never
    temporary, and a foreign name with a digit tail (``report.2024``) is still foreign."""
    if TEMP_NAME.search(name) is not None:
        return True
    if pattern is None or pattern.parse(name) is not None:
        return False
    base, dot, tail = name.rpartition(".")
    if dot and TEMP_TAIL.fullmatch(tail) and pattern.parse(base) is not None:
        return True
    tail = name[-8:]
    return len(name) > 8 and TEMP_TAIL.fullmatch(tail) is not None and (
        pattern.parse(name[:-8]) is not None)


Token = str


def printable(name: str) -> str:
    """A file name safe to put in an event (undecodable bytes escaped, bounded)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")[:512]


class FolderView:
    """Last-seen state of every entry of one folder; turns observations into events."""

    def __init__(self, folder: Path, pattern: FilePattern, *, max_bytes: int) -> None:
        self.folder = folder
        self.pattern = pattern
        self.max_bytes = max_bytes
        self.seen: dict[str, Token] = {}
        """Our names -> token of what was last published for them."""
        self.foreign: set[str] = set()
        """Names not ours that were reported already (once each)."""
        self.unsettled: dict[str, float] = {}
        """Names to look at again (monotonic due time): invalid while being written."""
        self.changed: dict[str, Token | None] = {}
        """Tokens changed since :meth:`take_changed` (``None``: removed), for persisting."""

    # -- observing -------------------------------------------------------

    def observe(self, name: str) -> list[EventBase]:
        """The events for ``name`` as it is now, compared with what was last seen."""
        if is_temporary(name, self.pattern):
            return []
        parsed = self.pattern.parse(name)
        if parsed is None:
            return self._foreign(name)
        path = path_inside(self.folder, name)
        if isinstance(path, Rejected):
            return [self._rejected(name, FOLDER_KEY, path.reason, path.detail)]
        try:
            result = read_session_file(path, max_bytes=self.max_bytes)
            signature = _signature(path)
        except FileNotFoundError:
            return self._gone(name, parsed.key)
        self.unsettled.pop(name, None)
        if isinstance(result, Rejected):
            if result.reason == "invalid_json" and _recent(path):
                self.unsettled[name] = time.monotonic() + SETTLE_S
                return []
            token = f"rejected:{result.reason}:{signature}"
            event: EventBase = self._rejected(name, parsed.key, result.reason, result.detail)
        else:
            token = f"sha256:{result.content_sha256}"
            event = self._written(name, parsed.key, result, path)
        if self.seen.get(name) == token:
            return []
        self._remember(name, token)
        return [event]

    def observe_many(self, names: Iterable[str]) -> list[EventBase]:
        events: list[EventBase] = []
        for name in names:
            events.extend(self.observe(name))
        return events

    def rescan(self) -> list[EventBase]:
        """Everything that differs from what was last seen: writes, rejections, removals."""
        present = self.listing()
        self.foreign &= present
        return self.observe_many(sorted(present | set(self.seen) | set(self.unsettled)))

    def snapshot(self) -> tuple[list[EventBase], int]:
        """Every entry as it is now (whatever was seen before), plus removals of
        names seen before and gone now.  Returns the events and the item count."""
        present = self.listing()
        previous = dict(self.seen)
        self.seen.clear()
        self.foreign.clear()
        self.unsettled.clear()
        self.changed = {}
        events = self.observe_many(sorted(present))
        for name in sorted(set(previous) - present):
            parsed = self.pattern.parse(name)
            if parsed is not None:
                self.changed[name] = None
                events.append(self._removed(name, parsed.key))
        return events, len(events)

    def due_rechecks(self) -> list[str]:
        now = time.monotonic()
        return [name for name, due in self.unsettled.items() if due <= now]

    def listing(self) -> set[str]:
        """Names in the folder now; empty when the folder is gone."""
        try:
            with os.scandir(self.folder) as entries:
                return {entry.name for entry in entries}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def load(self, tokens: dict[str, Token]) -> None:
        """Start from tokens persisted by an earlier run (only our names are kept)."""
        self.seen = {n: t for n, t in tokens.items() if self.pattern.parse(n) is not None}

    def take_changed(self) -> dict[str, Token | None]:
        changed, self.changed = self.changed, {}
        return changed

    # -- outcomes --------------------------------------------------------

    def _foreign(self, name: str) -> list[EventBase]:
        if not os.path.lexists(self.folder / name):
            self.foreign.discard(name)
            return []
        if name in self.foreign:
            return []
        self.foreign.add(name)
        return [self._rejected(name, FOLDER_KEY, "not_ours",
                               f"does not match {self.pattern.pattern[:200]}")]

    def _gone(self, name: str, key: str) -> list[EventBase]:
        self.unsettled.pop(name, None)
        if self.seen.pop(name, None) is None:
            return []
        self.changed[name] = None
        return [self._removed(name, key)]

    def _remember(self, name: str, token: Token) -> None:
        self.seen[name] = token
        self.changed[name] = token

    def _written(self, name: str, key: str, found: SessionFile, path: Path) -> SessionFileWritten:
        try:
            at = datetime.fromtimestamp(os.lstat(path).st_mtime, UTC)
        except OSError:
            at = datetime.now(UTC)
        return new_event(
            SessionFileWritten, at=at, source=SOURCE, key=key, name=name,
            flow_id=found.flow_id, content_sha256=found.content_sha256,
            size_bytes=found.size_bytes,
        )

    def _removed(self, name: str, key: str) -> SessionFileRemoved:
        return new_event(SessionFileRemoved, source=SOURCE, key=key, name=name)

    def _rejected(self, name: str, key: str, reason: RejectReason, detail: str) -> SessionFileRejected:
        return new_event(
            SessionFileRejected, source=SOURCE, key=key,
            name=printable(name), reason=reason, detail=printable(detail),
        )


def _signature(path: Path) -> str:
    info = os.lstat(path)
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def _recent(path: Path) -> bool:
    try:
        age = time.time() - os.lstat(path).st_mtime
    except OSError:
        return False
    return 0 <= age < SETTLE_S
