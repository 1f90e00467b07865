"""The one place where actions are carried out: intent, act, outcome -- and dry run.

Every change this project makes to a store (a file quarantined, restored or
purged; a row backfilled, closed or cleared; a queue parked, restored or
dropped; a dead letter retried or dropped) goes through :meth:`Actions.run`:

1. the action has a deterministic id (:attr:`Action.id`, from its key, verb,
   target, the state it was decided on and its cause), so a retry after a
   crash computes the same id;
2. in a dry run a ``planned`` entry is recorded, once per observed state, and
   nothing else happens: no other module asks whether this is a dry run;
3. :meth:`Actions.skip_reason` is the one place an action is decided not to be
   carried out (its ``gates``, e.g. a paused key): intent, then ``skipped``;
4. otherwise the ``intent`` goes to the audit stream and to the key's
   open-actions hash by one script, before any store is touched (of two
   handlings deciding the same action at once, one records the intent, the
   other waits for its outcome and returns it without recording anything);
5. the act runs and says its :class:`Result`; the outcome entry is written,
   the intent taken out of the open-actions hash and the outcome remembered in
   the settled-actions hash in one script, and only while the intent is still
   open (:mod:`events.action_log`, which a gateway's handshake uses too), so no
   action ever has two outcomes and the same action decided again later (a
   redelivered event) is not redone.

An intent left without an outcome (the process died between 4 and 5, or the
act raised) is settled by whoever handles the key next (:meth:`Actions.settle`):
the handler's ``check`` looks at the stores (the quarantine record names the
action id; a conditional UPDATE either took or did not) and gives the outcome,
or ``None`` if the action was not carried out.  An intent not carried out is
adopted when the same action is decided again (same id, so no second intent),
or closed as ``skipped`` when the handling ends without it
(:meth:`Actions.close_left`).  An intent younger than ``settle_after_s`` may
still be in flight in another consumer, so settling waits until it is that old
(the runtime's own bound for presuming a consumer dead: ``claim_min_idle_s``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from redis.asyncio import Redis

from consumers import audit_entries
from events import action_log, wiring
from events.contract import ActionOutcome, ActionRecorded, EventBase, Source, tag_of
from events.keys import KeySpace
from events.publisher import Publisher
from events.replies import text
from events.settings import Settings

PLANNED_TTL_S = 7 * 86400
"""How long a dry run remembers that it already recorded an action as planned."""
IN_FLIGHT_POLL_S = 0.1
"""How often a handling waiting for the same action in flight elsewhere looks again."""
SETTLED = "settled from the stores after the handling that began it stopped"
"""How an outcome written by :meth:`Actions.settle` begins its reason."""
NOT_CARRIED_OUT = "not carried out before the handling that decided it stopped; decided again"


@dataclass(frozen=True, slots=True)
class Result:
    """How an action ended."""

    outcome: ActionOutcome
    reason: str = ""
    after: dict[str, Any] | None = None
    """The state after the action, when it differs from the one planned at the intent."""
    before: dict[str, Any] | None = None
    """What the outcome adds to the intent's ``before`` (e.g. the content of a drop)."""

    @property
    def changed(self) -> bool:
        """The stores changed (or, in a dry run, would have)."""
        return self.outcome in ("done", "planned")


def done(after: dict[str, Any] | None = None, *, reason: str = "",
         before: dict[str, Any] | None = None) -> Result:
    return Result("done", reason, after, before)


def skipped(reason: str) -> Result:
    return Result("skipped", reason)


def failed(reason: str) -> Result:
    return Result("failed", reason)


def reverted(reason: str, after: dict[str, Any] | None = None) -> Result:
    return Result("reverted", reason, after)


PLANNED = Result("planned")


@dataclass(frozen=True, kw_only=True)
class Action:
    """What is to be done, decided on an observed state."""

    verb: str
    key: str
    target: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    """The state the action is to leave (as decided; the outcome may say more)."""
    cause: EventBase | None = None
    reason: str = ""
    origin: str = ""
    """Anything else that makes the action unique (an operator's request id)."""

    @property
    def id(self) -> str:
        """The same for the same action decided again on the same state and cause."""
        return _digest([self.key, self.verb, self.target, self.before, self.after,
                        self.cause.id if self.cause is not None else None, self.origin])

    @property
    def state_digest(self) -> str:
        """The same for the same action on the same state, whatever woke the handler."""
        return _digest([self.key, self.verb, self.target, self.before, self.after, self.origin])


