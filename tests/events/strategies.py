"""Hypothesis strategies for every event, built from msgspec's own type info.

So the strategies follow the constraints in :mod:`events.contract`
(patterns, lengths, aware timestamps) without restating them.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                         st.text(max_size=20))


def for_type(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.StructType):
        fields = {f.name: for_type(f.type) for f in info.fields}
        return st.builds(info.cls, **fields)
    if isinstance(info, mi.StrType):
        if info.pattern:
            return st.from_regex(info.pattern, fullmatch=True).filter(
                lambda s: len(s) <= (info.max_length or 10_000))
        return st.text(min_size=info.min_length or 0, max_size=min(info.max_length or 40, 40))
    if isinstance(info, mi.DateTimeType):
        return st.datetimes(timezones=st.just(UTC))
    if isinstance(info, mi.IntType):
        return st.integers(-(2**53), 2**53)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.UnionType):
        return st.one_of(*(for_type(t) for t in info.types))
    if isinstance(info, mi.DictType):
        return st.dictionaries(st.text(max_size=10), JSON_SCALARS, max_size=4)
    raise NotImplementedError(f"no strategy for {info!r}")


def events_of(event_type: type) -> st.SearchStrategy[Any]:
    return for_type(mi.type_info(event_type))
