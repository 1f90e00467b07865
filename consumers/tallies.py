"""How many entries a group handled, by event type and outcome, counted cheaply.

Workers add to a plain dict (a Prometheus counter takes a lock per call, which
showed up in the consumer-throughput profile); the acker flushes the sums into
``reconciler_events_consumed_total`` every ``ack_interval_s``, so the metric
lags by at most that much.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumers.keyqueue import Delivery
from events import metrics
from events.contract import tag_of


class OutcomeTally:
    """Counts per (event type, outcome) for one group, flushed into the metric in batches."""

    def __init__(self, group: str) -> None:
        self.counts: dict[tuple[type, str], int] = {}
        """Read and written by the workers' hot path directly (no method call per entry)."""
        self._group = group
        self._counters: dict[tuple[str, str], Any] = {}

    def add(self, batch: Sequence[Delivery], outcome: str) -> None:
        counts = self.counts
        for d in batch:
            label = (type(d.event), outcome)
            counts[label] = counts.get(label, 0) + 1

    def flush(self) -> None:
        """Add what was counted since the last flush to ``EVENTS_CONSUMED``."""
        counts, self.counts = self.counts, {}
        for (event_type, outcome), n in counts.items():
            label = (tag_of(event_type), outcome)
            counter = self._counters.get(label)
            if counter is None:
                counter = metrics.EVENTS_CONSUMED.labels(self._group, *label)
                self._counters[label] = counter
            counter.inc(n)
