"""Access: who may be here and when. unknown_tag / revoked_tag for devices the registry
does not know or has revoked, after_hours_movement for motion outside working hours; each
repeats per tag at most once per cooldown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from engine.rules.core import SECONDS_PER_DAY, IntArray, RuleCore

if TYPE_CHECKING:
    from engine.rules.events import Event


class AccessRules(RuleCore):
    """unknown_tag, revoked_tag, after_hours_movement."""

    def _setup(self) -> None:
        super()._setup()
        self._hours = self.rules.after_hours.intervals_s()

    def _registry(self, t: float, d: IntArray, cls: NDArray[np.int32], events: list[Event]) -> None:
        tg, cfg = self.tags, self.rules.registry
        unknown = (cls < 0) & cfg.alert_unknown
        revoked = tg["revoked"][d]
        due = (unknown | revoked) & (t - tg["reg_t"][d] >= cfg.cooldown_s)
        for j in np.flatnonzero(due).tolist():
            dj = int(d[j])
            events.append(
                self._event("revoked_tag" if revoked[j] else "unknown_tag", t, dj, device_code=dj)
            )
        tg["reg_t"][d[due]] = t

    def _after_hours(
        self, t: float, d: IntArray, motion: NDArray[np.int8], events: list[Event]
    ) -> None:
        tg, cfg = self.tags, self.rules.after_hours
        tod = (t + cfg.time_offset_s) % SECONDS_PER_DAY
        working = any(
            a <= tod <= b + 59.999 if a <= b else (tod >= a or tod <= b + 59.999)
            for a, b in self._hours
        )
        if not working:
            due = (motion == 1) & (t - tg["ah_t"][d] >= cfg.cooldown_s)
            events.extend(
                self._event("after_hours_movement", t, int(d[j]), time_of_day_s=tod)
                for j in np.flatnonzero(due).tolist()
            )
            tg["ah_t"][d[due]] = t
