"""``reconciler migrate [--uninstall] [--dry-run] [--force]``: the change capture in your database.

Installs (or removes) the outbox, the capture function and the triggers on
``RECONCILER_TABLE`` (see :mod:`ops.migrate`), prints what it did, and
records it in the audit stream.  ``--dry-run`` prints the SQL it would run
and changes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from consumers.audit import Auditor
from events.publisher import Publisher
from ops import migrate
from ops.runtime_env import open_environment, settings_from_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate", help="install (or --uninstall) the outbox and trigger on the conversations table")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the trigger, function, outbox and version row")
    parser.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    parser.add_argument("--force", action="store_true",
                        help="with --uninstall: drop unpublished outbox rows too")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    async with open_environment(settings) as env:
        conn = await env.connect_pg()
        try:
            if args.uninstall:
                outcome = await migrate.uninstall(conn, env.settings, dry_run=args.dry_run,
                                                  force=args.force)
            else:
                outcome = await migrate.install(conn, env.settings, dry_run=args.dry_run)
        finally:
            await conn.close()
        auditor = Auditor(Publisher(env.redis, env.settings.keys), dry_run=args.dry_run,
                          source="operator")
        await _record(auditor, outcome, uninstall=args.uninstall)
    _print(outcome, uninstall=args.uninstall)
    return 0


async def _record(auditor: Auditor, outcome: migrate.Outcome, *, uninstall: bool) -> None:
    changed = outcome.before is not None if uninstall else outcome.before != outcome.after
    await auditor.record(
        action="migrate.uninstall" if uninstall else "migrate.install",
        target=outcome.table, key=f"postgres:{outcome.table}",
        outcome="done" if changed else "skipped", cause=None,
        reason=", ".join(outcome.applied) or ("not installed" if uninstall else "up to date"),
        before={"version": outcome.before, "pending_rows": outcome.pending_rows},
        after={"version": outcome.after})


def _print(outcome: migrate.Outcome, *, uninstall: bool) -> None:
    if outcome.dry_run:
        print(f"-- dry run: nothing was changed. SQL for {outcome.table}:")
        print(outcome.sql or "-- nothing to do")
        if uninstall and outcome.pending_rows:
            print(f"-- the outbox holds {outcome.pending_rows} unpublished change(s)")
    elif uninstall:
        state = "removed" if outcome.before is not None else "was not installed; cleaned up"
        print(f"{outcome.table}: change capture {state}")
    elif outcome.before == outcome.after:
        print(f"{outcome.table}: up to date at version {outcome.after}")
    else:
        print(f"{outcome.table}: installed version {outcome.after} "
              f"(was {outcome.before or 'none'}; applied {', '.join(outcome.applied)})")
