"""Cycle counts: per zone, the tags expected there (last confirmed zone, not gone)
against those heard within their silence threshold; each count is kept for scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.rules.events import Event
from engine.rules.presence import PresenceRules

MAX_LISTED = 20  # ids listed in a cycle-count event's evidence


@dataclass(frozen=True)
class CycleCount:
    """One zone's count at one time (kept for scoring count accuracy)."""

    t: float
    zone: int
    expected: int
    seen: int


class CycleCountRules(PresenceRules):
    """cycle_count."""

    def _setup(self) -> None:
        super()._setup()
        self._next_count_t = self.rules.missing.cycle_count_every_s
        self.cycle_counts: list[CycleCount] = []

    def cycle_count(self, t: float) -> list[Event]:
        """Expected tags per zone (last confirmed zone, not gone) against those heard recently."""
        tg = self.tags
        n = min(tg.n, len(self.ctx.device_class))
        d = np.arange(n)
        theta, _ = self.silence_threshold(d)
        present = np.isfinite(tg["heard_t"][:n]) & (t - tg["heard_t"][:n] < theta)
        expected = ~tg["exited"][:n]
        events = []
        for zi, name in enumerate(self.ctx.zones.names):
            in_zone = tg["conf"][:n] == zi
            exp_n = int((in_zone & expected).sum())
            seen = in_zone & present
            miss = d[in_zone & expected & ~present]
            self.cycle_counts.append(CycleCount(t, zi, exp_n, int(seen.sum())))
            events.append(
                Event(
                    rule="cycle_count",
                    t=float(t),
                    ruleset_version=self.rules.version,
                    zone=name,
                    evidence={
                        "expected": exp_n,
                        "seen": int(seen.sum()),
                        "missing": len(miss),
                        "missing_tags": [self._tag_id(int(m)) for m in miss[:MAX_LISTED]],
                    },
                )
            )
        return events
