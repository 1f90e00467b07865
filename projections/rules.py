"""Which rule of the rule table (DESIGN.md) a conversation breaks, as a pure function.

Input is what the database says (the row, or ``None``) and what the file says
(present or not, and its ``flowId``); output is the tuple of broken rules,
empty when the stores agree.  The kinds are a fixed vocabulary, so they can
label metrics:

==========================  =====================================================
``flow_missing``            active, bot, ``bot_flow_id`` NULL, the file names a flow
``flow_mismatch``           active, bot, the file names another flow than the row
``timed_out``               active, bot, no flow anywhere; or its timeout fired
``stale_file``              a file for a conversation not on the bot (or closed)
``bot_fields_on_closed``    closed, yet bot fields are still set
``orphan_file``             a file and no database row
==========================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from events.contract import ConversationRow

KINDS: tuple[str, ...] = (
    "flow_missing",
    "flow_mismatch",
    "timed_out",
    "stale_file",
    "bot_fields_on_closed",
    "orphan_file",
)


@dataclass(frozen=True, slots=True)
class FileView:
    present: bool
    flow_id: str | None = None


def waiting_on_bot(row: ConversationRow) -> bool:
    return row.status == "active" and row.assigned_to == "bot"


def has_bot_fields(row: ConversationRow) -> bool:
    return row.assigned_to == "bot" or row.bot_flow_id is not None or row.bot_started_at is not None


def broken_rules(
    row: ConversationRow | None, file: FileView, *, timeout_fired_for: datetime | None = None,
) -> tuple[str, ...]:
    """The kinds of inconsistency between ``row`` and ``file``; ``()`` when they agree.

    ``timeout_fired_for`` is the ``bot_started_at`` of a bot run whose timeout
    already fired: if the row still shows that run, it should have been closed.
    """
    if row is None:
        return ("orphan_file",) if file.present else ()
    kinds: list[str] = []
    if waiting_on_bot(row):
        if row.bot_flow_id is None:
            kinds.append("flow_missing" if file.present and file.flow_id else "timed_out")
        elif file.present and file.flow_id and file.flow_id != row.bot_flow_id:
            kinds.append("flow_mismatch")
        if (timeout_fired_for is not None and row.bot_started_at == timeout_fired_for
                and "timed_out" not in kinds):
            kinds.append("timed_out")
        return tuple(kinds)
    if file.present:
        kinds.append("stale_file")
    if row.status == "closed" and has_bot_fields(row):
        kinds.append("bot_fields_on_closed")
    return tuple(kinds)
