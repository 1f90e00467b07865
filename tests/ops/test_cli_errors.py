"""Each expected failure is one line on stderr naming the store or setting and the fix.

Run through the real CLI (``python -m ops``), as an operator meets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import with_database


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True, text=True,
                          timeout=120, env={**base, "RECONCILER_METRICS_ADDR": "127.0.0.1:0", **env})


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("reconciler: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_postgres_refusing_the_connection_names_postgres_and_database_url(redis_url: str) -> None:
    result = run_cli({"REDIS_URL": redis_url, "DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/crm"},
                     "migrate")
    line = one_error_line(result, "PostgreSQL", "DATABASE_URL", "127.0.0.1:1")
    assert "pw" not in line.replace("DATABASE_URL", "")


def test_a_wrong_database_name_under_run_is_one_line(redis_url: str, database_url: str) -> None:
    wrong = with_database(database_url, f"no_such_db_{uuid.uuid4().hex[:6]}")
    result = run_cli({"REDIS_URL": redis_url, "DATABASE_URL": wrong}, "run")
    one_error_line(result, "PostgreSQL", "does not exist", "DATABASE_URL")


def test_redis_refusing_the_connection_names_redis_url(tmp_path: Path) -> None:
    result = run_cli({"REDIS_URL": "redis://127.0.0.1:1/0"}, "parked", "list")
    one_error_line(result, "Redis", "REDIS_URL")


def test_a_bad_number_names_the_setting(tmp_path: Path) -> None:
    result = run_cli({"RECONCILER_BOT_TIMEOUT_S": "abc"}, "status")
    one_error_line(result, "RECONCILER_BOT_TIMEOUT_S", "expected a number of seconds", "'abc'")


def test_an_unknown_toml_key_is_named_with_the_closest_valid_one(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("bot_timout_s = 600\n")
    result = run_cli({}, "status", "--config", str(config))
    one_error_line(result, "unknown setting 'bot_timout_s'", "did you mean 'bot_timeout_s'")


def test_a_sessions_folder_that_does_not_exist_is_an_error_for_audit(tmp_path: Path) -> None:
    result = run_cli({"RECONCILER_SESSIONS_DIR": str(tmp_path / "nonexistent")}, "audit")
    one_error_line(result, "RECONCILER_SESSIONS_DIR", "nonexistent")


@pytest.fixture
async def bare_database(database_url: str) -> AsyncIterator[str]:
    """A database of the test's own with a conversations table and no change capture."""
    name = f"bare_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = with_database(database_url, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE crm_conversations (id bigserial PRIMARY KEY, phone text, "
                           "phone_number_id text, status text, assigned_to text, bot_flow_id text, "
                           "bot_started_at timestamptz)")
    finally:
        await conn.close()
    yield url
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def test_run_against_a_real_database_creates_nothing_and_names_the_fix(
        redis_url: str, bare_database: str) -> None:
    env = {"REDIS_URL": redis_url, "DATABASE_URL": bare_database,
           "RECONCILER_KEY_PREFIX": f"t{uuid.uuid4().hex[:6]}:"}
    missing_table = run_cli({**env, "RECONCILER_TABLE": "conversations"}, "run", "--role", "relay")
    one_error_line(missing_table, "table 'conversations' does not exist", "RECONCILER_TABLE")
    no_capture = run_cli(env, "run", "--role", "relay")
    one_error_line(no_capture, "no change capture", "reconciler migrate")
