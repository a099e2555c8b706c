"""Missing-tag false alarms over long quiet runs, scored from sightings alone.

Localization is the slow part of a twin run, and the missing-tag rule needs only who was
heard when, with which frame counter, plus each tag's motion and battery flags. So this
feeds the rule engine the twin's sightings and per-step stand-in fixes that carry motion
and battery (no position: exit and misplacement rules stay idle) through the same
``twin.run.feed_rules`` replay as a full run, on scenarios/demo.toml (no incidents) for
several seeds. Every missing_tag alarm is false. Also prints the empirical rate of runs of
k or more missed adverts (no gateway heard the frame), the quantity k is chosen against.
Prints JSON. Usage: python benchmarks/quiet_missing.py [--seeds 1 2 3] [--duration S] [--jobs N]
[--full [--fixes-dir DIR]] [--progress FILE [--resume]] [--engine KEY=VALUE ...]

``--fixes-dir`` keeps each seed's fixes (localization and tracking, the slow part) in DIR and
reuses them when the same scenario, seed and duration come again, so a rule change can be
scored again on thousands of tag-days in minutes. Delete DIR when the localizer or tracker
changes. ``--progress`` appends each seed's result as one JSON line when it finishes, so a
run cut short still says what it reached, and ``--resume`` (with the same ``--progress``)
skips the seeds it holds and pools them in: a long run is extended or finished in pieces.
``--fixes-only`` (with ``--fixes-dir``) reruns
only the rules that read positions alone (misplaced, zones, dwell, battery_low, registry,
after hours) on the kept fixes, without the twin: a change to those rules is rescored on
thousands of tag-days in minutes (misplaced without its rest check, which reads sightings:
an upper bound on its alarms). The rules that need sightings (missing_tag, exits,
gateways) are off in that mode and come from the full run. ``--engine`` replaces one of the
scenario's [engine] settings (repeatable; e.g. ``localizer=radio-map``, ``radio_map=survey``)
and names the kept fixes after it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from _common import engine_variant
from numpy.typing import NDArray
from scipy.stats import chi2

from engine.contract import SIGHTING_DTYPE
from engine.pipeline import FIX_DTYPE
from engine.rules.engine import RuleEngine
from engine.rules.events import RULE_SEVERITY, ListSink
from engine.rules.scoring import rate_reading
from siteplan.model import SiteModel
from siteplan.zones import NO_ZONE
from twin.incidents import FEED_DTYPE
from twin.run import feed_rules, load_fixes, registry_context, rule_context_for, simulate_keeping_fixes
from twin.scenario import Scenario, load_scenario
from twin.sim import WarehouseTwin, resolve_gateways

ROOT = Path(__file__).resolve().parents[1]
MAX_RUN = 12
HEARD_TABLE_MAX = 200_000_000  # cells (bytes) of heard_frames' table before it sorts instead


def standin_fixes(sightings: NDArray[np.void], step_s: float) -> NDArray[np.void]:
    """One fix per (device, step) heard: motion = any sighting with motion in the step,
    battery = the step's last reading; no position."""
    step = np.ceil(sightings["t"] / step_s).astype(np.int64)
    key = step * (1 << 32) + sightings["device"].astype(np.int64)
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    last = np.r_[first[1:], len(k)] - 1
    out = np.zeros(len(first), FIX_DTYPE)
    out["t"] = (k[first] >> 32) * step_s
    out["device"] = k[first] & ((1 << 32) - 1)
    out["x"] = out["y"] = out["r90"] = np.nan
    out["zone"] = NO_ZONE
    out["motion"] = np.maximum.reduceat(sightings["motion"][order].astype(np.int8), first)
    out["battery"] = sightings["battery"][order][last]
    return out


def miss_runs(sightings: NDArray[np.void]) -> tuple[int, NDArray[np.int64]]:
    """Frames sent (first to last heard, per device) and closed runs of >= k missed frames."""
    dev, seq = heard_frames(sightings)
    same = dev[1:] == dev[:-1]
    gaps = (seq[1:] - seq[:-1] - 1)[same]
    start = np.flatnonzero(np.r_[True, ~same])
    end = np.r_[start[1:], len(seq)] - 1
    sent = int((seq[end] - seq[start] + 1).sum())
    ge = np.array([(gaps >= k).sum() for k in range(1, MAX_RUN + 1)], np.int64)
    return sent, ge


