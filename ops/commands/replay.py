"""``reconciler replay PROJECTION``: rebuild a read model from the retained streams.

The rebuild goes into a fresh version; the switch to it is one atomic pointer
write once it has caught up, and the old version is deleted afterwards (see
:mod:`projections.rebuild`).  A progress bar is drawn on stderr when it is a
terminal; the result is a table or JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ops.runtime_env import open_environment, settings_from_args
from ops.tables import emit
from projections.models import models
from projections.rebuild import Progress, replay

BAR_WIDTH = 30
REDRAW_S = 0.1


class ProgressBar:
    """``[#####-----] 52% 520000/1000000 events  81234/s`` redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._drawn = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._drawn < REDRAW_S and p.applied < p.total:
            return
        self._drawn = now
        share = p.applied / p.total if p.total else 1.0
        filled = int(share * BAR_WIDTH)
        rate = p.applied / p.elapsed_s if p.elapsed_s > 0 else 0.0
        self.out.write(f"\r{p.projection} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
                       f"{share:4.0%} {p.applied}/{p.total} events  {rate:,.0f}/s")
        self.out.flush()

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="rebuild a projection from the retained streams and switch to it")
    parser.add_argument("projection", choices=sorted(models()), help="the read model to rebuild")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    keys = settings.keys
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.json else None
    async with open_environment(settings, need_pg=False) as env:
        try:
            result = await replay(env.redis, keys, args.projection, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    emit({"projection": result.projection, "version": result.version,
          "replaced_version": result.replaced, "events": result.applied,
          "seconds": round(result.elapsed_s, 3), "events_per_s": round(result.events_per_s),
          "positions": [{"stream": s, "position": p} for s, p in sorted(result.positions.items())]},
         as_json=args.json)
    return 0
