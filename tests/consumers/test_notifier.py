"""The notifier role against a real HTTP receiver on 127.0.0.1 and real Redis.

The receiver checks every request with the example receiver's own ``verify``
(examples/webhook_receiver.py), so what is tested is what a CRM would accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from consumers.deadletter import list_dead_letters
from consumers.notifier import run_notifier
from consumers.webhooks import retry_delay
from events.contract import ActionOutcome, ActionRecorded, SessionExpired, tag_of
from events.ids import new_event_id
from events.publisher import Publisher
from events.settings import Settings
from tests.chaos.harness import RoleProcess, role_env
from tests.ops.cli_support import cli
from tests.support import eventually, recorded, request

SECRET = "s3cret-for-tests"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLES / "webhook_receiver.py")
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

Answer = Callable[[int], tuple[int, dict[str, str]]]
"""``answer(n)`` -> (status, headers) for the n-th request (from 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Receiver:
    """A real HTTP server in a thread; records every request and answers with ``answer``."""

    port: int
    answer: Answer = lambda n: (200, {})
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/reconciler"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was received
                    return
                record = {"headers": dict(self.headers), "body": body,
                          "verified": example.verify(
                              SECRET, self.headers.get("Reconciler-Signature", ""), body)}
                receiver.requests.append(record)
                status, headers = receiver.answer(len(receiver.requests))
                record["status"] = status
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def delivered(self) -> dict[str, dict[str, Any]]:
        """Accepted requests by idempotency key (the last copy of each)."""
        return {r["headers"]["Idempotency-Key"]: json.loads(r["body"])
                for r in self.requests if r.get("status") == 200}


@pytest.fixture
def receiver() -> Any:
    r = Receiver(free_port())
    yield r
    r.stop()


def notifier_settings(settings: Settings, *urls: str, **changes: Any) -> Settings:
    base = {"webhook_urls": urls, "webhook_secret": SECRET, "webhook_backoff_s": 0.05,
            "webhook_backoff_max_s": 0.4, "webhook_timeout_s": 2.0}
    return replace(settings, **{**base, **changes})


@contextlib.asynccontextmanager
async def notifier(settings: Settings, redis: Redis) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(settings, redis, stop))

    async def groups_exist() -> bool:
        if task.done():
            task.result()
        if not await redis.exists(settings.keys.audit_stream):
            return False
        return any(g["name"] == b"notifier" for g in await redis.xinfo_groups(settings.keys.audit_stream))

    await eventually(groups_exist, message="the notifier's group")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def record(publisher: Publisher, action: str, outcome: ActionOutcome,
                 key: str = "5511:42") -> str:
    """An action as the executor writes it: its intent, then its outcome (a dry run's
    ``planned`` alone), caused by a ``reconcile.requested``; returns the action id."""
    cause = request(key)
    action_id = uuid.uuid4().hex
    steps: list[ActionOutcome] = [outcome] if outcome == "planned" else ["intent", outcome]
    await publisher.publish_many([ActionRecorded(
        id=new_event_id(), occurred_at=datetime.now(UTC), source="reconciler", key=key,
        cause_id=cause.id, cause_type=tag_of(type(cause)), action=action,
        target=f"crm_conversations#{key}", outcome=step, action_id=action_id, reason="test",
        before={"bot_flow_id": None}, after={"bot_flow_id": "F"}) for step in steps])
    return action_id


def audit_publisher(settings: Settings, redis: Redis) -> Publisher:
    return Publisher(redis, settings.keys)


