"""Presence and missing_tag: the burst-loss model and the silence threshold.

From the frame counters of the sightings (:meth:`_count_frames`): per-tag miss counts,
per (tag, gateway) reception since the tag last moved, and the runs of misses (per tag
and site-wide) that give the burst continuations. From these, :meth:`silence_threshold`
gives theta, the silence after which a tag is missing with a bounded false-alarm rate.

Transitions: heard -> silent for theta (:meth:`_presence`) -> *missing* (missing_tag), or,
near an exit, *pending exit* (decided by engine/rules/exits.py), or *exited* when a
checkout matched; any of them -> present when heard again (:meth:`_heard_again`:
tag_found, exit_case_cleared).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numba
import numpy as np
from numpy.typing import NDArray

from engine._order import sort_keys_by_device
from engine.contract import Sightings
from engine.rules.core import SECONDS_PER_DAY, FloatArray, IntArray
from engine.rules.gateways import GatewayHealthRules

if TYPE_CHECKING:
    from engine.rules.events import Event


@numba.njit(inline="always", nogil=True)
def _log_missed(heard: int, s1: float) -> float:
    """log(1 - min(h, 1 - 1e-12)), h = (heard + 1/2) / (sent + 1): one gateway's term."""
    return np.log1p(-min((heard + 0.5) / s1, 1 - 1e-12))


