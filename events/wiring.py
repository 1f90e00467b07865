"""The runtime objects built from :class:`~events.settings.Settings`, in one place.

Every role and command that publishes, schedules or names keys gets its
objects here, so a setting (``RECONCILER_STREAM_MAX_LEN``,
``RECONCILER_STREAM_RETENTION_S``, ``RECONCILER_KEY_PREFIX``,
``RECONCILER_QUEUE_PATTERN``) reaches all of them and none is built by hand
with a default of its own.  The key space is ``settings.keys``; the action
executor (a layer above) is :meth:`consumers.actions.Actions.for_settings`,
built on :func:`publisher`.
"""

from __future__ import annotations

from typing import Any

from events.publisher import Publisher, Retention
from events.settings import Settings
from events.timer_wheel import TimerWheel


def retention(settings: Settings) -> Retention:
    return Retention(max_len=settings.stream_max_len, max_age_s=settings.stream_retention_s)


def publisher(settings: Settings, redis: Any) -> Publisher:
    """A publisher onto ``settings.keys`` with the configured stream retention."""
    return Publisher(redis, settings.keys, retention(settings))


def timer_wheel(settings: Settings, redis: Any) -> TimerWheel:
    """The deadline wheel; fired deadlines go to streams capped like every other entry."""
    return TimerWheel(redis, settings.keys, max_len=settings.stream_max_len)
