"""What every benchmark shares: its command-line options, percentiles, the
machine it ran on, and how it writes its result.

A benchmark prints one JSON object and, with ``--out``, also writes it to a
file (or to ``NAME.json`` in a folder).  :mod:`ops.bench.report` reads that
folder and writes ``BENCHMARKS.md``, so every result carries what the report
needs: the bench's name, the command that produced it, when, the machine and
the versions.  One module, so the benches and the report agree on the shape:

* ``parameters`` -- what was run (counts, sizes);
* ``figures`` -- variant name -> ``{measure: value}`` (events/s, p50_ms, ...);
* ``ratios`` -- ``"a/b"`` -> ``{"ratio": r, "target": t, "met": bool}``;
* ``distributions`` -- label -> latency samples in ms; the report draws them,
  labels with ``poll`` in them as polling (dashed);
* ``targets`` -- figure -> ``{"value": v, "target": "<= 5 ms", "met": bool}`` for
  targets that are absolute figures (latency bounds), made with :func:`target`;
* ``notes`` -- sentences the report prints under the tables (what bounds a figure).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from events import codec
from events.contract import ActionRecorded
from ops import capture_install

RESULTS_DIR = Path(__file__).parent / "results"
"""Where ``--out`` writes by default when given a bare flag, and where the report reads."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"

LIBRARIES = ("redis", "hiredis", "msgspec", "asyncpg", "watchfiles", "prometheus-client",
             "faststream", "session-reconciler")


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every bench takes (``--out``, service URLs)."""
    p = argparse.ArgumentParser(prog=f"reconciler bench {name}", description=description)
    p.add_argument("--out", nargs="?", const=str(RESULTS_DIR), default=None,
                   help=f"also write the JSON to this file or folder (bare flag: {RESULTS_DIR})")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    return p


def fresh_prefix(name: str) -> str:
    """A key prefix no earlier run used; the bench deletes its keys at the end."""
    return f"bench:{name}:{uuid.uuid4().hex[:8]}:"


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles, plus min, max, mean and count (``{"p50": ..., ...}``)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for point in points:
        rank = max(1, math.ceil(point / 100 * len(ordered)))
        out[f"p{point:g}"] = ordered[rank - 1]
    out.update(min=ordered[0], max=ordered[-1], mean=sum(ordered) / len(ordered), count=len(ordered))
    return out


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def target(value: float | None, limit: float, *, at_most: bool = True, unit: str = "ms") -> dict[str, Any]:
    """One absolute target: ``value`` against ``limit`` (at most, or at least)."""
    sign = "<=" if at_most else ">="
    met = value is not None and (value <= limit if at_most else value >= limit)
    return {"value": value, "target": f"{sign} {limit:g} {unit}".rstrip(), "met": met}


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, OS and Python of this machine."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def libraries() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


async def redis_version(redis: Any) -> str:
    info = await redis.info("server")
    return str(info.get("redis_version", "?"))


async def cpu_seconds(redis: Any) -> tuple[float, float]:
    """CPU used so far by this process (all its threads), and by the Redis server."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    info = await redis.info("cpu")
    server = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return own.ru_utime + own.ru_stime, server


async def postgres_version(connection: Any) -> str:
    return str(await connection.fetchval("SHOW server_version"))


async def delete_prefix(redis: Any, prefix: str) -> None:
    """Remove every key a bench made under its fresh prefix."""
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        await redis.unlink(key)


async def drop_captured_table(pg: Any, settings: Any) -> None:
    """Uninstall the trigger and outbox, then drop the bench's conversations table."""
    with contextlib.suppress(Exception):
        await capture_install.uninstall(pg, settings, force=True)
    await pg.execute(f'DROP TABLE IF EXISTS "{settings.table}"')


async def wait_for_action(redis: Any, stream: str, last_id: str, *, action: str, key: str,
                          timeout_s: float) -> str:
    """Read the audit stream from ``last_id`` until ``action`` on ``key``; its entry id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _, entries in await redis.xread({stream: last_id}, block=1000, count=100) or ():
            for raw_id, fields in entries:
                last_id = raw_id.decode()
                event = codec.decode(fields)
                if isinstance(event, ActionRecorded) and event.action == action and event.key == key:
                    return last_id
    raise TimeoutError(f"no {action} of {key} within {timeout_s} s")


def emit(
    name: str, result: dict[str, Any], *, argv: Sequence[str], out: str | None, servers: dict[str, str]
) -> None:
    """Print the result as JSON and, with ``out``, write it there too.

    ``argv`` is what the bench's ``main`` got (recorded as the command, without URLs);
    ``servers`` names server versions (``{"redis-server": "7.0.15", "postgresql": "16.2"}``);
    ``result`` holds the keys described in the module docstring.
    """
    document = {
        "bench": name,
        "command": " ".join(["reconciler bench", name, *_safe_args(argv)]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": {**libraries(), **servers},
        **result,
    }
    text = json.dumps(document, indent=2, sort_keys=False)
    print(text)
    if out:
        path = Path(out)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / f"{name}.json"
        path.write_text(text + "\n")


def _safe_args(args: Sequence[str]) -> list[str]:
    """The command line without service URLs (they may hold passwords)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("--redis-url", "--database-url", "--out"):
            skip = arg != "--out" or (i + 1 < len(args) and not args[i + 1].startswith("-"))
            continue
        if arg.startswith(("--redis-url=", "--database-url=", "--out=")) or "://" in arg:
            continue
        out.append(arg)
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None
