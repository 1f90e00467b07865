"""Events that only report back a change the conversations handler made itself.

Every change the handler makes comes back to it as an event: its UPDATE
through the capture, its quarantine of a file through the watcher.  After each
change, the same handling observes the key again (and acts on what it sees),
so those events hold nothing the handler has not seen.  Handling them anyway
made three handlings of each key a nightly job closed instead of one.  This
module says when a batch of deliveries is nothing but such echoes; anything
else in the batch, and the key is handled as usual.

* A row change the capture marked as the consumers' own (``origin``, capture
  version 6) is an echo in any process: the mark travels with the event.
* A file removal is an echo when this process moved that very file away and no
  other report of the name came in since.  Another process's removal reports
  are handled as usual; the memory is bounded, and forgetting only costs a
  handling.

Nothing here decides an action: skipping an echo leaves the stores as the
handling that made the change left them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from consumers.keyqueue import Delivery
from events.contract import EventBase, RowChange, SessionFileRemoved, SessionFileWritten
from events.metrics import ECHOES_SKIPPED
from events.sources.outbox import CONSUMERS_ORIGIN

MOVED_REMEMBERED = 65_536
"""How many file names moved away are remembered until the watcher reports them."""


class OwnEchoes:
    """What one handler moved away, and whether a batch holds anything else."""

    def __init__(self, limit: int = MOVED_REMEMBERED) -> None:
        self._moved: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def moved_away(self, name: str) -> None:
        """This handler moved the file ``name`` out of the sessions folder."""
        self._moved[name] = None
        self._moved.move_to_end(name)
        if len(self._moved) > self._limit:
            self._moved.popitem(last=False)

    def only_echoes(self, deliveries: Sequence[Delivery]) -> bool:
        """Every delivery reports a change this handler made (and then observed).

        A name's report is taken either way: a later removal of it is news again."""
        echoes = [d.event for d in deliveries if self._is_echo(d.event)]
        for d in deliveries:
            if isinstance(d.event, (SessionFileRemoved, SessionFileWritten)):
                self._moved.pop(d.event.name, None)
        if len(echoes) < len(deliveries):
            return False
        for event in echoes:
            ECHOES_SKIPPED.labels("row" if isinstance(event, RowChange) else "file").inc()
        return True

    def _is_echo(self, event: EventBase) -> bool:
        if isinstance(event, RowChange):
            return event.origin == CONSUMERS_ORIGIN
        return isinstance(event, SessionFileRemoved) and event.name in self._moved
