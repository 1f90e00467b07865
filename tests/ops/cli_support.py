"""Running the ``reconciler`` CLI as a child process, as an operator would."""

from __future__ import annotations

import asyncio
import os
import sys

from events.settings import Settings


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """``reconciler ARGS`` with the test's stores, prefix, table and folders: (exit code, stdout, stderr)."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or "",
           "DATABASE_URL": settings.database_url or "", "RECONCILER_KEY_PREFIX": settings.key_prefix,
           "RECONCILER_QUEUE_PATTERN": settings.queue_pattern, "RECONCILER_TABLE": settings.table,
           "RECONCILER_SESSIONS_DIR": str(settings.sessions_dir),
           "RECONCILER_QUARANTINE_DIR": str(settings.quarantine_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
