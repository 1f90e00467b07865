"""LeaseDeadlines: each known lease read once at its deadline, a heartbeat's extension kept."""

from __future__ import annotations

import pytest

from events.sources.lease_deadlines import SLACK_S, LeaseDeadlines


def test_a_lease_is_due_once_at_its_deadline() -> None:
    deadlines = LeaseDeadlines()
    deadlines.note("a", 1_000, now=100.0)
    deadlines.note("b", 5_000, now=100.0)
    assert deadlines.seconds_until_next(now=100.0) == pytest.approx(1.0 + SLACK_S)
    assert deadlines.take_due(now=100.5) == []
    assert deadlines.take_due(now=101.0 + SLACK_S) == ["a"]
    assert deadlines.take_due(now=101.5) == []
    assert len(deadlines) == 1


def test_a_heartbeat_moves_the_deadline_and_the_old_one_is_ignored() -> None:
    deadlines = LeaseDeadlines()
    deadlines.note("a", 1_000, now=100.0)
    deadlines.note("a", 30_000, now=100.9)  # the gateway's heartbeat extended the lease
    assert deadlines.take_due(now=102.0) == []
    assert deadlines.seconds_until_next(now=102.0) == pytest.approx(28.9 + SLACK_S)
    assert deadlines.take_due(now=131.0) == ["a"]


def test_a_lease_without_ttl_or_gone_is_forgotten() -> None:
    deadlines = LeaseDeadlines()
    deadlines.note("a", 1_000, now=100.0)
    deadlines.note("a", -2, now=100.1)
    deadlines.note("b", -1, now=100.1)
    assert len(deadlines) == 0
    assert deadlines.seconds_until_next(now=100.1) == float("inf")
    assert deadlines.take_due(now=200.0) == []
