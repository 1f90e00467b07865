"""Sources: each lists its store, then watches it, and publishes what changed."""
