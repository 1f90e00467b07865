"""A plain Python model of the rule table: what every store must show once things settle.

It knows nothing of events, streams or timers.  Each user action changes the
model the way it changes the stores; :meth:`Conversation.settle` then applies
the rule table of DESIGN.md until nothing more applies, with every short
deadline (a short flow's timeout, the orphan grace period, a crashed
session's lease) taken as past, because the comparison waits for them.  Long
flows never fall due within a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHORT_FLOW = "short"
"""The one flow with a timeout short enough to fall due within a test."""
LONG_S = 3600.0


@dataclass
class Row:
    status: str = "active"
    assigned_to: str | None = None
    flow: str | None = None
    started: float | None = None
    """``bot_started_at`` as Unix time."""

    def is_bot_run(self) -> bool:
        return self.status == "active" and self.assigned_to == "bot"

    def has_bot_fields(self) -> bool:
        return self.assigned_to == "bot" or self.flow is not None or self.started is not None


@dataclass
class File:
    flow: str | None


@dataclass
class Conversation:
    """One conversation key: its row, its session file, its quarantined files."""

    row: Row | None = None
    file: File | None = None
    quarantined: int = 0
    bot_seen: float | None = None
    """When the reconciler first saw the bot run without ``bot_started_at``."""

    def timeout(self) -> float:
        flow = (self.row.flow if self.row else None) or (self.file.flow if self.file else None)
        return 1.0 if flow == SHORT_FLOW else LONG_S

    def settle(self, now: float) -> None:
        """Apply the rule table until it asks for nothing more."""
        for _ in range(4):
            if not self._step(now):
                return
        raise AssertionError("the model did not settle")

    def _step(self, now: float) -> bool:
        row = self.row
        if row is None:
            self.bot_seen = None
            return self._quarantine()
        if not row.is_bot_run():
            self.bot_seen = None
            if row.status != "active" and row.has_bot_fields():
                row.flow = row.started = None
                row.assigned_to = None if row.assigned_to == "bot" else row.assigned_to
            return self._quarantine()
        if row.flow is None and self.file is not None and self.file.flow is not None:
            row.flow = self.file.flow
        if row.started is None and self.bot_seen is None:
            self.bot_seen = now
        start = row.started if row.started is not None else self.bot_seen
        assert start is not None
        if start + self.timeout() <= now + 5.0:  # due before the comparison gives up waiting
            row.status, row.assigned_to, row.flow, row.started = "closed", None, None, None
            return True
        return False

    def _quarantine(self) -> bool:
        if self.file is None:
            return False
        self.file = None
        self.quarantined += 1
        return True


@dataclass
class Session:
    """One gateway session: is it live, its queue, its parked messages."""

    live: bool = False
    queue: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.live = True
        self.queue = self.parked + self.queue
        self.parked = []

    def end(self) -> None:
        """Stopped, or its lease expired: a queue nobody drains is parked."""
        self.live = False
        self.settle()

    def push(self, messages: list[str]) -> None:
        self.queue += messages
        self.settle()

    def settle(self) -> None:
        if not self.live and self.queue:
            self.parked += self.queue
            self.queue = []
