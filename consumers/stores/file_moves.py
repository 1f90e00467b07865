"""Moving one directory entry between two folders without losing or overwriting a file.

The primitives under :mod:`consumers.stores.session_folder`, kept apart because
they are plain POSIX and easy to get subtly wrong:

* :func:`rename_no_replace` -- ``renameat2(RENAME_NOREPLACE)``, or hard link then
  unlink where the file system has no such flag: a newer file that took a name
  is never replaced, whatever kind of entry is moved;
* :func:`copy_from_fd` -- the cross-device half of a move: copies from a
  descriptor already opened and checked (never reopened by name) into a hidden
  temporary name, keeps mode and (where permitted) owner, fsyncs, and only
  then gives it its final name; on any error (``ENOSPC``...) the partial copy
  is removed, so nothing truncated is ever under a listed name;
* :func:`copy_into_place` -- copy from a checked descriptor, then a rename that never replaces;
* :func:`fsync_dir` -- a rename is durable only once its folder is fsynced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.errors import ReconcilerError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@dataclass(frozen=True, slots=True)
class Identity:
    """Which inode, and how it looked: what a move must find again to be the one decided on."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> Identity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


_RENAMEAT2 = _renameat2()


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; ``FileExistsError`` if ``target`` exists (never replaced)."""
    if _RENAMEAT2 is not None:
        result = _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                            RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target, follow_symlinks=False)  # the fallback: regular files and links only
    os.unlink(source)


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (renames, links, unlinks) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def hidden_name(folder: Path, name: str, what: str) -> Path:
    """A fresh name in ``folder`` that every watcher and lister here ignores (leading dot)."""
    return folder / f".{name}.reconciler-{what}-{uuid.uuid4().hex[:12]}"


HIDDEN = re.compile(r"\.(?P<name>.+)\.reconciler-(?P<what>[a-z]+)-[0-9a-f]{12}")
"""What :func:`hidden_name` makes: ``(name, what)`` of an entry left behind by a crash."""


def copy_from_fd(fd: int, info: os.stat_result, target: Path) -> str:
    """Copy the open regular file ``fd`` to the fresh name ``target``; its sha256.

    Mode and owner follow ``info`` (owner only where the process may set it);
    the copy is fsynced under a hidden name and renamed into place without
    replacing anything.  On failure nothing is left at either name.
    """
    partial = hidden_name(target.parent, target.name, "partial")
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    digest = hashlib.sha256()
    try:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fchmod(out, stat.S_IMODE(info.st_mode) & 0o777)
            with contextlib.suppress(PermissionError):
                os.fchown(out, info.st_uid, info.st_gid)
            os.fsync(out)
        finally:
            os.close(out)
        rename_no_replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    fsync_dir(target.parent)
    return digest.hexdigest()


def copy_into_place(fd: int, info: os.stat_result, staged: Path, target: Path) -> None:
    """Copy from the opened ``fd`` (closed here) to ``staged``, then give it the name ``target``
    without ever replacing a file there; on any error nothing is left under either name."""
    try:
        copy_from_fd(fd, info, staged)
    finally:
        os.close(fd)
    try:
        rename_no_replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def recover_moves(folders: tuple[Path, ...], original: Callable[[str], Path], *,
                  older_than_s: float) -> list[str]:
    """Finish what a crash cut short: an original captured under a hidden name for a copy
    goes back under its name (``original(name)``; never over a newer file, then it is left
    and logged); unfinished copies and records are removed (their originals are intact).
    Only entries unchanged for ``older_than_s`` (their ctime), so a move another process
    is making now is left alone."""
    done = []
    cutoff = time.time() - older_than_s
    for folder in folders:
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as listing:
            leftovers = [(e.name, m) for e in listing if (m := HIDDEN.fullmatch(e.name))
                         and e.stat(follow_symlinks=False).st_ctime <= cutoff]
        for entry, match in leftovers:
            path = folder / entry
            if match["what"] != "moving":
                path.unlink(missing_ok=True)
                done.append(f"removed the unfinished copy {entry}")
                continue
            try:
                rename_no_replace(path, original(match["name"]))
                done.append(f"put {match['name']} back")
            except (FileExistsError, ReconcilerError) as e:  # a name that leaves the folder
                log.warning("%s: left as %s (%s)", match["name"][:120], entry[:200], e)
    return done
