"""``reconciler pause KEY``, ``resume KEY``, ``paused``: leave one key alone for a while.

KEY is a conversation (``PHONE:CHANNEL``) or a gateway session name (its queue
is then neither parked, restored nor dropped).  While paused the key is still
observed and reported; every action on it is audited as ``skipped``, reason
``paused``.  ``--until`` ends the pause by itself (a timer-wheel deadline that
also reconciles the key at once); ``resume`` ends it now and reconciles the key.
Each of them is written to the audit stream by the operator.

    reconciler pause 5511999990000:12345 --until 2h --reason "checking by hand"
    reconciler pause 940740243 --until 2026-12-01T22:00:00Z
    reconciler paused
    reconciler resume 5511999990000:12345
"""

from __future__ import annotations

import argparse
import getpass
import re
import time
from datetime import UTC, datetime
from typing import Any

from consumers.actions import Action, Actions, done
from consumers.stores.pauses import PAUSE_EXPIRED, Pause, PauseStore, expiry_member, scope_of
from events import wiring
from events.contract import ReconcileRequested
from events.envelope import new_event
from events.ids import new_event_id
from ops.runtime_env import open_environment, settings_from_args
from ops.tables import emit

DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ("key", "scope", "until", "reason", "by", "since")


def register(subparsers: Any) -> None:
    pause = subparsers.add_parser("pause", help="leave a key alone: observe and report, never act")
    pause.add_argument("key", metavar="KEY", help="PHONE:CHANNEL, or a gateway session name")
    pause.add_argument("--until", metavar="TIME",
                       help="end by itself: a duration (90s, 30m, 2h, 1d) or an ISO 8601 time with "
                            "a zone (2026-12-01T22:00:00Z); default: until resumed")
    pause.add_argument("--reason", default="", help="why (kept with the pause and audited)")
    pause.set_defaults(handler=run_pause)
    resume = subparsers.add_parser("resume", help="end a pause now and reconcile the key")
    resume.add_argument("key", metavar="KEY", help="PHONE:CHANNEL, or a gateway session name")
    resume.set_defaults(handler=run_resume)
    paused = subparsers.add_parser("paused", help="the keys paused now")
    paused.set_defaults(handler=run_paused)


def parse_until(text: str, now: float) -> float:
    """``--until``: a duration from now or an absolute time with a zone; must be in the future."""
    match = DURATION.match(text.strip())
    if match:
        until = now + float(match[1]) * UNITS[match[2]]
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--until: {text[:40]!r} is neither a duration (30m, 2h) nor an "
                             "ISO 8601 time (2026-12-01T22:00:00Z)") from None
        if when.tzinfo is None:
            raise ValueError(f"--until: {text[:40]!r} has no time zone; add Z or +HH:MM")
        until = when.timestamp()
    if until <= now:
        raise ValueError(f"--until: {text[:40]!r} is not in the future")
    return until


def _request(pause_key: str, reason: str, source: str, at: datetime) -> ReconcileRequested:
    return new_event(ReconcileRequested, at=at, source=source, key=pause_key,
                     scope=scope_of(pause_key), reason=reason)


async def run_pause(args: argparse.Namespace) -> int:
    scope_of(args.key)  # a clear error before any connection
    now = time.time()
    until = parse_until(args.until, now) if args.until else None
    settings = settings_from_args(args.config)
    async with open_environment(settings, need_pg=False) as env:
        redis, keys = env.redis, env.settings.keys
        store = PauseStore(redis, keys)
        pause, old = await store.pause(args.key, reason=args.reason, by=_operator(), until=until,
                                       now=now)
        timers = wiring.timer_wheel(env.settings, redis)
        if until is not None:
            at = datetime.fromtimestamp(until, UTC)
            await timers.schedule(expiry_member(args.key), until,
                                  _request(args.key, PAUSE_EXPIRED, "timers", at))
        else:
            await timers.cancel(expiry_member(args.key), args.key)
        executor = Actions.for_settings(redis, env.settings, source="operator", dry_run=False)
        await executor.record_made(Action(
            verb="pause", target=args.key, key=args.key, origin=new_event_id(),
            reason=args.reason or "operator pause", before=old.as_dict() if old else None,
            after=pause.as_dict()), done())
    emit({"paused": args.key, "scope": pause.scope, "until": pause.as_dict()["until"] or "resumed",
          "replaced": bool(old)}, as_json=args.json)
    return 0


async def run_resume(args: argparse.Namespace) -> int:
    scope_of(args.key)
    settings = settings_from_args(args.config)
    async with open_environment(settings, need_pg=False) as env:
        redis, keys = env.redis, env.settings.keys
        old = await PauseStore(redis, keys).resume(args.key)
        if old is None:
            raise LookupError(f"{args.key} is not paused (`reconciler paused` lists the pauses)")
        await wiring.timer_wheel(env.settings, redis).cancel(expiry_member(args.key), args.key)
        publisher = wiring.publisher(env.settings, redis)
        executor = Actions.for_settings(redis, env.settings, source="operator", dry_run=False)
        entry = await executor.record_made(Action(
            verb="resume", target=args.key, key=args.key, origin=new_event_id(),
            reason="operator resume", before=old.as_dict()), done())
        at = entry.occurred_at if entry is not None else datetime.now(UTC)
        await publisher.publish(_request(args.key, "resumed", "operator", at))
    emit({"resumed": args.key, "reconcile": "requested"}, as_json=args.json)
    return 0


async def run_paused(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    now = time.time()
    async with open_environment(settings, need_pg=False) as env:
        pauses = await PauseStore(env.redis, env.settings.keys).all()
    emit({"pauses": [_row(p, now) for p in pauses]}, as_json=args.json, columns={"pauses": COLUMNS})
    return 0


def _row(pause: Pause, now: float) -> dict[str, Any]:
    row = pause.as_dict()
    if not pause.in_force(now):
        row["until"] = f"{row['until']} (ended; the key is reconciled)"
    return {**row, "until": row["until"] or "until resumed"}


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"
