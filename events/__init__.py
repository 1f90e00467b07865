"""The event contract, its codec, stream names, the publisher, and the sources.

This is the bottom layer: it imports nothing from ``consumers``,
``projections`` or ``ops``.
"""
