"""The projections this project maintains, by name."""

from __future__ import annotations

from typing import Any

from projections.conversations import ConversationsModel
from projections.fold import Model
from projections.sessions import SessionsModel


def models() -> dict[str, Model[Any]]:
    """A fresh instance of every projection, by name."""
    return {"conversations": ConversationsModel(), "sessions": SessionsModel()}


def model(name: str) -> Model[Any]:
    found = models().get(name)
    if found is None:
        raise LookupError(f"no projection {name!r}: choose one of {', '.join(sorted(models()))}")
    return found
