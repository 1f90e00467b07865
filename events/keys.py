"""Every Redis key this project owns, in one place.

All keys start with one configurable prefix.  Keys that a Lua script or a
MULTI touches together share a hash tag, so they live in one slot of a Redis
Cluster:

* the event streams, the dead-letter stream, the audit stream and the timer
  wheel all carry the tag ``{events}`` (the timer script pops deadlines and
  XADDs in one step; a dead letter is written and acked in one MULTI);
* with ``partitions`` > 1 (``RECONCILER_STREAM_PARTITIONS``) the conversation
  and session streams, both lanes, are split: a key's events go to partition
  ``crc32(key) % partitions``, tagged ``{events-N}``, so a cluster spreads the
  partitions over its nodes and one key's events stay in one stream pair.  The
  keys written in one step with a partition's entries live in its slot too:
  its deadlines (the timer script), its dead letters (written and acked in one
  MULTI) and its reported gaps (checked in one script); see :func:`beside`.
  The audit and notification streams and the action bookkeeping stay in ``{events}``;
* a session's lease, parked list and parked-meta hash carry the queue's own
  key as their tag (``{prefix}lease:{queue:940740243}``), so they share the
  slot of ``queue:940740243``: the gateway's start handshake takes the lease
  and puts the parked messages back in one script, and parking checks the
  lease inside its script (see :mod:`events.parked_scripts`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from events.contract import AUDIT, BULK_SUFFIX, CONVERSATIONS, LANED, NOTIFICATIONS, SESSIONS

SESSION_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EVENTS_TAG = "events"
MAX_PARTITIONS = 1024


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Names of the keys under one prefix."""

    prefix: str = "reconciler:"
    queue_pattern: str = "queue:{session}"
    partitions: int = 1
    """How many partitions the conversation and session streams have (1: one, in ``{events}``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"the partition count must be 1 to {MAX_PARTITIONS}")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix may not contain braces (they are hash tags)")
        if self.queue_pattern.count("{session}") != 1:
            raise ValueError("the queue pattern must contain {session} exactly once")
        leftover = self.queue_pattern.replace("{session}", "")
        if "{" in leftover or "}" in leftover:
            raise ValueError("the queue pattern may not contain braces besides {session}")

    # -- streams, and the keys written with them (tag {events}) ----------

    def in_events_slot(self, name: str) -> str:
        """A key in the ``{events}`` hash slot: the streams, and the keys a MULTI writes
        together with a stream entry (on a cluster they must share one slot)."""
        return f"{self.prefix}{{{EVENTS_TAG}}}:{name}"

    def stream(self, name: str) -> str:
        """The Redis key of an unpartitioned stream (``audit``, ``notifications``, ...), or of
        a laned one's single partition; a partitioned stream has no one key."""
        if self.partitions > 1 and name.removesuffix(BULK_SUFFIX) in LANED:
            raise ValueError(f"stream {name!r} has {self.partitions} partitions: name the key's "
                             "(stream_for) or take them all (lanes)")
        return self.in_events_slot(name)

    def partition_of(self, key: str) -> int:
        """The partition of a conversation key or session name: CRC-32 of its UTF-8 bytes
        modulo the partition count (any language can compute it)."""
        return zlib.crc32(key.encode()) % self.partitions if self.partitions > 1 else 0

    def in_partition(self, partition: int, name: str) -> str:
        """Key ``name`` in the slot of one partition (``{events}`` when there is one)."""
        if self.partitions == 1:
            return self.in_events_slot(name)
        return f"{self.prefix}{{{EVENTS_TAG}-{partition}}}:{name}"

    def stream_for(self, name: str, key: str, lane: str = "live") -> str:
        """The stream an event of ``key`` goes to: its partition's, on its lane."""
        if name not in LANED:
            return self.stream(name)
        suffix = BULK_SUFFIX if lane == "bulk" else ""
        return self.in_partition(self.partition_of(key), f"{name}{suffix}")

    def partition_lanes(self, name: str, partition: int) -> tuple[str, str]:
        """The live stream and the bulk lane of one partition of a laned stream."""
        if name not in LANED:
            raise ValueError(f"stream {name!r} has no bulk lane (only {', '.join(LANED)})")
        return (self.in_partition(partition, name),
                self.in_partition(partition, f"{name}{BULK_SUFFIX}"))

    def lanes_of(self, stream: str) -> tuple[str, ...]:
        """A stream with its other lane (same partition, same slot), or alone if it has none."""
        live = stream.removesuffix(BULK_SUFFIX)
        return (live, live + BULK_SUFFIX) if live.rpartition(":")[2] in LANED else (stream,)

    def live_streams(self, name: str) -> tuple[str, ...]:
        """The live stream of every partition of a laned stream."""
        return tuple(self.partition_lanes(name, p)[0] for p in range(self.partitions))

    def bulk_streams(self, name: str) -> tuple[str, ...]:
        """The bulk lane of every partition: snapshots, listings, re-listings and outbox
        backlogs go there, so consumers read live changes first."""
        return tuple(self.partition_lanes(name, p)[1] for p in range(self.partitions))

    def bulk_stream(self, name: str) -> str:
        """The bulk lane of a laned stream with one partition."""
        self.stream(name)  # raises when partitioned
        return self.partition_lanes(name, 0)[1]

    def lanes(self, name: str) -> tuple[str, ...]:
        """Every Redis stream of a logical stream: per partition, the live one, then its
        bulk lane if any."""
        if name not in LANED:
            return (self.stream(name),)
        return tuple(s for p in range(self.partitions) for s in self.partition_lanes(name, p))

    def event_streams(self) -> dict[str, str]:
        """Every stream this project appends to, by label (``conversations:bulk``; with
        partitions ``conversations:bulk@3``)."""
        out: dict[str, str] = {}
        for name in LANED:
            for p in range(self.partitions):
                at = f"@{p}" if self.partitions > 1 else ""
                live, bulk = self.partition_lanes(name, p)
                out[f"{name}{at}"], out[f"{name}{BULK_SUFFIX}{at}"] = live, bulk
        for name in (AUDIT, NOTIFICATIONS):
            out[name] = self.stream(name)
        for stream in self.deadletter_streams:
            out[f"deadletter{label_of(stream)}"] = stream
        return out

    @property
    def conversations_stream(self) -> str:
        return self.stream(CONVERSATIONS)

    @property
    def sessions_stream(self) -> str:
        return self.stream(SESSIONS)

    @property
    def audit_stream(self) -> str:
        return self.stream(AUDIT)

    @property
    def notifications_stream(self) -> str:
        """Webhook deliveries waiting to be POSTed (one entry per notification and URL)."""
        return self.stream(NOTIFICATIONS)

    @property
    def deadletter_stream(self) -> str:
        """The dead-letter stream of the ``{events}`` slot (each partition has its own:
        :meth:`beside`)."""
        return self.in_events_slot("deadletter")

    @property
    def deadletter_streams(self) -> tuple[str, ...]:
        """Every dead-letter stream: the ``{events}`` slot's, then each partition's."""
        own = tuple(self.in_partition(p, "deadletter") for p in range(self.partitions))
        return own if self.partitions == 1 else (self.deadletter_stream, *own)

    @property
    def stream_gaps(self) -> str:
        """Hash: ``{group} {stream}`` -> boundary of the last gap reported (events.retention);
        a partition's streams use the one :meth:`beside` them."""
        return self.in_events_slot("gaps")

    def deadlines(self, partition: int = 0) -> str:
        """Sorted set of a partition's pending deadlines (score: due time in ms)."""
        return self.in_partition(partition, "deadlines")

    def deadline_payloads(self, partition: int = 0) -> str:
        """Hash: deadline member -> the encoded event to publish when it is due."""
        return self.in_partition(partition, "deadline-payloads")

    @property
    def deadlines_wake(self) -> str:
        """Pub/sub channel: a deadline earlier than every other one of its partition was
        scheduled (one channel for all partitions: a channel is not a key)."""
        return self.in_events_slot("deadlines-wake")

    def open_actions(self, key: str) -> str:
        """Hash: action id -> the intent of an action on ``key`` still without its outcome
        (tag ``{events}``: it is written in one MULTI with the audit entry)."""
        return self.in_events_slot(f"open-actions:{key}")

    def settled_actions(self, key: str) -> str:
        """Hash: action id -> outcome of the recent actions on ``key`` (tag ``{events}``)."""
        return self.in_events_slot(f"settled-actions:{key}")

    # -- conversation bookkeeping ----------------------------------------

    def first_seen(self, kind: str, key: str) -> str:
        """When a conversation was first seen in a state that starts a clock (Unix time)."""
        return f"{self.prefix}first-seen:{kind}:{key}"

    def planned(self, digest: str) -> str:
        """A dry-run action already recorded as planned for the same observed state."""
        return f"{self.prefix}planned:{digest}"

    def webhook_delivered(self, delivery_key: str) -> str:
        """Set once a webhook delivery got a 2xx, so a duplicate entry is not sent again."""
        return f"{self.prefix}webhook-delivered:{delivery_key}"

    @property
    def pauses(self) -> str:
        """Hash: paused key (conversation key or session name) -> the pause as JSON."""
        return f"{self.prefix}pauses"

    # -- gateway sessions and queues -------------------------------------

    def lease(self, session: str) -> str:
        """A session is live while this key exists (TTL refreshed by heartbeats).

        Tagged by the queue key, so it is in the slot of the session's queue.
        """
        return f"{self.prefix}lease:{{{self.queue(session)}}}"

    @property
    def lease_prefix(self) -> str:
        return f"{self.prefix}lease:"

    def session_of_lease(self, key: str) -> str | None:
        head = self.lease_prefix + "{"
        if not key.startswith(head) or not key.endswith("}"):
            return None
        return self.session_of_queue(key[len(head) : -1])

    def session_of_legacy_lease(self, key: str) -> str | None:
        """The session of a lease under the untagged name of earlier releases
        (``{prefix}lease:NAME``), which is no longer read: a gateway still writing it
        looks not live."""
        name = key[len(self.lease_prefix) :] if key.startswith(self.lease_prefix) else ""
        return name if SESSION_NAME.fullmatch(name) else None

    def queue(self, session: str) -> str:
        return self.queue_pattern.replace("{session}", checked_session(session))

    @property
    def queue_glob(self) -> str:
        """A SCAN MATCH pattern for every queue key."""
        return glob_escape(self.queue_pattern).replace(glob_escape("{session}"), "*")

    def session_of_queue(self, key: str) -> str | None:
        head, _, tail = self.queue_pattern.partition("{session}")
        if not (key.startswith(head) and key.endswith(tail)) or len(key) <= len(head) + len(tail):
            return None
        name = key[len(head) : len(key) - len(tail)]
        return name if SESSION_NAME.fullmatch(name) else None

    def parked(self, session: str) -> str:
        """Parked messages of a session, in the slot of its queue."""
        return f"{self.prefix}parked:{{{self.queue(session)}}}"

    def session_of_parked(self, key: str) -> str | None:
        """The session whose parked list is ``key``, or ``None`` for any other key."""
        head = f"{self.prefix}parked:{{"
        if not key.startswith(head) or not key.endswith("}"):
            return None
        return self.session_of_queue(key[len(head) : -1])

    def parked_meta(self, session: str) -> str:
        """Hash with when and why a session's messages were parked (same slot)."""
        return f"{self.prefix}parked-meta:{{{self.queue(session)}}}"

    @property
    def parked_glob(self) -> str:
        return f"{glob_escape(self.prefix)}parked:*"

    def session_noted(self, session: str) -> str:
        """The last orphaned-queue state reported (or planned) for a session, so a
        duplicate event does not report it twice."""
        return f"{self.prefix}noted:{checked_session(session)}"

    @property
    def lease_glob(self) -> str:
        """A SCAN MATCH pattern for every lease key."""
        return f"{glob_escape(self.lease_prefix)}*"

    @property
    def leases_seen(self) -> str:
        """Set of session names whose lease the sessions source last saw live.

        A name in it whose lease is gone at the next scan expired while nobody
        was watching.
        """
        return f"{self.prefix}source:sessions:leases"

    # -- projections and bookkeeping -------------------------------------

    def projection(self, name: str, version: int, part: str) -> str:
        return f"{self.prefix}{{projection:{name}}}:v{version}:{part}"

    def projection_pointer(self, name: str) -> str:
        """The version of a projection that readers and the live runner use."""
        return f"{self.prefix}{{projection:{name}}}:current"

    def projection_versions(self, name: str) -> str:
        """Counter handing out a projection's version numbers."""
        return f"{self.prefix}{{projection:{name}}}:versions"

    def source_state(self, source: str) -> str:
        """Hash of a source's bookkeeping (last event, reconnects, gaps)."""
        return f"{self.prefix}source:{source}"

    @property
    def stream_layout(self) -> str:
        """The partition count every process of this prefix uses (events.layout)."""
        return f"{self.prefix}stream-layout"


