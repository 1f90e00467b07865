"""``reconciler quarantine list|restore NAME``: see and bring back moved-aside session files.

``list`` reads the quarantine folder's records (no servers needed).
``restore`` moves a file back to the sessions folder -- never over a file
that is there again -- as an audited action (:mod:`consumers.actions`:
intent, then ``done`` or ``failed``); ``--dry-run`` checks everything and
records the restore as planned.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from consumers.actions import Action, Actions, Result, done
from consumers.stores.session_folder import QuarantineRecord, SessionFiles
from events.contract import ReconcileRequested
from events.envelope import new_event
from ops.runtime_env import open_environment, settings_from_args
from ops.tables import print_rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("quarantine", help="list or restore quarantined session files")
    actions = parser.add_subparsers(dest="quarantine_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="quarantined files, oldest first")
    listing.set_defaults(handler=run_list)
    restore = actions.add_parser("restore", help="move a quarantined file back (audited)")
    restore.add_argument("name", help="the name shown by `reconciler quarantine list`")
    restore.add_argument("--dry-run", action="store_true",
                         help="check and record the restore as planned, move nothing")
    restore.set_defaults(handler=run_restore)


def _row(record: QuarantineRecord) -> dict[str, Any]:
    """One entry; ``original_path`` is where a restore writes (never what a record claims),
    and a superseded entry (a newer file holds its name) says so in its reason."""
    reason = f"{record.reason} (superseded)" if record.superseded else record.reason
    return {"name": record.name, "original_path": record.original_path, "key": record.key,
            "reason": reason, "cause_id": record.cause_id, "cause_type": record.cause_type,
            "quarantined_at": record.quarantined_at.isoformat(), "flow_id": record.flow_id,
            "action_id": record.action_id, "superseded": record.superseded}


def run_list(args: argparse.Namespace) -> int:
    files = SessionFiles(settings_from_args(args.config))
    records = files.records.entries()
    print_rows([_row(r) for r in records], as_json=args.json,
               empty=f"no quarantined files in {files.quarantine_dir}",
               columns=("name", "quarantined_at", "reason", "key", "original_path"))
    return 0


async def run_restore(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config, dry_run=True if args.dry_run else None)
    files = SessionFiles(settings)
    record = files.records.read(args.name)
    async with open_environment(settings, need_pg=False) as env:
        files.restore(args.name, dry_run=True)  # every check, before the intent is recorded
        cause = new_event(ReconcileRequested, source="operator", key=record.key,
                          scope="conversations", reason="quarantine restore")
        action = Action(verb="restore_file", target=record.original_path, key=record.key,
                        cause=cause, reason="operator restore",
                        before={"path": str(files.quarantine_dir / record.name)},
                        after={"path": record.original_path})

        async def act(_action_id: str) -> Result:
            files.restore(args.name)
            return done()

        executor = Actions.for_settings(env.redis, env.settings, source="operator")
        result = await executor.run(action, act)
    verb = "would restore" if result.outcome == "planned" else "restored"
    if args.json:
        print(json.dumps({**_row(record), "outcome": result.outcome}))
    else:
        print(f"{verb} {record.name} -> {record.original_path}")
    return 0