async def test_every_configured_outcome_is_delivered_signed(
        settings: Settings, redis: Redis, receiver: Receiver) -> None:
    receiver.start()
    s = notifier_settings(settings, receiver.url, webhook_on=(
        "backfill_flow:*", "*:failed", "session.expired", "inconsistency"))
    audit = audit_publisher(s, redis)
    async with notifier(s, redis):
        wanted = [await record(audit, "backfill_flow", "done"),
                  await record(audit, "backfill_flow", "planned"),
                  await record(audit, "quarantine_file", "failed"),
                  await record(audit, "report_orphan_queue", "skipped", key="940740243")]
        ignored = [await record(audit, "backfill_flow", "intent"),  # not an outcome
                   await record(audit, "quarantine_file", "done"),
                   await record(audit, "close_conversation", "skipped")]
        expired = SessionExpired(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                                 key="940740243")
        await Publisher(redis, s.keys).publish(expired)
        wanted.append(expired.id)
        await eventually(lambda: settled(redis, s), message="every entry handled")
    delivered = receiver.delivered()
    assert sorted(delivered) == sorted(wanted)  # keyed by action id
    assert len(receiver.requests) == len(wanted)  # intents are not sent: one per action
    assert not set(ignored) & set(delivered)
    assert all(r["verified"] for r in receiver.requests)
    doc = delivered[wanted[0]]
    assert doc["event"] == "audit.action" and doc["action"] == "backfill_flow"
    assert doc["outcome"] == "done" and doc["key"] == "5511:42"
    assert doc["before"] == {"bot_flow_id": None} and doc["after"] == {"bot_flow_id": "F"}
    assert doc["cause"]["type"] == "reconcile.requested" and doc["cause"]["id"]
    assert "http" not in doc["description"]
    assert delivered[expired.id]["action"] == "session_expired"
    assert delivered[expired.id]["cause"] == {"id": expired.id, "type": "session.expired"}


async def _true(value: bool) -> bool:
    return value


async def settled(redis: Redis, s: Settings) -> bool:
    """Both groups have read and acked everything on their streams."""
    for stream in (s.keys.audit_stream, s.keys.sessions_stream, s.keys.notifications_stream):
        if not await redis.exists(stream):
            return False
        for group in await redis.xinfo_groups(stream):
            if group["pending"] or group["lag"]:
                return False
    return True


async def test_receiver_down_then_500s_then_up_delivers_everything_once_per_key(
        settings: Settings, redis: Redis, receiver: Receiver) -> None:
    s = notifier_settings(settings, receiver.url, webhook_max_tries=50)
    audit = audit_publisher(s, redis)
    async with notifier(s, redis):
        ids = [await record(audit, "close_conversation", "done", key=f"5511:{n}")
               for n in range(20)]

        async def retried() -> bool:  # every delivery has failed at least once: nobody listens
            rows = await redis.xpending_range(s.keys.notifications_stream, "webhooks", "-", "+", 100)
            return len(rows) == 20 and all(int(r["times_delivered"]) >= 2 for r in rows)

        await eventually(retried, message="tries against a receiver that is down")
        receiver.answer = lambda n: (500, {}) if n <= 30 else (200, {})
        receiver.start()
        await eventually(lambda: _true(set(receiver.delivered()) == set(ids)), timeout=60,
                         message="everything delivered once the receiver is up")
    assert sum(1 for r in receiver.requests if r["status"] == 500) == 30
    keys = [r["headers"]["Idempotency-Key"] for r in receiver.requests if r["status"] == 200]
    assert sorted(keys) == sorted(ids)  # one accepted copy per action
    assert not await list_dead_letters(redis, s.keys.deadletter_stream)


async def test_retry_after_is_honoured_and_backoff_is_jittered() -> None:
    assert retry_delay(3, retry_after="7", base_s=1, max_s=300) == 7
    assert retry_delay(3, retry_after="7", base_s=1, max_s=5) == 5
    assert retry_delay(4, retry_after=None, base_s=1, max_s=300, rand=lambda: 1.0) == 8
    assert retry_delay(4, retry_after=None, base_s=1, max_s=300, rand=lambda: 0.25) == 2
    assert retry_delay(30, retry_after="junk", base_s=1, max_s=60, rand=lambda: 1.0) == 60


async def test_429_waits_retry_after_then_delivers(
        settings: Settings, redis: Redis, receiver: Receiver) -> None:
    receiver.answer = lambda n: (429, {"Retry-After": "1"}) if n == 1 else (200, {})
    receiver.start()
    s = notifier_settings(settings, receiver.url, webhook_backoff_max_s=5.0)
    async with notifier(s, redis):
        action = await record(audit_publisher(s, redis), "park_queue", "done", key="940740243")
        await eventually(lambda: _true(action in receiver.delivered()), message="delivered after 429")
    first, second = receiver.requests[0], receiver.requests[1]
    assert first["status"] == 429 and second["status"] == 200
    t1 = int(first["headers"]["Reconciler-Signature"].split(",")[0][2:])
    t2 = int(second["headers"]["Reconciler-Signature"].split(",")[0][2:])
    assert t2 - t1 >= 1  # waited at least Retry-After (a lower bound: holds on a slow machine)


