"""``reconciler session start|heartbeat|stop NAME``: announce a gateway session by hand.

For gateways that cannot embed a client (a shell script around a process, a
cron job), and for operators: the same protocol as :mod:`events.gateway`,
against ``REDIS_URL``, start handshake included (the session's parked
messages are back at the head of its queue when ``start`` returns).  It
needs no PostgreSQL.

``heartbeat`` refreshes a lease that exists and fails (exit 1, one line)
when there is none -- never taken, stopped, or run out -- rather than
starting a session nobody asked for; a script that wants "keep it up" runs
``heartbeat NAME || start NAME``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from events import wiring
from events.errors import ReconcilerError
from events.gateway import GatewaySessions
from events.keys import checked_session
from ops.runtime_env import open_environment, settings_from_args

ACTIONS = ("start", "heartbeat", "stop")


class NoLease(ReconcilerError):
    """``session heartbeat`` of a session that holds no lease."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "session", help="start, heartbeat or stop a gateway session (its lease and events)")
    parser.add_argument("action", choices=ACTIONS,
                        help="start (lease + parked messages back + event), heartbeat (refresh "
                             "an existing lease) or stop")
    parser.add_argument("name", help="the session name, e.g. 940740243 or default")
    parser.add_argument("--gateway", default=None, help="id of the gateway holding the session")
    parser.add_argument("--ttl", type=float, default=None, metavar="S",
                        help="lease TTL in seconds (default: RECONCILER_SESSION_TTL_S)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    checked_session(args.name)
    if args.ttl is not None and args.ttl <= 0:
        raise ValueError("--ttl must be positive")
    settings = settings_from_args(args.config)
    async with open_environment(settings, need_pg=False) as env:
        sessions = GatewaySessions(
            env.redis, env.settings.keys, gateway=args.gateway,
            ttl_s=args.ttl if args.ttl is not None else env.settings.session_ttl_s,
            retention=wiring.retention(env.settings),
            parked_retention_s=env.settings.parked_retention_s,
            settled_ttl_s=env.settings.settled_ttl_s)
        outcome, restored = await _act(sessions, args.action, args.name)
    if args.json:
        print(json.dumps({"session": args.name, "action": args.action, "outcome": outcome,
                          "lease_ttl_s": sessions.ttl_s, "restored": restored}))
    else:
        print(f"session {args.name}: {outcome}")
    return 0


async def _act(sessions: GatewaySessions, action: str, name: str) -> tuple[str, int]:
    if action == "start":
        started = await sessions.start(name)
        return (f"started (lease TTL {sessions.ttl_s}s); {started.restored} parked messages "
                "back at the head of its queue"), started.restored
    if action == "heartbeat":
        if await sessions.heartbeat(name, restart=False):
            return f"lease refreshed ({sessions.ttl_s}s)", 0
        raise NoLease(f"session {name} holds no lease (never started, stopped, or it ran out "
                      f"after RECONCILER_SESSION_TTL_S); start it with "
                      f"`reconciler session start {name}`")
    await sessions.stop(name)
    return "stopped", 0
