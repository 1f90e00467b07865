"""``reconciler schema``: print (or check) the JSON Schema of every event."""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from typing import Any

from events.codec import json_schema

CHECKED_IN = files("events") / "events.schema.json"


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of the event union")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the checked-in schema differs from the code")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    text = render()
    if args.check:
        if CHECKED_IN.read_text() != text:
            print("events/events.schema.json is out of date: run `reconciler schema > "
                  "events/events.schema.json`")
            return 1
        print("events/events.schema.json is up to date")
        return 0
    print(text, end="")
    return 0
