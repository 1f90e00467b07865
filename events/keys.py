"""Every Redis key this project owns, in one place.

All keys start with one configurable prefix.  Keys that a Lua script or a
MULTI touches together share a hash tag, so they live in one slot of a Redis
Cluster:

* the event streams, the dead-letter stream, the audit stream and the timer
  wheel all carry the tag ``{events}`` (the timer script pops deadlines and
  XADDs in one step; a dead letter is written and acked in one MULTI);
* a session's lease, parked list and parked-meta hash carry the queue's own
  key as their tag (``{prefix}lease:{queue:940740243}``), so they share the
  slot of ``queue:940740243``: the gateway's start handshake takes the lease
  and puts the parked messages back in one script, and parking checks the
  lease inside its script (see :mod:`events.parked_scripts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from events.contract import AUDIT, BULK_SUFFIX, CONVERSATIONS, LANED, NOTIFICATIONS, SESSIONS

SESSION_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Names of the keys under one prefix."""

    prefix: str = "reconciler:"
    queue_pattern: str = "queue:{session}"

    def __post_init__(self) -> None:
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
        return f"{self.prefix}{{events}}:{name}"

    def stream(self, name: str) -> str:
        """The Redis key of a logical stream (``conversations``, ``sessions``, ...)."""
        return self.in_events_slot(name)

    def bulk_stream(self, name: str) -> str:
        """The bulk lane of a laned stream (``conversations``, ``sessions``): snapshots,
        listings, re-listings and outbox backlogs go there, so consumers read live
        changes first (same ``{events}`` tag)."""
        if name not in LANED:
            raise ValueError(f"stream {name!r} has no bulk lane (only {', '.join(LANED)})")
        return self.stream(f"{name}{BULK_SUFFIX}")

    def lanes(self, name: str) -> tuple[str, ...]:
        """Every Redis stream of a logical stream: the live one, then its bulk lane if any."""
        live = self.stream(name)
        return (live, self.bulk_stream(name)) if name in LANED else (live,)

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
        return self.stream("deadletter")

    @property
    def stream_gaps(self) -> str:
        """Hash: ``{group} {stream}`` -> boundary of the last gap reported (events.retention)."""
        return self.in_events_slot("gaps")

    @property
    def deadlines(self) -> str:
        """Sorted set of pending deadlines (score: due time in ms)."""
        return self.in_events_slot("deadlines")

    @property
    def deadline_payloads(self) -> str:
        """Hash: deadline member -> the encoded event to publish when it is due."""
        return self.in_events_slot("deadline-payloads")

    @property
    def deadlines_wake(self) -> str:
        """Pub/sub channel: a deadline earlier than every other one was scheduled."""
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
