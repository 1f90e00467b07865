"""The session rule on plain values: one test per row of it."""

from __future__ import annotations

from dataclasses import replace

from consumers.rules.gateway_session_rules import (
    CancelRetention,
    DropParked,
    DropQueue,
    Observed,
    ParkQueue,
    ReportOrphanQueue,
    RestoreParked,
    ScheduleRetention,
    decide,
)
from consumers.stores.parked_queues import ParkedBatch

NOW = 1_000_000.0
RETENTION = 3600.0
BASE = Observed(session="940740243", live=False, queue_length=0, parked_length=0, batches=(),
                now=NOW, policy="park", retention_s=RETENTION)


def test_nothing_queued_nothing_parked_does_nothing() -> None:
    assert decide(BASE) == []
    assert decide(replace(BASE, live=True)) == []


def test_live_session_with_a_queue_is_left_to_the_gateway() -> None:
    assert decide(replace(BASE, live=True, queue_length=9)) == []


def test_orphaned_queue_is_parked_and_its_retention_scheduled() -> None:
    assert decide(replace(BASE, queue_length=9)) == [
        ParkQueue(count=9), ScheduleRetention(due=NOW + RETENTION)]


def test_policy_drop_and_report() -> None:
    assert decide(replace(BASE, queue_length=9, policy="drop")) == [DropQueue(count=9)]
    assert decide(replace(BASE, queue_length=9, policy="report")) == [ReportOrphanQueue(count=9)]


def test_returning_session_gets_its_parked_messages_back() -> None:
    parked = (ParkedBatch(at=NOW - 10, count=9),)
    assert decide(replace(BASE, live=True, queue_length=1, parked_length=9, batches=parked)) == [
        RestoreParked(count=9), CancelRetention()]


def test_retention_is_kept_for_the_oldest_parked_batch() -> None:
    parked = (ParkedBatch(at=NOW - 10, count=2), ParkedBatch(at=NOW - 5, count=1))
    assert decide(replace(BASE, parked_length=3, batches=parked)) == [
        ScheduleRetention(due=NOW - 10 + RETENTION)]
    assert decide(replace(BASE, queue_length=4, parked_length=3, batches=parked)) == [
        ParkQueue(count=4), ScheduleRetention(due=NOW - 10 + RETENTION)]


def test_expired_batches_are_dropped_and_the_rest_rescheduled() -> None:
    parked = (ParkedBatch(at=NOW - RETENTION - 1, count=2), ParkedBatch(at=NOW - 5, count=1))
    assert decide(replace(BASE, parked_length=3, batches=parked)) == [
        DropParked(count=2, cutoff=NOW - RETENTION), ScheduleRetention(due=NOW - 5 + RETENTION)]


def test_everything_expired_cancels_the_deadline() -> None:
    parked = (ParkedBatch(at=NOW - RETENTION, count=2),)
    assert decide(replace(BASE, parked_length=2, batches=parked)) == [
        DropParked(count=2, cutoff=NOW - RETENTION), CancelRetention()]


def test_expired_messages_of_a_returning_session_are_dropped_the_rest_restored() -> None:
    parked = (ParkedBatch(at=NOW - RETENTION - 1, count=2), ParkedBatch(at=NOW - 5, count=1))
    assert decide(replace(BASE, live=True, parked_length=3, batches=parked)) == [
        DropParked(count=2, cutoff=NOW - RETENTION), RestoreParked(count=1), CancelRetention()]
