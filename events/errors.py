"""Error types of the events layer.

A :class:`MalformedEntry` is *permanent*: retrying will never make the entry
decodable, so consumers dead-letter it at once.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error this project raises on purpose."""


class MalformedEntry(ReconcilerError):
    """A stream entry that is not a valid event; ``reason`` is a short, stable word."""

    reason = "malformed"


class UnknownEventType(MalformedEntry):
    reason = "unknown_type"


class UnsupportedVersion(MalformedEntry):
    reason = "unsupported_version"


class EntryTooLarge(MalformedEntry):
    reason = "too_large"


class MissingField(MalformedEntry):
    reason = "missing_field"


class InvalidPayload(MalformedEntry):
    reason = "invalid_payload"
