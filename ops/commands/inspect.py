"""``reconciler inspect KEY``: why is this chat (or session) stuck?

For a conversation key ``{phone}:{channel}`` or a gateway session name it
shows, read-only:

* the current state in each store (database row, session file, quarantined
  copies; or lease, queue and parked messages);
* what the rule table says: the rules it breaks and the actions the
  consumers would take now;
* the timeline across all sources: every event for the key on the streams
  and every action taken, with its cause, oldest first.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from consumers import conversation_group, gateway_session_group
from consumers.actions import Actions
from consumers.rules import gateway_session_rules as session_rules
from consumers.rules.conversation_rules import judge
from consumers.stores.conversations_sql import ConversationsSql
from consumers.stores.pauses import Pause, PauseStore
from consumers.stores.session_folder import SessionFiles
from events import codec, wiring
from events.contract import CONVERSATIONS, SESSIONS, ActionRecorded, EventBase, tag_of
from events.errors import MalformedEntry
from events.ids import id_time
from events.keys import SESSION_NAME, split_conversation_key
from events.replies import text
from events.settings import Settings
from ops.runtime_env import connect_pg, open_environment, require_sessions_dir, settings_from_args
from ops.tables import emit

SCAN_PAGE = 5000
SCAN_LIMIT = 200_000
"""Newest entries per stream searched for the key (the streams are retention-trimmed anyway)."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="timeline, current state and rule-table verdict of one conversation or session")
    parser.add_argument("key", help="a conversation key PHONE:CHANNEL, or a gateway session name")
    parser.add_argument("--limit", type=int, default=50, help="timeline entries shown (newest)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    conversation = ":" in args.key
    if conversation:
        split_conversation_key(args.key)
        require_sessions_dir(settings)
    elif not SESSION_NAME.fullmatch(args.key):
        raise ValueError(f"{args.key[:80]!r} is neither PHONE:CHANNEL nor a session name")
    async with open_environment(settings, need_pg=conversation) as env:
        keys = env.settings.keys
        if conversation:
            state = await _conversation_state(env.settings, env.redis, args.key)
        else:
            state = await _session_state(env.settings, env.redis, args.key)
        lanes = keys.partition_lanes(CONVERSATIONS if conversation else SESSIONS,
                                     keys.partition_of(args.key))  # the key's partition's
        streams = [*lanes, keys.audit_stream]
        timeline = await _timeline(env.redis, streams, args.key)
        pause = await PauseStore(env.redis, keys).active(args.key)
    data = {"key": args.key, "kind": "conversation" if conversation else "session",
            "paused": _paused(pause), **state, "timeline": timeline[-args.limit:]}
    emit(data, as_json=args.json,
         columns={"timeline": ("at", "what", "source", "detail", "id", "cause")})
    return 0


async def _conversation_state(settings: Settings, redis: Any, key: str) -> dict[str, Any]:
    phone, channel = split_conversation_key(key)
    pg = await connect_pg(settings.database_url or "")
    try:
        handler = conversation_group.ConversationsHandler(
            settings=settings, sql=ConversationsSql(pg, settings), files=SessionFiles(settings),
            redis=redis, actions=Actions.for_settings(redis, settings, dry_run=True),
            timers=wiring.timer_wheel(settings, redis))
        name = handler.file_name(key, phone, channel)
        observed = await handler.observe(key, phone, channel, name)
    finally:
        await pg.close()
    file = observed.file
    said = judge(observed)
    quarantined = [r.name for r in handler.files.records.entries() if r.key == key]
    return {
        "database": " | ".join(", ".join(f"{k}={v}" for k, v in row.as_dict().items())
                               for row in observed.rows) or "no row",
        "session_file": (f"{name}: flowId={file.flow_id}" if file else f"{name}: absent")
        if name else "none possible: the phone makes no safe file name (database-only actions)",
        "quarantined_copies": ", ".join(quarantined) or "none",
        "broken_rules": ", ".join(i.kind + (f" (row {i.row_id})" if i.row_id else "")
                                  for i in said.inconsistencies) or "none",
        "rule_table_says": _actions(list(said.actions)),
    }


async def _session_state(settings: Settings, redis: Any, name: str) -> dict[str, Any]:
    handler = gateway_session_group.SessionsHandler(
        settings=settings, redis=redis,
        actions=Actions.for_settings(redis, settings, dry_run=True))
    state, observed = await handler.observe(name)
    ttl = await redis.ttl(settings.keys.lease(name))
    said = session_rules.judge(observed)
    return {
        "lease": f"live, expires in {ttl} s" if state.live else "none (session not live)",
        "queue_length": state.queue_length,
        "parked_messages": state.parked_length,
        "broken_rules": ", ".join(said.kinds) or "none",
        "rule_table_says": _actions(list(said.actions)),
    }


def _paused(pause: Pause | None) -> str:
    """``no``, or until when and why (actions are then skipped, the verdict still shown)."""
    if pause is None:
        return "no"
    until = pause.as_dict()["until"] or "resumed"
    return f"until {until}" + (f" ({pause.reason})" if pause.reason else "")


def _actions(actions: list[Any]) -> str:
    """What the rule table asks for, in words: ``backfill_flow (flow_id promo-v2)``."""
    return "; ".join(describe(a) for a in actions) or "nothing to do"


def describe(action: Any) -> str:
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(action).__name__).lower()
    details = []
    for spec in dataclasses.fields(action):
        value = getattr(action, spec.name)
        if spec.name == "member" or value is None:
            continue
        if spec.name in ("due", "at") and isinstance(value, float):
            value = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
        details.append(f"{spec.name} {value}")
    return f"{name} ({', '.join(details)})" if details else name


