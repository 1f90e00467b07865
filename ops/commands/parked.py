"""``reconciler parked list|restore NAME [--dry-run]``: the parked messages of gateway sessions.

``list`` shows every session with parked messages: how many, since when, the
length of its queue now and whether its session is live.  ``restore`` puts a
session's parked messages back at the head of its queue in their original
order (as the sessions group does when the session starts), and records it in
the audit stream; ``--dry-run`` records it as planned and changes nothing.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from consumers.actions import Actions
from consumers.queue_acts import QueueActs
from consumers.stores.parked_queues import ParkedQueues, ParkedSummary
from events.ids import new_event_id
from events.keys import checked_session
from ops.runtime_env import open_environment, settings_from_args
from ops.tables import print_rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("parked", help="list or restore parked queue messages")
    actions = parser.add_subparsers(dest="parked_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="sessions with parked messages")
    listing.set_defaults(handler=run_list)
    restore = actions.add_parser("restore", help="put a session's parked messages back")
    restore.add_argument("name", help="the session name, e.g. 940740243")
    restore.add_argument("--dry-run", action="store_true", default=None,
                         help="record the restore as planned, change nothing")
    restore.set_defaults(handler=run_restore)


async def run_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    async with open_environment(settings, need_pg=False) as env:
        rows = await ParkedQueues(env.redis, env.settings.keys).list_parked()
    print_rows([_as_dict(r) for r in rows], as_json=args.json, empty="no parked messages",
               columns=("session", "parked", "oldest_parked_at", "queue_length", "live"))
    return 0


async def run_restore(args: argparse.Namespace) -> int:
    session = checked_session(args.name)
    settings = settings_from_args(args.config, dry_run=args.dry_run)
    async with open_environment(settings, need_pg=False) as env:
        keys = env.settings.keys
        store = ParkedQueues(env.redis, keys)
        state = await store.observe(session)
        acts = QueueActs(store=store, keys=keys, actions=Actions.for_settings(
            env.redis, env.settings, source="operator"))
        result = await acts.restore(state, None, origin=new_event_id(), reason="operator restore")
    after = result.after or {}
    moved = (int(after.get("queue", 0)) - state.queue_length if result.outcome == "done"
             else state.parked_length if result.outcome == "planned" else 0)
    verb = "would restore" if result.outcome == "planned" else "restored"
    print(f"{verb} {moved} parked messages to the head of {keys.queue(session)}")
    if moved and not state.live and env.settings.orphan_queue_policy == "park":
        print(f"note: session {session} is not live; the sessions group parks the queue "
              "again on its next event")
    return 0


def _as_dict(row: ParkedSummary) -> dict[str, Any]:
    return {"session": row.session, "queue": row.queue, "parked": row.parked,
            "oldest_parked_at": _when(row.oldest_at) if row.oldest_at else None,
            "queue_length": row.queue_length, "live": row.live}


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
