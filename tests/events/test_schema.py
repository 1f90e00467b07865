"""The checked-in JSON Schema must match the Structs, and must be enough to publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.resources import files

from events import codec
from events.contract import TAGS, SessionStarted
from ops.commands.schema import render


def test_checked_in_schema_matches_the_code() -> None:
    checked_in = (files("events") / "events.schema.json").read_text()
    assert checked_in == render(), (
        "events/events.schema.json drifted from events/contract.py: "
        "run `reconciler schema > events/events.schema.json`"
    )


def test_schema_names_every_event_type_and_its_required_fields() -> None:
    schema = json.loads(render())
    tags = {
        definition["properties"]["type"]["enum"][0]
        for definition in schema["$defs"].values()
        if "type" in definition.get("properties", {})
        and "enum" in definition["properties"]["type"]
    }
    assert tags == TAGS
    started = schema["$defs"]["SessionStarted"]
    assert {"type", "id", "occurred_at", "source", "key"} <= set(started["required"])
    assert schema["x-schema-version"] == 1


def test_an_event_built_from_the_schema_alone_decodes() -> None:
    """What a TypeScript gateway would write, following only the schema."""
    data = {"type": "session.started", "id": "01JZ0000000000000000000000",
            "occurred_at": "2026-11-22T10:00:00Z", "source": "gateway", "key": "940740243",
            "lease_ttl_s": 30}
    fields = {b"v": b"1", b"type": b"session.started", b"key": b"940740243",
              b"data": json.dumps(data).encode()}
    event = codec.decode(fields)
    assert event == SessionStarted(id=data["id"], key="940740243", source="gateway",
                                   occurred_at=datetime(2026, 11, 22, 10, tzinfo=UTC))
