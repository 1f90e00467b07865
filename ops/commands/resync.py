"""``reconciler resync``: list the conversations table now, so every key that can matter is judged.

The same listing the relay runs on its first start and on its slow periodic
safety net (:mod:`events.sources.table_listing`): it pages through the rows
that can matter (active, or carrying a bot field) at ``RECONCILER_DB_LISTING_RATE``
rows per second and publishes one key-only ``reconcile.requested`` per key.
It changes nothing itself: the consumers reconcile those keys through the
normal path, with their audit trail, dry run and safety checks.
"""

from __future__ import annotations

import argparse
from typing import Any

from events import wiring
from events.sources.table_listing import list_table
from ops.runtime_env import open_environment, settings_from_args
from ops.tables import emit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "resync", help="list the table's rows that can matter, so the consumers judge every key")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    async with open_environment(settings) as env:
        result = await list_table(env.settings, wiring.publisher(env.settings, env.redis),
                                  "reconciler resync")
    emit({"table": settings.table, "rows_listed": result.rows, "keys_requested": result.keys,
          "seconds": round(result.seconds, 2)}, as_json=args.json)
    return 0
