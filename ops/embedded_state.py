"""One embedded Redis and one embedded PostgreSQL per data folder, shared by every command.

``{data_dir}/embedded.json`` records the servers serving that folder (URL and
pid) and the processes using them.  A command with no ``REDIS_URL`` /
``DATABASE_URL`` calls :func:`attach`: under an exclusive lock on
``{data_dir}/embedded.lock`` it keeps each recorded server that still answers
(Redis: PING on its port; PostgreSQL: its ``postmaster.pid`` says ready),
forgets the ones that do not (a stale file from a killed run), starts what is
missing on the same data, and adds itself as a user.  :func:`detach` removes
it; the last user stops the servers.  So a second terminal's ``reconciler
status`` or ``parked list`` talks to the servers ``reconciler run`` uses, and
never starts a second, empty one over the same folder.

A user that was killed cannot detach; it is dropped as soon as its pid is
gone, and the servers it started keep serving whoever comes next.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.embedded import pid_alive, postgres_answers, redis_answers, start_postgres, start_redis, stop_pid

log = logging.getLogger(__name__)

STATE_FILE = "embedded.json"
LOCK_FILE = "embedded.lock"


@dataclass
class Attached:
    """The servers this process uses, and which of them it started."""

    data_dir: Path
    urls: dict[str, str] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[dict[str, Any]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(data_dir)
        yield state
        write_state(data_dir, state)


def read_state(data_dir: Path) -> dict[str, Any]:
    """The recorded state (``{}`` when missing or unreadable)."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    path = data_dir / STATE_FILE
    if not state.get("servers"):
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temporary, path)


def _answers(name: str, entry: dict[str, Any], data_dir: Path) -> bool:
    try:
        if name == "redis":
            return pid_alive(int(entry["pid"])) and redis_answers(int(entry["port"]))
        return postgres_answers(data_dir, int(entry["pid"]))
    except (KeyError, TypeError, ValueError):
        return False


def live_servers(data_dir: Path) -> dict[str, str]:
    """The URLs of the recorded servers that answer now (read-only; no lock)."""
    data_dir = data_dir.resolve()
    servers = read_state(data_dir).get("servers", {})
    return {name: entry["url"] for name, entry in servers.items()
            if isinstance(entry, dict) and _answers(name, entry, data_dir)}


def attach(data_dir: Path, names: tuple[str, ...]) -> Attached:
    """Use the servers ``names`` (``redis``, ``postgres``) of ``data_dir``, starting what is missing."""
    data_dir = data_dir.resolve()
    attached = Attached(data_dir)
    with _locked(data_dir) as state:
        servers: dict[str, Any] = state.setdefault("servers", {})
        for name, entry in list(servers.items()):
            if not isinstance(entry, dict) or not _answers(name, entry, data_dir):
                log.info("embedded %s recorded in %s no longer runs; forgotten", name, STATE_FILE)
                del servers[name]
        state["users"] = [pid for pid in state.get("users", []) if isinstance(pid, int) and pid_alive(pid)]
        for name in names:
            if name not in servers:
                servers[name] = _start(name, data_dir)
                attached.started.add(name)
            attached.urls[name] = servers[name]["url"]
        if attached.urls and os.getpid() not in state["users"]:
            state["users"].append(os.getpid())
    return attached


def _start(name: str, data_dir: Path) -> dict[str, Any]:
    if name == "redis":
        server = start_redis(data_dir / "redis", persistent=True)
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        return {"url": server.url, "pid": server.pid, "port": port}
    server = start_postgres(data_dir)
    return {"url": server.url, "pid": server.pid}


def detach(attached: Attached) -> list[str]:
    """Stop using the servers; the last user stops them.  Returns the names stopped."""
    if not attached.urls:
        return []
    with _locked(attached.data_dir) as state:
        users = [pid for pid in state.get("users", [])
                 if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)]
        state["users"] = users
        if users:
            return []
        stopped = []
        for name, entry in list(state.get("servers", {}).items()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                stop_pid(int(entry["pid"]), signal.SIGINT if name == "postgres" else signal.SIGTERM)
                stopped.append(name)
        state["servers"] = {}
        return stopped
