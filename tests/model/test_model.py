"""Model-based test: random user actions on the real stores, compared with the rule table.

Hypothesis plays a user and a gateway: it assigns bots (with or without a
flow and a start time), clears flows, closes and reopens conversations,
writes and deletes session files, starts, stops and crashes gateway sessions,
pushes messages and moves time on.  Every action goes to the real stores
(PostgreSQL with the capture trigger, the sessions folder, Redis) while the
relay, watcher, sessions, consumers and timers roles run.  After each action
the test waits for a quiet point -- the groups have nothing unread or
pending, no deadline is due, and the stores show what the plain model in
:mod:`tests.model.model` says -- and then checks that it stays so.

Failures found are kept below as explicit sequences (CI keeps no hypothesis
database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.model.model import SHORT_FLOW, Conversation, File, Row, Session
from tests.model.stores import CHANNEL, Loop, Running
from tests.support import eventually

pytestmark = pytest.mark.timeout(600)

PHONES = ("5215550001", "5215550002")
SESSIONS = ("s1", "s2")
FLOWS = st.sampled_from([None, "flow-a", "flow-b", SHORT_FLOW])
STEADY_S = 0.25
"""After a quiet point matches, wait this long and check again: nothing more may happen."""


class ReconcilerMachine(RuleBasedStateMachine):
    loop: Loop
    urls: tuple[str, str]
    partitions = 1

    def __init__(self) -> None:
        super().__init__()
        self.system = Running(*self.urls, partitions=self.partitions)
        self.run(self.system.start())
        self.conversations = {p: Conversation() for p in PHONES}
        self.sessions = {s: Session() for s in SESSIONS}
        self.pushed = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def teardown(self) -> None:
        self.run(self.system.close())

    # -- conversations ----------------------------------------------------

    @rule(phone=st.sampled_from(PHONES), flow=FLOWS, started=st.booleans())
    def assign_bot(self, phone: str, flow: str | None, started: bool) -> None:
        at = datetime.now(UTC) if started else None
        self.upsert(phone, "active", "bot", flow, at)
        self.conversations[phone].row = Row("active", "bot", flow, at.timestamp() if at else None)

    @rule(phone=st.sampled_from(PHONES))
    def assign_agent(self, phone: str) -> None:
        conv = self.conversations[phone]
        self.upsert(phone, "active", "agent-7", conv.row.flow if conv.row else None,
                    _at(conv.row.started) if conv.row else None)
        conv.row = Row("active", "agent-7", conv.row.flow if conv.row else None,
                       conv.row.started if conv.row else None)

    @rule(phone=st.sampled_from(PHONES))
    def clear_flow(self, phone: str) -> None:
        self.update(phone, "bot_flow_id = NULL", lambda row: setattr(row, "flow", None))

    @rule(phone=st.sampled_from(PHONES))
    def close(self, phone: str) -> None:
        self.update(phone, "status = 'closed'", lambda row: setattr(row, "status", "closed"))

    @rule(phone=st.sampled_from(PHONES))
    def reopen(self, phone: str) -> None:
        self.update(phone, "status = 'active'", lambda row: setattr(row, "status", "active"))

    @rule(phone=st.sampled_from(PHONES))
    def advance_time(self, phone: str) -> None:
        """Two hours pass for a bot run: its start moves into the past."""
        row = self.conversations[phone].row
        if row is None or not row.is_bot_run():
            return
        self.update(phone, "bot_started_at = now() - interval '2 hours'",
                    lambda r: setattr(r, "started", time.time() - 7200))

    @rule(phone=st.sampled_from(PHONES), flow=FLOWS)
    def write_file(self, phone: str, flow: str | None) -> None:
        self.system.write_file(phone, flow)
        self.conversations[phone].file = File(flow)

    @rule(phone=st.sampled_from(PHONES))
    def delete_file(self, phone: str) -> None:
        (self.system.settings.sessions_dir / self.system.file_name(phone)).unlink(missing_ok=True)
        self.conversations[phone].file = None

    # -- gateway sessions ---------------------------------------------------

    @rule(name=st.sampled_from(SESSIONS))
    def start_session(self, name: str) -> None:
        assert self.system.gateway is not None
        self.run(self.system.gateway.start(name))
        self.sessions[name].start()

    @rule(name=st.sampled_from(SESSIONS))
    def stop_session(self, name: str) -> None:
        assert self.system.gateway is not None
        self.run(self.system.gateway.stop(name))
        self.sessions[name].end()

    @rule(name=st.sampled_from(SESSIONS))
    def crash_session(self, name: str) -> None:
        """The gateway dies: no stop, its lease runs out."""
        if self.run(self.system.redis.pexpire(self.system.keys.lease(name), 200)):
            self.sessions[name].end()

    @rule(name=st.sampled_from(SESSIONS), count=st.integers(1, 3))
    def push(self, name: str, count: int) -> None:
        messages = [f"m{self.pushed + i}" for i in range(count)]
        self.pushed += count
        self.run(self.system.redis.rpush(self.system.keys.queue(name), *messages))
        self.sessions[name].push(messages)

    # -- the comparison ---------------------------------------------------

    @invariant()
    def stores_match_the_model(self) -> None:
        now = time.time()
        for conv in self.conversations.values():
            conv.settle(now)
        self.run(self.wait_for_quiet_match())
        self.run(asyncio.sleep(STEADY_S))
        self.run(self.wait_for_quiet_match(strict=True))

    async def wait_for_quiet_match(self, *, strict: bool = False) -> None:
        async def quiet_and_matching() -> bool:
            return await self.system.quiet() and not await self.differences()

        try:
            await eventually(quiet_and_matching, timeout=5 if strict else 45, interval=0.05,
                             message="a quiet point matching the model")
        except AssertionError as e:
            raise AssertionError(f"{e}: {await self.differences()}") from None

    async def differences(self) -> list[str]:
        out = []
        for phone, conv in self.conversations.items():
            row = await self.system.row(phone)
            want = None if conv.row is None else _row_view(conv.row)
            have = None if row is None else {
                "status": row["status"], "assigned_to": row["assigned_to"],
                "flow": row["bot_flow_id"], "started": row["bot_started_at"] is not None}
            if want != have:
                out.append(f"{phone} row: want {want}, have {have}")
            present, flow = self.system.read_file(phone)
            want_file = (conv.file is not None, conv.file.flow if conv.file else None)
            if (present, flow) != want_file:
                out.append(f"{phone} file: want {want_file}, have {(present, flow)}")
            if self.system.quarantined(phone) != conv.quarantined:
                out.append(f"{phone} quarantined: want {conv.quarantined}, "
                           f"have {self.system.quarantined(phone)}")
        for name, session in self.sessions.items():
            have_session = await self.system.session(name)
            if have_session != (session.live, session.queue, session.parked):
                out.append(f"session {name}: want {(session.live, session.queue, session.parked)}, "
                           f"have {have_session}")
        return out

    # -- helpers ----------------------------------------------------------

    def upsert(self, phone: str, status: str, assigned: str | None, flow: str | None,
               started: datetime | None) -> None:
        table = self.system.settings.table
        self.run(self.system.pg.execute(
            f"UPDATE {table} SET status = $2, assigned_to = $3, bot_flow_id = $4, "
            "bot_started_at = $5 WHERE phone = $1", phone, status, assigned, flow, started))
        if self.conversations[phone].row is None:
            self.run(self.system.pg.execute(
                f"INSERT INTO {table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
                " bot_started_at) VALUES ($1, $2, $3, $4, $5, $6)",
                phone, CHANNEL, status, assigned, flow, started))

    def update(self, phone: str, assignment: str, change: Callable[[Row], None]) -> None:
        row = self.conversations[phone].row
        if row is None:
            return
        self.run(self.system.pg.execute(
            f"UPDATE {self.system.settings.table} SET {assignment} WHERE phone = $1", phone))
        change(row)


def _row_view(row: Row) -> dict[str, Any]:
    return {"status": row.status, "assigned_to": row.assigned_to, "flow": row.flow,
            "started": row.started is not None}


def _at(unix: float | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture
def machine(loop: Loop, redis_url: str, database_url: str) -> type[ReconcilerMachine]:
    ReconcilerMachine.loop = loop
    ReconcilerMachine.urls = (redis_url, database_url)
    ReconcilerMachine.partitions = 1
    return ReconcilerMachine


@pytest.fixture(params=[1, 4], ids=["one-stream", "4-partitions"])
def any_layout(request: pytest.FixtureRequest,
               machine: type[ReconcilerMachine]) -> type[ReconcilerMachine]:
    """The machine on one stream pair, and on four partitions (every role partitioned)."""
    machine.partitions = request.param
    return machine


def test_random_user_actions_keep_the_stores_as_the_rule_table_says(
    machine: type[ReconcilerMachine],
) -> None:
    run_state_machine_as_test(machine, settings=settings(
        max_examples=10, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))


# --------------------------------------------------------------------------
# Kept sequences: each was found by the machine above, or is a story worth
# keeping; they run as they are, every time.

def replay(machine: type[ReconcilerMachine], steps: list[tuple[str, dict[str, Any]]]) -> None:
    state = machine()
    try:
        state.stores_match_the_model()
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            state.stores_match_the_model()
    finally:
        state.teardown()


def test_a_cleared_flow_is_recovered_from_the_file_then_the_run_times_out(
    any_layout: type[ReconcilerMachine],
) -> None:
    replay(any_layout, [
        ("write_file", {"phone": PHONES[0], "flow": SHORT_FLOW}),
        ("assign_bot", {"phone": PHONES[0], "flow": "flow-a", "started": True}),
        ("clear_flow", {"phone": PHONES[0]}),
        ("write_file", {"phone": PHONES[0], "flow": "flow-b"}),
        ("advance_time", {"phone": PHONES[0]}),
    ])


def test_a_crashed_session_is_parked_and_gets_its_messages_back_first(
    any_layout: type[ReconcilerMachine],
) -> None:
    replay(any_layout, [
        ("start_session", {"name": "s1"}),
        ("push", {"name": "s1", "count": 2}),
        ("crash_session", {"name": "s1"}),
        ("push", {"name": "s1", "count": 1}),
        ("start_session", {"name": "s1"}),
        ("push", {"name": "s1", "count": 1}),
        ("stop_session", {"name": "s1"}),
    ])
