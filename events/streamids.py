"""A stream that has used its last possible entry id: detected, counted, reported.

An entry added with the explicit id ``18446744073709551615-18446744073709551615``
(the largest a Redis stream can hold) leaves no id for the next one: every
later ``XADD *`` fails with "exhausted the last possible ID", so nothing more
is published to that stream, whoever publishes.  Deleting the entry is not
enough (the stream remembers its last generated id); the recovery is in
docs/security.md ("A stream that ran out of entry ids").

This module is the one place that knows the condition:

* :func:`is_exhausted_error` tells a publisher's ``ResponseError`` apart;
* :func:`find_exhausted` asks Redis (``XINFO STREAM``) which streams are in
  that state, updates the process-wide :data:`EXHAUSTED` registry and the
  ``reconciler_stream_ids_exhausted`` gauge, and logs one CRITICAL line per
  stream when it is first seen;
* ``/healthz`` and ``/readyz`` (:mod:`ops.health`) fail while the registry
  names a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from events import metrics
from events.errors import ReconcilerError
from events.replies import text

log = logging.getLogger(__name__)

LAST_POSSIBLE_ID = "18446744073709551615-18446744073709551615"
_MESSAGE = "exhausted the last possible id"


class StreamExhausted(ReconcilerError):
    """A stream cannot take another entry; the message names it and the recovery."""


EXHAUSTED: dict[str, str] = {}
"""Stream name -> its Redis key, for every stream seen exhausted in this process."""


def is_exhausted_error(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and _MESSAGE in str(error).lower()


def describe(names: list[str]) -> str:
    return (f"stream(s) {', '.join(names)} used the last possible entry id ({LAST_POSSIBLE_ID}): "
            "every XADD fails, nothing is published; recover as in docs/security.md "
            "(\"A stream that ran out of entry ids\")")


async def find_exhausted(redis: Any, streams: Mapping[str, str]) -> list[str]:
    """The names among ``streams`` (name -> key) that are exhausted now; updates the registry."""
    found = []
    for name, key in streams.items():
        try:
            info = await redis.xinfo_stream(key)
        except ResponseError:  # no such stream: nothing to exhaust
            info = {}
        last = info.get("last-generated-id", info.get(b"last-generated-id", b""))
        last = text(last)
        if last == LAST_POSSIBLE_ID:
            found.append(name)
            if name not in EXHAUSTED:
                log.critical("%s", describe([name]), extra={"stream": name})
            EXHAUSTED[name] = key
        elif EXHAUSTED.pop(name, None) is not None:
            log.warning("stream %s takes new entries again", name, extra={"stream": name})
        metrics.STREAM_IDS_EXHAUSTED.labels(name).set(1 if last == LAST_POSSIBLE_ID else 0)
    return found
