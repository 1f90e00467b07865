"""The ``reconciler`` command line.

Each command lives in its own module under :mod:`ops.commands` and exposes
``register(subparsers)``; this module only builds the parser, runs the chosen
command, and turns every expected failure into one clear, redacted line and a
non-zero exit -- never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence

from events.errors import ReconcilerError
from ops import logs
from ops.redact import redact

COMMAND_MODULES = (
    "replay",
    "status",
    "dlq",
    "run",
    "schema",
    "bench",
    "parked",
    "session",
    "migrate",
    "quarantine",
    "demo",
    "audit",
    "inspect",
)

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keeps chat-bot state consistent across PostgreSQL, session files and Redis.",
    )
    parser.add_argument("--config", metavar="FILE", help="optional TOML settings file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"ops.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(level=args.log_level)
    try:
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except (ReconcilerError, OSError, ConnectionError, LookupError, ValueError) as e:
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        print(f"reconciler: error: {redact(str(e)) or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a driver error we did not wrap: still one line, no traceback
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        print(f"reconciler: error: {type(e).__name__}: {redact(str(e))}", file=sys.stderr)
        return EXIT_ERROR
