"""Reading redis-py replies: the one decoder of reply values, and the error kinds we act on.

Clients are opened with ``decode_responses=False`` (entries carry binary
fields), so names, ids and counts arrive as bytes.  :func:`text` is the one
way they become text; file names stored in Redis are the exception and go
through :func:`os.fsdecode`, since they must round-trip to the same bytes.
"""

from __future__ import annotations

from redis.exceptions import ResponseError


def text(value: object) -> str:
    """A reply value as text: bytes as UTF-8 (a byte that is not UTF-8 shows as U+FFFD, so a
    hostile name is reported, never a crash), anything else (str, int) through ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def is_nogroup(error: ResponseError) -> bool:
    """Redis lost the group (or the stream): after a restart without persistence, or a flush."""
    return str(error).startswith("NOGROUP")


def is_unblocked(error: ResponseError) -> bool:
    """A blocked XREADGROUP was woken because its stream was deleted."""
    return str(error).startswith("UNBLOCKED")
