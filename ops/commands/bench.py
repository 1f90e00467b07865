"""``reconciler bench NAME``: run a benchmark from ``ops/bench`` and print its JSON."""

from __future__ import annotations

import argparse
import importlib  # benches import the [bench] extra, so one is loaded only when it runs
from typing import Any

BENCHES: dict[str, str] = {
    # name -> module under ops.bench exposing ``main(argv: list[str]) -> int``
    "replay": "replay",
    "consumer-throughput": "consumer_throughput",
    "reaction-latency": "reaction_latency",
    "db-capture": "db_capture",
    "trigger-cost": "trigger_cost",
    "relay-drain": "relay_drain",
    "park-latency": "park_latency",
    "file-capture": "file_capture",
    "db-listing": "db_listing",
    "live-lane": "live_lane",
    "stream-memory": "stream_memory",
    "backlog": "backlog",
    "row-reads": "row_reads",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures as JSON")
    parser.add_argument("name", choices=sorted(BENCHES) or ["(none)"], help="the benchmark to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"ops.bench.{BENCHES[args.name]}")
    result: int = module.main(args.args)
    return result
