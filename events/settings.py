"""The settings every component takes, as one plain value.

Nothing here reads the environment: :mod:`ops.config` builds a
:class:`Settings` from environment variables and an optional TOML file,
validates it, and hands it down.  Components only read attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from events.keys import KeySpace

OrphanQueuePolicy = Literal["park", "drop", "report"]


@dataclass(frozen=True, kw_only=True)
class Columns:
    """Column names of the conversations table."""

    id: str = "id"
    phone: str = "phone"
    channel: str = "phone_number_id"
    status: str = "status"
    assigned_to: str = "assigned_to"
    bot_flow_id: str = "bot_flow_id"
    bot_started_at: str = "bot_started_at"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable, with the defaults named in DESIGN.md."""

    redis_url: str | None = None
    """``redis://`` or ``rediss://``; ``None`` starts an embedded server."""
    database_url: str | None = None
    """PostgreSQL URL; ``None`` starts an embedded server."""
    sessions_dir: Path = Path("./data/sessions")
    quarantine_dir: Path = Path("./data/quarantine")
    data_dir: Path = Path("./data")
    """Where embedded servers keep their files."""
    table: str = "crm_conversations"
    columns: Columns = field(default_factory=Columns)
    order_column: str | None = None
    """Which row of a key is the latest (``ORDER BY … DESC``); ``None`` means ``created_at``
    where the table has it.  Never the id: uuids do not sort by time."""
    file_pattern: str = "whatsapp_{phone}_{channel}.json"
    queue_pattern: str = "queue:{session}"
    key_prefix: str = "reconciler:"
    bot_timeout_s: float = 1800.0
    flow_timeouts_s: dict[str, float] = field(default_factory=dict)
    """Per-flow bot timeouts; flows not named here use ``bot_timeout_s``."""
    grace_s: float = 30.0
    session_ttl_s: float = 30.0
    orphan_queue_policy: OrphanQueuePolicy = "park"
    dry_run: bool = False
    metrics_addr: str = "127.0.0.1:9464"

    redis_cluster: bool = False
    """``REDIS_URL`` names a node of a Redis Cluster: connect a cluster client."""
    stream_partitions: int = 1
    """Partitions of the conversation and session streams (events.keys); 1: today's layout."""

    # retention
    stream_max_len: int = 1_000_000
    """Approximate cap on each event stream, never past unread entries (events.retention); 0: off."""
    stream_retention_s: float = 0.0
    """Trim entries older than this, never past unread entries; 0 turns it off."""
    deadletter_max_len: int = 100_000
    """Approximate cap on the dead-letter stream (oldest dropped first); 0 turns it off."""
    quarantine_retention_s: float = 30 * 86400.0
    parked_retention_s: float = 7 * 86400.0
    settled_ttl_s: float = 7 * 86400.0
    """How long a key's settled actions are remembered after its last outcome, so an action
    decided again by a redelivered event is not redone (events.action_log)."""

    # sources
    max_file_bytes: int = 1_048_576
    rescan_interval_s: float = 600.0
    """Slow full rescan of the sessions folder; 0 turns it off."""
    db_listing_interval_s: float = 21_600.0
    """Slow, jittered listing of the table's rows that can matter; 0 turns it off."""
    db_listing_rate: float = 2_000.0
    """Rows per second the listing reads at most, so the CRM's database is not hurt."""
    watch_polling: bool = False
    """Watch the sessions folder by polling instead of inotify (network file systems)."""

    # outbound notifications (consumers/notifier.py)
    webhook_urls: tuple[str, ...] = ()
    """Where notifications are POSTed; none: the notifier role idles."""
    webhook_secret: str | None = field(default=None, repr=False)
    """HMAC-SHA256 key of the ``Reconciler-Signature`` header."""
    webhook_on: tuple[str, ...] = ("*:done", "*:failed", "session.expired", "inconsistency")
    """What is notified: ``ACTION:OUTCOME`` (``*`` matches any), ``session.expired``,
    ``inconsistency`` (audited reports, actions named ``report_*``)."""
    webhook_max_tries: int = 8
    """Tries per delivery before it goes to the dead letters (a 4xx other than 429: one)."""
    webhook_backoff_s: float = 1.0
    """First retry delay; doubled on every try, with full jitter."""
    webhook_backoff_max_s: float = 300.0
    """Longest wait between tries (``Retry-After`` included)."""
    webhook_timeout_s: float = 10.0
    """Per-request timeout (connect, write, read)."""

    # consumer runtime
    max_deliveries: int = 5
    claim_min_idle_s: float = 30.0
    concurrency: int = 16

    @property
    def keys(self) -> KeySpace:
        return KeySpace(prefix=self.key_prefix, queue_pattern=self.queue_pattern,
                        partitions=self.stream_partitions)

    def bot_timeout_for(self, flow_id: str | None) -> float:
        if flow_id is not None and flow_id in self.flow_timeouts_s:
            return self.flow_timeouts_s[flow_id]
        return self.bot_timeout_s
