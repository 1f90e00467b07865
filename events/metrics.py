"""Prometheus metrics shared by every layer.

They are defined once here, at the bottom layer, so sources, consumers and
projections can all count; :mod:`ops` only exposes them.  Label values are
bounded: streams, event types, groups, action kinds and reasons are all
fixed vocabularies, never keys or file names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from events.loop_histogram import LoopHistogram

EVENTS_PUBLISHED = Counter(
    "reconciler_events_published_total", "Events appended to a stream.", ["stream", "type"]
)
EVENTS_CONSUMED = Counter(
    "reconciler_events_consumed_total",
    "Events handled by a consumer group, by outcome.",
    ["group", "type", "outcome"],
)
HANDLER_DURATION = LoopHistogram(  # observed once per handler call: see events.loop_histogram
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
STREAM_GAPS = Counter(
    "reconciler_stream_gaps_total",
    "Times a consumer group found entries removed from its stream before it had handled "
    "them (trimmed by other hands, deleted while pending, group recreated); each time the "
    "store's keys are re-listed.",
    ["stream", "group"],
)
ECHOES_SKIPPED = Counter(
    "reconciler_echoes_skipped_total",
    "Events that only reported back a change the conversations handler made and then "
    "observed (its own UPDATE through the capture, its own quarantine through the watcher), "
    "not handled again.",
    ["kind"],
)
LOOP_FAILURES = Counter(
    "reconciler_loop_failures_total",
    "Background loop iterations that failed and were retried after a backoff.",
    ["loop"],
)
STREAM_IDS_EXHAUSTED = Gauge(
    "reconciler_stream_ids_exhausted",
    "1 while a stream has used its last possible entry id (every XADD to it fails).",
    ["stream"],
)
LOOP_LAST_TICK = Gauge(
    "reconciler_loop_last_tick_timestamp_seconds",
    "When a background loop last made progress (Unix time).",
    ["loop"],
)

# -- sources -----------------------------------------------------------------

SOURCE_LAST_EVENT = Gauge(
    "reconciler_source_last_event_timestamp_seconds",
    "When a source last published an event (Unix time).",
    ["source"],
)
SOURCE_RECONNECTS = Counter(
    "reconciler_source_reconnects_total", "Times a source reconnected to its store.", ["source"]
)
SOURCE_RESYNCS = Counter(
    "reconciler_source_resyncs_total",
    "Times a source re-listed its store (start, reconnect, rescan).",
    ["source"],
)
INVALID_INPUTS = Counter(
    "reconciler_invalid_inputs_total",
    "Inputs a source refused (bad file, foreign name, bad payload), by reason.",
    ["source", "reason"],
)

# -- reactions ---------------------------------------------------------------

ACTIONS = Counter(
    "reconciler_actions_total",
    "Actions taken (or planned in a dry run), by kind and outcome.",
    ["action", "outcome"],
)
REACTION_LATENCY = Histogram(
    "reconciler_reaction_latency_seconds",
    "From the change that caused an action (event occurred_at) to the action done.",
    ["action"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TIMERS_SCHEDULED = Gauge(
    "reconciler_timers_scheduled", "Deadlines waiting in the timer wheel."
)
NEXT_DEADLINE = Gauge(
    "reconciler_timers_next_deadline_timestamp_seconds",
    "When the earliest deadline is due (Unix time; 0 when none).",
)
PARKED_MESSAGES = Gauge(
    "reconciler_parked_messages", "Queue messages parked for sessions that are not live."
)
PAUSED_KEYS = Gauge(
    "reconciler_paused_keys", "Conversations and sessions paused by an operator (nothing acts on them)."
)
PARKED_SESSIONS = Gauge(
    "reconciler_parked_sessions", "Gateway sessions with at least one parked message."
)
PARKED_COUNTED_AT = Gauge(
    "reconciler_parked_counted_timestamp_seconds",
    "When the parked gauges were last counted from Redis (Unix time; 0 before the first count).",
)
QUARANTINED_FILES = Gauge(
    "reconciler_quarantined_files", "Session files waiting in the quarantine folder."
)

# -- outbound notifications (consumers/webhooks.py) --------------------------

WEBHOOK_ATTEMPTS = Counter(
    "reconciler_webhook_attempts_total",
    "Webhook POSTs by result: delivered, http_5xx, http_429, network (all retried), rejected "
    "(other answers: dead-lettered at once).",
    ["result"],
)
WEBHOOK_LATENCY = Histogram(
    "reconciler_webhook_latency_seconds",
    "From the notified audit entry or event (occurred_at) to its webhook delivered.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)

# -- consumer groups (read from XINFO / XPENDING by ops.group_metrics) --------

GROUP_LAG = Gauge(
    "reconciler_group_lag_entries",
    "Entries in a stream not yet delivered to a consumer group (XINFO GROUPS lag).",
    ["stream", "group"],
)
GROUP_PENDING = Gauge(
    "reconciler_group_pending_entries",
    "Entries delivered to a consumer group and not yet acked (XPENDING).",
    ["stream", "group"],
)
GROUP_OLDEST_PENDING_AGE = Gauge(
    "reconciler_group_oldest_pending_age_seconds",
    "Age of the oldest pending entry of a group, from its stream id (0 when none).",
    ["stream", "group"],
)
GROUP_CONSUMERS = Gauge(
    "reconciler_group_consumers", "Consumers registered in a consumer group.", ["stream", "group"]
)
DEADLETTER_ENTRIES = Gauge(
    "reconciler_deadletter_entries", "Entries waiting in the dead-letter stream (XLEN)."
)

# -- inconsistencies (set by the projection that tracks them) ----------------

INCONSISTENCIES = Gauge(
    "reconciler_inconsistencies", "Keys currently inconsistent across the stores, by kind.", ["kind"]
)
OLDEST_INCONSISTENCY_AGE = Gauge(
    "reconciler_oldest_inconsistency_age_seconds",
    "How long the oldest current inconsistency of a kind has lasted (0 when none).",
    ["kind"],
)