Act = Callable[[str], Awaitable[Result]]
"""Carries out the action; gets its id (to leave in the store, where it can)."""
Check = Callable[[ActionRecorded], Awaitable[Result | None]]
"""Looks at the stores for an intent without outcome: its outcome, or ``None`` if not carried out."""
Gate = Callable[[Action], Awaitable[str | None]]
"""Says why an action is not to be carried out now, or ``None``."""


@dataclass
class Actions:
    """Runs actions for one process (see the module docstring)."""

    redis: Redis
    publisher: Publisher
    keys: KeySpace
    dry_run: bool = False
    source: Source = "reconciler"
    settle_after_s: float = 30.0
    settled_ttl_s: float = action_log.SETTLED_TTL_S
    gates: list[Gate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._intents = action_log.Intents(self.redis, self.publisher, self.keys)
        self._outcomes = action_log.Outcomes(self.redis, self.publisher, self.keys,
                                             settled_ttl_s=self.settled_ttl_s)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings, *, source: Source = "reconciler",
                     dry_run: bool | None = None) -> Actions:
        """The executor of a process: audit stream with the settings' retention; the
        reconciler's own actions (not an operator's) skip a paused key."""
        actions = cls(redis=redis, publisher=wiring.publisher(settings, redis), keys=settings.keys,
                      dry_run=settings.dry_run if dry_run is None else dry_run, source=source,
                      settle_after_s=settings.claim_min_idle_s,
                      settled_ttl_s=settings.settled_ttl_s)
        if source == "reconciler":
            from consumers.stores.pauses import PauseStore  # it records expiries through us

            pauses = PauseStore(redis, settings.keys)
            actions.gates.append(pauses.gate_for(actions))
        return actions

    async def run(self, action: Action, act: Act, *, check: Check | None = None) -> Result:
        """Carry out ``action`` through ``act``, audited; the result.

        When ``act`` raises and there is a ``check``, the intent stays open for
        the next handling of the key to settle (the error propagates); with no
        ``check`` (a one-off operator command) it is recorded as ``failed``.
        """
        if self.dry_run:
            await self._plan(action)
            return PLANNED
        intent = await self._claim(action)
        if isinstance(intent, Result):
            return intent
        reason = await self.skip_reason(action)
        if reason is not None:
            result = skipped(reason)
        else:
            try:
                result = await act(action.id)
            except Exception as e:
                if check is None:
                    await self._outcome(intent, failed(f"{type(e).__name__}: {e}"), action.cause)
                raise
        await self._outcome(intent, result, action.cause)
        return result

    async def record_made(self, action: Action, result: Result) -> ActionRecorded | None:
        """Audit a change already made in one atomic step elsewhere (a pause written by one
        HSET): its intent and outcome together; the outcome entry (``None`` in a dry run)."""
        if self.dry_run:
            await self._plan(action)
            return None
        intent = await self._claim(action)
        if isinstance(intent, Result):
            return None
        return await self._outcome(intent, result, action.cause)

    async def skip_reason(self, action: Action) -> str | None:
        """Why ``action`` is not to be carried out now (the first gate that says so)."""
        for gate in self.gates:
            reason = await gate(action)
            if reason:
                return reason
        return None

    async def settle(self, key: str, check: Check) -> set[str]:
        """Settle the intents of ``key`` left without an outcome, by ``check``.

        Returns the ids of those not carried out: the same action decided again
        adopts its intent; :meth:`close_left` closes the rest.
        """
        left: set[str] = set()
        for intent in await self._wait_stale(key):
            result = await check(intent)
            if result is None:
                left.add(intent.action_id)
            else:
                why = result.reason or intent.reason
                await self._outcome(intent, replace(result, reason=f"{SETTLED}: {why}"), None)
        return left

    async def close_left(self, key: str, left: set[str]) -> None:
        """Close as ``skipped`` the intents from :meth:`settle` that were not adopted."""
        for action_id in left:
            intent = await self._open_intent(key, action_id)
            if intent is not None:
                await self._outcome(intent, skipped(NOT_CARRIED_OUT), None)

    async def open_intents(self, key: str) -> list[ActionRecorded]:
        """The intents of ``key`` without an outcome yet, oldest first."""
        raw = await self.redis.hgetall(self.keys.open_actions(key))
        intents = [action_log.decode_intent(v) for v in raw.values()]
        return sorted(intents, key=lambda i: i.occurred_at)

    # -- the entries ----------------------------------------------------------

    def _entry(self, action: Action, outcome: ActionOutcome, *, reason: str = "",
               dry_run: bool = False) -> ActionRecorded:
        return audit_entries.entry(
            source=self.source, key=action.key,
            cause_id=action.cause.id if action.cause is not None else None,
            cause_type=tag_of(type(action.cause)) if action.cause is not None else None,
            action=action.verb, target=action.target, outcome=outcome, action_id=action.id,
            dry_run=dry_run, reason=reason or action.reason, before=action.before,
            after=action.after)

    async def _plan(self, action: Action) -> None:
        """One ``planned`` entry per observed state (repeated events plan nothing new)."""
        if await self.redis.set(self.keys.planned(action.state_digest), b"1", nx=True,
                                ex=PLANNED_TTL_S):
            planned = self._entry(action, "planned", dry_run=True)
            await self.publisher.publish(planned)
            audit_entries.count(planned, cause_at=None)

    async def _claim(self, action: Action) -> ActionRecorded | Result:
        """The intent to act under: a new one, or one left open long enough to adopt.

        The same action (same id) may be decided by two handlings at once (a
        redelivered event): the first records the intent; the other waits for
        its outcome and returns it, recording nothing.
        """
        while True:
            intent = self._entry(action, "intent")
            state, value = await self._intents.claim(intent)
            if state == "new":
                audit_entries.count(intent, cause_at=None)
                return intent
            if state == "settled":
                return Result(cast(ActionOutcome, action_log.settled_outcome(value)),
                              "settled by another handling")
            open_intent = action_log.decode_intent(value)
            age = time.time() - open_intent.occurred_at.timestamp()
            if age >= self.settle_after_s:
                return open_intent  # its handling is presumed dead: adopt it
            await asyncio.sleep(min(self.settle_after_s - age, IN_FLIGHT_POLL_S))

    async def _outcome(self, intent: ActionRecorded, result: Result,
                       cause: EventBase | None) -> ActionRecorded | None:
        """Write the outcome of ``intent`` unless someone else did; the entry if written."""
        before = intent.before if result.before is None else {**(intent.before or {}),
                                                               **result.before}
        outcome = audit_entries.entry(
            source=self.source, key=intent.key, cause_id=intent.cause_id,
            cause_type=intent.cause_type, action=intent.action,
            target=intent.target, outcome=result.outcome, action_id=intent.action_id,
            reason=result.reason or intent.reason, before=before,
            after=result.after if result.after is not None else intent.after)
        change = action_log.change_of(intent) if result.outcome == "done" else None
        if not await self._outcomes.write(outcome, change=change):
            return None  # settled by someone else first
        audit_entries.count(outcome, cause_at=cause.occurred_at if cause is not None else None)
        return outcome

    async def credited(self, intent: ActionRecorded) -> Result:
        """The outcome of an intent left open whose change the stores show: ``done``, unless
        another action of its key was settled ``done`` with that very change (two handlings
        decided it for two causes; each write is conditional on the state before, so only
        one of them took, and it is the other's)."""
        wanted = action_log.settled_value("done", action_log.change_of(intent))
        settled = await self.redis.hgetall(self.keys.settled_actions(intent.key))
        other = next((text(i) for i, v in settled.items()
                      if text(v) == wanted and text(i) != intent.action_id), None)
        return skipped(f"the same change was made by action {other}") if other else done()

    async def _open_intent(self, key: str, action_id: str) -> ActionRecorded | None:
        raw = await self.redis.hget(self.keys.open_actions(key), action_id)
        return action_log.decode_intent(raw) if raw is not None else None

    async def _wait_stale(self, key: str) -> list[ActionRecorded]:
        """The open intents of ``key`` once none is young enough to be in flight elsewhere."""
        while True:
            intents = await self.open_intents(key)
            ages = [time.time() - i.occurred_at.timestamp() for i in intents]
            young = [self.settle_after_s - age for age in ages if age < self.settle_after_s]
            if not young:
                return intents
            await asyncio.sleep(max(young) + 0.01)




def _digest(parts: list[Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
