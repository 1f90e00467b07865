"""The CLI behaves like the tools people know: global flags anywhere, help with examples."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cli import build_parser, command_parsers


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_every_command_and_option_has_a_description_and_every_command_an_example() -> None:
    for path, parser in command_parsers(build_parser()):
        name = " ".join(("reconciler", *path))
        assert parser.description, f"{name} has no description"
        assert parser.epilog and f"\n  {name}" in f"\n{parser.epilog}", f"{name} has no example"
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, \
                    f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("argv", [
    ["--json", "--log-level", "warning", "--config", "x.toml", "parked", "list"],
    ["parked", "--json", "list", "--log-level", "WARNING", "--config", "x.toml"],
    ["parked", "list", "--json", "--log-level", "warning", "--config", "x.toml"],
])
def test_global_flags_are_accepted_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.json, args.log_level, args.config) == (True, "WARNING", "x.toml")


def test_global_flags_default_when_not_given() -> None:
    args = build_parser().parse_args(["status"])
    assert (args.json, args.log_level, args.config) == (False, None, None)


def test_a_flag_after_the_command_reaches_the_command(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('key_prefix = "flagtest:"\n')
    result = run_cli("schema", "--json", "--config", str(config), "--log-level", "ERROR")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["title"]


def test_an_unknown_log_level_is_one_line_naming_the_choices() -> None:
    result = run_cli("status", "--log-level", "LOUD")
    assert result.returncode == 2
    assert "DEBUG" in result.stderr and "Traceback" not in result.stderr


def test_what_the_rule_table_asks_for_is_said_in_words_not_class_names() -> None:
    from consumers.rules.conversation_rules import BackfillFlow, ScheduleRejudge
    from ops.commands.inspect import describe

    assert describe(BackfillFlow("7", "promo-v2")) == "backfill_flow (row_id 7, flow_id promo-v2)"
    assert describe(ScheduleRejudge("rejudge:k:0", 0.0)) == (
        "schedule_rejudge (due 1970-01-01 00:00:00)")


def test_one_table_printer_for_lists_and_reports() -> None:
    import io

    from ops.tables import emit, print_rows

    out = io.StringIO()
    print_rows([{"session": "gone", "parked": 3, "live": False},
                {"session": "a-much-longer-name", "parked": 12, "live": True}], as_json=False, out=out)
    header, first, second = out.getvalue().splitlines()
    assert header.split() == ["SESSION", "PARKED", "LIVE"]
    assert first.split()[-1] == "no" and second.split()[-1] == "yes"
    assert header.index("PARKED") == first.index("3") == second.index("12")
    out = io.StringIO()
    print_rows([], as_json=False, empty="no parked messages", out=out)
    assert out.getvalue() == "no parked messages\n"
    out = io.StringIO()
    emit({"projections": [{"projection": "conversations", "inconsistent": {"stale_file": 2}}]},
         as_json=False, out=out)
    assert "stale_file 2" in out.getvalue() and "{" not in out.getvalue()
