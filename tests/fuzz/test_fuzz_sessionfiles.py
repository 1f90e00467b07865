"""Random session-file names and contents into the folder view, in a real folder.

What a user relies on: a name is treated as a session file only if it is
exactly one (so nothing else is ever read, moved or attributed to a
conversation); every other entry yields a rejection with a reason or is
ignored as a writer's temporary file; nothing outside the folder is read,
followed or changed -- a sentinel file beside the folder keeps its content
and its modification time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events.contract import RejectReason, SessionFileRejected, SessionFileRemoved, SessionFileWritten
from events.session_file_format import FilePattern, Rejected, path_inside, read_session_file
from events.sources.folder_scan import FolderView, is_temporary

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATTERN = FilePattern("whatsapp_{phone}_{channel}.json")
MAX_BYTES = 4096
REASONS = set(get_args(RejectReason))
OURS = "whatsapp_5215550101_940740243.json"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
flow_values = json_values | st.text(min_size=500, max_size=600)
contents = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda flow, rest: json.dumps({**rest, "flowId": flow}).encode(), flow_values,
              st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    st.integers(MAX_BYTES - 2, MAX_BYTES + 2).map(lambda n: b'{"flowId":"' + b"f" * n + b'"}'),
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)
names = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["../" + OURS, "..", ".", "", "a/b", "x\x00y", OURS + "\n", OURS + "/",
                     "whatsapp_1_2.json.tmp", "whatsapp__2.json", "whatsapp_1_.json",
                     "whatsapp_\u0661_2.json", "WHATSAPP_1_2.JSON", "whatsapp_1_2_3.json"]),
    st.builds(lambda p, c: f"whatsapp_{p}_{c}.json", st.text(max_size=70), st.text(max_size=70)),
)


@contextmanager
def folder_with_sentinel() -> Iterator[tuple[Path, Path]]:
    """A sessions folder, and a sentinel file beside it that must stay as it is."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        folder = root / "sessions"
        folder.mkdir()
        sentinel = root / OURS
        sentinel.write_bytes(b'{"flowId": "sentinel"}')
        os.utime(sentinel, (1_000_000, 1_000_000))
        yield folder, sentinel
        assert sentinel.read_bytes() == b'{"flowId": "sentinel"}'
        assert os.lstat(sentinel).st_mtime == 1_000_000
    finally:
        shutil.rmtree(root)


def creatable(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= 255)


@FUZZ
@given(names)
@example(OURS + "\n")
def test_a_name_is_ours_only_if_it_is_exactly_a_session_file_name(name: str) -> None:
    parsed = PATTERN.parse(name)
    if parsed is not None:
        assert PATTERN.name_for(parsed.phone, parsed.channel) == name
        assert "/" not in name and "\x00" not in name and ".." not in name


@FUZZ
@given(names)
def test_a_path_is_built_only_inside_the_folder(name: str) -> None:
    with folder_with_sentinel() as (folder, _):
        result = path_inside(folder, name)
        if not isinstance(result, Rejected):
            assert result.parent == folder.resolve() and result.name == name
        else:
            assert result.reason == "outside_folder" and result.detail


def check_events(events: list[Any], name: str) -> None:
    assert len(events) <= 1, events
    for event in events:
        if isinstance(event, SessionFileRejected):
            assert event.reason in REASONS and event.detail, event
        else:
            assert isinstance(event, SessionFileWritten | SessionFileRemoved)
            assert PATTERN.parse(name) is not None
            if isinstance(event, SessionFileWritten):
                assert event.flow_id is None or (isinstance(event.flow_id, str) and event.flow_id)


@FUZZ
@given(contents)
@example(b'{"flowId": 7}')
@example(b'{"flowId": ["a"]}')
@example(b'{"flowId": ""}')
@example(b"\xef\xbb\xbf{}")
@example(b"[" * 4000)
def test_any_content_of_our_file_is_an_event_or_a_rejection(content: bytes) -> None:
    with folder_with_sentinel() as (folder, _):
        path = folder / OURS
        path.write_bytes(content)
        os.utime(path, (1_000_000, 1_000_000))  # settled: not a writer mid-write
        view = FolderView(folder, PATTERN, max_bytes=MAX_BYTES)
        events = view.observe(OURS)
        assert len(events) == 1
        check_events(events, OURS)
        result = read_session_file(path, max_bytes=MAX_BYTES)
        if isinstance(events[0], SessionFileWritten):
            assert not isinstance(result, Rejected) and events[0].flow_id == result.flow_id
        assert view.observe(OURS) == [], "an unchanged entry is reported once"


@FUZZ
@given(names, st.sampled_from(["file", "dir", "link_out", "link_in", "fifo", "none"]), contents)
@example("../" + OURS, "none", b"{}")
@example(OURS, "link_out", b"{}")
@example(OURS, "dir", b"")
def test_any_entry_is_ignored_reported_or_read_and_nothing_outside_is_touched(
    name: str, kind: str, content: bytes,
) -> None:
    with folder_with_sentinel() as (folder, sentinel):
        if creatable(name):
            make_entry(folder / name, kind, content, sentinel)
        view = FolderView(folder, PATTERN, max_bytes=MAX_BYTES)
        events = view.observe(name)
        check_events(events, name)
        if kind in ("link_out", "link_in", "fifo", "dir") and creatable(name) and events:
            assert isinstance(events[0], SessionFileRejected)
        if not events and creatable(name) and kind != "none":
            assert is_temporary(name) or PATTERN.parse(name) is not None or name in view.foreign
        for event in view.rescan():
            assert isinstance(event, SessionFileRejected | SessionFileWritten | SessionFileRemoved)
            check_events([event], event.name)


def make_entry(path: Path, kind: str, content: bytes, sentinel: Path) -> None:
    if kind == "file":
        path.write_bytes(content)
        os.utime(path, (1_000_000, 1_000_000))
    elif kind == "dir":
        path.mkdir()
    elif kind == "link_out":
        path.symlink_to(sentinel)
    elif kind == "link_in":
        path.symlink_to(path.parent)
    elif kind == "fifo":
        os.mkfifo(path)
