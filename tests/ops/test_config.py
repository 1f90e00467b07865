"""Settings: environment, *_FILE secrets, TOML, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.config import ConfigError, load_settings
from ops.redact import redact


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings({})
    assert settings.table == "crm_conversations"
    assert settings.file_pattern == "whatsapp_{phone}_{channel}.json"
    assert settings.queue_pattern == "queue:{session}"
    assert settings.key_prefix == "reconciler:"
    assert settings.bot_timeout_s == 1800
    assert settings.grace_s == 30
    assert settings.session_ttl_s == 30
    assert settings.orphan_queue_policy == "park"
    assert settings.dry_run is False
    assert settings.metrics_addr == "127.0.0.1:9464"
    assert settings.settled_ttl_s == 7 * 86400
    assert load_settings({"RECONCILER_SETTLED_TTL_S": "3600"}).settled_ttl_s == 3600
    assert settings.keys.partitions == 1
    assert load_settings({"RECONCILER_STREAM_PARTITIONS": "6"}).keys.partitions == 6
    assert settings.redis_cluster is False
    assert load_settings({"RECONCILER_REDIS_CLUSTER": "yes",
                          "REDIS_URL": "redis://node-1:6379/0"}).redis_cluster is True
    assert settings.redis_url is None and settings.database_url is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("RECONCILER_BOT_TIMEOUT_S", "soon", "RECONCILER_BOT_TIMEOUT_S"),
        ("RECONCILER_GRACE_S", "-1", "must not be negative"),
        ("RECONCILER_ORPHAN_QUEUE_POLICY", "delete", "park, drop or report"),
        ("RECONCILER_DRY_RUN", "maybe", "true or false"),
        ("RECONCILER_TABLE", "x; drop table y", "SQL identifier"),
        ("RECONCILER_FILE_PATTERN", "../{phone}_{channel}", "not a path"),
        ("RECONCILER_QUEUE_PATTERN", "queue", "RECONCILER_QUEUE_PATTERN"),
        ("RECONCILER_KEY_PREFIX", "{x}", "braces"),
        ("RECONCILER_METRICS_ADDR", "9464", "HOST:PORT"),
        ("REDIS_URL", "http://x", "redis://"),
        ("RECONCILER_SETTLED_TTL_S", "60", "at least 600"),
        ("RECONCILER_STREAM_PARTITIONS", "0", "RECONCILER_STREAM_PARTITIONS"),
        ("RECONCILER_STREAM_PARTITIONS", "5000", "1 to 1024"),
        ("RECONCILER_REDIS_CLUSTER", "true", "needs REDIS_URL"),
    ],
)
def test_a_bad_value_names_the_setting(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load_settings({name: value})
    assert name in str(caught.value)


def test_a_bad_url_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": "mysql://app:hunter2@db/crm"})
    assert "hunter2" not in str(caught.value)


def test_secrets_from_files_and_values_from_toml(tmp_path: Path) -> None:
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://app:s3cret@db:5432/crm\n")
    config = tmp_path / "reconciler.toml"
    config.write_text('table = "conversations"\nbot_timeout_s = 600\nRECONCILER_DRY_RUN = true\n'
                      'column_phone = "msisdn"\n')
    settings = load_settings({"DATABASE_URL_FILE": str(secret), "RECONCILER_GRACE_S": "5"},
                             config_file=config)
    assert settings.database_url == "postgresql://app:s3cret@db:5432/crm"
    assert settings.table == "conversations"
    assert settings.bot_timeout_s == 600
    assert settings.dry_run is True
    assert settings.grace_s == 5
    assert settings.columns.phone == "msisdn"


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('grace_s = 99\n')
    assert load_settings({"RECONCILER_GRACE_S": "1"}, config_file=config).grace_s == 1


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("grace_s = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, config_file=config)


def test_flow_timeouts() -> None:
    settings = load_settings({"RECONCILER_FLOW_TIMEOUTS": "promotoras-v2=600, other=60"})
    assert settings.bot_timeout_for("promotoras-v2") == 600
    assert settings.bot_timeout_for("unknown") == 1800


def test_redact_hides_passwords() -> None:
    assert redact("redis://:pw@host:6379/0 and postgresql://u:p@h/db") == (
        "redis://:***@host:6379/0 and postgresql://u:***@h/db")


def test_webhook_settings(tmp_path: Path) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text("from-a-file\n")
    settings = load_settings({
        "RECONCILER_WEBHOOK_URLS": "https://crm.example/hooks, http://127.0.0.1:8080/h",
        "RECONCILER_WEBHOOK_SECRET_FILE": str(secret),
        "RECONCILER_WEBHOOK_ON": "quarantine_file:*,*:failed,session.expired",
        "RECONCILER_WEBHOOK_MAX_TRIES": "3"})
    assert settings.webhook_urls == ("https://crm.example/hooks", "http://127.0.0.1:8080/h")
    assert settings.webhook_secret == "from-a-file"
    assert "from-a-file" not in repr(settings)
    assert settings.webhook_on == ("quarantine_file:*", "*:failed", "session.expired")
    assert settings.webhook_max_tries == 3
    toml = tmp_path / "settings.toml"
    toml.write_text('webhook_urls = ["https://a.example/h", "https://b.example/h"]\n'
                    'webhook_secret = "x"\n')
    assert load_settings({}, config_file=toml).webhook_urls == ("https://a.example/h",
                                                               "https://b.example/h")


@pytest.mark.parametrize(("env", "words"), [
    ({"RECONCILER_WEBHOOK_URLS": "https://crm.example/h"}, "RECONCILER_WEBHOOK_SECRET: needed"),
    ({"RECONCILER_WEBHOOK_URLS": "ftp://x/h", "RECONCILER_WEBHOOK_SECRET": "s"},
     "RECONCILER_WEBHOOK_URLS: each URL must start with http"),
    ({"RECONCILER_WEBHOOK_ON": "quarantine"}, "RECONCILER_WEBHOOK_ON: 'quarantine' is not"),
])
def test_bad_webhook_settings_name_the_setting(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env)


def test_a_bad_webhook_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"RECONCILER_WEBHOOK_URLS": "ftp://u:hunter2@x/h"})
    assert "hunter2" not in str(info.value)
