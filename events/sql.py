"""SQL identifiers built from settings: the one way a table or column name enters a statement.

Names come from the user's settings (``RECONCILER_TABLE``, ``RECONCILER_COLUMN_*``),
never from events, and are always quoted, so a name with capitals, spaces or
quotes works and none can change a statement's meaning.
"""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """One SQL identifier (a column, a schema, an index), double-quoted, embedded quotes doubled."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """``schema.table`` or ``table``, each part quoted (the first dot separates the schema)."""
    return ".".join(quote_ident(part) for part in table.split(".", 1))
