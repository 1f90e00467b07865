"""Adapters to the stores a handler reads and changes: the conversations table and the session folder.

Each adapter is small and does one store's I/O, so a handler reads as the rule
table and nothing else.  Writes are conditional on the values read, and each
adapter reports whether a write changed anything, so the caller audits only
what actually happened.
"""