@numba.njit(cache=True, nogil=True)
def _independent_loss(
    heard: NDArray[np.int32], sent: NDArray[np.int64], d: NDArray[np.int64], up: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """exp(sum over gateways up of log(1 - min(h_g, 1 - 1e-12))) for each tag of ``d``,
    h_g = (heard by g + 1/2) / (sent + 1), added gateway by gateway. A tag hears a few of
    the site's gateways: the others share one h_g, so one log serves them all. (As a
    matrix product this was a BLAS call per step, slow on a busy machine.)

    Tags that advertise at the same rate share their counts (every tag at rest since the
    start has sent as many adverts, and a well-heard link hears nearly all), so each
    log(1 - h) is computed once per (heard, sent) pair in a call and looked up after: the
    same values, most of the logarithms saved."""
    size = 1024
    while size < 4 * len(d):
        size *= 2
    mask = size - 1
    keys = np.full(size, -1, np.int64)  # heard << 32 | sent, or -1 for an empty slot
    logs = np.empty(size)
    room = size // 2  # pairs still to be kept: the table stays at most half full, so a probe ends
    out = np.empty(len(d))
    for i in range(len(d)):
        tag = d[i]
        s1 = float(sent[tag]) + 1.0
        unheard = _log_missed(0, s1)
        keyed = sent[tag] >= 0 and sent[tag] < 1 << 31  # the key's field: 68 years at 1 Hz
        acc = 0.0
        for g in range(len(up)):
            if up[g]:
                k = heard[tag, g]
                if k == 0:
                    acc += unheard
                    continue
                if not keyed:
                    acc += _log_missed(k, s1)
                    continue
                key = (np.int64(k) << 32) | sent[tag]
                j = (key * np.int64(-7046029254386353131)) >> 40 & mask
                while keys[j] != key and keys[j] != -1:
                    j = (j + 1) & mask
                if keys[j] == key:
                    acc += logs[j]
                    continue
                term = _log_missed(k, s1)
                if room > 0:  # a full table keeps what it has; further pairs are computed
                    keys[j], logs[j] = key, term
                    room -= 1
                acc += term
        out[i] = np.exp(acc)
    return out


@numba.njit(cache=True, nogil=True)
def _count_sorted_frames(
    keys: NDArray[np.int64], last_seq: NDArray[np.int64], n_missed: NDArray[np.int64],
    n_heard: NDArray[np.int64], g_sent: NDArray[np.int64], g_missed: NDArray[np.int64],
    b_missed: NDArray[np.int64], b_cont: NDArray[np.int64], b_deep: NDArray[np.int64],
    b_deeper: NDArray[np.int64], cap: int,
) -> tuple[int, int, int, int]:
    """Frame counters from sorted keys device << 32 | seq (repeats: one frame heard by
    several gateways or channels). Per device: the frames it sent since its last counted one
    (``first`` after ``last_seq``; counters that went backwards, a reset or late rows, add
    nothing), how many no gateway heard, and each closed run of misses (the gap before a heard
    frame), capped at ``cap``, into the tag's and the site's burst counts (returned: missed,
    continued, deep, deeper)."""
    site = np.zeros(4, np.int64)
    n = len(keys)
    i = 0
    while i < n:
        tag = keys[i] >> 32
        # this device's distinct frames: keys[i:j]
        j = i
        count = 0
        prev_key = -1
        while j < n and (keys[j] >> 32) == tag:
            if keys[j] != prev_key:
                count += 1
                prev_key = keys[j]
            j += 1
        first = keys[i] & 0xFFFFFFFF
        last = keys[j - 1] & 0xFFFFFFFF
        before = last_seq[tag]
        if first > before:
            gap = first - before - 1 if before >= 0 else 0
            span_missed = last - first + 1 - count
            n_missed[tag] += gap + span_missed
            n_heard[tag] += count
            g_sent[tag] += gap + last - first + 1
            g_missed[tag] += gap + span_missed
            # the gap before the first frame, then each gap between distinct frames
            run = gap
            seen = first
            k = i
            while True:
                run = min(run, cap)
                if run > 0:
                    b_missed[tag] += run
                    b_cont[tag] += run - 1
                    b_deep[tag] += max(run - 2, 0)
                    b_deeper[tag] += max(run - 3, 0)
                    site[0] += run
                    site[1] += run - 1
                    site[2] += max(run - 2, 0)
                    site[3] += max(run - 3, 0)
                while k < j and (keys[k] & 0xFFFFFFFF) == seen:
                    k += 1
                if k == j:
                    break
                nxt = keys[k] & 0xFFFFFFFF
                run = nxt - seen - 1
                seen = nxt
        last_seq[tag] = max(before, last)
        i = j
    return site[0], site[1], site[2], site[3]


@numba.njit(cache=True, nogil=True)
def _count_sorted_cells(keys: NDArray[np.int64], heard: NDArray[np.int32]) -> None:
    """``heard[cell] += distinct frames`` from sorted keys cell << 32 | seq."""
    prev = -1
    for i in range(len(keys)):
        if keys[i] != prev:
            heard[keys[i] >> 32] += 1
            prev = keys[i]


class PresenceRules(GatewayHealthRules):
    """missing_tag, tag_found, exit_case_cleared; the loss model behind the silence threshold."""

    def _setup(self) -> None:
        super()._setup()
        cfg = self.rules.missing
        self._class_fa_rate = np.array(
            [
                cfg.false_alarms_by_class.get(n, cfg.false_alarms_per_day_per_1000_tags)
                for n in self.ctx.class_names
            ],
            dtype=float,
        )
        n_gw = len(self.ctx.gateway_ids)
        self.g_heard = np.zeros((0, n_gw), np.int32)  # (tag, gateway) distinct frames heard
        self.g_sent = np.zeros(0, np.int64)  # frames sent since the tag last moved
        self.g_missed = np.zeros(0, np.int64)  # of those, frames no gateway heard
        # Site-wide burst statistics from the frame counters: adverts missed in closed runs
        # of misses (each run capped at max_missed) and how many of them followed a miss.
        self.burst_missed = 0
        self.burst_continued = 0
        self.burst_deep = 0
        self.burst_deeper = 0
        self._common_cache: tuple[int, float] | None = None
        self._obs_version = 0

    def _grow(self, n: int) -> int:
        old = super()._grow(n)
        cap = len(self.tags["cls"])
        if cap > len(self.g_sent):
            extra = cap - len(self.g_sent)
            self.g_sent = np.concatenate([self.g_sent, np.zeros(extra, np.int64)])
            self.g_missed = np.concatenate([self.g_missed, np.zeros(extra, np.int64)])
            self.g_heard = np.vstack(
                [self.g_heard, np.zeros((extra, self.g_heard.shape[1]), np.int32)]
            )
        return old

    # -- sightings ----------------------------------------------------------------------

    def _heard_again(self, dev: IntArray, t: FloatArray) -> list[Event]:
        """Last-heard times; tags that were missing, pending or exited and are heard again
        (rows in any order)."""
        tg = self.tags
        events: list[Event] = []
        gone = tg["missing"][dev] | tg["pending"][dev] | tg["exited"][dev]
        if gone.any():
            # Each returning device once, by code, at its earliest sighting of the batch.
            back, inverse = np.unique(dev[gone], return_inverse=True)
            tb = np.full(len(back), np.inf)
            np.minimum.at(tb, inverse.reshape(-1), t[gone])
            for d, tt in zip(back.tolist(), tb.tolist(), strict=True):
                rule = "exit_case_cleared" if tg["pending"][d] else "tag_found"
                events.append(
                    self._event(
                        rule,
                        tt,
                        d,
                        silent_since=float(tg["heard_t"][d]),
                        was="pending exit"
                        if tg["pending"][d]
                        else ("exited" if tg["exited"][d] else "missing"),
                    )
                )
            tg["missing"][back] = False
            tg["pending"][back] = False
            tg["exited"][back] = False
        # Newest time per device (max is exact, so the order of the updates does not matter).
        np.fmax.at(tg["heard_t"], dev, t)
        return events

    def _count_frames(self, rows: Sightings, dev: IntArray) -> None:
        """Frame counters: distinct (device, seq) pairs; gaps are missed advertisements."""
        self._obs_version += 1
        tg = self.tags
        n_gw = len(self.ctx.gateway_ids)
        has = rows["seq"] >= 0
        if not has.any():
            return
        seq = rows["seq"][has].astype(np.int64)
        dev = dev[has]
        # One pass over the sorted (device, seq) keys: per-tag counts, and the runs of
        # misses closed by this batch for the site-wide burst statistics (integers: the
        # same sums in any order).
        bursts = _count_sorted_frames(
            sort_keys_by_device(dev * (1 << 32) + seq), tg["last_seq"], tg["n_missed"], tg["n_heard"],
            self.g_sent, self.g_missed, tg["b_missed"], tg["b_cont"], tg["b_deep"], tg["b_deeper"],
            self.rules.missing.max_missed,
        )
        self.burst_missed += int(bursts[0])
        self.burst_continued += int(bursts[1])
        self.burst_deep += int(bursts[2])
        self.burst_deeper += int(bursts[3])
        # Per (tag, gateway): distinct frames heard (channels of one frame count once).
        cell = dev * n_gw + rows["gateway"][has].astype(np.int64)
        _count_sorted_cells(sort_keys_by_device(cell * (1 << 32) + seq, n_gw), self.g_heard.reshape(-1))

    def _moved(self, d: IntArray) -> None:
        """A moved tag has new gateways: its per-gateway reception history starts again."""
        self.g_heard[d] = 0
        self.g_sent[d] = 0
        self.g_missed[d] = 0

    # -- the loss model -----------------------------------------------------------------

    def _q_gw(self, d: IntArray) -> FloatArray:
        """prod_g (1 - h_g) over gateways now up: the tag's loss if gateways failed
        independently (fading, scanner channel, sensitivity are per gateway)."""
        return _independent_loss(self.g_heard, self.g_sent, np.asarray(d, np.int64), self.gw_state == 0)

    def common_loss(self) -> float:
        """q_c, the share of adverts lost at every gateway at once beyond what independent
        per-gateway losses explain (collisions that no gateway captures, bodies, Wi-Fi):
        pooled over tags at rest, (sum missed - sum sent x prod_g (1 - h_g) + 1/2) /
        (sum sent + 1). Cached until new sightings arrive."""
        if self._common_cache is not None and self._common_cache[0] == self._obs_version:
            return self._common_cache[1]
        n = self.tags.n
        sent = self.g_sent[:n]
        d = np.flatnonzero(sent >= self.rules.missing.min_adverts)
        q_c = 0.5
        if len(d) and self.g_heard.shape[1]:
            s = float(sent[d].sum())
            excess = float(self.g_missed[d].sum()) - float((self._q_gw(d) * sent[d]).sum())
            q_c = (max(excess, 0.0) + 0.5) / (s + 1.0)
        self._common_cache = (self._obs_version, q_c)
        return q_c

    def burst_continuation(self) -> tuple[float, float, float]:
        """(rho1, rho2, rho3), pooled over the site's frame counters: P(an advert is missed |
        the previous one was) = (misses that followed a miss + 1/2) / (misses in closed runs
        + 1), P(missed | the previous two were) = (misses after two + 1/2) / (misses after
        one + 1), and the same one level deeper for every later miss. Collisions repeat (two
        tags drift apart by only the 0-10 ms advDelay per event), so rho1 is far above q; and
        runs that got further are likelier still to go on (some tags and pairs are stuck in
        a bad state for a while): on the demo twin 0.07, 0.10, then 0.17-0.2 per step, so one
        geometric tail from the second miss on underestimated runs of 6-8 up to 20x."""
        rho1 = (self.burst_continued + 0.5) / (self.burst_missed + 1.0)
        rho2 = (self.burst_deep + 0.5) / (self.burst_continued + 1.0)
        rho3 = (self.burst_deeper + 0.5) / (self.burst_deep + 1.0)
        return rho1, rho2, rho3

    def miss_rate(self, d: IntArray) -> FloatArray:
        """Probability q that one advertisement of the tag is heard by no gateway.

        From the frame counter: the posterior mean (missed + prior/2) / (sent + prior).
        That needs ~1/q clean adverts to resolve a small q, so for a tag at rest (since its
        last motion, at least ``min_adverts`` sent) the per-gateway rates are used instead:
        q = max(prod_g (1 - h_g), loss_floor) + q_c over gateways now up,
        h_g = (heard by g + 1/2) / (sent + 1), q_c the site's common-mode loss
        (:meth:`common_loss`): per-gateway losses alone would say 2e-5 where collisions
        make it ~5e-3 (docs/rules.md).
        """
        cfg = self.rules.missing
        prior = cfg.prior_adverts
        missed = self.tags["n_missed"][d].astype(float)
        sent = missed + self.tags["n_heard"][d]
        q = (missed + prior / 2.0) / (sent + prior)
        if not cfg.per_gateway or len(d) == 0 or self.g_heard.shape[1] == 0:
            return q
        settled = self.g_sent[d] >= cfg.min_adverts
        q_rest = np.maximum(self._q_gw(d), cfg.loss_floor) + self.common_loss()
        return np.where(settled, np.minimum(q_rest, 1.0), q)

    def tag_continuation(
        self, d: IntArray, q: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(rho1, rho2, rho3) of each tag: its own runs of misses shrunk toward the site's
        (:meth:`burst_continuation`) with the weight of ``burst_prior_misses`` misses;
        rho1 at least q, each deeper continuation at least the one before. A tag heard by
        one or two gateways inherits their bursts, which the site-wide values average away."""
        w = self.rules.missing.burst_prior_misses
        tg = self.tags
        site = self.burst_continuation()
        counts = ("b_missed", "b_cont", "b_deep", "b_deeper")
        rho: list[FloatArray] = []
        floor = q
        for level, s in enumerate(site):
            own = (tg[counts[level + 1]][d] + w * s) / (tg[counts[level]][d] + w)
            floor = np.clip(np.maximum(own, floor), 1e-12, 1 - 1e-12)
            rho.append(np.asarray(floor))
        return rho[0], rho[1], rho[2]

    def silent_probability(self, d: IntArray, m: FloatArray) -> FloatArray:
        """P(a present tag misses m adverts in a row from a given one) =
        q x rho1 x rho2 x rho3^(m-3) (the chain cut at m): per-tag q and the continuations of
        :meth:`tag_continuation`."""
        q = np.clip(self.miss_rate(d), 1e-12, 1.0)
        rho1, rho2, rho3 = self.tag_continuation(d, q)
        return np.asarray(
            q
            * np.where(m >= 2, rho1, 1.0)
            * np.where(m >= 3, rho2, 1.0)
            * rho3 ** np.maximum(m - 3.0, 0.0)
        )

    def false_alarm_risk(self, d: IntArray) -> FloatArray:
        """alpha per advertisement: the design rate R (per day per 1,000 tags; the class's
        own if it has one) spread over the adverts a tag sends in a day,
        alpha = R / 1000 x interval / 86,400 s."""
        rate = self._per_class(
            d, self._class_fa_rate, self.rules.missing.false_alarms_per_day_per_1000_tags
        )
        return rate / 1000.0 * self._interval(d) / SECONDS_PER_DAY

    def silence_threshold(self, d: IntArray) -> tuple[FloatArray, FloatArray]:
        """theta = k * (interval + advDelay max) + latency, k the fewest misses in a row with
        P(silent for k | present) <= alpha.

        A present tag stays silent past theta only if its next k advertisements were all
        missed (BLE Core Vol 6 Part B 4.4.2.2.1: events are advInterval + advDelay apart,
        advDelay <= 10 ms), which happens with :meth:`silent_probability` (not q^k: losses
        come in bursts); with alpha from :meth:`false_alarm_risk` the expected false
        missing-tag alarms stay below the design rate. A tag that last reported a cell at or
        below ``dying_battery_pct`` is expected to fall silent: k = min_missed.
        """
        cfg = self.rules.missing
        q = np.clip(self.miss_rate(d), 1e-12, 1 - 1e-12)
        rho1, rho2, rho3 = self.tag_continuation(d, q)
        alpha = self.false_alarm_risk(d)
        # fewest k with q rho1 rho2 rho3^(k-3) <= alpha: the chain for k = 1, 2, 3, then the
        # geometric tail solved in closed form (2.0000000000000004 is 2)
        head = q * rho1 * rho2
        tail = 3.0 + np.ceil(np.maximum(np.log(head / alpha), 0.0) / -np.log(rho3) - 1e-9)
        k = np.where(q <= alpha, 1.0, np.where(q * rho1 <= alpha, 2.0, np.where(head <= alpha, 3.0, tail)))
        bat = self.tags["battery"][d]
        dying = (bat >= 0) & (bat <= cfg.dying_battery_pct)
        k = np.where(dying, cfg.min_missed, np.clip(k, cfg.min_missed, cfg.max_missed))
        return k * (self._interval(d) + cfg.jitter_s) + cfg.latency_s, k

    # -- the clock ----------------------------------------------------------------------

    def _presence(self, now: float, events: list[Event]) -> None:
        """Tags silent past theta: near an exit -> pending exit; checked out -> exited
        (exit_checked_out); else missing (missing_tag)."""
        tg, cfg = self.tags, self.rules.exit
        n = tg.n
        if n == 0:
            return
        idx = np.arange(n)
        watch = (
            np.isfinite(tg["heard_t"][:n])
            & ~tg["missing"][:n]
            & ~tg["pending"][:n]
            & ~tg["exited"][:n]
        )
        d = idx[watch]
        # Only tags silent for at least the smallest possible theta need their q.
        d = d[now - tg["heard_t"][d] >= self.rules.missing.min_missed * self._interval(d)]
        theta, k = self.silence_threshold(d)
        silent = now - tg["heard_t"][d] >= theta
        d, theta, k = d[silent], theta[silent], k[silent]
        if len(d):
            t_v = tg["heard_t"][d] + theta
            near_exit = cfg.enabled & (tg["pz"][d] >= cfg.candidate_probability)
            co = tg["checkout_t"][d]
            checked = (co >= tg["heard_t"][d] - cfg.checkout_before_s) & (
                co <= tg["heard_t"][d] + cfg.checkout_after_s
            )
            pend = d[near_exit]
            tg["pending"][pend], tg["vanish_t"][pend] = True, t_v[near_exit]
            tg["exit_t"][pend] = np.fmax(tg["fix_t"][pend], tg["heard_t"][pend])
            gone = ~near_exit & checked
            for dj, tv in zip(d[gone].tolist(), t_v[gone].tolist(), strict=True):
                events.append(
                    self._event(
                        "exit_checked_out",
                        tv,
                        dj,
                        checkout_t=float(tg["checkout_t"][dj]),
                        note="checked out, then left out of sight away from an exit",
                    )
                )
            tg["exited"][d[gone]] = True
            lost = ~near_exit & ~checked
            if self.rules.missing.enabled:
                events += self._missing_events(d[lost], t_v[lost], theta[lost], k[lost])
                tg["missing"][d[lost]] = True

    def _missing_event(self, d: int, t: float, theta: float, k: int, **extra: Any) -> Event:
        return self._missing_events(np.array([d]), np.array([t]), np.array([theta]), np.array([k]), **extra)[0]

    def _missing_events(
        self, d: IntArray, t: FloatArray, theta: FloatArray, k: FloatArray, **extra: Any
    ) -> list[Event]:
        """missing_tag for each tag of ``d`` (silent since ``t``, past ``theta`` after ``k``
        misses), its loss model's figures as evidence: computed for all at once (each tag's
        figures are its own, so the same as one at a time)."""
        if len(d) == 0:
            return []
        tg = self.tags
        d = np.asarray(d, np.int64)
        k = np.asarray(k).astype(np.int64)
        q = self.miss_rate(d)
        p_silent = self.silent_probability(d, k.astype(float))
        continuation = np.column_stack(self.tag_continuation(d, q))
        interval = self._interval(d)
        return [
            self._event(
                "missing_tag",
                float(t[j]),
                dj,
                confidence=1.0 - float(p_silent[j]),
                last_heard_t=float(tg["heard_t"][dj]),
                silence_threshold_s=float(theta[j]),
                missed_in_a_row=int(k[j]),
                miss_rate=float(q[j]),
                burst_continuation=[float(r) for r in continuation[j]],
                p_silent_if_present=float(p_silent[j]),
                battery_pct=float(tg["battery"][dj]),
                expected_interval_s=float(interval[j]),
                **extra,
            )
            for j, dj in enumerate(d.tolist())
        ]
