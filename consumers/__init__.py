"""The consumer-group runtime and one module per group's handler.

Imports only from ``events``.
"""
