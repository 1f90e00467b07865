"""One rule table: the handler, the projection, ``audit``'s scan and ``inspect`` agree.

A hypothesis strategy generates what can be observed about one conversation
key (up to four rows with uuid or serial ids, a file or none, of any age) and
every caller is fed that same state in its own shape: the handler's
:class:`~consumers.stores.conversations_sql.Row` and
:class:`~consumers.stores.session_folder.FileState`, the projection's events,
the scan's :class:`~events.contract.ConversationRow`.  All must give the
same inconsistencies, and every change the handler would make must answer
one of them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.conversation_group import decide
from consumers.rules.conversation_rules import (
    BackfillFlow,
    ClearBotFields,
    CloseConversation,
    Observed,
    QuarantineFile,
    judge,
)
from consumers.stores.conversations_sql import Row
from consumers.stores.session_folder import FileState
from events.contract import (
    ConversationCreated,
    ConversationRow,
    EventBase,
    OrphanGraceElapsed,
    SessionFileWritten,
)
from events.ids import new_event_id
from events.settings import Settings
from ops.scan import judge_key
from projections.conversation_view import ConversationsModel
from projections.rules import Limits

KEY = "5215550001:940740243"
PHONE, CHANNEL = KEY.split(":")
NOW = 1_700_000_000.0
TIMEOUT, GRACE = 1800.0, 30.0
SETTINGS = Settings(bot_timeout_s=TIMEOUT, grace_s=GRACE)
ANSWERS = {BackfillFlow: "flow_missing", CloseConversation: "timed_out",
           ClearBotFields: "bot_fields_on_closed"}

rows_st = st.lists(st.fixed_dictionaries({
    "status": st.sampled_from(["active", "closed"]),
    "assigned_to": st.sampled_from([None, "bot", "agent-7"]),
    "bot_flow_id": st.sampled_from([None, "flow-a", "flow-b"]),
    "bot_started_at": st.sampled_from([None, NOW - 10, NOW - 5000]),
}), max_size=4)
file_st = st.none() | st.fixed_dictionaries({
    "flow_id": st.sampled_from([None, "flow-a", "flow-b"]),
    "modified_at": st.sampled_from([NOW - 0.15, NOW - 3600]),
})


def _utc(unix: float | None) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


def _ids(n: int, serial: bool) -> list[str]:
    return [str(1000 - i) if serial else str(uuid.UUID(int=i * 7919 + 1)) for i in range(n)]


def _projected(rows: list[ConversationRow], file: dict[str, Any] | None) -> tuple[str, ...]:
    """The projection's kinds once it has seen the file (at its time) and every row (now)."""
    model = ConversationsModel(SETTINGS)
    events: list[EventBase] = []
    if file is not None:
        t = _utc(file["modified_at"])
        assert t is not None
        events.append(SessionFileWritten(
            id=new_event_id(t), occurred_at=t, source="folder", key=KEY, name="f.json",
            flow_id=file["flow_id"], content_sha256="0" * 64, size_bytes=2))
    now = _utc(NOW)
    assert now is not None
    events += [ConversationCreated(id=new_event_id(now), occurred_at=now, source="postgres",
                                   key=KEY, outbox_id=i, row=r) for i, r in enumerate(rows)]
    events.append(OrphanGraceElapsed(id=new_event_id(now), occurred_at=now, source="timers",
                                     key=KEY, deadline=now))  # a re-judge the handler set
    view = None
    for event in events:
        view = model.apply(view, event)
    return view.kinds if view is not None else ()


@settings(max_examples=300, deadline=None)
@given(rows_st, file_st, st.booleans())
def test_every_caller_gives_the_same_verdict(raw: list[dict[str, Any]], file: dict[str, Any] | None,
                                             serial: bool) -> None:
    ids = _ids(len(raw), serial)
    db_rows = [Row(id=i, **{**r, "bot_started_at": _utc(r["bot_started_at"])})
               for i, r in zip(ids, raw, strict=True)]
    event_rows = [ConversationRow(id=i, phone=PHONE, channel=CHANNEL,
                                  **{**r, "bot_started_at": _utc(r["bot_started_at"])})
                  for i, r in zip(ids, raw, strict=True)]
    state = None if file is None else FileState(name="f.json", fingerprint="0" * 64, movable=True,
                                                **file)
    observed = Observed(key=KEY, now=NOW, rows=db_rows, file=state, bot_timeout_s=TIMEOUT,
                        grace_s=GRACE)
    verdict = judge(observed)
    scanned = judge_key(KEY, event_rows, state, settings=SETTINGS, now=NOW)

    assert sorted(i.kind for i in scanned) == sorted(i.kind for i in verdict.inconsistencies)
    assert _projected(event_rows, file) == verdict.kinds
    assert judge(Observed(key=KEY, now=NOW, rows=event_rows, file=state, bot_timeout_s=TIMEOUT,
                          grace_s=GRACE)) == verdict
    actions = decide(observed)
    assert actions == list(verdict.actions)
    for action in actions:
        if isinstance(action, QuarantineFile):
            assert {"stale_file", "orphan_file"} & set(verdict.kinds)
        elif type(action) in ANSWERS:
            assert (ANSWERS[type(action)], action.row_id) in {  # type: ignore[attr-defined]
                (i.kind, i.row_id) for i in verdict.inconsistencies}


def test_limits_follow_the_settings() -> None:
    assert Limits.of(SETTINGS).bot_timeout_s == TIMEOUT