def heard_frames(sightings: NDArray[np.void]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Each (device, frame counter) heard at least once, sorted by device then counter:
    what ``np.unique`` of the pairs gives, by marking a (device, counter) table when it
    is small (the twin's counters start at 0), 10x faster than sorting millions of rows."""
    if len(sightings) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dev = sightings["device"].astype(np.int64)
    seq = sightings["seq"].astype(np.int64)
    lo, width = int(seq.min()), int(seq.max() - seq.min()) + 1
    rows = int(dev.max()) + 1
    if dev.min() < 0 or rows * width > HEARD_TABLE_MAX:
        key = np.unique(dev * (1 << 32) + seq)
        return key >> 32, key & ((1 << 32) - 1)
    table = np.zeros(rows * width, bool)
    table[dev * width + (seq - lo)] = True
    flat = np.flatnonzero(table)
    return flat // width, flat % width + lo


def positions_only(sc: Scenario, fixes_dir: str) -> tuple[list[Any], int]:
    """The rules that read fixes alone, on one seed's kept fixes (no twin run)."""
    path = Path(fixes_dir) / f"{sc.name}-seed{sc.seed}-{sc.duration_s:g}s.npz"
    if not path.exists():
        raise SystemExit(f"{path}: no kept fixes for seed {sc.seed} (run with --full first)")
    fixes = load_fixes(path)
    off = {"enabled": False}
    rules_cfg = sc.rules.model_copy(update={
        "missing": sc.rules.missing.model_copy(update=off),
        "exit": sc.rules.exit.model_copy(update=off),
        "gateway": sc.rules.gateway.model_copy(update=off),
    })
    site = SiteModel.from_scenario(sc)
    sink = ListSink()
    gateways, _ = resolve_gateways(sc, site)
    rules = RuleEngine(rules_cfg, registry_context(sc, site.zones, gateways), [sink])
    feed_rules(rules, np.zeros(0, SIGHTING_DTYPE), fixes, np.zeros(0, FEED_DTYPE),
               end_t=sc.duration_s, step_s=sc.engine.step_s)
    return sink.events, sum(g.count for g in sc.tags)


def one_seed(
    scenario: str, seed: int, duration: float, full: bool = False,
    fixes_dir: str | None = None, progress: str | None = None, fixes_only: bool = False,
    engine: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One quiet run: the twin's sightings for ``duration`` s replayed into a rule engine,
    or with ``full`` the whole pipeline (localization, tracking, every rule), or with
    ``fixes_only`` the position rules on kept fixes."""
    t0, c0 = time.perf_counter(), time.process_time()
    base = load_scenario(Path(scenario))
    sc = engine_variant(Scenario.model_validate(
        base.model_dump() | {"seed": seed, "duration_s": duration, "incidents": []}
    ), engine)
    cached = False
    if fixes_only:
        assert fixes_dir is not None
        events, n = positions_only(sc, fixes_dir)
        alarms = [e for e in events if e.severity == "alarm"]
        out = {
            "seed": seed, "tags": n, "tag_days": n * sc.duration_s / 86_400.0,
            "alarms": [{"rule": e.rule, "tag": e.tag, "t": round(e.t, 3)} | e.evidence
                       for e in alarms],
            "reviews": sum(e.severity == "review" for e in events),
            "sent": 0, "ge": [0] * MAX_RUN, "k": [], "burst_continuation": [],
            "common_loss": float("nan"),
            "fixes_reused": True, **_costs(t0, c0),
        }
        if progress:
            with open(progress, "a") as f:
                f.write(json.dumps(out) + "\n")
        return out
    if full:
        run, cached = simulate_keeping_fixes(sc, Path(fixes_dir) if fixes_dir else None, score=False)
        events, sightings, n = run.events, run.twin.sightings, len(run.twin.device_ids)
        k: NDArray[Any] = np.zeros(0, np.int64)
        burst: list[float] = []
        common = float("nan")
    else:
        twin = WarehouseTwin(sc)
        res = twin.run()
        sink = ListSink()
        rules = RuleEngine(sc.rules, rule_context_for(sc, twin), [sink])
        fixes = standin_fixes(res.sightings, sc.engine.step_s)
        feed_rules(rules, res.sightings, fixes, np.zeros(0, FEED_DTYPE), end_t=sc.duration_s,
                   step_s=sc.engine.step_s)
        events, sightings, n = sink.events, res.sightings, len(twin.fleet)
        _, k = rules.silence_threshold(np.arange(n))
        burst = [round(r, 4) for r in rules.burst_continuation()]
        common = round(rules.common_loss(), 5)
    alarms = [e for e in events if e.severity == "alarm"]
    sent, ge = miss_runs(sightings)
    out = {
        "seed": seed,
        "tags": n,
        "tag_days": n * sc.duration_s / 86_400.0,
        "alarms": [
            {"rule": e.rule, "tag": e.tag, "t": round(e.t, 3)}
            | {key: e.evidence[key] for key in ("missed_in_a_row", "miss_rate", "p_silent_if_present")
               if key in e.evidence}
            for e in alarms
        ],
        "reviews": sum(e.severity == "review" for e in events),
        "sent": sent,
        "ge": ge.tolist(),
        "k": k.astype(int).tolist(),
        "burst_continuation": burst,
        "common_loss": common,
        "fixes_reused": cached,
        **_costs(t0, c0),
    }
    if progress:
        with open(progress, "a") as f:
            f.write(json.dumps(out) + "\n")
    return out


def _costs(t0: float, c0: float) -> dict[str, Any]:
    """A seed's wall and CPU seconds and the machine's 1-minute load when it ended: on a
    shared machine the wall time says more about the others' work than about this run."""
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "load": round(os.getloadavg()[0], 1)}


def done_seeds(progress: Path, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """The asked-for seeds a progress file already holds (its last line for each)."""
    if not progress.exists():
        return {}
    wanted, out = set(seeds), {}
    for n, line in enumerate(progress.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            seed = int(row["seed"])
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"{progress}: line {n}: not a seed's result") from None
        if seed in wanted:
            out[seed] = row
    return out


# Alarm rules a mode does not run: --fixes-only has no sightings; the sightings-only run
# has no positions (its stand-in fixes carry motion and battery).
SIGHTING_RULES = ("missing_tag", "exit_without_checkout", "gateway_silent", "gateway_degraded")
POSITION_RULES = ("misplaced", "exit_without_checkout")


def every_alarm_rule(
    alarms: list[dict[str, Any]], thousand_tag_days: float, off: tuple[str, ...] = ()
) -> dict[str, dict[str, object]]:
    """Each alarm rule's false alarms per day per 1,000 tags with its exact one-sided 95 %
    upper bound and the too-little-exposure verdict (engine.rules.scoring.rate_reading),
    rules with none included; the rules this mode did not run say so instead."""
    out: dict[str, dict[str, object]] = {}
    for rule in sorted(r for r, sev in RULE_SEVERITY.items() if sev == "alarm"):
        if rule in off:
            out[rule] = {"ran": False}
            continue
        reading = rate_reading(sum(a["rule"] == rule for a in alarms), thousand_tag_days)
        out[rule] = {"ran": True, **reading.as_dict(),
                     "below_1_per_day_per_1000_tags": reading.upper < 1.0}
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    """Count, min, median and max of per-seed figures (None when no seed has them)."""
    if not values:
        return None
    return {"seeds": len(values), "min": min(values), "median": round(float(np.median(values)), 2), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demo.toml"))
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes")
    ap.add_argument("--full", action="store_true",
                    help="the whole pipeline (localization, tracking, every rule), ~5x slower")
    ap.add_argument("--fixes-dir", help="with --full: keep and reuse each seed's fixes here")
    ap.add_argument("--progress", help="append each seed's result to this file as a JSON line")
    ap.add_argument("--fixes-only", action="store_true",
                    help="with --fixes-dir: only the position rules, on the kept fixes")
    ap.add_argument("--resume", action="store_true",
                    help="with --progress: skip the seeds the progress file already has and "
                    "pool them into the result (one progress file per mode and duration)")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="replace one [engine] setting of the scenario (repeatable)")
    args = ap.parse_args()
    if args.fixes_only and not args.fixes_dir:
        ap.error("--fixes-only needs --fixes-dir")
    if args.resume and not args.progress:
        ap.error("--resume needs --progress")
    wall = time.perf_counter()
    done = done_seeds(Path(args.progress), args.seeds) if args.resume else {}
    todo = [s for s in args.seeds if s not in done]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        fresh = list(pool.map(one_seed, repeat(args.scenario), todo, repeat(args.duration),
                              repeat(args.full), repeat(args.fixes_dir), repeat(args.progress),
                              repeat(args.fixes_only), repeat(tuple(args.engine))))
    by_seed = done | {r["seed"]: r for r in fresh}
    runs = [by_seed[s] for s in args.seeds]
    fresh_runs = [r for r in runs if not r.get("fixes_reused")]
    tag_days = sum(r["tag_days"] for r in runs)
    alarms = [a | {"seed": r["seed"]} for r in runs for a in r["alarms"]]
    sent_all = sum(r["sent"] for r in runs)
    ge_all = np.sum([r["ge"] for r in runs], axis=0)
    ks = [k for r in runs for k in r["k"]]
    thousand = tag_days / 1000.0
    out = {
        "scenario": engine_variant(load_scenario(Path(args.scenario)), args.engine).name,
        "seeds": args.seeds,
        "duration_s": args.duration,
        "tags": runs[0]["tags"],
        "tag_days": round(tag_days, 2),
        "thousand_tag_days": round(thousand, 4),
        "alarms": len(alarms),
        "reviews": sum(r["reviews"] for r in runs),
        "false_alarms_per_day_per_1000_tags": round(len(alarms) / thousand, 3),
        # exact one-sided Poisson bound: chi2(0.95, 2n + 2) / 2 events (3.0 for n = 0)
        "upper95_per_day_per_1000_tags": round(
            float(chi2.ppf(0.95, 2 * len(alarms) + 2)) / 2 / thousand, 2
        ),
        "k_at_end": {str(v): ks.count(v) for v in sorted(set(ks))},
        "frames_sent": sent_all,
        "runs_ge_k_per_frame": {
            str(k + 1): float(f"{ge_all[k] / max(sent_all, 1):.3g}") for k in range(MAX_RUN)
        },
        "runs_ge_k": {str(k + 1): int(ge_all[k]) for k in range(MAX_RUN)},
        "alarm_details": alarms,
        "alarms_by_rule": {
            rule: sum(a["rule"] == rule for a in alarms) for rule in sorted({a["rule"] for a in alarms})
        },
        "upper95_per_rule": {
            rule: round(float(chi2.ppf(0.95, 2 * n + 2)) / 2 / thousand, 2)
            for rule, n in [("any rule with none", 0)]
            + [(r, sum(a["rule"] == r for a in alarms)) for r in sorted({a["rule"] for a in alarms})]
        },
        "every_alarm_rule": every_alarm_rule(
            alarms, thousand, off=SIGHTING_RULES if args.fixes_only
            else () if args.full else POSITION_RULES),
        "seeds_resumed": len(args.seeds) - len(todo),
        "pipeline": "position rules on kept fixes (no sightings: misplaced without its rest check, "
        "an upper bound)" if args.fixes_only
        else "full" if args.full else "sightings and stand-in fixes",
        "burst_continuation_range": [
            [min(r["burst_continuation"][j] for r in runs), max(r["burst_continuation"][j] for r in runs)]
            for j in range(3)
        ] if not (args.full or args.fixes_only) else None,
        "wall_s": round(time.perf_counter() - wall, 1),
        # per seed run from scratch (not on kept fixes); rows written before cpu_s and
        # load were kept have wall_s only
        "cpu_s_per_seed": _spread([r["cpu_s"] for r in fresh_runs if "cpu_s" in r]),
        "wall_s_per_seed": _spread([r["wall_s"] for r in fresh_runs]),
        "load_at_seed_end": _spread([r["load"] for r in fresh_runs if "load" in r]),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
