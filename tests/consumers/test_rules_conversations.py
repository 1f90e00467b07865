"""The rule table of DESIGN.md for a conversation key, row by row, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.rules.conversation_rules import (
    BackfillFlow,
    ClearBotFields,
    CloseConversation,
    ForgetSeen,
    Inconsistency,
    Observed,
    QuarantineFile,
    RememberSeen,
    ReportAmbiguousRows,
    ScheduleBotTimeout,
    ScheduleRejudge,
    judge,
    may_move_file,
)
from consumers.stores.conversations_sql import Row
from consumers.stores.session_folder import FileState

NOW = 1_700_000_000.0
KEY = "5215550001:940740243"
FLOW = "promotoras-v2-mw7rpy"
OLD = NOW - 3600
"""A file time well outside the settle window."""


def row(status: str = "active", assigned_to: str | None = "bot", flow: str | None = FLOW,
        started: float | None = NOW - 10, id: object = 1) -> Row:
    return Row(id=id, status=status, assigned_to=assigned_to, bot_flow_id=flow,
               bot_started_at=datetime.fromtimestamp(started, UTC) if started else None)


def closed(id: object = 1, **fields: object) -> Row:
    values: dict = {"status": "closed", "assigned_to": None, "flow": None, "started": None}
    values.update(fields)
    return row(id=id, **values)


def file(flow: str | None = FLOW, movable: bool = True, modified: float | None = OLD) -> FileState:
    return FileState(name="whatsapp_5215550001_940740243.json", flow_id=flow, fingerprint="0" * 64,
                     movable=movable, modified_at=modified)


def seen(rows: list[Row], f: FileState | None, **extra: float) -> Observed[Row, FileState]:
    return Observed(key=KEY, now=NOW, rows=rows, file=f, bot_timeout_s=60, grace_s=30, **extra)


def actions(rows: list[Row], f: FileState | None, **extra: float) -> list[object]:
    return list(judge(seen(rows, f, **extra)).actions)


def test_active_bot_with_matching_flow_only_waits_for_its_deadline() -> None:
    verdict = judge(seen([row()], file()))
    assert verdict.inconsistencies == ()
    assert list(verdict.actions) == [ScheduleBotTimeout(
        f"bot:{KEY}:1:{int((NOW - 10) * 1000)}", NOW + 50, FLOW, "1", row().bot_started_at)]


def test_active_bot_without_flow_takes_it_from_the_file() -> None:
    verdict = judge(seen([row(flow=None)], file()))
    assert verdict.inconsistencies == (Inconsistency("flow_missing", "1"),)
    assert verdict.actions[0] == BackfillFlow("1", FLOW)
    assert isinstance(verdict.actions[1], ScheduleBotTimeout) and verdict.actions[1].flow_id == FLOW


def test_bot_run_past_its_timeout_is_closed() -> None:
    verdict = judge(seen([row(started=NOW - 61)], file()))
    assert verdict.inconsistencies == (Inconsistency("timed_out", "1"),)
    assert list(verdict.actions) == [CloseConversation("1")]


def test_bot_run_without_start_or_flow_is_timed_from_first_sight_not_judged_at_once() -> None:
    first = judge(seen([row(flow=None, started=None)], None))
    assert first.inconsistencies == ()
    assert list(first.actions) == [RememberSeen("bot", NOW),
                                   ScheduleBotTimeout(f"bot:{KEY}:1:{int(NOW * 1000)}", NOW + 60,
                                                      None, "1")]
    assert actions([row(flow=None, started=None)], None, bot_seen_at=NOW - 60) == [
        CloseConversation("1")]


def test_active_conversation_not_with_the_bot_loses_its_file() -> None:
    verdict = judge(seen([row(assigned_to="agent-7", flow=None, started=None)], file()))
    assert verdict.kinds == ("stale_file",)
    assert list(verdict.actions) == [QuarantineFile("not_bot")]


def test_closed_conversation_loses_its_file() -> None:
    assert actions([closed()], file()) == [QuarantineFile("closed")]


def test_closed_conversation_with_bot_fields_has_them_cleared() -> None:
    assert actions([row(status="closed")], None) == [ClearBotFields("1")]
    assert actions([row(status="closed")], file()) == [ClearBotFields("1"), QuarantineFile("closed")]


def test_returning_customer_every_closed_row_is_cleared_and_the_bot_run_keeps_its_file() -> None:
    rows = [row(status="closed", id="old-a"), row(id="new"), row(status="closed", id="old-b")]
    verdict = judge(seen(rows, file()))
    assert sorted(verdict.inconsistencies) == [Inconsistency("bot_fields_on_closed", "old-a"),
                                               Inconsistency("bot_fields_on_closed", "old-b")]
    assert ClearBotFields("old-a") in verdict.actions and ClearBotFields("old-b") in verdict.actions
    assert not any(isinstance(a, QuarantineFile) for a in verdict.actions)


def test_a_healthy_bot_chat_with_an_older_closed_row_is_consistent() -> None:
    verdict = judge(seen([closed(id=7), row(id=9)], file()))
    assert verdict.inconsistencies == ()


def test_two_active_bot_rows_are_reported_and_each_times_out_on_its_own() -> None:
    rows = [row(id="a", flow=None), row(id="b", started=NOW - 61)]
    verdict = judge(seen(rows, file()))
    assert verdict.kinds == ("timed_out", "ambiguous_rows")
    assert verdict.actions[0] == ReportAmbiguousRows(("a", "b"))
    assert CloseConversation("b") in verdict.actions
    assert not any(isinstance(a, BackfillFlow | QuarantineFile) for a in verdict.actions)


def test_file_without_row_waits_for_the_settle_window_of_its_time() -> None:
    assert actions([], file(modified=NOW - 10)) == [
        ScheduleRejudge(f"rejudge:{KEY}:{int((NOW + 20) * 1000)}", NOW + 20)]
    verdict = judge(seen([], file()))
    assert verdict.kinds == ("orphan_file",) and list(verdict.actions) == [QuarantineFile("no_row")]


def test_file_of_unknown_time_without_row_waits_from_first_sight() -> None:
    assert actions([], file(modified=None)) == [
        RememberSeen("orphan", NOW), ScheduleRejudge(f"rejudge:{KEY}:{int((NOW + 30) * 1000)}",
                                                     NOW + 30)]
    assert actions([], file(modified=None), orphan_seen_at=NOW - 30) == [QuarantineFile("no_row")]


def test_a_file_younger_than_the_settle_window_is_never_moved_whatever_the_row() -> None:
    young = file(modified=NOW - 0.15)
    for rows in ([closed()], [row(assigned_to="agent-7", flow=None, started=None)], []):
        verdict = judge(seen(rows, young))
        assert not any(isinstance(a, QuarantineFile) for a in verdict.actions)
        assert ScheduleRejudge(f"rejudge:{KEY}:{int((NOW + 29.85) * 1000)}", NOW + 29.85) \
            in verdict.actions


def test_row_committed_within_the_grace_period_keeps_the_file() -> None:
    found = actions([row()], file(), orphan_seen_at=NOW - 100)
    assert ForgetSeen("orphan") in found
    assert not any(isinstance(a, QuarantineFile) for a in found)


def test_nothing_to_do_without_row_or_file() -> None:
    assert actions([], None) == []
    assert actions([closed()], None) == []


def test_unmovable_files_are_left_alone() -> None:
    assert actions([closed()], file(movable=False)) == []


def test_the_file_of_a_live_bot_run_may_never_move() -> None:
    assert not may_move_file([row()])
    assert not may_move_file([closed(), row(flow=None)])
    assert may_move_file([row(status="closed")])
    assert may_move_file([])
