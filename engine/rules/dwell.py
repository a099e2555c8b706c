"""Dwell: a tag that stays in its confirmed zone longer than the zone's limit gets one
dwell event per stay (the clock restarts when engine/rules/geofence.py confirms a new
zone; missing and exited tags are not judged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.rules.core import RuleCore

if TYPE_CHECKING:
    from engine.rules.events import Event


class DwellRules(RuleCore):
    """dwell."""

    def _setup(self) -> None:
        super()._setup()
        zones = self.ctx.zones
        self._dwell_limit = np.full(len(zones), np.inf)
        for key, limit in self.rules.dwell.limits_s.items():
            for i in zones.resolve(key):
                self._dwell_limit[i] = limit

    def _dwell(self, now: float, events: list[Event]) -> None:
        tg = self.tags
        n = tg.n
        conf = tg["conf"][:n]
        limit = (
            np.where(conf >= 0, self._dwell_limit[np.maximum(conf, 0)], np.inf)
            if n
            else np.zeros(0)
        )
        due = np.flatnonzero(
            ~tg["dwell_done"][:n]
            & (now - tg["zone_since"][:n] >= limit)
            & ~tg["missing"][:n]
            & ~tg["exited"][:n]
        )
        events.extend(
            self._event(
                "dwell",
                float(tg["zone_since"][dj] + limit[dj]),
                dj,
                zone=int(conf[dj]),
                limit_s=float(limit[dj]),
                since_t=float(tg["zone_since"][dj]),
            )
            for dj in due.tolist()
        )
        tg["dwell_done"][due] = True
