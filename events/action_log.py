"""Where an action's intent waits for its outcome: the open- and settled-actions hashes.

An ``intent`` audit entry is written together with an entry in its key's
open-actions hash, so whoever handles the key next finds an intent left without
an outcome and settles it (:mod:`consumers.actions`).  A consumer claims an
action in one script (:data:`CLAIM_LUA`, :class:`Intents`): the outcome it
already has, the intent open for it, or a new intent written.  An outcome is
written only while its intent is still open, by one script
(:data:`OUTCOME_LUA`): the audit entry, the intent taken out of the open hash,
the outcome remembered in the settled hash for ``settled_ttl_s``.  So an
action never has two outcomes, whoever writes them: a consumer, the reconciler
settling what a dead process left, or a gateway's start handshake in any
language (:func:`write_intent`; ``docs/gateway.md`` prints both steps;
``examples/node/outcome.lua`` is the outcome script).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import codec
from events.contract import ActionRecorded
from events.keys import KeySpace
from events.pipeline_scripts import queue_eval
from events.publisher import Publisher
from events.replies import text
from events.streamids import StreamExhausted, describe, find_exhausted, is_exhausted_error

SETTLED_TTL_S = 7 * 86400
"""How long the outcome of an action is remembered by default (``RECONCILER_SETTLED_TTL_S``),
so the same action decided again (a redelivered event) is recognised and not recorded twice."""

OUTCOME_LUA: Final = """
-- KEYS: the audit stream, the key's open-actions hash, its settled-actions hash.
-- ARGV: action id, outcome, settled TTL (s), then the entry's fields and values.
-- Returns the entry id, or false when the intent is no longer open (already settled).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return false end
local entry = {KEYS[1], '*'}
for i = 4, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(entry))
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
return id
"""


CLAIM_LUA: Final = """
-- KEYS: the audit stream, the key's open-actions hash, its settled-actions hash.
-- ARGV: action id, the intent (its open-actions value), then its entry's fields and values.
-- Returns {'settled', outcome}, {'open', the intent already open} or {'new', entry id}.
local settled = redis.call('HGET', KEYS[3], ARGV[1])
if settled then return {'settled', settled} end
local open = redis.call('HGET', KEYS[2], ARGV[1])
if open then return {'open', open} end
local entry = {KEYS[1], '*'}
for i = 3, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(entry))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'new', id}
"""


def change_of(intent: ActionRecorded) -> str:
    """What an action changes, whoever decided it and why: its key, verb, target and the
    states before and after.  A ``done`` outcome is remembered with it, so settling an
    intent left open can tell that another action already made the same change."""
    parts = [intent.key, intent.action, intent.target, intent.before, intent.after]
    return hashlib.sha256(msgspec.json.encode(parts, order="sorted")).hexdigest()[:32]


def settled_value(outcome: str, change: str | None) -> str:
    """What the settled-actions hash holds for an outcome: ``done|<change>`` for a ``done``
    whose change (:func:`change_of`) is given, the bare outcome otherwise."""
    return f"done|{change}" if change is not None and outcome == "done" else outcome


def settled_outcome(value: bytes | str) -> str:
    """The outcome in a settled-actions value (:func:`settled_value`)."""
    return text(value).partition("|")[0]


def encode_intent(intent: ActionRecorded) -> bytes:
    """The open-actions hash value: the intent as the audit entry's ``data`` has it."""
    return codec.encode_json(intent)


def decode_intent(raw: bytes | str) -> ActionRecorded:
    return msgspec.json.decode(raw, type=ActionRecorded)


async def write_intent(redis: Redis, publisher: Publisher, keys: KeySpace,
                       intent: ActionRecorded) -> None:
    """Write an intent unconditionally, its audit entry and open-actions entry in one MULTI
    (a gateway's handshake: its action id is new each time)."""
    async with redis.pipeline(transaction=True) as pipe:
        publisher.add_to(pipe, intent)
        pipe.hset(keys.open_actions(intent.key), intent.action_id, encode_intent(intent))
        await pipe.execute()


Claimed = tuple[Literal["settled", "open", "new"], bytes]
"""What :meth:`Intents.claim` found: the settled outcome, the open intent, or the new entry id."""


class Intents:
    """Claims actions by :data:`CLAIM_LUA`: one round trip whatever it finds."""

    def __init__(self, redis: Redis, publisher: Publisher, keys: KeySpace) -> None:
        self._redis, self._publisher, self._keys = redis, publisher, keys

    async def claim(self, intent: ActionRecorded) -> Claimed:
        """The outcome ``intent``'s action already has, the intent open for it, or ``intent``
        written.  The audit stream is trimmed by the outcome's write that follows."""
        state, value = await _run(self._redis, self._publisher, self._keys, CLAIM_LUA, intent,
                                  [intent.action_id, encode_intent(intent)], trim=False)
        return cast(Claimed, (text(state), value))


class Outcomes:
    """Writes outcomes by :data:`OUTCOME_LUA` and trims the audit stream as publishing does,
    in one round trip."""

    def __init__(self, redis: Redis, publisher: Publisher, keys: KeySpace, *,
                 settled_ttl_s: float = SETTLED_TTL_S) -> None:
        self._redis, self._publisher, self._keys = redis, publisher, keys
        self._settled_ttl_s = max(1, int(settled_ttl_s))

    async def write(self, outcome: ActionRecorded, *, change: str | None = None) -> bool:
        """Append ``outcome`` if its intent is still open; ``False`` if someone settled it first.
        ``change`` (:func:`change_of` its intent) is remembered with a ``done``."""
        settled = settled_value(outcome.outcome, change)
        written = await _run(self._redis, self._publisher, self._keys, OUTCOME_LUA, outcome,
                             [outcome.action_id, settled, self._settled_ttl_s], trim=True)
        return written is not None


async def _run(redis: Redis, publisher: Publisher, keys: KeySpace, script: str,
               entry: ActionRecorded, args: list[Any], *, trim: bool) -> Any:
    """The reply of an action script run on the entry's audit stream and its key's two hashes
    (the entry's fields after ``args``), with the stream's trim after it when ``trim``; a
    stream out of entry ids raises :class:`StreamExhausted`."""
    stream = publisher.stream_key(entry)
    fields = [part for pair in codec.encode(entry).items() for part in pair]
    pipe = redis.pipeline(transaction=False)
    queue_eval(pipe, script, [stream, keys.open_actions(entry.key),
                              keys.settled_actions(entry.key)], [*args, *fields])
    if trim:
        publisher.queue_trim(pipe, stream)
    try:
        return (await pipe.execute())[0]
    except ResponseError as e:
        if not is_exhausted_error(e):
            raise
        raise StreamExhausted(describe(await find_exhausted(redis, {"audit": stream}))) from e
