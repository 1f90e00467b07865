"""The rule table as the read models see it: a caller of :mod:`consumers.rules.conversation_rules`.

Nothing here encodes a rule.  A projection knows a key's rows and file from
events, and its time from their ``occurred_at``; :func:`verdict` turns that
into the :class:`consumers.rules.conversation_rules.Observed` the handler builds
from the stores, and asks the same :func:`~consumers.rules.conversation_rules.judge`.
The kinds (:data:`KINDS`) are a fixed vocabulary, so they can label metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from consumers.rules import conversation_rules as rules
from events.contract import ConversationRow
from events.settings import Settings

KINDS: tuple[str, ...] = rules.KINDS


@dataclass(frozen=True, slots=True)
class FileView:
    """The session file as the events describe it."""

    flow_id: str | None = None
    movable: bool = True
    modified_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The timeouts the rule table needs (the consumers' settings)."""

    bot_timeout_s: float = 1800.0
    flow_timeouts_s: Mapping[str, float] = field(default_factory=dict)
    grace_s: float = 30.0

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(bot_timeout_s=settings.bot_timeout_s, flow_timeouts_s=settings.flow_timeouts_s,
                   grace_s=settings.grace_s)


def verdict(key: str, rows: Sequence[ConversationRow], file: FileView | None, *, at: float,
            bot_seen_at: float | None = None, orphan_seen_at: float | None = None,
            limits: Limits | None = None) -> rules.Verdict:
    """The rule table's verdict on a key as the events describe it at time ``at``."""
    lim = limits or Limits()
    return rules.judge(rules.Observed(
        key=key, now=at, rows=rows, file=file, bot_seen_at=bot_seen_at,
        orphan_seen_at=orphan_seen_at, bot_timeout_s=lim.bot_timeout_s,
        flow_timeouts_s=lim.flow_timeouts_s, grace_s=lim.grace_s))
