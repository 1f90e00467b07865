"""The rule table of DESIGN.md, row by row, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.conversations import (
    BackfillFlow,
    ClearBotFields,
    CloseConversation,
    ForgetSeen,
    Observed,
    QuarantineFile,
    RememberSeen,
    ScheduleBotTimeout,
    ScheduleOrphanGrace,
    decide,
    may_move_file,
)
from consumers.stores.conversations_sql import Row
from consumers.stores.session_files import FileState

NOW = 1_700_000_000.0
KEY = "5215550001:940740243"
FLOW = "promotoras-v2-mw7rpy"


def row(status: str = "active", assigned_to: str | None = "bot", flow: str | None = FLOW,
        started: float | None = NOW - 10) -> Row:
    return Row(id=1, status=status, assigned_to=assigned_to, bot_flow_id=flow,
               bot_started_at=datetime.fromtimestamp(started, UTC) if started else None)


def file(flow: str | None = FLOW, movable: bool = True) -> FileState:
    return FileState(name="whatsapp_5215550001_940740243.json", flow_id=flow, sha256="0" * 64,
                     movable=movable)


def seen(r: Row | None, f: FileState | None, **extra: float) -> Observed:
    return Observed(key=KEY, now=NOW, row=r, file=f, bot_timeout_s=60, grace_s=30, **extra)


def test_active_bot_with_matching_flow_only_waits_for_its_deadline() -> None:
    assert decide(seen(row(), file())) == [ScheduleBotTimeout(f"bot:{KEY}:{int((NOW - 10) * 1000)}",
                                                              NOW + 50, FLOW)]


def test_active_bot_without_flow_takes_it_from_the_file() -> None:
    actions = decide(seen(row(flow=None), file()))
    assert actions[0] == BackfillFlow(FLOW)
    assert isinstance(actions[1], ScheduleBotTimeout) and actions[1].flow_id == FLOW


def test_bot_run_past_its_timeout_is_closed() -> None:
    assert decide(seen(row(started=NOW - 61), file())) == [CloseConversation()]


def test_bot_run_without_start_is_timed_from_first_sight() -> None:
    first = decide(seen(row(flow=None, started=None), None))
    assert first == [RememberSeen("bot", NOW),
                     ScheduleBotTimeout(f"bot:{KEY}:{int(NOW * 1000)}", NOW + 60, None)]
    assert decide(seen(row(flow=None, started=None), None, bot_seen_at=NOW - 60)) == [
        CloseConversation()]


def test_active_conversation_not_with_the_bot_loses_its_file() -> None:
    assert decide(seen(row(assigned_to="agent-7", flow=None, started=None), file())) == [
        QuarantineFile("not_bot")]


def test_closed_conversation_loses_its_file() -> None:
    assert decide(seen(row(status="closed", assigned_to=None, flow=None, started=None),
                       file())) == [QuarantineFile("closed")]


def test_closed_conversation_with_bot_fields_has_them_cleared() -> None:
    assert decide(seen(row(status="closed"), None)) == [ClearBotFields()]
    assert decide(seen(row(status="closed"), file())) == [ClearBotFields(), QuarantineFile("closed")]


def test_file_without_row_waits_for_the_grace_period() -> None:
    assert decide(seen(None, file())) == [
        RememberSeen("orphan", NOW), ScheduleOrphanGrace(f"orphan:{KEY}:{int(NOW * 1000)}", NOW + 30)]
    assert decide(seen(None, file(), orphan_seen_at=NOW - 10)) == [
        ScheduleOrphanGrace(f"orphan:{KEY}:{int((NOW - 10) * 1000)}", NOW + 20)]
    assert decide(seen(None, file(), orphan_seen_at=NOW - 30)) == [QuarantineFile("no_row")]


def test_row_committed_within_the_grace_period_keeps_the_file() -> None:
    actions = decide(seen(row(), file(), orphan_seen_at=NOW - 100))
    assert ForgetSeen("orphan") in actions
    assert not any(isinstance(a, QuarantineFile) for a in actions)


def test_nothing_to_do_without_row_or_file() -> None:
    assert decide(seen(None, None)) == []
    assert decide(seen(row(status="closed", assigned_to=None, flow=None, started=None), None)) == []


def test_unmovable_files_are_left_alone() -> None:
    assert decide(seen(row(status="closed", assigned_to=None, flow=None, started=None),
                       file(movable=False))) == []


def test_the_file_of_a_live_bot_run_may_never_move() -> None:
    assert not may_move_file(row())
    assert not may_move_file(row(flow=None))
    assert may_move_file(row(status="closed"))
    assert may_move_file(None)