async def test_a_400_goes_to_the_dead_letters_at_once(
        settings: Settings, redis: Redis, receiver: Receiver) -> None:
    receiver.answer = lambda n: (400, {})
    receiver.start()
    s = notifier_settings(settings, receiver.url)
    async with notifier(s, redis):
        action = await record(audit_publisher(s, redis), "quarantine_file", "done")

        async def dead() -> bool:
            return bool(await list_dead_letters(redis, s.keys.deadletter_stream))

        await eventually(dead, message="the 400 dead-lettered")
        [letter] = await list_dead_letters(redis, s.keys.deadletter_stream)
        assert letter.group == "webhooks" and letter.reason == "permanent"
        assert "HTTP 400" in letter.error and letter.fields["type"] == "webhook.due"
        assert letter.fields["key"].startswith(f"{action}:")
        assert len(receiver.requests) == 1
        code, out, err = await cli(s, "--json", "dlq", "list")
        assert code == 0, err
        [row] = json.loads(out)["dead_letters"]
        assert (row["group"], row["type"]) == ("webhooks", "webhook.due") and "HTTP 400" in row["error"]
        receiver.answer = lambda n: (200, {})  # the receiver is fixed: send it again
        code, out, err = await cli(s, "dlq", "retry", letter.entry_id)
        assert code == 0, err
        await eventually(lambda: _true(action in receiver.delivered()), message="the retried one")
    assert not await list_dead_letters(redis, s.keys.deadletter_stream)


async def test_sigkilled_notifier_loses_nothing(
        settings: Settings, redis: Redis, receiver: Receiver, tmp_path: Path) -> None:
    slow = threading.Event()
    receiver.answer = lambda n: (slow.wait(0.05), (200, {}))[1]
    receiver.start()
    s = replace(notifier_settings(settings, receiver.url), claim_min_idle_s=1.0)
    env = {**role_env(s, s.redis_url or ""), "RECONCILER_WEBHOOK_URLS": receiver.url,
           "RECONCILER_WEBHOOK_SECRET": SECRET, "RECONCILER_WEBHOOK_BACKOFF_S": "0.05",
           "RECONCILER_WEBHOOK_BACKOFF_MAX_S": "0.4", "RECONCILER_WEBHOOK_TIMEOUT_S": "2",
           "RECONCILER_CONCURRENCY": "2"}
    first = RoleProcess("notifier-a", "notifier", env, tmp_path)
    second = RoleProcess("notifier-b", "notifier", env, tmp_path)
    first.start()
    try:
        async def group() -> bool:
            return bool(await redis.exists(s.keys.audit_stream)) and any(
                g["name"] == b"notifier" for g in await redis.xinfo_groups(s.keys.audit_stream))

        await eventually(group, timeout=60, message="the notifier's group")
        audit = audit_publisher(s, redis)
        ids = [await record(audit, "close_conversation", "done", key=f"5511:{n}")
               for n in range(60)]
        await eventually(lambda: _true(len(receiver.delivered()) >= 5), timeout=60,
                         message=f"some delivered\n{first.tail()}")
        first.kill()
        assert len(receiver.delivered()) < len(ids), "killed too late to be mid-batch"
        second.start()
        await eventually(lambda: _true(set(receiver.delivered()) == set(ids)), timeout=90,
                         message=f"every notification delivered\n{second.tail()}")
    finally:
        first.stop()
        second.stop()
    assert all(r["verified"] for r in receiver.requests)


