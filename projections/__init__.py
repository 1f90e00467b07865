"""Read models folded from the streams, with checkpoints, and replay from the start.

Imports from ``events`` and ``consumers`` only.
"""
