"""Settings from the environment and an optional TOML file, validated.

Precedence: environment variable, then ``NAME_FILE`` (the value read from a
file, for secrets), then the TOML file (keys are the variable names, or the
same names lower-cased without the ``RECONCILER_`` prefix), then the default.
A bad value stops start-up with a :class:`ConfigError` that names it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from events.errors import ReconcilerError
from events.settings import Columns, Settings

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
QUALIFIED_TABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(ReconcilerError):
    """A setting is missing or has a bad value; the message names it."""


@dataclass(frozen=True)
class _Var:
    env: str
    attr: str
    parse: Callable[[str], Any]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _number(text: str, parse: Callable[[str], Any], expected: str) -> Any:
    try:
        return parse(text.strip())
    except ValueError:
        raise ValueError(f"expected {expected}") from None


def _seconds(text: str) -> float:
    value: float = _number(text, float, "a number of seconds, e.g. 1800 or 0.5")
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value: int = _number(text, int, "a whole number of at least 1")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _count(text: str) -> int:
    value: int = _number(text, int, "a whole number (0 or more)")
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        return text

    return parse


def _policy(text: str) -> str:
    if text not in ("park", "drop", "report"):
        raise ValueError("must be park, drop or report")
    return text


def _table(text: str) -> str:
    if not QUALIFIED_TABLE.match(text):
        raise ValueError("must be a plain SQL identifier, optionally schema-qualified")
    return text


def _file_pattern(text: str) -> str:
    if "/" in text or "\\" in text:
        raise ValueError("must be a file name, not a path")
    if text.count("{phone}") != 1 or text.count("{channel}") != 1:
        raise ValueError("must contain {phone} and {channel} exactly once")
    return text


def _identifier(text: str) -> str:
    if not IDENTIFIER.match(text):
        raise ValueError("must be a plain SQL identifier")
    return text


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number of rows per second above 0")
    return value


def _flow_timeouts(text: str) -> dict[str, float]:
    """``flow-a=600,flow-b=3600``"""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        flow, sep, seconds = part.partition("=")
        if not sep or not flow.strip():
            raise ValueError("expected FLOW=SECONDS[,FLOW=SECONDS...]")
        out[flow.strip()] = _seconds(seconds)
    return out


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return text


def _webhook_urls(text: str) -> tuple[str, ...]:
    """``https://a.example/hook,https://b.example/hook`` (commas or spaces)."""
    urls = tuple(u for u in re.split(r"[,\s]+", text) if u)
    for url in urls:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("each URL must start with http:// or https:// and name a host")
    return urls


WEBHOOK_SELECTOR = re.compile(r"^(session\.expired|inconsistency|[a-z0-9_*]+:[a-z*]+)$")


def _webhook_on(text: str) -> tuple[str, ...]:
    """``*:done,quarantine_file:*,session.expired,inconsistency``"""
    selectors = tuple(p for p in re.split(r"[,\s]+", text) if p)
    for selector in selectors:
        if not WEBHOOK_SELECTOR.match(selector):
            raise ValueError(f"{selector!r} is not ACTION:OUTCOME, session.expired or inconsistency")
    return selectors


