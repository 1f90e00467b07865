"""``reconciler demo``, the main job: embedded servers, incidents healed, nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_heals_the_incidents_and_leaves_nothing_running() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "ops", "demo", "--conversations", "60", "--seconds", "7"],
        env=env, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "started embedded Redis" in result.stderr
    assert "started embedded PostgreSQL" in result.stderr
    found = re.search(r"found at start: +(.*)", out)
    assert found and {"flow_missing 1", "orphan_queue 1", "stale_file 1"} <= set(found[1].split(", "))
    for action in ("backfill_flow", "close_conversation", "park_queue", "restore_parked",
                   "quarantine_file"):
        assert action in out, action
    assert "nothing: every store agrees" in out
    assert "9 delivered after their session came back, 0 lost" in out
    folder = re.search(r"working in (\S+)", out)
    assert folder is not None
    survivors = subprocess.run(["pgrep", "-f", folder[1]], capture_output=True, text=True)
    assert survivors.stdout.strip() == "", "a process of the demo is still running"
