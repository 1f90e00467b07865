"""The projections this project maintains, by name."""

from __future__ import annotations

from typing import Any

from events.settings import Settings
from projections.conversation_view import ConversationsModel
from projections.fold import Model
from projections.gateway_session_view import SessionsModel


def models(settings: Settings | None = None) -> dict[str, Model[Any]]:
    """A fresh instance of every projection, by name (timeouts from ``settings``)."""
    return {"conversations": ConversationsModel(settings), "sessions": SessionsModel()}


def model(name: str) -> Model[Any]:
    found = models().get(name)
    if found is None:
        raise LookupError(f"no projection {name!r}: choose one of {', '.join(sorted(models()))}")
    return found
