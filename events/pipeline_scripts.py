"""Queuing a Lua script on a pipeline without an extra round trip.

redis-py's ``Script`` called with ``client=pipe`` makes the pipeline ask
``SCRIPT EXISTS`` for it before every execute: one more round trip on each
publish, on every intent's MULTI and on every gap-checked read.  Queued as
``EVAL`` with its text instead, it costs a few hundred bytes more on the wire;
Redis caches the compiled script by its digest, and a server that lost its
script cache (a restart, a failover) cannot answer ``NOSCRIPT`` in the middle
of a pipeline whose other commands already ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def queue_eval(pipe: Any, script: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` with ``keys`` and ``args`` (its reply comes in order)."""
    pipe.eval(script, len(keys), *keys, *args)
