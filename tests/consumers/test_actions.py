"""The action executor on a real Redis: intent first, exactly one outcome, dry run, settling."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from consumers.actions import Action, Actions, Result, done, skipped
from events.contract import ActionRecorded, ReconcileRequested
from events.keys import KeySpace
from events.publisher import Publisher
from tests.support import eventually, one_line_per_action, recorded, request

KEY = "5215550101:940740243"


def executor(redis: Redis, keys: KeySpace, **options: object) -> Actions:
    return Actions(redis=redis, publisher=Publisher(redis, keys), keys=keys, **options)  # type: ignore[arg-type]


def backfill(cause_id: str = "") -> Action:
    """The same backfill decided on the same row, caused by event ``cause_id`` (a fresh one)."""
    cause = request(KEY) if not cause_id else ReconcileRequested(
        id=cause_id, occurred_at=datetime.now(UTC), source="operator", key=KEY,
        scope="conversations")
    return Action(verb="backfill_flow", key=KEY, target="crm_conversations#1", cause=cause,
                  before={"bot_flow_id": None}, after={"bot_flow_id": "F"})


async def audit(redis: Redis, keys: KeySpace) -> list[ActionRecorded]:
    return await recorded(redis, keys)


async def test_the_intent_is_recorded_before_the_act_and_one_outcome_after(
    redis: Redis, keys: KeySpace
) -> None:
    actions = executor(redis, keys)
    action = backfill()
    seen_during_act: list[list[str]] = []

    async def act(action_id: str) -> Result:
        seen_during_act.append([e.outcome for e in await audit(redis, keys)])
        assert await redis.hexists(keys.open_actions(KEY), action_id)
        return done()

    assert (await actions.run(action, act)).outcome == "done"
    assert seen_during_act == [["intent"]]
    entries = await audit(redis, keys)
    assert [(e.outcome, e.action_id) for e in entries] == [("intent", action.id),
                                                           ("done", action.id)]
    assert not await redis.exists(keys.open_actions(KEY))
    assert (await actions.run(action, act)).outcome == "done"  # decided again: not redone
    assert len(seen_during_act) == 1 and len(await audit(redis, keys)) == 2


async def test_settled_actions_are_remembered_for_the_setting(redis: Redis, keys: KeySpace) -> None:
    actions = executor(redis, keys, settled_ttl_s=3600.0)

    assert (await actions.run(backfill(), lambda _: _done())).outcome == "done"

    assert 3000 < await redis.ttl(keys.settled_actions(KEY)) <= 3600


async def _done() -> Result:
    return done()


async def test_a_dry_run_only_plans_once_per_state(redis: Redis, keys: KeySpace) -> None:
    actions = executor(redis, keys, dry_run=True)

    async def act(_action_id: str) -> Result:
        raise AssertionError("a dry run carried out an action")

    for n in range(3):  # three events about the same state
        assert (await actions.run(backfill(f"01J{n:023d}"), act)).outcome == "planned"
    entries = await audit(redis, keys)
    assert [(e.outcome, e.dry_run) for e in entries] == [("planned", True)]


async def test_a_gate_skips_the_action_with_its_reason(redis: Redis, keys: KeySpace) -> None:
    async def paused(action: Action) -> str | None:
        return "paused" if action.key == KEY else None

    actions = executor(redis, keys, gates=[paused])

    async def act(_action_id: str) -> Result:
        raise AssertionError("a paused key was acted on")

    result = await actions.run(backfill(), act)
    assert (result.outcome, result.reason) == ("skipped", "paused")
    (line,) = one_line_per_action(await audit(redis, keys))
    assert (line.outcome, line.reason) == ("skipped", "paused")


async def test_an_intent_left_by_a_crash_is_settled_from_the_stores_by_the_next_handling(
    redis: Redis, keys: KeySpace
) -> None:
    action = backfill()

    async def crash(_action_id: str) -> Result:
        raise ConnectionError("killed between the UPDATE and its outcome")

    async def row_took(intent: ActionRecorded) -> Result | None:
        assert intent.action_id == action.id and intent.outcome == "intent"
        return done(reason="the row holds the value")

    with pytest.raises(ConnectionError):
        await executor(redis, keys).run(action, crash, check=row_took)
    assert [e.outcome for e in await audit(redis, keys)] == ["intent"]  # left open, not failed
    next_handling = executor(redis, keys, settle_after_s=0.0)
    assert await next_handling.settle(KEY, row_took) == set()
    assert await next_handling.settle(KEY, row_took) == set()  # settled once
    (line,) = one_line_per_action(await audit(redis, keys))
    assert line.outcome == "done" and line.reason.endswith(": the row holds the value")
    assert line.reason.startswith("settled from the stores")


async def test_an_intent_not_carried_out_is_adopted_by_the_same_action_decided_again(
    redis: Redis, keys: KeySpace
) -> None:
    action, other = backfill(), backfill("01J" + "9" * 23)

    async def crash(_action_id: str) -> Result:
        raise ConnectionError("killed before the UPDATE")

    async def not_carried_out(_intent: ActionRecorded) -> None:
        return None

    for left in (action, other):
        with pytest.raises(ConnectionError):
            await executor(redis, keys).run(left, crash, check=not_carried_out)
    retry = executor(redis, keys, settle_after_s=0.0)
    left = await retry.settle(KEY, not_carried_out)
    assert left == {action.id, other.id}

    async def act(_action_id: str) -> Result:
        return done()

    assert (await retry.run(action, act, check=not_carried_out)).outcome == "done"  # adopted
    await retry.close_left(KEY, left)  # ``other`` was not decided again
    lines = {line.action_id: line for line in one_line_per_action(await audit(redis, keys))}
    assert lines[action.id].outcome == "done"
    assert lines[other.id].outcome == "skipped" and "not carried out" in lines[other.id].reason


async def test_the_same_action_decided_twice_at_once_is_carried_out_once(
    redis: Redis, keys: KeySpace
) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def act(action_id: str) -> Result:
        calls.append(action_id)
        await release.wait()
        return done()

    first = asyncio.create_task(executor(redis, keys).run(backfill("01J" + "1" * 23), act))
    await eventually(lambda: _true(bool(calls)), message="the first handling to act")
    second = asyncio.create_task(executor(redis, keys).run(backfill("01J" + "1" * 23), act))
    release.set()
    results = await asyncio.gather(first, second)
    assert [r.outcome for r in results] == ["done", "done"] and len(calls) == 1
    assert [e.outcome for e in await audit(redis, keys)] == ["intent", "done"]


async def test_without_a_check_an_act_that_raises_is_recorded_failed(
    redis: Redis, keys: KeySpace
) -> None:
    async def refuse(_action_id: str) -> Result:
        raise LookupError("no dead letter 1-0")

    with pytest.raises(LookupError):
        await executor(redis, keys, source="operator").run(backfill(), refuse)
    (line,) = one_line_per_action(await audit(redis, keys))
    assert line.outcome == "failed" and "no dead letter 1-0" in line.reason


async def test_an_act_that_says_skipped_says_why(redis: Redis, keys: KeySpace) -> None:
    async def lost_race(_action_id: str) -> Result:
        return skipped("the row changed since it was read")

    result = await executor(redis, keys).run(backfill(), lost_race)
    assert not result.changed
    (line,) = one_line_per_action(await audit(redis, keys))
    assert (line.outcome, line.reason) == ("skipped", "the row changed since it was read")


async def _true(value: bool) -> bool:
    return value


async def test_an_intent_is_not_credited_with_the_change_another_action_made(
    redis: Redis, keys: KeySpace
) -> None:
    """Two handlings decide the same backfill for two causes at once: one dies after its
    intent, the other makes the change.  The row then holds the value, but settling the
    first must not call it done: the change is remembered as the other action's."""
    dying, living = backfill(), backfill()
    settler = executor(redis, keys, settle_after_s=0.0)

    async def crash(_action_id: str) -> Result:
        raise ConnectionError("killed after the intent, before the UPDATE")

    async def took(_action_id: str) -> Result:
        return done()

    async def row_holds_the_change(intent: ActionRecorded) -> Result | None:
        return await settler.credited(intent)  # as ConversationActs.check, the row holding it

    with pytest.raises(ConnectionError):
        await executor(redis, keys).run(dying, crash, check=row_holds_the_change)
    assert (await executor(redis, keys).run(living, took)).outcome == "done"
    assert await settler.settle(KEY, row_holds_the_change) == set()
    lines = {line.action_id: line for line in one_line_per_action(await audit(redis, keys))}
    assert lines[living.id].outcome == "done"
    assert lines[dying.id].outcome == "skipped" and living.id in lines[dying.id].reason
    assert (await settler.credited(lines[living.id])).outcome == "done"  # its own change
