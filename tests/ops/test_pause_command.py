"""``reconciler pause|resume|paused`` as an operator runs them, and a pause's end.

Child processes against real Redis; the expiry goes through the real timer
wheel and the wrapper the consumers role puts around its handlers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

from redis.asyncio import Redis

from consumers.actions import Action, Actions, Result, done
from consumers.keyqueue import Delivery
from consumers.stores.pauses import PAUSE_EXPIRED, PauseStore, expiry_member, settling_expiries
from events import codec, metrics
from events.contract import ReconcileRequested
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from events.timer_wheel import TimerWheel
from ops.group_metrics import GroupCollector
from tests.ops.test_parked_command import audit_entries, reconciler
from tests.support import eventually, recorded, request

KEY = "5511999990000:12345"


async def test_pause_list_resume(redis: Redis, redis_url: str, keys: KeySpace) -> None:
    before = time.time()
    code, out = await reconciler(redis_url, keys, "--json", "pause", KEY, "--until", "2h",
                                 "--reason", "checking by hand")
    assert code == 0, out
    assert json.loads(out)["scope"] == "conversations"
    code, out = await reconciler(redis_url, keys, "pause", "940740243", "--reason", "gateway work")
    assert code == 0 and "scope: sessions" in out, out
    code, out = await reconciler(redis_url, keys, "--json", "inspect", "940740243")
    assert code == 0 and json.loads(out)["paused"] == "until resumed (gateway work)", out
    await GroupCollector(redis, keys).collect()
    assert metrics.PAUSED_KEYS._value.get() == 2

    code, out = await reconciler(redis_url, keys, "--json", "paused")
    assert code == 0, out
    rows = {r["key"]: r for r in json.loads(out)["pauses"]}
    assert set(rows) == {KEY, "940740243"}
    assert rows[KEY]["reason"] == "checking by hand" and rows["940740243"]["until"] == "until resumed"
    assert rows[KEY]["until"].startswith(time.strftime("%Y-", time.gmtime(before + 7200)))
    code, out = await reconciler(redis_url, keys, "paused")
    assert code == 0 and "checking by hand" in out and "UNTIL" in out, out

    due = await redis.zscore(keys.deadlines(), expiry_member(KEY))
    assert due is not None and abs(due / 1000 - (before + 7200)) < 120

    code, out = await reconciler(redis_url, keys, "resume", KEY)
    assert code == 0 and "reconcile: requested" in out, out
    assert await redis.zscore(keys.deadlines(), expiry_member(KEY)) is None
    assert [p.key for p in await PauseStore(redis, keys).all()] == ["940740243"]
    requests = [codec.decode(f) for _, f in await redis.xrange(keys.conversations_stream)]
    assert [(r.key, r.reason) for r in requests if isinstance(r, ReconcileRequested)] == [
        (KEY, "resumed")]
    audited = [(a.action, a.key, a.source) for a in await audit_entries(redis, keys)]
    assert audited == [("pause", KEY, "operator"), ("pause", "940740243", "operator"),
                       ("resume", KEY, "operator")]


async def test_cli_errors_are_one_line(redis_url: str, keys: KeySpace) -> None:
    for args, words in (
        (("pause", "not a key"), "not a conversation key (PHONE:CHANNEL) or a session name"),
        (("pause", KEY, "--until", "soon"), "--until: 'soon' is neither a duration"),
        (("pause", KEY, "--until", "2020-01-01T00:00:00Z"), "is not in the future"),
        (("pause", KEY, "--until", "2030-01-01T00:00:00"), "has no time zone"),
        (("resume", KEY), f"{KEY} is not paused"),
    ):
        code, out = await reconciler(redis_url, keys, *args)
        assert code == 1, out
        assert out.startswith("reconciler: error: ") and words in out, out
        assert "Traceback" not in out


async def test_a_pause_ends_at_its_deadline_once_and_wakes_the_key(
        redis: Redis, redis_url: str, keys: KeySpace) -> None:
    code, out = await reconciler(redis_url, keys, "pause", KEY, "--until", "3s", "--reason", "x")
    assert code == 0, out
    store = PauseStore(redis, keys)
    assert await store.active(KEY) is not None
    timers = TimerWheel(redis, keys)

    async def fired() -> bool:  # as the timers role does, with the real clock
        return (await timers.fire_due()).fired == 1

    await eventually(fired, message="the pause's deadline")
    [(entry_id, fields)] = await redis.xrange(keys.conversations_stream)
    event = codec.decode(fields)
    assert isinstance(event, ReconcileRequested) and event.reason == PAUSE_EXPIRED
    assert await store.active(KEY) is None  # ended, even before its event is handled

    handled: list[str] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        handled.append(key)

    wrapped = settling_expiries(handler, store, Actions(redis=redis, publisher=Publisher(redis, keys),
                                                        keys=keys))
    delivery = Delivery(keys.conversations_stream, entry_id.decode(), event, fields)
    await store.pause("940740243", reason="other", by="t")  # untouched by this expiry
    await wrapped(KEY, [delivery])
    await wrapped(KEY, [delivery])  # a duplicate: the end is recorded once
    assert handled == [KEY, KEY]
    assert [p.key for p in await store.all()] == ["940740243"]
    ends = [a for a in await audit_entries(redis, keys) if a.action == "pause_expired"]
    assert [(a.key, a.reason, a.cause_id) for a in ends] == [(KEY, "x", event.id)]


async def test_an_action_after_a_pause_ended_is_audited_after_the_end(
        redis: Redis, settings: Settings) -> None:
    """The key is handled for another cause before the pause's deadline event: the end is
    recorded first, then the action the pause no longer holds back."""
    store = PauseStore(redis, settings.keys)
    await store.pause(KEY, reason="checking", by="t", until=time.time() + 1)
    actions = Actions.for_settings(redis, settings)
    action = Action(verb="clear_bot_fields", key=KEY, target="crm_conversations#7",
                    cause=request(KEY), before={"assigned_to": "bot"}, after={"assigned_to": None})

    assert (await actions.run(action, _done)).reason == "paused"

    async def ended() -> bool:
        return await store.active(KEY) is None

    await eventually(ended, message="the pause's end")
    assert (await actions.run(replace(action, cause=request(KEY)), _done)).outcome == "done"
    outcomes = [(a.action, a.outcome) for a in await recorded(redis, settings.keys)
                if a.outcome != "intent"]
    assert outcomes == [("clear_bot_fields", "skipped"), ("pause_expired", "done"),
                        ("clear_bot_fields", "done")]
    assert await store.all() == []


async def _done(action_id: str) -> Result:
    return done()
