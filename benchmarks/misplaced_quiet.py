"""Quiet false alarms of the misplaced rule alone, on the kept fixes of a whole-pipeline quiet
run (benchmarks/quiet_missing.py --full --fixes-dir DIR), in minutes instead of hours.

``quiet_missing.py --fixes-only`` replays every position rule, one seed at a time: about 47 s
a seed on a loaded machine, most of it the rule engine's per-window step over 200 tags. The
misplaced rule decides per tag, and a tag can only fire after a look (the mean of its still
fixes' P(forbidden zone) over ``look_s``) at or above the lowest threshold it can fire at
(``lowest_look``), so a still fix at or above that. This keeps only the tags with such a fix
(exact: no other tag's alarms can change) and replays every seed at once, the seeds' tags
side by side under distinct device codes in one rule engine (exact too: the rule keeps no
state across tags). ``tests/test_misplaced.py`` checks both against the plain replay.

The rule's rest check (engine/rules/rest.py) reads the sightings, which kept fixes do not
hold: it is not applied here, and it can only remove alarms, so these are an upper bound on
the whole rule's (``quiet_missing.py --full --fixes-dir DIR`` reruns the twin and every rule
on the kept fixes, about 30 CPU-s a seed, and applies it).

Prints JSON: misplaced alarms, false alarms per day per 1,000 tags with the exact one-sided
95 % Poisson bound and the too-little-exposure verdict (engine.rules.scoring.rate_reading),
each alarm's evidence, wall time and load.
Usage: python benchmarks/misplaced_quiet.py --fixes-dir DIR --seeds 101 102 ... [--duration 7200]
[--scenario scenarios/demo.toml] [--misplaced KEY=VALUE ...] [--engine KEY=VALUE ...] [--jobs N]
[--side-by-side 30] [--keep-candidates DIR]
(``--keep-candidates``: keep each seed's candidate fixes in DIR and read them back in later
replays with the same forbidden zones whose lowest look is at least the one they were chosen
at: 180 seeds replay in about 35 s instead of reading 6 GB of kept fixes again;
``--misplaced``: replace one of the scenario's [rules.misplaced] settings, e.g.
``threshold=0.6``; repeatable. ``--engine``: the [engine] settings the fixes were kept with,
as given to quiet_missing.py --engine, which names the kept fixes after them.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from _common import engine_variant, setting
from numpy.typing import NDArray

from engine.rules.config import RuleSet
from engine.rules.core import RuleContext
from engine.rules.engine import RuleEngine
from engine.rules.events import ListSink
from engine.rules.scoring import rate_reading
from siteplan.model import SiteModel
from twin.run import load_fixes, registry_context
from twin.scenario import Scenario, load_scenario
from twin.sim import resolve_gateways

ROOT = Path(__file__).resolve().parents[1]
OTHER_RULES = ("missing", "exit", "gateway", "zone_transition", "battery", "registry", "after_hours")


def misplaced_only(rules: RuleSet, overrides: dict[str, Any] | None = None) -> RuleSet:
    """The rule set with every rule but misplaced off (and misplaced's settings replaced)."""
    off = {"enabled": False}
    update: dict[str, Any] = {k: getattr(rules, k).model_copy(update=off) for k in OTHER_RULES}
    misplaced = rules.misplaced.model_dump() | (overrides or {})
    update["misplaced"] = type(rules.misplaced).model_validate(misplaced)
    return rules.model_copy(update=update)


def lowest_look(rules: RuleSet) -> float:
    """The lowest look the misplaced rule can fire at: a tag none of whose still fixes reaches
    it never fires."""
    cfg = rules.misplaced
    low = [cfg.threshold, *cfg.threshold_by_class.values(), cfg.alone_threshold]
    if cfg.opening_tier:
        low.append(cfg.opening_look_threshold)
    return min(low)


def candidates(fixes: NDArray[np.void], engine: RuleEngine, floor: float) -> NDArray[np.void]:
    """The fixes of the tags with a still fix whose P(forbidden zone) is at least ``floor``
    (the rule's own zone regions, per tag class): the only tags that can fire."""
    still = fixes[fixes["motion"] == 0]
    cls = engine.tags["cls"][still["device"].astype(np.int64)] if len(still) else np.zeros(0, np.int32)
    p = np.zeros(len(still))
    for c in np.unique(cls[cls >= 0]).tolist():
        sel = cls == c
        p[sel] = engine._forbidden[c].probability(
            still["x"][sel].astype(float), still["y"][sel].astype(float), still["r90"][sel].astype(float)
        )
    keep = np.unique(still["device"][p >= floor])
    return fixes[np.isin(fixes["device"], keep)]


def side_by_side(ctx: RuleContext, copies: int) -> RuleContext:
    """``copies`` fleets in one registry: copy j's device d has code j * len(fleet) + d."""
    ids = list(ctx.device_ids)
    return dataclasses.replace(
        ctx,
        device_ids=[f"{j}|{i}" for j in range(copies) for i in ids],
        device_class=np.tile(ctx.device_class, copies),
    )


def replay_side_by_side(
    rules: RuleSet, ctx: RuleContext, runs: list[NDArray[np.void]], end_t: float
) -> list[tuple[int, Any]]:
    """Every run's fixes through one rule engine, each run's tags under their own codes;
    returns (run index, event) for each misplaced alarm, the event's tag without the prefix."""
    n = len(ctx.device_ids)
    parts = []
    for j, f in enumerate(runs):
        g = f.copy()
        g["device"] = g["device"] + j * n
        parts.append(g)
    allf = np.concatenate(parts) if parts else np.zeros(0, runs[0].dtype if runs else None)
    allf = allf[np.lexsort((allf["device"], allf["t"]))]
    sink = ListSink()
    engine = RuleEngine(rules, side_by_side(ctx, len(runs)), [sink])
    engine.process_fixes(allf)
    engine.flush(end_t)
    out = []
    for e in sink.events:
        if e.rule == "misplaced" and e.severity == "alarm" and e.tag is not None:
            run, tag = e.tag.split("|", 1)
            out.append((int(run), dataclasses.replace(e, tag=tag)))
    return out


def _scenario(path: str, seed: int, duration: float, engine: Sequence[str] = ()) -> Scenario:
    """The quiet scenario at this seed and length; ``engine`` replaces [engine] settings and
    names the kept fixes after them, as quiet_missing.py --engine does."""
    base = engine_variant(load_scenario(Path(path)), engine)
    return Scenario.model_validate(base.model_dump() | {"seed": seed, "duration_s": duration, "incidents": []})


def _context(sc: Scenario) -> RuleContext:
    site = SiteModel.from_scenario(sc)
    gateways, _ = resolve_gateways(sc, site)
    return registry_context(sc, site.zones, gateways)


def forbidden_key(sc: Scenario, rules: RuleSet) -> str:
    """A short hash of what the forbidden regions are built from (the rule's allowed roles,
    the zones, the outline): candidates kept under one key are valid only for replays with
    the same forbidden zones (``--misplaced allowed_roles=...`` changes them)."""
    cfg = rules.misplaced
    parts = {"allowed_roles": cfg.allowed_roles, "default_allowed_roles": cfg.default_allowed_roles,
             "zones": [(z.role, z.polygon) for z in sc.zones], "outline": sc.site.outline}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def seed_candidates(
    scenario: str, seed: int, duration: float, fixes_dir: str, overrides: dict[str, Any],
    engine_settings: Sequence[str] = (), keep_dir: str | None = None,
) -> tuple[NDArray[np.void], float]:
    """One seed's kept fixes, only the tags that can fire; and its tag-days.

    With ``keep_dir``, the candidates are kept there, named after the forbidden zones
    (:func:`forbidden_key`) and the floor they were chosen at, and read back by a later
    replay with the same forbidden zones whose lowest look is at least that floor (a
    superset of its candidates: the extra tags cannot fire, so the replay stays exact).
    """
    sc = _scenario(scenario, seed, duration, engine_settings)
    path = Path(fixes_dir) / f"{sc.name}-seed{seed}-{duration:g}s.npz"
    rules = misplaced_only(sc.rules, overrides)
    floor = lowest_look(rules)
    n_tags = sum(g.count for g in sc.tags)
    tag_days = n_tags * duration / 86_400.0
    kept_stem = f"{path.stem}-zones{forbidden_key(sc, rules)}"
    if keep_dir is not None:
        kept = sorted(Path(keep_dir).glob(f"{kept_stem}-floor*.npy"))
        usable = [k for k in kept if float(k.stem.rsplit("-floor", 1)[1]) <= floor]
        if usable:
            return np.load(usable[0]), tag_days
    if not path.exists():
        raise SystemExit(f"{path}: no kept fixes for seed {seed} (run quiet_missing.py --full first)")
    engine = RuleEngine(rules, _context(sc))
    fixes = load_fixes(path)
    engine._grow(len(engine.ctx.device_ids))
    got = candidates(fixes, engine, floor)
    if keep_dir is not None:
        Path(keep_dir).mkdir(parents=True, exist_ok=True)
        target = Path(keep_dir) / f"{kept_stem}-floor{floor:g}.npy"
        tmp = target.with_suffix(f".{os.getpid()}.tmp")  # a replay cut short leaves no half file
        with tmp.open("wb") as f:
            np.save(f, got)
        tmp.replace(target)
    return got, tag_days


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixes-dir", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--duration", type=float, default=7200.0)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demo.toml"))
    ap.add_argument("--misplaced", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="the [engine] settings the kept fixes were made with (quiet_missing.py --engine)")
    ap.add_argument("--jobs", type=int, default=1, help="processes reading the kept fixes")
    ap.add_argument("--keep-candidates", default=None, metavar="DIR",
                    help="keep each seed's candidate fixes here and reuse them (replays in seconds)")
    ap.add_argument("--side-by-side", type=int, default=30,
                    help="seeds replayed together in one rule engine (memory: ~1 GB per 30)")
    args = ap.parse_args()
    overrides = dict(setting("--misplaced", s) for s in args.misplaced)
    wall = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        got = list(pool.map(seed_candidates, repeat(args.scenario), args.seeds, repeat(args.duration),
                            repeat(args.fixes_dir), repeat(overrides), repeat(args.engine),
                            repeat(args.keep_candidates)))
    read_s = time.perf_counter() - wall
    sc = _scenario(args.scenario, args.seeds[0], args.duration, args.engine)
    rules = misplaced_only(sc.rules, overrides)
    t0 = time.perf_counter()
    ctx, k = _context(sc), max(args.side_by_side, 1)
    alarms = [
        (i + j, e)
        for i in range(0, len(got), k)
        for j, e in replay_side_by_side(rules, ctx, [f for f, _ in got[i : i + k]], args.duration)
    ]
    replay_s = time.perf_counter() - t0
    tag_days = sum(d for _, d in got)
    reading = rate_reading(len(alarms), tag_days / 1000.0)
    out = {
        "benchmark": "misplaced_quiet",
        "scenario": sc.name,
        "seeds": len(args.seeds),
        "seed_list": args.seeds,
        "duration_s": args.duration,
        "tag_days": round(tag_days, 2),
        "misplaced_settings": rules.misplaced.model_dump(),
        "overrides": overrides,
        "rest_check": "not applied (no sightings): alarms are an upper bound on the whole rule's",
        "candidate_tags_per_seed": [len(np.unique(f["device"])) for f, _ in got],
        "misplaced": {**reading.as_dict(), "below_1_per_day_per_1000_tags": reading.upper < 1.0},
        "alarms": [
            {"seed": args.seeds[j], "tag": e.tag, "t": round(e.t, 3), **e.evidence} for j, e in alarms
        ],
        "wall_s": round(time.perf_counter() - wall, 1),
        "read_s": round(read_s, 1),
        "replay_s": round(replay_s, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
