"""The checked-in JSON Schema must match the Structs, and must be enough to publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.resources import files

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from events import codec
from events.contract import EVENT_TYPES, TAGS, SessionStarted, tag_of
from ops.bench.stream_memory import with_defaults
from ops.commands.schema import render
from tests.events.strategies import events_of


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


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=tag_of)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_field_left_out_of_data_is_one_the_schema_gives_that_default(
        event_type: type, data: st.DataObject) -> None:
    """Fields at their defaults (a null bot field, no cause) are not written; a reader in
    any language fills them in from the schema, so leaving them out changes no meaning."""
    event = data.draw(events_of(event_type))
    _assert_defaults_left_out(json.loads(codec.encode(event)["data"]), event, _DEFS)


_SCHEMA = json.loads(render())
_DEFS = _SCHEMA["$defs"]


def _assert_defaults_left_out(doc: dict[str, object], struct: msgspec.Struct,
                              defs: dict[str, dict[str, object]]) -> None:
    definition = defs[type(struct).__name__]
    required, properties = definition.get("required", []), definition["properties"]
    assert isinstance(required, list) and isinstance(properties, dict)
    for field in msgspec.structs.fields(struct):
        value = getattr(struct, field.name)
        at_default = field.default is not msgspec.NODEFAULT and value == field.default
        assert (field.name not in doc) == at_default, field.name
        if at_default:
            assert field.name not in required
            assert properties[field.name]["default"] == msgspec.to_builtins(value)
        elif isinstance(value, msgspec.Struct):
            _assert_defaults_left_out(doc[field.name], value, defs)  # type: ignore[arg-type]


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=tag_of)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_what_is_published_and_what_older_builds_wrote_are_valid_and_read_alike(
        event_type: type, data: st.DataObject) -> None:
    """Checked by a real JSON Schema validator, as a reader in another language would: the
    entry as published, and the same event with every field written, as builds before
    defaults were left out wrote it (their entries stay in the streams across an upgrade)."""
    event = data.draw(events_of(event_type))
    published = codec.encode(event)
    older = {**published, "data": msgspec.json.encode(with_defaults(event))}
    for fields in (published, older):
        _VALIDATOR.validate(json.loads(fields["data"]))
        assert codec.decode(fields) == event


_VALIDATOR = Draft202012Validator(_SCHEMA)