async def test_two_notifiers_split_the_work(
        settings: Settings, redis: Redis, receiver: Receiver, tmp_path: Path) -> None:
    import re

    import httpx

    slow = threading.Event()
    receiver.answer = lambda n: (slow.wait(0.02), (200, {}))[1]
    receiver.start()
    s = notifier_settings(settings, receiver.url)
    base = {**role_env(s, s.redis_url or ""), "RECONCILER_WEBHOOK_URLS": receiver.url,
            "RECONCILER_WEBHOOK_SECRET": SECRET, "RECONCILER_CONCURRENCY": "2"}
    ports = [free_port(), free_port()]
    notifiers = [RoleProcess(f"notifier-{p}", "notifier",
                             {**base, "RECONCILER_METRICS_ADDR": f"127.0.0.1:{p}"}, tmp_path)
                 for p in ports]
    for process in notifiers:
        process.start()
    try:
        async def both_ready() -> bool:  # /readyz: this process's groups exist, it reads
            async with httpx.AsyncClient(timeout=5) as client:
                for port in ports:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                            return False
                    except httpx.HTTPError:
                        return False
            return True

        try:
            await eventually(both_ready, timeout=60, message="two notifiers ready")
        except AssertionError as e:
            raise AssertionError("\n".join([str(e), *(p.tail() for p in notifiers)])) from None
        audit = audit_publisher(s, redis)
        # one XADD at a time: each wakes the reader that has waited longest
        ids = [await record(audit, "park_queue", "done", key=f"94074{n:04d}") for n in range(80)]
        await eventually(lambda: _true(set(receiver.delivered()) == set(ids)), timeout=90,
                         message="every notification delivered")
        delivered = []
        async with httpx.AsyncClient(timeout=10) as client:
            for port in ports:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                found = re.search(r'^reconciler_webhook_attempts_total\{result="delivered"\} (\S+)$',
                                  text, re.M)
                delivered.append(float(found[1]) if found else 0.0)
    finally:
        for process in notifiers:
            process.stop()
    assert sum(delivered) == len(ids) and all(n > 0 for n in delivered), delivered


def test_example_receivers_verify_dedupe_and_refuse_replays(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import time

    import httpx

    from consumers.webhooks import sign

    commands = [[sys.executable, str(EXAMPLES / "webhook_receiver.py")]]
    if shutil.which("node"):
        commands.append(["node", str(EXAMPLES / "node" / "webhook-receiver.js")])
    for command in commands:
        port = free_port()
        log = (tmp_path / f"receiver-{port}.log").open("wb")
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env={"WEBHOOK_SECRET": SECRET,
                                                                  "PATH": "/usr/bin:/bin"})
        try:
            asyncio.run(_check_receiver(f"http://127.0.0.1:{port}/", sign, httpx, time))
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


async def _check_receiver(url: str, sign: Any, httpx: Any, time: Any) -> None:
    body = json.dumps({"id": "01J0", "event": "audit.action"}).encode()

    async def post(payload: bytes, signed_body: bytes, at: int, key: str = "01J0",
                   secret: str = SECRET) -> Any:
        headers = {"Reconciler-Signature": sign(secret, at, signed_body), "Idempotency-Key": key,
                   "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.post(url, content=payload, headers=headers)

    async def up() -> bool:
        try:
            await post(b"{}", b"other", int(time.time()))
            return True
        except httpx.HTTPError:
            return False

    await eventually(up, message=f"example receiver at {url}")
    now = int(time.time())
    first = await post(body, body, now)
    assert first.status_code == 200 and first.json() == {"ok": True}
    again = await post(body, body, now)
    assert again.status_code == 200 and again.json() == {"duplicate": True}
    tampered = await post(body.replace(b"01J0", b"01J1"), body, now, key="01J1")
    assert tampered.status_code == 401
    old = await post(body, body, now - 3600, key="01J2")
    assert old.status_code == 401
    wrong_secret = await post(body, body, now, key="01J3", secret="another")
    assert wrong_secret.status_code == 401
    fresh = await post(body, body, now, key="01J4")
    assert fresh.status_code == 200 and fresh.json() == {"ok": True}


async def test_an_action_of_the_executor_is_notified_under_its_action_id(
        settings: Settings, redis: Redis, receiver: Receiver) -> None:
    receiver.start()
    s = notifier_settings(settings, receiver.url, webhook_on=("pause:*",))
    async with notifier(s, redis):
        code, _, err = await cli(s, "pause", "5511:42", "--reason", "by hand")
        assert code == 0, err
        await eventually(lambda: _true(bool(receiver.delivered())), message="the pause notified")
    [outcome] = [e for e in await recorded(redis, s.keys) if e.outcome == "done"]
    [(key, doc)] = receiver.delivered().items()
    assert key == doc["id"] == outcome.action_id != ""
    assert (doc["action"], doc["key"], doc["reason"]) == ("pause", "5511:42", "by hand")
