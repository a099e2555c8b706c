"""Gateway health: ok -> silent (no sighting for ``silent_s``) or degraded (rate below a
share of its baseline for several buckets) -> ok (gateway_recovered).

Sightings are counted per gateway and time bucket as they arrive; :meth:`_gateways` judges
each bucket once it is complete. The baseline (sightings per second, exponentially
weighted) learns only from healthy buckets, so an outage does not become normal. Presence
and exit confidence read ``gw_state``: a tag's loss is judged over the gateways now up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from engine.contract import Sightings
from engine.rules.core import RuleCore, sorted_runs

if TYPE_CHECKING:
    from engine.rules.events import Event


class GatewayHealthRules(RuleCore):
    """gateway_silent, gateway_degraded, gateway_recovered."""

    def _setup(self) -> None:
        super()._setup()
        n_gw = len(self.ctx.gateway_ids)
        self.gw_heard_t = np.full(n_gw, np.nan)
        self.gw_baseline = np.zeros(n_gw)  # sightings per second, exponentially weighted
        self.gw_state = np.zeros(n_gw, np.int8)  # 0 ok, 1 silent, 2 degraded
        self.gw_low_streak = np.zeros(n_gw, np.int32)
        self._gw_buckets: dict[int, NDArray[np.int64]] = {}
        self._gw_next_bucket = 0

    def _count_gateway_sightings(
        self, rows: Sightings, t: NDArray[np.float64], order: NDArray[np.intp]
    ) -> None:
        """Newest time and counts per time bucket of each gateway (``order`` sorts ``t``)."""
        n_gw = len(self.ctx.gateway_ids)
        gw = rows["gateway"].astype(np.int64)
        np.fmax.at(self.gw_heard_t, gw, t)  # newest time per gateway (max: any order)
        bucket = np.floor(t / self.rules.gateway.bucket_s).astype(np.int64)
        for b in sorted_runs(bucket[order])[0].tolist():
            if b < self._gw_next_bucket:
                continue  # bucket already judged: a late row, counted in rejected_rows
            counts = np.bincount(gw[bucket == b], minlength=n_gw)
            acc = self._gw_buckets.get(b)
            self._gw_buckets[b] = counts if acc is None else acc + counts

    def _gateways(self, now: float, events: list[Event]) -> None:
        cfg = self.rules.gateway
        n_gw = len(self.ctx.gateway_ids)
        half = cfg.baseline_halflife_s
        last = math.floor(now / cfg.bucket_s) - 1  # newest complete bucket
        while self._gw_next_bucket <= last:
            b = self._gw_next_bucket
            counts = self._gw_buckets.pop(b, np.zeros(n_gw, np.int64))
            rate = counts / cfg.bucket_s
            t_end = (b + 1) * cfg.bucket_s
            judged = (t_end > cfg.warmup_s) & (self.gw_baseline >= cfg.min_baseline_per_s)
            low = judged & (rate < cfg.degraded_fraction * self.gw_baseline)
            self.gw_low_streak = np.where(low, self.gw_low_streak + 1, 0)
            for g in np.flatnonzero(
                (self.gw_low_streak >= cfg.degraded_buckets) & (self.gw_state == 0)
            ).tolist():
                events.append(
                    self._event(
                        "gateway_degraded",
                        t_end,
                        gateway=g,
                        rate_per_s=float(rate[g]),
                        baseline_per_s=float(self.gw_baseline[g]),
                        buckets_low=int(self.gw_low_streak[g]),
                    )
                )
                self.gw_state[g] = 2
            good = ~low
            for g in np.flatnonzero(good & (self.gw_state != 0) & (rate > 0)).tolist():
                events.append(
                    self._event(
                        "gateway_recovered",
                        t_end,
                        gateway=g,
                        rate_per_s=float(rate[g]),
                        baseline_per_s=float(self.gw_baseline[g]),
                    )
                )
                self.gw_state[g] = 0
            # The baseline learns only from healthy buckets, so an outage does not become normal.
            w = 1.0 - 0.5 ** (cfg.bucket_s / half)
            learn = good & (self.gw_state == 0)
            self.gw_baseline = np.where(
                learn,
                np.where(
                    self.gw_baseline > 0, self.gw_baseline + w * (rate - self.gw_baseline), rate
                ),
                self.gw_baseline,
            )
            self._gw_next_bucket = b + 1
        silent = (
            (self.gw_state == 0)
            & (now > cfg.warmup_s)
            & (self.gw_baseline >= cfg.min_baseline_per_s)
            & (now - np.nan_to_num(self.gw_heard_t, nan=-np.inf) >= cfg.silent_s)
        )
        for g in np.flatnonzero(silent).tolist():
            events.append(
                self._event(
                    "gateway_silent",
                    float(self.gw_heard_t[g]) + cfg.silent_s,
                    gateway=g,
                    last_heard_t=float(self.gw_heard_t[g]),
                    baseline_per_s=float(self.gw_baseline[g]),
                )
            )
            self.gw_state[g] = 1
