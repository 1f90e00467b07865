"""The event loop's histogram exposes what prometheus_client's Histogram would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from events.loop_histogram import LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without ``_created`` lines (a timestamp LoopHistogram omits)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def both() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, LoopHistogram]:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("h_seconds", "Doc.", ["group"], buckets=BUCKETS, registry=theirs_registry)
    ours = LoopHistogram("h_seconds", "Doc.", ["group"], buckets=BUCKETS, registry=ours_registry)
    return theirs_registry, theirs, ours_registry, ours


# Values on the bounds, between them, past the last one and at zero: "le" puts a
# value equal to a bound in that bound's bucket.
VALUES = st.one_of(st.sampled_from([0.0, *BUCKETS, 10.000001, 1e6]),
                   st.floats(min_value=0, max_value=20, allow_nan=False))


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), VALUES), max_size=60))
def test_the_exposition_is_prometheus_clients_for_the_same_observations(
    observations: list[tuple[str, float]],
) -> None:
    theirs_registry, theirs, ours_registry, ours = both()
    for group, value in observations:
        theirs.labels(group).observe(value)
        ours.labels(group).observe(value)
    assert exposition(ours_registry) == exposition(theirs_registry)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    _, _, registry, ours = both()
    ours.labels("a").observe(0.005)
    lines = exposition(registry)
    assert 'h_seconds_bucket{group="a",le="0.0025"} 0.0' in lines
    assert 'h_seconds_bucket{group="a",le="0.005"} 1.0' in lines
    assert 'h_seconds_count{group="a"} 1.0' in lines
    assert "_created" not in generate_latest(registry).decode()  # as operations.md says


def test_labels_must_match_the_names() -> None:
    _, _, _, ours = both()
    with pytest.raises(ValueError, match=r"takes labels \('group',\)"):
        ours.labels("a", "b")
