"""The ``notifier`` role: webhooks for what the reconciler did and saw.

Two consumer groups, both on :class:`consumers.runtime.GroupConsumer`:

* ``notifier`` reads the audit stream and the sessions stream, keeps what
  ``webhook_on`` selects (:func:`selected`), turns each into a small JSON
  document (:func:`document`) and appends one
  :class:`events.contract.WebhookDue` per URL to the notifications stream;
* ``webhooks`` reads the notifications stream and POSTs each entry
  (:mod:`consumers.webhooks`).

Two stages, because a delivery has its own fate: one URL may be down while
another answers, and what goes to the dead letters (and comes back with
`reconciler dlq retry`) is one delivery to one URL, not the audit entry, which
other groups read too.  Both groups ack only after their effect (the entry
appended, the POST answered), so a notifier killed at any point loses nothing;
a duplicate append is harmless because a delivery already answered with a 2xx
is remembered under its key and not sent again, and receivers dedupe on
``Idempotency-Key`` anyway.  Several notifiers split both groups' work.

The ``notifier`` group is created at the end of the streams (``$``): a
notifier installed today does not replay months of audit history to the CRM.
From then on the group's position is kept by Redis, so a restart resumes where
it left off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec
from redis.exceptions import ResponseError

from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from consumers.webhooks import WebhookSender
from events import wiring
from events.contract import SESSIONS, ActionRecorded, EventBase, SessionExpired, WebhookDue, tag_of
from events.envelope import new_event
from events.publisher import Publisher
from events.settings import Settings

log = logging.getLogger(__name__)

SELECT_GROUP = "notifier"
DELIVER_GROUP = "webhooks"
MAX_DIFF_BYTES = 4096
"""``before`` / ``after`` larger than this (dropped message contents, say) are summarised."""

PHRASES = {
    "backfill_flow": "filled in bot_flow_id from the session file",
    "close_conversation": "closed a bot run past its timeout",
    "clear_bot_fields": "cleared the bot fields of a conversation no longer on the bot",
    "quarantine_file": "moved a session file to the quarantine folder",
    "purge_quarantine": "deleted a quarantined session file past its retention",
    "restore_file": "put a quarantined session file back",
    "park_queue": "parked the queued messages of a session that is not live",
    "restore_parked": "put parked messages back at the head of the session's queue",
    "drop_queue": "dropped the queued messages of a session that is not live",
    "drop_parked": "dropped parked messages past their retention",
    "report_orphan_queue": "found queued messages for a session that is not live",
    "pause": "an operator paused it: nothing acts on it until resumed",
    "resume": "an operator resumed it",
    "pause_expired": "its pause ended",
}


def selected(event: EventBase, selectors: Sequence[str]) -> bool:
    """Whether ``webhook_on`` asks for a notification of ``event``."""
    if isinstance(event, SessionExpired):
        return "session.expired" in selectors
    if not isinstance(event, ActionRecorded) or event.outcome == "intent":
        return False  # an intent is not an outcome; its outcome follows
    if "inconsistency" in selectors and event.action.startswith("report_"):
        return True
    for selector in selectors:
        action, _, outcome = selector.partition(":")
        if outcome and action in ("*", event.action) and outcome in ("*", event.outcome):
            return True
    return False


def notification_id(event: EventBase) -> str:
    """The idempotency key: the action id (shared by an action's intent and its one
    outcome), or the event id for an event that is not an action."""
    if isinstance(event, ActionRecorded) and event.action_id:
        return event.action_id
    return event.id


def document(event: EventBase) -> dict[str, Any]:
    """The JSON document POSTed for ``event``: what happened, to what, why; no links."""
    doc: dict[str, Any] = {"id": notification_id(event), "event": tag_of(type(event)),
                           "key": event.key,
                           "occurred_at": event.occurred_at.isoformat()}
    if isinstance(event, ActionRecorded):
        phrase = PHRASES.get(event.action, event.action.replace("_", " "))
        verb = {"done": "", "planned": "would have ", "skipped": "did not act: ",
                "failed": "failed: "}.get(event.outcome, f"{event.outcome}: ")
        doc.update(action=event.action, outcome=event.outcome, target=event.target,
                   reason=event.reason, dry_run=event.dry_run, before=_small(event.before),
                   after=_small(event.after),
                   cause={"id": event.cause_id, "type": event.cause_type},
                   description=f"{event.key}: {verb}{phrase}"
                               + (f" ({event.reason})" if event.reason else ""))
    else:
        doc.update(action="session_expired", outcome="observed", target=event.key,
                   reason="", dry_run=False, before=None, after=None,
                   cause={"id": event.id, "type": tag_of(type(event))},
                   description=f"{event.key}: the gateway session's lease ran out without a stop")
    return doc


def _small(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    size = len(msgspec.json.encode(value))
    return value if size <= MAX_DIFF_BYTES else {"omitted": True, "bytes": size}


def deliveries_for(event: EventBase, urls: Sequence[str]) -> list[WebhookDue]:
    """One :class:`WebhookDue` per URL; each key names the notification and the URL."""
    body = msgspec.json.encode(document(event)).decode()
    nid = notification_id(event)
    return [new_event(WebhookDue, at=event.occurred_at, source="reconciler",
                      key=f"{nid}:{hashlib.sha256(url.encode()).hexdigest()[:16]}",
                      cause_id=event.id, notification_id=nid, url=url, body=body)
            for url in urls]


class Selector:
    """``async (key, deliveries)`` for the ``notifier`` group."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._selectors = settings.webhook_on
        self._urls = settings.webhook_urls
        self._publisher = publisher

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        due = [item for d in deliveries if selected(d.event, self._selectors)
               for item in deliveries_for(d.event, self._urls)]
        if due:
            await self._publisher.publish_many(due)


