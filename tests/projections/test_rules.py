"""The rule table as a pure function: each row of DESIGN.md's table, on plain values."""

from __future__ import annotations

import pytest

from projections.rules import FileView, broken_rules
from tests.projections.factory import T0, at, row

KEY = "5511999:940740243"
NO_FILE = FileView(present=False)


@pytest.mark.parametrize(
    ("db_row", "file", "expected"),
    [
        (row(KEY), FileView(True, "flow-a"), ()),
        (row(KEY, flow=None), FileView(True, "flow-a"), ("flow_missing",)),
        (row(KEY), FileView(True, "flow-b"), ("flow_mismatch",)),
        (row(KEY), NO_FILE, ()),
        (row(KEY, flow=None), NO_FILE, ("timed_out",)),
        (row(KEY, assigned_to="agent-7", flow=None, started=None), FileView(True, "flow-a"),
         ("stale_file",)),
        (row(KEY, status="closed", assigned_to=None, flow=None, started=None), FileView(True, "f"),
         ("stale_file",)),
        (row(KEY, status="closed"), NO_FILE, ("bot_fields_on_closed",)),
        (row(KEY, status="closed"), FileView(True, "flow-a"), ("stale_file", "bot_fields_on_closed")),
        (None, FileView(True, "flow-a"), ("orphan_file",)),
        (None, NO_FILE, ()),
        (row(KEY, status="closed", assigned_to=None, flow=None, started=None), NO_FILE, ()),
    ],
)
def test_rule_table(db_row: object, file: FileView, expected: tuple[str, ...]) -> None:
    assert broken_rules(db_row, file) == expected  # type: ignore[arg-type]


def test_a_fired_timeout_breaks_only_the_run_it_was_for() -> None:
    assert broken_rules(row(KEY), NO_FILE, timeout_fired_for=T0) == ("timed_out",)
    assert broken_rules(row(KEY, started=at(60)), NO_FILE, timeout_fired_for=T0) == ()
