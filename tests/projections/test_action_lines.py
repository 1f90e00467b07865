"""Readers show one line per action: its outcome replaces its intent (read models, ``inspect``)."""

from __future__ import annotations

from consumers import audit_entries
from events.contract import ActionOutcome, ActionRecorded
from ops.commands.inspect import one_per_action
from projections.conversation_view import with_action

KEY = "5215550101:940740243"


def step(action_id: str, outcome: ActionOutcome, action: str = "backfill_flow") -> ActionRecorded:
    return audit_entries.entry(source="reconciler", key=KEY, cause_id=None, cause_type=None,
                       action=action, target="crm_conversations#1", outcome=outcome,
                       action_id=action_id)


def test_the_read_model_keeps_one_line_per_action() -> None:
    seen = with_action((), step("a", "intent"))
    seen = with_action(seen, step("b", "intent", "quarantine_file"))
    assert [(s.action_id, s.outcome) for s in seen] == [("a", "intent"), ("b", "intent")]
    seen = with_action(seen, step("a", "done"))
    seen = with_action(seen, step("b", "skipped", "quarantine_file"))
    assert [(s.action_id, s.outcome) for s in seen] == [("a", "done"), ("b", "skipped")]


def test_inspect_leaves_out_settled_intents_only() -> None:
    events = [step("a", "intent"), step("a", "done"), step("b", "intent")]
    lines = one_per_action(list(events))
    assert [(e.action_id, e.outcome) for e in lines if isinstance(e, ActionRecorded)] == [
        ("a", "done"), ("b", "intent")]
