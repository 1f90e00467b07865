"""Prometheus metrics shared by every layer.

They are defined once here, at the bottom layer, so sources, consumers and
projections can all count; :mod:`ops` only exposes them.  Label values are
bounded: streams, event types, groups, action kinds and reasons are all
fixed vocabularies, never keys or file names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter(
    "reconciler_events_published_total", "Events appended to a stream.", ["stream", "type"]
)
EVENTS_CONSUMED = Counter(
    "reconciler_events_consumed_total",
    "Events handled by a consumer group, by outcome.",
    ["group", "type", "outcome"],
)
HANDLER_DURATION = Histogram(
    "reconciler_handler_duration_seconds",
    "Time spent in one handler call (one key, coalesced events).",
    ["group"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEAD_LETTERS = Counter(
    "reconciler_dead_letters_total", "Entries moved to the dead-letter stream.", ["group", "reason"]
)
RECLAIMED = Counter(
    "reconciler_entries_reclaimed_total",
    "Pending entries claimed from other (dead or slow) consumers.",
    ["group"],
)
GROUPS_RECREATED = Counter(
    "reconciler_groups_recreated_total",
    "Consumer groups recreated after Redis lost them (NOGROUP).",
    ["group"],
)
LOOP_FAILURES = Counter(
    "reconciler_loop_failures_total",
    "Background loop iterations that failed and were retried after a backoff.",
    ["loop"],
)
LOOP_LAST_TICK = Gauge(
    "reconciler_loop_last_tick_timestamp_seconds",
    "When a background loop last made progress (Unix time).",
    ["loop"],
)
