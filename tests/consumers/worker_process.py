"""A consumer process for the runtime tests.

Runs one GroupConsumer whose handler records every event id it handled in
the Redis set ``{prefix}handled`` and counts per consumer in the hash
``{prefix}by-consumer``.  SIGTERM/SIGINT stop it gracefully.

usage: worker_process.py REDIS_URL PREFIX GROUP [--sleep-ms N] [--min-idle S]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from redis.asyncio import Redis

from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.keys import KeySpace


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("prefix")
    parser.add_argument("group")
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--min-idle", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args()
    redis = Redis.from_url(args.redis_url)
    keys = KeySpace(prefix=args.prefix)
    options = GroupOptions(
        group=args.group,
        streams=(keys.conversations_stream, keys.sessions_stream),
        deadletter_stream=keys.deadletter_stream,
        read_count=100,
        concurrency=8,
        claim_min_idle_s=args.min_idle,
        claim_interval_s=0.25,
        shutdown_deadline_s=args.deadline,
    )
    handled_set = f"{args.prefix}handled"
    per_consumer = f"{args.prefix}by-consumer"

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if args.sleep_ms:
            await asyncio.sleep(args.sleep_ms / 1000)
        pipe = redis.pipeline(transaction=False)
        pipe.sadd(handled_set, *[d.event.id for d in deliveries])
        pipe.hincrby(per_consumer, options.consumer, len(deliveries))
        await pipe.execute()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    print(f"consumer {options.consumer} ready", flush=True)
    await GroupConsumer(redis, options, handler).run(stop)
    await redis.aclose()
    print("consumer stopped", flush=True)


def dump_tasks() -> None:
    """SIGUSR1: print every task's stack (to see where a stuck consumer waits)."""
    for task in asyncio.all_tasks():
        print("task", task.get_name(), flush=True)
        task.print_stack(limit=4, file=sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
