"""No password reaches a CLI error, whatever shape the URL or DSN holding it has."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops.redact import redact

SECRET = "s3cretPW"

SHAPES = [
    f"redis://:{SECRET}@host:6379/0",
    f"redis//:{SECRET}@host:6379/0",
    f"postgres:/u:{SECRET}@host/db",
    f"postgresql://u@host/db?password={SECRET}&sslmode=disable",
    f"postgresql://u:p@{SECRET}@host/db",
    f"postgresql://u:{SECRET}@x@host/db",
    f"host=db user=u password={SECRET} dbname=x",
    f"host=db password='{SECRET} x' dbname=x",
    f"rediss://default:{SECRET}:more@host",
    f"('postgresql://u:{SECRET}\"@host/db')",
]


@pytest.mark.parametrize("text", SHAPES)
def test_every_shape_is_redacted(text: str) -> None:
    assert SECRET not in redact(text) and "***" in redact(text)


def test_text_without_a_password_is_unchanged() -> None:
    plain = "key conversation:5511:c at redis://host:6379/0 postgresql://u@h/db?sslmode=require"
    assert redact(plain) == plain


CLI_CASES = [
    ("REDIS_URL", f"redis//:{SECRET}@127.0.0.1:6379/0"),
    ("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:1/0"),
    ("REDIS_URL", f"redis://u:p@{SECRET}@127.0.0.1:6379/0"),
    ("REDIS_URL", f"redis://127.0.0.1:6379/0?password={SECRET}"),
    ("DATABASE_URL", f"postgres:/u:{SECRET}@127.0.0.1/db"),
    ("DATABASE_URL", f"postgresql://nobody_here@127.0.0.1/db?password={SECRET}"),
    ("DATABASE_URL", f"postgresql://u:p@{SECRET}@127.0.0.1:5432/db"),
]


@pytest.mark.parametrize(("name", "url"), CLI_CASES)
def test_cli_errors_never_print_the_password(name: str, url: str, redis_url: str,
                                             database_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "RECONCILER_KEY_PREFIX": "test:redact:", name: url}
    done = subprocess.run([sys.executable, "-m", "ops", "migrate", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "reconciler: error:" in done.stderr
    assert SECRET not in done.stdout + done.stderr
