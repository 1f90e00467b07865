"""Errors decide a message's fate.

* :class:`PermanentError` -- retrying cannot help (a bad payload, an invalid
  file name): the entry goes to the dead-letter stream at once and is acked.
* :class:`TemporaryError` -- try again later (a store is down, a lock is
  held): the entry stays pending and is retried with backoff, optionally after
  ``delay`` seconds.  After ``max_deliveries`` it is dead-lettered too.
* :class:`RightsMissing` -- a store refused this role (a grant or an ACL rule
  revoked while it runs): no entry is at fault, so none is dead-lettered; the
  group holds its work until the rights are back (:mod:`consumers.rights_gate`).

Any other exception counts as temporary, and is logged with its traceback.
"""

from __future__ import annotations

from events.errors import ReconcilerError


class PermanentError(ReconcilerError):
    """The entry can never be handled; dead-letter it now."""


class TemporaryError(ReconcilerError):
    """The entry may be handled later; retry it."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class RightsMissing(TemporaryError):
    """A store refused the role itself (permission denied); the message names the right."""