def hash_tag(key: str) -> str | None:
    """The hash tag of a key (what Redis Cluster hashes): the text between its first ``{``
    and the first ``}`` after it, when not empty."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


def beside(key: str, stream: str) -> str:
    """``key`` moved to the hash slot of ``stream``: its tag replaced by the stream's.

    A stream's dead letters and reported gaps are written in one step with the stream's
    own entries, so each partition has them in its slot; with one partition every
    stream is in ``{events}`` and ``key`` comes back as it is."""
    tag, own = hash_tag(stream), hash_tag(key)
    if tag is None or own is None or tag == own:
        return key
    return key.replace(f"{{{own}}}", f"{{{tag}}}", 1)


def by_slot(streams: Iterable[str]) -> dict[str | None, tuple[str, ...]]:
    """``streams`` grouped by hash tag, in order: one command (XREADGROUP, XREAD) may read
    several streams only when they share a slot."""
    slots: dict[str | None, list[str]] = {}
    for stream in streams:
        slots.setdefault(hash_tag(stream), []).append(stream)
    return {tag: tuple(group) for tag, group in slots.items()}


def label_of(stream: str) -> str:
    """``@N`` for a stream of partition N, empty for a stream of ``{events}``."""
    tag = hash_tag(stream) or ""
    return f"@{tag.removeprefix(EVENTS_TAG + '-')}" if tag.startswith(EVENTS_TAG + "-") else ""


def stream_label(stream: str) -> str:
    """A stream's name without prefix and tag, with its partition: ``conversations:bulk@3``."""
    tag = hash_tag(stream)
    if tag is None:
        return stream
    return stream.partition(f"{{{tag}}}:")[2] + label_of(stream) or stream


def checked_session(session: str) -> str:
    """A session name, validated, since it becomes part of key names."""
    if not SESSION_NAME.fullmatch(session):
        raise ValueError(f"invalid session name {session!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return session


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def conversation_key(phone: str, channel: str) -> str:
    """The key of a conversation: ``{phone}:{channel}`` (channel = phone_number_id)."""
    return f"{phone}:{channel}"


def split_conversation_key(key: str) -> tuple[str, str]:
    """``(phone, channel)`` of a conversation key; raises ``ValueError`` if it is not one."""
    phone, sep, channel = key.partition(":")
    if not sep or not phone or not channel or "\x00" in key:  # PostgreSQL text holds no NUL
        raise ValueError(f"not a conversation key: {key[:80]!r}")
    return phone, channel