async def start_at_end(redis: Any, streams: Sequence[str], group: str) -> None:
    """Create ``group`` at the end of each stream, unless it exists already."""
    for stream in streams:
        try:
            await redis.xgroup_create(stream, group, id="$", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


async def run_notifier(settings: Settings, redis: Any, stop: asyncio.Event) -> None:
    """Role ``notifier``: send webhooks until ``stop``; idles when no URL is set."""
    if not settings.webhook_urls or not settings.webhook_secret:
        log.info("no webhook URLs set (RECONCILER_WEBHOOK_URLS); the notifier role idles")
        await stop.wait()
        return
    keys = settings.keys
    publisher = wiring.publisher(settings, redis)
    select_streams = (keys.audit_stream, *keys.live_streams(SESSIONS))
    await start_at_end(redis, select_streams, SELECT_GROUP)
    timeout = httpx.Timeout(settings.webhook_timeout_s)
    limits = httpx.Limits(max_connections=settings.concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
        sender = WebhookSender(client=client, redis=redis, keys=keys,
                               secret=settings.webhook_secret, stream=keys.notifications_stream,
                               backoff_s=settings.webhook_backoff_s,
                               backoff_max_s=settings.webhook_backoff_max_s)
        # An entry waiting for its next try is idle in Redis; the reclaimer must not
        # take it (and count a try) before the longest wait is over.
        claim_idle = max(settings.claim_min_idle_s,
                         settings.webhook_backoff_max_s + settings.webhook_timeout_s + 5)
        deliver = GroupConsumer(redis, GroupOptions(
            group=DELIVER_GROUP, streams=(keys.notifications_stream,),
            deadletter_stream=keys.deadletter_stream, concurrency=settings.concurrency,
            max_deliveries=settings.webhook_max_tries, retry_backoff_s=settings.webhook_backoff_s,
            retry_backoff_max_s=settings.webhook_backoff_max_s, claim_min_idle_s=claim_idle),
            sender)
        sender.delivery_counts = deliver.delivery_counts
        select = GroupConsumer(redis, GroupOptions(
            group=SELECT_GROUP, streams=select_streams, deadletter_stream=keys.deadletter_stream,
            concurrency=settings.concurrency, max_deliveries=settings.max_deliveries,
            claim_min_idle_s=settings.claim_min_idle_s), Selector(settings, publisher))
        await asyncio.gather(select.run(stop), deliver.run(stop))
