"""Event ids: ULIDs in Crockford base32, ordered by time, derived ids stable."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from events.ids import _encode, derived_id, id_time, new_event_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def digit_by_digit(value: int) -> str:
    """The plain conversion, five bits per digit from the lowest."""
    digits = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        digits.append(CROCKFORD[digit])
    return "".join(reversed(digits))


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_encoding_is_the_plain_base32_conversion(value: int) -> None:
    assert _encode(value) == digit_by_digit(value)


def test_the_extremes_and_the_ulid_spec_timestamp() -> None:
    assert _encode(0) == "0" * 26
    assert _encode((1 << 128) - 1) == "7" + "Z" * 25
    assert _encode(1469918176385 << 80)[:10] == "01ARYZ6S41"  # the ULID spec's example


def test_ids_sort_by_time_and_give_it_back() -> None:
    earlier, later = datetime(2026, 12, 1, 9, tzinfo=UTC), datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert new_event_id(earlier) < new_event_id(later)
    assert id_time(new_event_id(later)) == later.timestamp()


def test_derived_ids_are_stable_per_origin() -> None:
    at = datetime(2026, 12, 1, 9, 30, 15, 250_000, tzinfo=UTC)
    assert derived_id(at, "outbox:crm:42") == derived_id(at, "outbox:crm:42")
    assert derived_id(at, "outbox:crm:42") != derived_id(at, "outbox:crm:43")
    assert id_time(derived_id(at, "outbox:crm:42")) == at.timestamp()
