"""Small helpers for reading redis-py replies (bytes or str, error kinds)."""

from __future__ import annotations

from redis.exceptions import ResponseError


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_nogroup(error: ResponseError) -> bool:
    """Redis lost the group (or the stream): after a restart without persistence, or a flush."""
    return str(error).startswith("NOGROUP")


def is_unblocked(error: ResponseError) -> bool:
    """A blocked XREADGROUP was woken because its stream was deleted."""
    return str(error).startswith("UNBLOCKED")
