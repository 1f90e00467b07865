"""What a consumer group's runtime is told: which group, which streams, and its limits.

Kept apart from :mod:`consumers.runtime` so the reclaimer can name the options
without importing the runtime that runs it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from consumers.deadletter import DEFAULT_MAX_LEN
from events import codec


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class GroupOptions:
    group: str
    streams: tuple[str, ...]
    """Every stream of the group, bulk lanes included (groups, reclaim and release cover all)."""
    bulk_streams: tuple[str, ...] = ()
    """Those of ``streams`` read only with the capacity live streams leave: after a live
    read that came back short, non-blocking, and only while fewer than
    ``bulk_max_buffered`` entries wait or run."""
    bulk_max_buffered: int = 1000
    """Bulk entries stop being read at this many buffered entries, so the buffer always
    has room for live ones (keep it below ``max_buffered``)."""
    bulk_while_live: int = 2
    """Bulk keys handled at once while a live key waits or is handled (see
    :class:`consumers.keyqueue.KeyQueue`); otherwise bulk keys use every worker."""
    bulk_poll_ms: int = 20
    """While the bulk lane is held back, the live read blocks at most this long, so
    the bulk lane resumes soon after the buffer drains."""
    deadletter_stream: str
    """Where dead letters go; a partition's go to the one beside it (same name, its tag)."""
    consumer: str = field(default_factory=consumer_name)
    read_count: int = 500
    block_ms: int = 500
    concurrency: int = 16
    max_buffered: int = 5000
    """Stop reading while this many entries wait or run (backpressure)."""
    max_deliveries: int = 5
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 15.0
    claim_min_idle_s: float = 30.0
    claim_interval_s: float = 5.0
    consumer_gone_after_s: float = 3600.0
    ack_interval_s: float = 0.02
    shutdown_deadline_s: float = 10.0
    max_entry_bytes: int = codec.MAX_ENTRY_BYTES
    gaps_key: str = ""
    """Hash (tag ``{events}``) remembering gaps already reported, one beside each partition
    (:func:`events.keys.beside`); empty: no gap check."""
    deadletter_max_len: int = DEFAULT_MAX_LEN
    """Approximate cap on the dead-letter stream (0: none)."""
