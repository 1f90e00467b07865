"""``reconciler migrate [--uninstall] [--dry-run] [--force] [--create-index]``: the change capture.

Installs (or removes) the outbox, the capture function and the triggers on
``RECONCILER_TABLE`` (see :mod:`ops.capture_install`), prints what it did, and
records it in the audit stream.  ``--dry-run`` prints the SQL it would run
and changes nothing.  An install also says whether an index serves the
handlers' lookup by phone and channel and, when none does, prints the
``CREATE INDEX CONCURRENTLY`` statement; ``--create-index`` runs it.
"""

from __future__ import annotations

import argparse
from typing import Any

from consumers.actions import Action, Actions, Result, done
from events.ids import new_event_id
from ops import capture_install
from ops.runtime_env import open_environment, settings_from_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate", help="install (or --uninstall) the outbox and trigger on the conversations table")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the trigger, function, outbox and version row")
    parser.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    parser.add_argument("--force", action="store_true",
                        help="with --uninstall: drop unpublished outbox rows too")
    parser.add_argument("--create-index", action="store_true",
                        help="also build the (phone, channel) lookup index, CONCURRENTLY")
    parser.add_argument("--lock-timeout", type=float, default=capture_install.LOCK_TIMEOUT_S,
                        metavar="SECONDS",
                        help="give up when a table lock is not granted within this time "
                             f"(default {capture_install.LOCK_TIMEOUT_S:g}; writers wait behind it)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    async with open_environment(settings) as env:
        conn = await env.connect_pg()
        try:
            outcome = await _audited(env, conn, args)
        finally:
            await conn.close()
    _print(outcome, uninstall=args.uninstall)
    return 0


async def _audited(env: Any, conn: Any, args: argparse.Namespace) -> capture_install.Outcome:
    """The migration as an audited action; in a dry run, only the SQL it would run."""
    table = env.settings.table
    executor = Actions.for_settings(env.redis, env.settings, source="operator",
                                    dry_run=args.dry_run)
    action = Action(verb="capture_install.uninstall" if args.uninstall else "capture_install.install",
                    key=f"postgres:{table}", target=table, origin=new_event_id(),
                    before={"version": await capture_install.installed_version(conn, table)})
    outcomes: list[capture_install.Outcome] = []

    async def act(_action_id: str) -> Result:
        outcomes.append(await _migrate(conn, env.settings, args, dry_run=False))
        return _result(outcomes[0], uninstall=args.uninstall)

    if (await executor.run(action, act)).outcome == "planned":
        outcomes.append(await _migrate(conn, env.settings, args, dry_run=True))
    return outcomes[0]


async def _migrate(conn: Any, settings: Any, args: argparse.Namespace, *,
                   dry_run: bool) -> capture_install.Outcome:
    if args.uninstall:
        return await capture_install.uninstall(conn, settings, dry_run=dry_run, force=args.force,
                                       lock_timeout_s=args.lock_timeout)
    outcome = await capture_install.install(conn, settings, dry_run=dry_run,
                                    lock_timeout_s=args.lock_timeout)
    if args.create_index and not dry_run:
        outcome.index = await capture_install.create_index(conn, settings)
    return outcome


def _result(outcome: capture_install.Outcome, *, uninstall: bool) -> Result:
    changed = outcome.before is not None if uninstall else outcome.before != outcome.after
    after = {"version": outcome.after, "pending_rows": outcome.pending_rows}
    reason = ", ".join(outcome.applied) or ("not installed" if uninstall else "up to date")
    return done(after, reason=reason) if changed else Result("skipped", reason, after)


def _print(outcome: capture_install.Outcome, *, uninstall: bool) -> None:
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
    if outcome.index is not None:
        _print_index(outcome.table, outcome.index)


def _print_index(table: str, index: capture_install.IndexState) -> None:
    if index.serving is not None:
        print(f"{table}: lookup index {index.serving} serves the (phone, channel) reads")
        return
    if index.invalid is not None:
        print(f"{table}: index {index.invalid} is invalid (a failed concurrent build); "
              f"drop it: DROP INDEX CONCURRENTLY {index.invalid};")
    print(f"{table}: no index serves the handlers' (phone, channel) lookup, so every read "
          "scans the whole table. Create one (writes are not blocked) with:\n"
          f"  {index.create_sql};\n"
          "or run: reconciler migrate --create-index")
