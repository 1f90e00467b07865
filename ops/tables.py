"""Printing command output: a readable table on a terminal, JSON with ``--json``.

Every command builds plain data (dicts, lists, numbers, strings) and hands
it to :func:`emit` (a report of sections) or :func:`print_rows` (one list of
records); with ``--json`` the data is printed as one JSON document, otherwise
each list becomes an aligned table.  This is the only table printer: no
command pads columns or prints Python reprs of its own.  Values are shortened
for the table only; JSON always carries them whole.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

CELL_LIMIT = 60


def cell(value: Any, limit: int | None = CELL_LIMIT) -> str:
    """One value as table text; ``limit`` shortens it (``None``: whole, for ``name: value`` lines)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Mapping):  # counts by kind: "stale_file 2, timed_out 1"
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        value = ", ".join(cell(v) for v in value)
    text = str(value).replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as aligned text columns (``(none)`` when empty)."""
    if not rows:
        return "(none)"
    names = list(columns or rows[0].keys())
    cells = [[cell(row.get(name)) for name in names] for row in rows]
    widths = [max(len(name), *(len(r[i]) for r in cells)) for i, name in enumerate(names)]
    lines = ["  ".join(n.upper().ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def print_rows(rows: Sequence[Mapping[str, Any]], *, as_json: bool, columns: Sequence[str] | None = None,
               empty: str = "(none)", out: TextIO | None = None) -> None:
    """A list of records: a JSON array, or one table (``empty`` when there are none)."""
    stream = out or sys.stdout
    if as_json:
        print(json.dumps(list(rows), default=_default, indent=2), file=stream)
    else:
        print(table(rows, columns) if rows else empty, file=stream)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def emit(data: Mapping[str, Any], *, as_json: bool, columns: Mapping[str, Sequence[str]] | None = None,
         out: TextIO | None = None) -> None:
    """Print ``data``: JSON, or one titled table per list section and ``name: value`` lines."""
    stream = out or sys.stdout
    if as_json:
        print(json.dumps(data, default=_default, indent=2, sort_keys=False), file=stream)
        return
    scalars = {k: v for k, v in data.items() if not isinstance(v, list)}
    for name, value in scalars.items():
        print(f"{name.replace('_', ' ')}: {cell(value, limit=None)}", file=stream)
    for name, value in data.items():
        if isinstance(value, list):
            if scalars or len(data) > 1:
                print(f"\n{name.replace('_', ' ').upper()}", file=stream)
            print(table(value, (columns or {}).get(name)), file=stream)