VARIABLES: tuple[_Var, ...] = (
    _Var("REDIS_URL", "redis_url", _url("redis", "rediss", "unix")),
    _Var("DATABASE_URL", "database_url", _url("postgres", "postgresql")),
    _Var("RECONCILER_SESSIONS_DIR", "sessions_dir", Path),
    _Var("RECONCILER_QUARANTINE_DIR", "quarantine_dir", Path),
    _Var("RECONCILER_DATA_DIR", "data_dir", Path),
    _Var("RECONCILER_TABLE", "table", _table),
    _Var("RECONCILER_ORDER_COLUMN", "order_column", _identifier),
    _Var("RECONCILER_FILE_PATTERN", "file_pattern", _file_pattern),
    _Var("RECONCILER_QUEUE_PATTERN", "queue_pattern", str),
    _Var("RECONCILER_KEY_PREFIX", "key_prefix", str),
    _Var("RECONCILER_BOT_TIMEOUT_S", "bot_timeout_s", _seconds),
    _Var("RECONCILER_FLOW_TIMEOUTS", "flow_timeouts_s", _flow_timeouts),
    _Var("RECONCILER_GRACE_S", "grace_s", _seconds),
    _Var("RECONCILER_SESSION_TTL_S", "session_ttl_s", _seconds),
    _Var("RECONCILER_ORPHAN_QUEUE_POLICY", "orphan_queue_policy", _policy),
    _Var("RECONCILER_DRY_RUN", "dry_run", _bool),
    _Var("RECONCILER_METRICS_ADDR", "metrics_addr", _address),
    _Var("RECONCILER_REDIS_CLUSTER", "redis_cluster", _bool),
    _Var("RECONCILER_STREAM_PARTITIONS", "stream_partitions", _positive_int),
    _Var("RECONCILER_STREAM_MAX_LEN", "stream_max_len", _count),
    _Var("RECONCILER_STREAM_RETENTION_S", "stream_retention_s", _seconds),
    _Var("RECONCILER_DEADLETTER_MAX_LEN", "deadletter_max_len", _count),
    _Var("RECONCILER_QUARANTINE_RETENTION_S", "quarantine_retention_s", _seconds),
    _Var("RECONCILER_PARKED_RETENTION_S", "parked_retention_s", _seconds),
    _Var("RECONCILER_SETTLED_TTL_S", "settled_ttl_s", _seconds),
    _Var("RECONCILER_MAX_FILE_BYTES", "max_file_bytes", _positive_int),
    _Var("RECONCILER_RESCAN_INTERVAL_S", "rescan_interval_s", _seconds),
    _Var("RECONCILER_DB_LISTING_INTERVAL_S", "db_listing_interval_s", _seconds),
    _Var("RECONCILER_DB_LISTING_RATE", "db_listing_rate", _rate),
    _Var("RECONCILER_WATCH_POLLING", "watch_polling", _bool),
    _Var("RECONCILER_MAX_DELIVERIES", "max_deliveries", _positive_int),
    _Var("RECONCILER_CLAIM_MIN_IDLE_S", "claim_min_idle_s", _seconds),
    _Var("RECONCILER_CONCURRENCY", "concurrency", _positive_int),
    _Var("RECONCILER_WEBHOOK_URLS", "webhook_urls", _webhook_urls),
    _Var("RECONCILER_WEBHOOK_SECRET", "webhook_secret", str),
    _Var("RECONCILER_WEBHOOK_ON", "webhook_on", _webhook_on),
    _Var("RECONCILER_WEBHOOK_MAX_TRIES", "webhook_max_tries", _positive_int),
    _Var("RECONCILER_WEBHOOK_BACKOFF_S", "webhook_backoff_s", _seconds),
    _Var("RECONCILER_WEBHOOK_BACKOFF_MAX_S", "webhook_backoff_max_s", _seconds),
    _Var("RECONCILER_WEBHOOK_TIMEOUT_S", "webhook_timeout_s", _seconds),
)

