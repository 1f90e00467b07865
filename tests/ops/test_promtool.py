"""promtool on what we ship: the live exposition, the alert rules and their unit tests.

promtool comes from the Debian package ``prometheus`` (``.ci/extra-setup``
installs it).  These tests fail, rather than skip, when it is missing: CI
must run them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from events import metrics
from events.keys import KeySpace
from ops.group_metrics import GroupCollector
from ops.health import HealthServer
from tests.ops.test_health import get

PROMETHEUS_DIR = Path(__file__).parents[2] / "ops" / "prometheus"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install -y prometheus (see .ci/extra-setup)"
    return subprocess.run([tool, *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


@pytest.fixture
async def endpoint() -> AsyncIterator[str]:
    server = HealthServer("127.0.0.1:0")
    address = await server.start()
    try:
        yield address
    finally:
        await server.close()


def touch_every_metric() -> None:
    """Give every labelled metric a sample, so the check sees each family with its labels."""
    metrics.EVENTS_PUBLISHED.labels("conversations", "conversation.changed").inc()
    metrics.EVENTS_CONSUMED.labels("conversations", "conversation.changed", "handled").inc()
    metrics.HANDLER_DURATION.labels("conversations").observe(0.004)
    metrics.DEAD_LETTERS.labels("conversations", "permanent").inc(0)
    metrics.RECLAIMED.labels("conversations").inc(0)
    metrics.GROUPS_RECREATED.labels("conversations").inc(0)
    metrics.STREAM_GAPS.labels("conversations", "conversations").inc(0)
    metrics.SOURCE_LAST_EVENT.labels("folder").set(1.7e9)
    metrics.SOURCE_RECONNECTS.labels("postgres").inc(0)
    metrics.SOURCE_RESYNCS.labels("folder").inc()
    metrics.INVALID_INPUTS.labels("folder", "not_json").inc(0)
    metrics.ACTIONS.labels("quarantine_file", "done").inc(0)
    metrics.REACTION_LATENCY.labels("quarantine_file").observe(0.02)
    metrics.INCONSISTENCIES.labels("stale_session_file").set(0)
    metrics.OLDEST_INCONSISTENCY_AGE.labels("stale_session_file").set(0)


async def test_the_live_exposition_passes_promtool_check_metrics(
    endpoint: str, redis: Redis, keys: KeySpace
) -> None:
    await redis.xgroup_create(keys.conversations_stream, "conversations", id="0", mkstream=True)
    await GroupCollector(redis, keys).collect()
    touch_every_metric()
    status, _, body = await get(endpoint, "/metrics")
    assert status == 200
    assert b"reconciler_group_lag_entries{" in body
    result = await asyncio.to_thread(promtool, "check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout  # no lint findings either


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_config_example_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_is_not_a_rubber_stamp() -> None:
    bad = b"# TYPE reconciler_things counter\nreconciler_things 1\n"
    result = promtool("check", "metrics", stdin=bad)
    assert "reconciler_things" in result.stdout + result.stderr
