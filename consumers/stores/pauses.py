"""Per-key pauses: "leave this one alone until I am done".

A pause names a conversation key (``{phone}:{channel}``) or a gateway session
name (its queue); the two never collide, since a session name has no ``:``.
While a key is paused the handlers still observe it and decide (so its
inconsistencies are reported in the audit stream, ``inspect`` and the metrics),
but the action executor skips every change with the reason ``paused``
(:meth:`PauseStore.gate_for`).

Pauses live in one Redis hash, ``{prefix}pauses`` (key -> JSON), so they
survive restarts and every process sees the same ones.  A pause with an end
time expires by itself: the CLI schedules a timer-wheel deadline
(:func:`expiry_member`) that publishes ``reconcile.requested`` for the key at
that time; the consumer that handles it removes the expired pause
(:meth:`PauseStore.expire`, one script, so exactly one process records the
expiry in the audit stream) and reconciles the key at once.  A pause whose end
has passed is not in force even before that event is handled: the executor's
gate (:meth:`PauseStore.gate_for`) then expires and records it first, so the
audit always says the pause ended before an action it held back is carried out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from consumers.actions import Action, Actions, Gate, done
from consumers.keyqueue import Delivery
from consumers.runtime import Handler
from events.contract import EventBase, ReconcileRequested
from events.keys import KeySpace, checked_session, split_conversation_key

Scope = Literal["conversations", "sessions"]

PAUSED = "paused"
"""The reason of every action skipped because its key is paused."""
PAUSE_EXPIRED = "pause expired"
"""The reason of the ``reconcile.requested`` the timer wheel publishes at a pause's end."""

# KEYS: the pauses hash.  ARGV: key, now (ms).  Removes the pause only if it has ended.
_EXPIRE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local ok, p = pcall(cjson.decode, raw)
if ok and type(p) == 'table' and type(p['until']) == 'number'
   and p['until'] * 1000 <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return raw
end
return false
"""

# KEYS: the pauses hash.  ARGV: key, the new pause (JSON).  Returns the one it replaced.
_SET = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old or false
"""

# KEYS: the pauses hash.  ARGV: key.  Removes and returns the pause.
_TAKE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
return old or false
"""


@dataclass(frozen=True, kw_only=True)
class Pause:
    key: str
    scope: Scope
    reason: str
    by: str
    since: float
    until: float | None = None
    """Unix time the pause ends by itself; ``None``: until resumed."""

    def in_force(self, now: float) -> bool:
        return self.until is None or self.until > now

    def as_dict(self) -> dict[str, Any]:
        """For the audit stream and the CLI: times as ISO 8601."""
        out = asdict(self)
        out["since"] = _iso(self.since)
        out["until"] = _iso(self.until) if self.until is not None else None
        return out


def scope_of(key: str) -> Scope:
    """``conversations`` for ``{phone}:{channel}``, ``sessions`` for a session name.

    Raises ``ValueError`` naming what a key must look like.
    """
    if ":" in key:
        split_conversation_key(key)
        return "conversations"
    try:
        checked_session(key)
    except ValueError:
        raise ValueError(f"not a conversation key (PHONE:CHANNEL) or a session name: {key[:80]!r}"
                         ) from None
    return "sessions"


def expiry_member(key: str) -> str:
    """The timer-wheel member that ends the pause of ``key``."""
    return f"pause:{key}"


class PauseStore:
    """The pauses hash, read and written atomically."""

    def __init__(self, redis: Any, keys: KeySpace) -> None:
        self._redis = redis
        self._hash = keys.pauses
        self._expire = redis.register_script(_EXPIRE)
        self._set = redis.register_script(_SET)
        self._take = redis.register_script(_TAKE)

    async def pause(self, key: str, *, reason: str, by: str, until: float | None = None,
                    now: float | None = None) -> tuple[Pause, Pause | None]:
        """Pause ``key`` (replacing a pause it had); returns the new pause and the old one."""
        pause = Pause(key=key, scope=scope_of(key), reason=reason[:512], by=by[:128],
                      since=time.time() if now is None else now, until=until)
        old = await self._set(keys=[self._hash], args=[key, msgspec.json.encode(asdict(pause))])
        return pause, _parse(old)

    async def resume(self, key: str) -> Pause | None:
        """Remove the pause of ``key``; returns it (``None`` if there was none)."""
        return _parse(await self._take(keys=[self._hash], args=[key]))

    async def get(self, key: str) -> Pause | None:
        """The stored pause of ``key``, in force or ended but not yet expired."""
        return _parse(await self._redis.hget(self._hash, key))

    async def active(self, key: str, now: float | None = None) -> Pause | None:
        pause = await self.get(key)
        return pause if pause is not None and pause.in_force(time.time() if now is None else now) \
            else None

    def gate_for(self, actions: Actions) -> Gate:
        """The gate of ``actions``: ``paused`` while the key's pause is in force; a pause that
        has ended is expired and recorded (:meth:`record_expiry`) before the action goes on."""
        async def gate(action: Action) -> str | None:
            pause = await self.get(action.key)
            if pause is None:
                return None
            if pause.in_force(time.time()):
                return PAUSED
            await self.record_expiry(action.key, action.cause, actions)
            return None
        return gate

    async def record_expiry(self, key: str, cause: EventBase | None, actions: Actions) -> None:
        """Remove the pause of ``key`` if it has ended and audit its end, once across processes."""
        ended = await self.expire(key)
        if ended is not None:
            await actions.record_made(Action(
                verb="pause_expired", target=key, key=key, cause=cause, reason=ended.reason,
                before=ended.as_dict()), done())

    async def expire(self, key: str, now: float | None = None) -> Pause | None:
        """Remove the pause of ``key`` if it has ended; returns it only to the one caller that did."""
        now_ms = int((time.time() if now is None else now) * 1000)
        return _parse(await self._expire(keys=[self._hash], args=[key, now_ms]))

    async def all(self) -> list[Pause]:
        """Every stored pause, by key."""
        raw = await self._redis.hgetall(self._hash)
        pauses = [p for p in (_parse(v) for v in raw.values()) if p is not None]
        return sorted(pauses, key=lambda p: p.key)

    async def settle_expiries(self, deliveries: Sequence[Delivery], actions: Actions) -> None:
        """Record the end of a pause when its deadline's event is handled (once, across processes)."""
        for d in deliveries:
            event = d.event
            if isinstance(event, ReconcileRequested) and event.reason == PAUSE_EXPIRED:
                await self.record_expiry(event.key, event, actions)


def settling_expiries(handler: Handler, store: PauseStore, actions: Actions) -> Handler:
    """``handler``, first recording the end of any pause whose deadline woke the key."""

    async def handle(key: str, deliveries: Sequence[Delivery]) -> None:
        await store.settle_expiries(deliveries, actions)
        await handler(key, deliveries)

    return handle


def _parse(raw: bytes | str | None) -> Pause | None:
    if not raw:
        return None
    try:
        fields = msgspec.json.decode(raw)
        return Pause(**fields)
    except (msgspec.DecodeError, TypeError):
        return None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()
