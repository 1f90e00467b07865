"""Benchmarks: each compares side by side in one run and prints JSON.

Run one with ``reconciler bench NAME`` (or ``python -m ops.bench.NAME``).
Machines here are shared and noisy, so every benchmark reports ratios of
things measured in the same run, never a bare figure against a fixed bar.
"""
