"""What ``reconciler COMMAND --help`` says: a description and examples for every command.

Kept in one place, apart from the command modules, so the whole CLI reads
consistently and a test can check that nothing is left without words
(:func:`ops.cli.build_parser` applies it; ``tests/ops/test_cli.py`` walks
every parser).  Keys are the command path (``("dlq", "retry")``).
"""

from __future__ import annotations

HELP: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    (): ("Keeps a WhatsApp bot CRM's state consistent across PostgreSQL, session files and Redis "
         "queues. With no REDIS_URL / DATABASE_URL every command uses the embedded servers of "
         "the data folder (./data).",
         ("reconciler run --dry-run", "reconciler audit", "reconciler status --json",
          "reconciler COMMAND --help")),
    ("run",): ("Run the reconciler: every role in this process, or the ones named with --role. "
               "Every action is logged on one line as it happens.",
               ("reconciler run", "reconciler run --dry-run",
                "reconciler run --role consumers --role timers")),
    ("demo",): ("Stage the known incidents among healthy conversations in a temporary folder, "
                "run every role against embedded servers, print each repair, exit 0.",
                ("reconciler demo", "reconciler demo --conversations 60 --seconds 7 --keep")),
    ("migrate",): ("Install the change capture (an outbox table, a function and two triggers) "
                   "on RECONCILER_TABLE, or remove it. Never creates or changes your tables.",
                   ("reconciler migrate --dry-run", "reconciler migrate",
                    "reconciler migrate --uninstall --dry-run")),
    ("status",): ("Is everything flowing? Store URLs, consumer groups (pending, lag, dead "
                  "letters), sources, timers and read models. Read-only.",
                  ("reconciler status", "reconciler status --json | jq .groups")),
    ("audit",): ("List every inconsistency between the database, the sessions folder and Redis, "
                 "by rule (flow_missing, stale_file, orphan_queue, ...). Read-only; exits 1 if "
                 "it finds any.",
                 ("reconciler audit", "reconciler audit --json | jq '.inconsistencies[].kind'",
                  "reconciler audit --fix")),
    ("inspect",): ("The whole story of one conversation (PHONE:CHANNEL) or gateway session: its "
                   "state in every store, the rules it breaks, what the consumers would do, and "
                   "its timeline.",
                   ("reconciler inspect 5215512345678:109876543210", "reconciler inspect 940740243")),
    ("resync",): ("List the conversations table now (its rows that can matter: active, or with "
                  "bot fields), rate-limited, so the consumers judge every such key, including "
                  "what no change will ever mention. Changes nothing itself.",
                  ("reconciler resync", "RECONCILER_DB_LISTING_RATE=500 reconciler resync --json")),
    ("parked",): ("Messages of gateway queues parked while their session was not live.",
                  ("reconciler parked list", "reconciler parked restore 940740243 --dry-run")),
    ("parked", "list"): ("Every session with parked messages: how many, since when, its queue "
                         "now, and whether it is live.",
                         ("reconciler parked list", "reconciler parked list --json")),
    ("parked", "restore"): ("Put a session's parked messages back at the head of its queue, in "
                            "their original order (audited as restore_parked).",
                            ("reconciler parked restore 940740243 --dry-run",
                             "reconciler parked restore 940740243")),
    ("quarantine",): ("Session files moved aside by quarantine_file, and bringing one back.",
                      ("reconciler quarantine list", "reconciler quarantine restore NAME --dry-run")),
    ("quarantine", "list"): ("Quarantined files, oldest first, with why and when.",
                             ("reconciler quarantine list", "reconciler quarantine list --json")),
    ("quarantine", "restore"): ("Move a quarantined file back into the sessions folder (audited "
                                "as restore_file); never overwrites a file that is back.",
                                ("reconciler quarantine restore "
                                 "20260101T120000-1a2b3c4d-whatsapp_5215550101_940740243.json",)),
    ("pause",): ("Leave one conversation (PHONE:CHANNEL) or gateway session alone: it is still "
                 "observed and reported, and every action on it is audited as skipped, reason "
                 "paused. --until ends the pause by itself and reconciles the key at once.",
                 ('reconciler pause 5215512345678:109876543210 --until 2h --reason "checking"',
                  "reconciler pause 940740243 --until 2026-12-01T22:00:00Z")),
    ("resume",): ("End a pause now; the key is reconciled at once (audited as resume).",
                  ("reconciler resume 5215512345678:109876543210",)),
    ("paused",): ("Every pause: the key, until when, why, by whom and since when.",
                  ("reconciler paused", "reconciler paused --json")),
    ("dlq",): ("Dead letters: entries a consumer group gave up on.",
               ("reconciler dlq list", "reconciler dlq retry 1714564800000-0")),
    ("dlq", "list"): ("The dead letters, oldest first, with the group and the reason.",
                      ("reconciler dlq list", "reconciler dlq list --limit 20 --json")),
    ("dlq", "retry"): ("Put a dead letter back on its stream, so the consumers see it again "
                       "(audited).",
                       ("reconciler dlq retry 1714564800000-0 --dry-run",
                        "reconciler dlq retry 1714564800000-0")),
    ("dlq", "drop"): ("Remove a dead letter for good; the audit entry keeps the whole entry, so "
                      "it can be put back.",
                      ("reconciler dlq drop 1714564800000-0 --dry-run",
                       "reconciler dlq drop 1714564800000-0")),
    ("replay",): ("Rebuild a read model from the retained streams into a new version, and switch "
                  "to it once it has caught up.",
                  ("reconciler replay conversations", "reconciler replay sessions")),
    ("session",): ("Announce a gateway session by hand (its lease and lifecycle events), for "
                   "gateways that cannot embed a client. start also puts the session's parked "
                   "messages back at the head of its queue, in one step with taking the lease; "
                   "heartbeat fails when the session holds no lease.",
                   ("reconciler session start 940740243 --gateway gateway-1 --ttl 30",
                    "reconciler session heartbeat 940740243 --ttl 30 || "
                    "reconciler session start 940740243",
                    "reconciler session stop 940740243")),
    ("schema",): ("Print the JSON Schema of the event union (what a publisher in another "
                  "language needs).",
                  ("reconciler schema > events.schema.json", "reconciler schema --check")),
    ("bench",): ("Run one benchmark and print its figures as JSON (needs the [bench] extra and "
                 "REDIS_URL; some need DATABASE_URL).",
                 ("reconciler bench consumer-throughput --out",
                  "reconciler bench db-capture --help")),
}
"""Description and examples of each command path; ``()`` is ``reconciler`` itself."""


def epilog(examples: tuple[str, ...]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)
