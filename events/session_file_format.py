"""Session file names and contents: parsing and safe reading.

A session file is ``{sessions_dir}/whatsapp_{phone}_{channel}.json`` (the
pattern is a setting) holding at least ``flowId``.  Everything here treats
names and contents as untrusted input:

* a name is ours only if it matches the pattern exactly, with phone and
  channel made of safe characters -- so a path is never built from anything
  else, and never contains a separator or ``..``;
* a path is resolved and must stay inside the folder; symlinks are refused;
* a file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked by ``fstat`` of the
  descriptor, so a link, FIFO or device swapped in after a check is refused, never
  followed or waited on;
* a file is read with a size limit, and bad JSON is an error value, not an exception.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from events.contract import RejectReason

SAFE_PART = r"[A-Za-z0-9+._-]{1,64}"


@dataclass(frozen=True, slots=True)
class FileName:
    """A parsed session file name."""

    phone: str
    channel: str

    @property
    def key(self) -> str:
        return f"{self.phone}:{self.channel}"


@dataclass(frozen=True, slots=True)
class SessionFile:
    """What a session file says."""

    flow_id: str | None
    content_sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str


class FilePattern:
    """``whatsapp_{phone}_{channel}.json`` as a matcher and a formatter."""

    def __init__(self, pattern: str) -> None:
        if "/" in pattern or "\\" in pattern:
            raise ValueError("the file pattern must be a file name, not a path")
        parts = re.split(r"(\{phone\}|\{channel\})", pattern)
        regex = "".join(
            f"(?P<{p[1:-1]}>{SAFE_PART.replace('_', '') if p == '{phone}' else SAFE_PART})"
            if p in ("{phone}", "{channel}") else re.escape(p)
            for p in parts
        )
        self.pattern = pattern
        self._regex = re.compile(f"^{regex}$")

    def parse(self, name: str) -> FileName | None:
        """The phone and channel in ``name``, or ``None`` if the name is not ours."""
        match = self._regex.fullmatch(name)  # not match: "$" also matches before a final newline
        if match is None or ".." in name:
            return None
        return FileName(match["phone"], match["channel"])

    def name_for(self, phone: str, channel: str) -> str:
        name = self.pattern.replace("{phone}", phone).replace("{channel}", channel)
        if self.parse(name) is None:
            raise ValueError(f"phone {phone[:40]!r} / channel {channel[:40]!r} make no safe file name")
        return name


def path_inside(folder: Path, name: str) -> Path | Rejected:
    """``folder/name`` if it is a plain entry of ``folder`` (no separators, no escape)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        return Rejected("outside_folder", "name contains a path separator or is . or ..")
    base = resolved(folder)
    candidate = base / name
    if candidate.parent != base:
        return Rejected("outside_folder", "name leaves the folder")
    return candidate


@functools.lru_cache(maxsize=64)
def resolved(folder: Path) -> Path:
    """``folder`` resolved once per process (every file path of a handling is built from it:
    resolving it each time was 4 % of the consumers' CPU).  A folder that is a symbolic
    link is followed to where it led when first used, as the watcher's inotify watch is."""
    return folder.resolve()


def open_regular(path: Path) -> tuple[int, os.stat_result] | Rejected:
    """Open ``path`` for reading without following a link or blocking; the descriptor and
    its ``fstat``, or why not.

    ``O_NONBLOCK`` makes the open of a FIFO (or device) swapped in under the name return at
    once instead of waiting for a writer; ``fstat`` of the descriptor, not the name, then
    says what was really opened.  ``FileNotFoundError`` passes through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Rejected("symlink", "symbolic links are not followed")
        return Rejected("unreadable", e.strerror or type(e).__name__)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return Rejected("not_a_file", "not a regular file")
    return fd, info


def read_bounded(path: Path, *, max_bytes: int) -> tuple[bytes, os.stat_result] | Rejected:
    """At most ``max_bytes`` of the regular file ``path`` (see :func:`open_regular`)."""
    opened = open_regular(path)
    if isinstance(opened, Rejected):
        return opened
    fd, info = opened
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            return Rejected("oversized", f"{info.st_size} bytes is over the {max_bytes}-byte limit")
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        return Rejected("oversized", f"over the {max_bytes}-byte limit")
    return raw, info


def read_session_file(path: Path, *, max_bytes: int) -> SessionFile | Rejected:
    """Read ``flowId`` from a session file without following links, blocking or reading
    too much (a FIFO, a device or a link swapped in under the name is rejected)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        return Rejected("unreadable", e.strerror or type(e).__name__)
    if stat.S_ISLNK(info.st_mode):
        return Rejected("symlink", "symbolic links are not followed")
    if not stat.S_ISREG(info.st_mode):
        return Rejected("not_a_file", "not a regular file")
    read = read_bounded(path, max_bytes=max_bytes)
    if isinstance(read, Rejected):
        return read
    return parse_session_file(read[0])


def parse_session_file(raw: bytes) -> SessionFile | Rejected:
    """What the bytes of a session file say (its ``flowId``), or why they are not one."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        content = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return Rejected("invalid_json", str(e)[:200])
    except RecursionError:
        return Rejected("invalid_json", "JSON nested too deeply")
    if not isinstance(content, dict):
        return Rejected("invalid_json", "the top level is not an object")
    flow = content.get("flowId")
    if flow is not None and (not isinstance(flow, str) or len(flow) > 512):
        return Rejected("invalid_json", "flowId is not a string of at most 512 characters")
    return SessionFile(flow_id=flow or None, content_sha256=digest, size_bytes=len(raw))
