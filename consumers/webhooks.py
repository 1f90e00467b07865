"""Group ``webhooks``: POST one notification to one URL, signed, retried, dead-lettered.

Each entry of the notifications stream is a :class:`events.contract.WebhookDue`:
the exact JSON body, the URL and the idempotency key.  The handler POSTs it
with three headers:

* ``Idempotency-Key`` -- the notification id (the action id), the same
  on every try, so a receiver keeps the first copy and acknowledges the rest;
* ``Reconciler-Signature: t=<unix seconds>,v1=<hex>`` -- HMAC-SHA256 over
  ``"<t>.<body>"`` with the shared secret; receivers recompute it and reject a
  ``t`` too far from their clock, so a captured request cannot be replayed later;
* ``Reconciler-Event`` -- the document's ``event`` (``audit.action``, ...).

What the answer means is decided here and carried out by the consumer runtime
(:mod:`consumers.errors`): a 2xx is delivered (remembered, so a duplicate entry
is not sent again); a network error, a 5xx or a 429 is a :class:`TemporaryError`
whose delay is ``Retry-After`` when the receiver gave one, otherwise exponential
backoff with full jitter, counted from the delivery count Redis keeps
(XPENDING), so tries survive restarts; any other answer (a 4xx, a redirect)
cannot get better by retrying and is a :class:`PermanentError`, dead-lettered
at once.  After ``webhook_max_tries`` the runtime dead-letters too; `reconciler
dlq retry` puts an entry back on the notifications stream.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from consumers.errors import PermanentError, TemporaryError
from consumers.keyqueue import Delivery
from events import metrics
from events.contract import WebhookDue
from events.keys import KeySpace
from events.loops import backoff_delay

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Reconciler-Signature"
DELIVERED_TTL_S = 7 * 86400
"""How long a delivered notification is remembered (duplicates after that are sent again)."""

DeliveryCounts = Callable[[str, Sequence[str]], Any]
"""``GroupConsumer.delivery_counts``: how often Redis has delivered each entry."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Reconciler-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_delay(tries: int, *, retry_after: str | None, base_s: float, max_s: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``tries`` failed tries.

    ``Retry-After`` (seconds or an HTTP date) wins when present; otherwise full
    jitter over ``base_s * 2 ** (tries - 1)``.  Both are capped at ``max_s``.
    """
    hinted = _retry_after_s(retry_after)
    if hinted is not None:
        return min(max_s, hinted)
    return backoff_delay(base_s, max_s, max(0, tries - 1)) * rand()


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def where(url: str) -> str:
    """A URL as it may be logged: no user, password or query (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookSender:
    """``async (key, deliveries)`` for the ``webhooks`` group."""

    def __init__(self, *, client: httpx.AsyncClient, redis: Any, keys: KeySpace, secret: str,
                 stream: str, backoff_s: float, backoff_max_s: float) -> None:
        self._client = client
        self._redis = redis
        self._keys = keys
        self._secret = secret
        self._stream = stream
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self.delivery_counts: DeliveryCounts | None = None
        """Set to the group's ``delivery_counts`` once the consumer exists."""

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        due = deliveries[-1].event
        if not isinstance(due, WebhookDue):
            raise PermanentError(f"not a webhook delivery: {type(due).__name__}")
        marker = self._keys.webhook_delivered(key)
        if await self._redis.exists(marker):
            return  # a duplicate entry of a notification already delivered
        status, headers = await self._post(due, deliveries)
        if 200 <= status < 300:
            await self._redis.set(marker, b"1", ex=DELIVERED_TTL_S)
            metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
            metrics.WEBHOOK_LATENCY.observe(max(0.0, time.time() - due.occurred_at.timestamp()))
            return
        if status == 429 or status >= 500:
            metrics.WEBHOOK_ATTEMPTS.labels("http_429" if status == 429 else "http_5xx").inc()
            raise TemporaryError(f"HTTP {status} from {where(due.url)}",
                                 delay=await self._delay(deliveries, headers.get("retry-after")))
        metrics.WEBHOOK_ATTEMPTS.labels("rejected").inc()
        raise PermanentError(f"HTTP {status} from {where(due.url)}: a receiver that refuses a "
                             "notification will refuse it again; fix it, then `reconciler dlq retry`")

    async def _post(self, due: WebhookDue, deliveries: Sequence[Delivery],
                    ) -> tuple[int, Mapping[str, str]]:
        body = due.body.encode()
        event = msgspec.json.decode(body).get("event", "")
        headers = {"Content-Type": "application/json", "Idempotency-Key": due.notification_id,
                   "Reconciler-Event": str(event),
                   SIGNATURE_HEADER: sign(self._secret, int(time.time()), body)}
        try:
            response = await self._client.post(due.url, content=body, headers=headers)
        except httpx.HTTPError as e:  # connect, read, write, timeout, protocol
            metrics.WEBHOOK_ATTEMPTS.labels("network").inc()
            log.info("webhook to %s failed: %s", where(due.url), type(e).__name__,
                     extra={"key": due.key, "notification_id": due.notification_id})
            raise TemporaryError(f"{type(e).__name__} posting to {where(due.url)}",
                                 delay=await self._delay(deliveries, None)) from e
        return response.status_code, response.headers

    async def _delay(self, deliveries: Sequence[Delivery], retry_after: str | None) -> float:
        tries = 1
        if self.delivery_counts is not None:
            last = deliveries[-1]
            counts = await self.delivery_counts(last.stream, [last.entry_id])
            tries = counts.get(last.entry_id, 1)
        return retry_delay(tries, retry_after=retry_after, base_s=self._backoff_s,
                           max_s=self._backoff_max_s)
