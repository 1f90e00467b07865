"""The stream layout every process shares: the partition count, recorded in Redis.

A process started with another ``RECONCILER_STREAM_PARTITIONS`` than the ones
already running would publish a key's events to another partition than they
read it from, and one key's events could then be handled out of order.  So
``reconciler run`` records the count in ``{prefix}stream-layout`` when none is
recorded, and refuses to start when a different one is.  To change the count:
stop the sources, let the groups drain (``reconciler status`` shows no lag),
stop every process, delete that key, and start them all with the new count.
"""

from __future__ import annotations

from typing import Any

from events.errors import ReconcilerError
from events.keys import KeySpace
from events.replies import text


class LayoutMismatch(ReconcilerError):
    """This process's partition count differs from the one recorded in Redis."""


async def claim_layout(redis: Any, keys: KeySpace) -> None:
    """Record the partition count if none is, else check that it is ours."""
    await redis.set(keys.stream_layout, str(keys.partitions), nx=True)
    recorded = text(await redis.get(keys.stream_layout) or b"")
    if recorded != str(keys.partitions):
        raise LayoutMismatch(
            f"RECONCILER_STREAM_PARTITIONS is {keys.partitions} here but {recorded or 'unset'} "
            f"for the processes of this prefix ({keys.stream_layout} in Redis); to change it, "
            "drain the streams, stop every process, delete that key and start them all with "
            "the new count (docs/scaling.md)")
