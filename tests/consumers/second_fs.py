"""A second file system for tests of moves across devices (``EXDEV``): a tmpfs mounted
for the test and removed after it, or a skip saying why it cannot be mounted here."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def second_file_system(path: Path, *, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block; skip if not permitted."""
    path.mkdir(parents=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                                  str(path)], capture_output=True, text=True, check=False)
        why = mounted.stderr.strip() if mounted.returncode else ""
    except FileNotFoundError:
        why = "no mount command"
    if why:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs as a second file system here ({why}); "
                    "needs root or CAP_SYS_ADMIN")
    try:
        assert os.stat(path).st_dev != os.stat(path.parent).st_dev
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            path.rmdir()