MIN_SETTLED_TTL_S = 600.0
COLUMN_PREFIX = "RECONCILER_COLUMN_"
"""``RECONCILER_COLUMN_PHONE=msisdn`` renames a column (see :class:`Columns`)."""


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated :class:`Settings`; raises :class:`ConfigError` naming a bad setting."""
    env = dict(os.environ if environ is None else environ)
    file_values = _read_toml(config_file) if config_file else {}
    if config_file:
        _reject_unknown(file_values, config_file)
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = _raw_value(var.env, env, file_values)
        if raw is None:
            continue
        try:
            values[var.attr] = var.parse(raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{var.env}: {e} (got {_shown(var.env, raw)})") from e
    values["columns"] = _columns(env, file_values)
    values.update(overrides or {})
    settings = Settings(**values)
    _check(settings)
    return settings


def _raw_value(name: str, env: Mapping[str, str], file_values: Mapping[str, Any]) -> str | None:
    if name in env:
        return env[name]
    file_var = f"{name}_FILE"
    if file_var in env:
        try:
            return Path(env[file_var]).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{file_var}: cannot read {env[file_var]}: {e.strerror}") from e
    for candidate in (name, name.lower(), name.removeprefix("RECONCILER_").lower()):
        if candidate in file_values:
            value = file_values[candidate]
            return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return None


def _columns(env: Mapping[str, str], file_values: Mapping[str, Any]) -> Columns:
    renamed = {}
    for spec in fields(Columns):
        raw = _raw_value(f"{COLUMN_PREFIX}{spec.name.upper()}", env, file_values)
        if raw is not None:
            if not IDENTIFIER.match(raw):
                raise ConfigError(f"{COLUMN_PREFIX}{spec.name.upper()}: not a plain SQL identifier")
            renamed[spec.name] = raw
    return replace(Columns(), **renamed)


def _variable_names() -> list[str]:
    return [var.env for var in VARIABLES] + [f"{COLUMN_PREFIX}{f.name.upper()}" for f in fields(Columns)]


def _reject_unknown(file_values: Mapping[str, Any], path: Path) -> None:
    """A key no setting reads is a typo: name it, and the closest valid one."""
    names = _variable_names()
    short = [n.removeprefix("RECONCILER_").lower() for n in names]
    valid = {*short, *names, *(n.lower() for n in names)}
    for key in file_values:
        if key not in valid:
            close = difflib.get_close_matches(key.removeprefix("RECONCILER_").lower(), short, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (see docs/operations.md, Settings)"
            raise ConfigError(f"--config {path}: unknown setting {key!r}{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config: {path} is not valid TOML: {e}") from e


def _check(settings: Settings) -> None:
    try:
        settings.keys  # noqa: B018 (builds the key space, which checks its parts)
    except ValueError as e:
        name = ("RECONCILER_KEY_PREFIX" if "prefix" in str(e) else
                "RECONCILER_STREAM_PARTITIONS" if "partition" in str(e) else
                "RECONCILER_QUEUE_PATTERN")
        raise ConfigError(f"{name}: {e}") from e
    if settings.redis_cluster and settings.redis_url is None:
        raise ConfigError("RECONCILER_REDIS_CLUSTER: needs REDIS_URL, the address of a node of "
                          "the cluster (the embedded Redis is a single server)")
    if settings.sessions_dir.resolve() == settings.quarantine_dir.resolve():
        raise ConfigError("RECONCILER_QUARANTINE_DIR: must differ from RECONCILER_SESSIONS_DIR")
    if settings.session_ttl_s < 1:
        raise ConfigError("RECONCILER_SESSION_TTL_S: must be at least 1 second")
    if settings.settled_ttl_s < MIN_SETTLED_TTL_S:
        raise ConfigError(f"RECONCILER_SETTLED_TTL_S: must be at least {MIN_SETTLED_TTL_S:g} "
                          "seconds: a settled action must be remembered longer than any "
                          "redelivery of the event that decided it takes")
    if settings.webhook_urls and not settings.webhook_secret:
        raise ConfigError("RECONCILER_WEBHOOK_SECRET: needed to sign webhooks when "
                          "RECONCILER_WEBHOOK_URLS is set (or set RECONCILER_WEBHOOK_SECRET_FILE)")


def _shown(name: str, raw: str) -> str:
    if name.endswith("_SECRET"):
        return "a secret, not shown"
    if name.endswith(("_URL", "_URLS")):
        from ops.redact import redact

        return repr(redact(raw))
    return repr(raw[:80])
