"""Where an action's intent waits for its outcome: the open- and settled-actions hashes.

An ``intent`` audit entry is written together with (one MULTI,
:func:`queue_intent`) an entry in its key's open-actions hash, so whoever
handles the key next finds an intent left without an outcome and settles it
(:mod:`consumers.actions`).  An outcome is written only while its intent is
still open, by one script (:data:`OUTCOME_LUA`): the audit entry, the intent
taken out of the open hash, the outcome remembered in the settled hash for
:data:`SETTLED_TTL_S`.  So an action never has two outcomes, whoever writes
them: a consumer, the reconciler settling what a dead process left, or a
gateway's start handshake in any language (``docs/gateway.md`` prints both
steps; ``examples/node/outcome.lua`` is this script).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from events import codec
from events.contract import ActionRecorded
from events.keys import KeySpace
from events.publisher import Publisher

SETTLED_TTL_S = 7 * 86400
"""How long the outcome of an action is remembered, so the same action decided again
(a redelivered event) is recognised and not recorded twice."""

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


def encode_intent(intent: ActionRecorded) -> bytes:
    """The open-actions hash value: the intent as the audit entry's ``data`` has it."""
    return codec.encode_json(intent)


def decode_intent(raw: bytes | str) -> ActionRecorded:
    return msgspec.json.decode(raw, type=ActionRecorded)


async def queue_intent(pipe: Any, publisher: Publisher, keys: KeySpace,
                       intent: ActionRecorded) -> None:
    """Queue the intent's audit entry and its open-actions entry on a caller's MULTI."""
    await publisher.add_to(pipe, intent)
    pipe.hset(keys.open_actions(intent.key), intent.action_id, encode_intent(intent))


async def write_intent(redis: Redis, publisher: Publisher, keys: KeySpace,
                       intent: ActionRecorded) -> None:
    """Write an intent on its own (one MULTI)."""
    async with redis.pipeline(transaction=True) as pipe:
        await queue_intent(pipe, publisher, keys, intent)
        await pipe.execute()


class Outcomes:
    """Writes outcomes by :data:`OUTCOME_LUA`, then trims the audit stream as publishing does."""

    def __init__(self, redis: Redis, publisher: Publisher, keys: KeySpace) -> None:
        self._script = redis.register_script(OUTCOME_LUA)
        self._publisher, self._keys = publisher, keys

    async def write(self, outcome: ActionRecorded) -> bool:
        """Append ``outcome`` if its intent is still open; ``False`` if someone settled it first."""
        stream = self._publisher.stream_key(outcome)
        fields = [part for pair in codec.encode(outcome).items() for part in pair]
        written = await self._script(
            keys=[stream, self._keys.open_actions(outcome.key),
                  self._keys.settled_actions(outcome.key)],
            args=[outcome.action_id, outcome.outcome, SETTLED_TTL_S, *fields])
        if written is None:
            return False
        await self._publisher.trim(stream)
        return True
