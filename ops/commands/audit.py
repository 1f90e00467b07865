"""``reconciler audit [--fix]``: every inconsistency across the stores, by kind.

Read-only: it scans the database, the sessions folder and Redis
(:mod:`ops.scan`) and exits 1 when anything disagrees.  ``--fix`` changes
nothing itself either: it publishes a ``reconcile.requested`` event per key
found, so the consumers reconcile those keys through the normal path (with
their audit trail, dry run and safety checks).
"""

from __future__ import annotations

import argparse
from typing import Any

from events import wiring
from events.contract import ReconcileRequested
from events.envelope import new_event
from events.settings import Settings
from ops.runtime_env import open_environment, require_sessions_dir, settings_from_args
from ops.scan import Inconsistency, by_kind, scan, scanned_at
from ops.tables import emit

EXIT_INCONSISTENT = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="list every inconsistency between database, folder and Redis (read-only)")
    parser.add_argument("--fix", action="store_true",
                        help="ask the consumers to reconcile the keys found (nothing is fixed here)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    require_sessions_dir(settings)
    async with open_environment(settings) as env:
        pg = await env.connect_pg()
        try:
            found = await scan(pg, env.redis, env.settings)
        finally:
            await pg.close()
        requested = await request_reconcile(env.redis, env.settings, found) if args.fix else 0
    emit(report(found, requested=requested if args.fix else None), as_json=args.json,
         columns={"inconsistencies": ("kind", "key", "detail")})
    return EXIT_INCONSISTENT if found else 0


def report(found: list[Inconsistency], *, requested: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scanned_at": scanned_at(),
        "total": len(found),
        "by_kind": ", ".join(f"{k} {n}" for k, n in sorted(by_kind(found).items())) or "none",
        "inconsistencies": [{"kind": i.kind, "key": i.key, "scope": i.scope, "detail": i.detail}
                            for i in found],
    }
    if requested is not None:
        data["reconcile_requested"] = requested
    return data


async def request_reconcile(redis: Any, settings: Settings, found: list[Inconsistency]) -> int:
    """One ``reconcile.requested`` per distinct key; returns how many were published."""
    wanted = sorted({(i.scope, i.key) for i in found})
    events = [new_event(ReconcileRequested, source="operator", key=key, scope=scope,
                        reason="reconciler audit --fix") for scope, key in wanted]
    await wiring.publisher(settings, redis).publish_many(events)
    return len(events)