async def _timeline(redis: Any, streams: list[str], key: str) -> list[dict[str, Any]]:
    wanted = key.encode()
    found: list[tuple[str, EventBase]] = []
    for stream in streams:
        async for entry_id, fields in _newest(redis, stream):
            if fields.get(b"key") != wanted:
                continue
            try:
                found.append((entry_id, codec.decode(fields)))
            except MalformedEntry:
                continue
    found.sort(key=lambda item: (item[1].occurred_at, item[0]))
    return [_line(event) for event in one_per_action([event for _, event in found])]


def one_per_action(events: list[EventBase]) -> list[EventBase]:
    """``events`` with each settled intent left out: an action is one line, its outcome."""
    settled = {e.action_id for e in events
               if isinstance(e, ActionRecorded) and e.action_id and e.outcome != "intent"}
    return [e for e in events if not (isinstance(e, ActionRecorded) and e.outcome == "intent"
                                      and e.action_id in settled)]


async def _newest(redis: Any, stream: str) -> Any:
    last = "+"
    seen = 0
    while seen < SCAN_LIMIT:
        page = await redis.xrevrange(stream, max=last, min="-", count=SCAN_PAGE)
        if not page:
            return
        for entry_id, fields in page:
            yield entry_id, fields
        seen += len(page)
        last = "(" + text(page[-1][0])


def _line(event: EventBase) -> dict[str, Any]:
    if isinstance(event, ActionRecorded):
        state = "intent, no outcome yet" if event.outcome == "intent" else event.outcome
        what = f"action {event.action} ({state})"
        detail = event.reason or event.target
    else:
        what = tag_of(type(event))
        detail = _event_detail(event)
    cause = event.cause_id
    return {"at": event.occurred_at, "what": what, "source": event.source, "detail": detail,
            "id": event.id, "cause": f"{cause} (+{_since(cause, event):.3f}s)" if cause else None}


def _event_detail(event: EventBase) -> str:
    row = getattr(event, "row", None)
    if row is not None:
        return (f"status={row.status} assigned_to={row.assigned_to} flow={row.bot_flow_id}")
    flow = getattr(event, "flow_id", None)
    if flow is not None:
        return f"flowId={flow}"
    length = getattr(event, "length", None)
    return f"length={length}" if length is not None else ""


def _since(cause_id: str, event: EventBase) -> float:
    return event.occurred_at.timestamp() - id_time(cause_id)


