"""Reading the current version of the read models (for the CLI and other readers)."""

from __future__ import annotations

from redis.asyncio import Redis

from events.keys import KeySpace
from projections.conversation_view import ConversationsModel, ConversationView
from projections.gateway_session_view import SessionsModel, SessionView
from projections.store import ProjectionStore

_conversations = ConversationsModel()
_sessions = SessionsModel()


async def conversation(redis: Redis, keys: KeySpace, key: str) -> ConversationView | None:
    """The conversation's view in the current version, or ``None`` if never seen (or never built)."""
    store = ProjectionStore(redis, keys, _conversations.name)
    version = await store.current_version()
    if version is None:
        return None
    raw = (await store.get_items(version, [key]))[key]
    return _conversations.decode(raw) if raw is not None else None


async def conversations(redis: Redis, keys: KeySpace) -> dict[str, ConversationView]:
    """Every conversation's view (a full read: for checks and small data sets)."""
    store = ProjectionStore(redis, keys, _conversations.name)
    version = await store.current_version()
    if version is None:
        return {}
    return {k: _conversations.decode(v) for k, v in (await store.all_items(version)).items()}


async def sessions(redis: Redis, keys: KeySpace) -> dict[str, SessionView]:
    """Every gateway session's view."""
    store = ProjectionStore(redis, keys, _sessions.name)
    version = await store.current_version()
    if version is None:
        return {}
    return {k: _sessions.decode(v) for k, v in (await store.all_items(version)).items()}
