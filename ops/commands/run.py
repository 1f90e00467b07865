"""``reconciler run``: run one role or all of them until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any

from ops.roles import ROLE_NAMES, run_roles
from ops.runtime_env import settings_from_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the reconciler (all roles, or one)")
    parser.add_argument("--role", action="append", choices=("all", *ROLE_NAMES),
                        help="role to run (repeatable; default: all)")
    parser.add_argument("--dry-run", action="store_true", default=None,
                        help="record planned actions in the audit stream, change nothing")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config, dry_run=args.dry_run)
    roles = ROLE_NAMES if not args.role or "all" in args.role else tuple(args.role)
    await run_roles(settings, roles)
    return 0
