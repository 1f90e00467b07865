"""The ``reconciler`` command line.

Each command lives in its own module under :mod:`ops.commands` and exposes
``register(subparsers)``; this module only builds the parser, runs the chosen
command, and turns every expected failure into one clear, redacted line and a
non-zero exit -- never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
from collections.abc import Iterator, Sequence

from events.errors import ReconcilerError
from ops import logs
from ops.cli_help import HELP, epilog
from ops.commands import (
    audit,
    bench,
    demo,
    dlq,
    inspect,
    migrate,
    parked,
    pause,
    quarantine,
    replay,
    resync,
    run,
    schema,
    session,
    status,
)
from ops.redact import redact

COMMANDS = (replay, status, dlq, run, schema, bench, parked, session, migrate, quarantine, demo,
            audit, inspect, pause, resync)
"""Every command module, in the order ``--help`` lists them; each adds its parser."""

EXIT_ERROR = 1
EXIT_USAGE = 2


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DESCRIPTION_WIDTH = 78


def _add_globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--config``, ``--json``, ``--log-level``: accepted before or after any command.

    Below the top level the default is SUPPRESS, so a flag given before the
    command is not reset by a subcommand that did not see it.
    """
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--config", metavar="FILE", default=default(None),
                       help="TOML settings file; keys are the variable names (e.g. bot_timeout_s)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print JSON instead of tables")
    group.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                       default=default(None),
                       help="DEBUG, INFO, WARNING or ERROR (or RECONCILER_LOG_LEVEL); default INFO for run, "
                            "WARNING for the other commands")


def command_parsers(parser: argparse.ArgumentParser,
                    path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser with its path, ``()`` first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reconciler")
    _add_globals(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    for path, command in command_parsers(parser):
        if path:
            _add_globals(command, top=False)
        description, examples = HELP.get(path, (None, ()))
        if description and not command.description:
            command.description = textwrap.fill(description, DESCRIPTION_WIDTH)
        command.epilog = epilog(examples) if examples else command.epilog
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A command's output is its result; its INFO lines (each action it audits, say) are for `run`.
    quiet = None if args.command == "run" else "WARNING"
    logs.configure(level=args.log_level or os.environ.get("RECONCILER_LOG_LEVEL") or quiet)
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
