"""Log lines as an operator reads them, and start-up refusing a bad setting."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from redis.asyncio import Redis

from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.keys import KeySpace
from events.publisher import Publisher
from ops.logs import JsonFormatter, RedactingFilter, TextFormatter
from tests.support import eventually, request


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """JSON and text output of the runtime's logger, as ``ops.logs.configure`` sets them up."""
    as_json, as_text = io.StringIO(), io.StringIO()
    handlers = []
    for stream, formatter in ((as_json, JsonFormatter()), (as_text, TextFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        handlers.append(handler)
    logger = logging.getLogger("consumers.runtime")
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield as_json, as_text
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


async def test_a_line_about_a_message_carries_its_context_and_no_secret(
    redis: Redis, keys: KeySpace, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    as_json, as_text = captured

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        raise PermanentError("cannot reach postgresql://app:hunter2@db/crm")

    event = request("5511999990000:12345")
    (entry_id,) = await Publisher(redis, keys).publish_many([event])
    consumer = GroupConsumer(redis, GroupOptions(
        group="logs-test", streams=(keys.conversations_stream,),
        deadletter_stream=keys.deadletter_stream, concurrency=1), handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async def logged() -> bool:
            return "permanent error" in as_json.getvalue()

        await eventually(logged, message="the permanent-error log line")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    lines = [json.loads(line) for line in as_json.getvalue().splitlines()]
    (line,) = [x for x in lines if "permanent error" in x["msg"]]
    assert line["stream"] == keys.conversations_stream
    assert line["message_id"] == entry_id
    assert line["event_type"] == "reconcile.requested"
    assert line["key"] == "5511999990000:12345"
    assert line["level"] == "error" and line["group"] == "logs-test"
    everything = as_json.getvalue() + as_text.getvalue()
    assert "hunter2" not in everything and "app:***@db" in everything
    assert event.id not in everything  # the body (data) is never logged
    assert f"message_id={entry_id}" in as_text.getvalue()


def test_extra_that_is_not_context_is_left_out() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "stored %s", ("thing",), None)
    record.key = "k1"
    record.body = '{"secret": "customer text"}'
    record.stream = "redis://u:pw@host/0"
    out = json.loads(JsonFormatter().format(record))
    assert out["key"] == "k1" and "body" not in out
    assert "customer text" not in json.dumps(out) and "pw@" not in out["stream"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RECONCILER_GRACE_S": "soon"}, "RECONCILER_GRACE_S"),
        ({"RECONCILER_METRICS_ADDR": "everywhere"}, "RECONCILER_METRICS_ADDR"),
        ({"DATABASE_URL": "mysql://app:hunter2@db/crm"}, "DATABASE_URL"),
        ({"REDIS_URL_FILE": "/nonexistent/redis-url"}, "REDIS_URL_FILE"),
    ],
)
def test_a_bad_setting_stops_run_with_one_line_naming_it(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("RECONCILER_") and k not in ("REDIS_URL", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "ops", "run"], env={**clean, **env}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reconciler: error:") and named in lines[0]
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_a_bad_toml_file_stops_run_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text("bot_timeout_s = 'half an hour'\n")
    result = subprocess.run(
        [sys.executable, "-m", "ops", "--config", str(config), "run"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "RECONCILER_BOT_TIMEOUT_S" in result.stderr and "Traceback" not in result.stderr
