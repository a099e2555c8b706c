"""What detecting a sudden silence costs in false alarms: the missing-tag trade-off curve.

A healthy tag that stops advertising without warning (destroyed, shielded in foil) can
only be told from a present tag that keeps losing adverts to collisions by how long it has
been silent. This runs scenarios/demo.toml (no incidents) with ``--deaths`` random tags
killed at random instants (after a warm-up, through the twin's ``tag_alive`` hook, so
their packets stop colliding too), replays the sightings into the rule engine once per
design rate R (``false_alarms_per_day_per_1000_tags``) and prints, per R: the k the
engine chose for the tags at the end, the delay of each death's missing_tag alarm in
advertising intervals, and the alarms on tags that did not die (false alarms) per day per
1,000 tags, for all tags and per tag class (``by_class``: a class's own design rate,
``missing.false_alarms_by_class``, buys its own row), each rate with its exact one-sided
95 % bound and the too-little-exposure rule (engine.rules.scoring.rate_reading).
Long-run false-alarm rates at the default R come from quiet_missing.py.
Prints JSON. Usage: python benchmarks/sudden_silence.py [--seeds 1 2] [--duration S]
[--deaths N] [--rates 0.25 10 1000] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from engine.rules.engine import RuleEngine
from engine.rules.events import ListSink
from engine.rules.scoring import delay_stats, rate_reading
from twin.incidents import FEED_DTYPE
from twin.run import feed_rules, rule_context_for
from twin.scenario import Scenario, load_scenario
from twin.sim import WarehouseTwin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet_missing import standin_fixes

ROOT = Path(__file__).resolve().parents[1]
RATES = (0.25, 1.0, 10.0, 100.0, 1000.0, 10000.0)
WARM_UP_S = 900.0  # the site's burst statistics settle first
TAIL_S = 120.0  # every death has time to be called before the end


def one_seed(scenario: str, seed: int, duration: float, deaths: int, rates: list[float]) -> dict[str, Any]:
    base = load_scenario(Path(scenario))
    sc = Scenario.model_validate(
        base.model_dump() | {"seed": seed, "duration_s": duration, "incidents": []}
    )
    twin = WarehouseTwin(sc)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2024,)))
    victims = rng.choice(len(twin.fleet), deaths, replace=False)
    ticks = np.floor(rng.uniform(WARM_UP_S, duration - TAIL_S, deaths) / sc.tick_s)
    t_death = ticks * sc.tick_s  # a hook flip takes effect at the next tick boundary

    def killer(tag: int, t: float) -> Callable[[simpy.Environment], Generator[simpy.Event, None, None]]:
        def agent(env: simpy.Environment) -> Generator[simpy.Event, None, None]:
            yield env.timeout(t + sc.tick_s / 2)
            twin.tag_alive[tag] = False

        return agent

    for tag, t in zip(victims.tolist(), t_death.tolist(), strict=True):
        twin.agents.append(killer(tag, t))
    res = twin.run()
    fixes = standin_fixes(res.sightings, sc.engine.step_s)
    ids = twin.fleet.ids
    died_at = {ids[v]: t for v, t in zip(victims.tolist(), t_death.tolist(), strict=True)}
    interval = dict(zip(ids, twin.fleet.adv_interval_s.tolist(), strict=True))
    ctx = rule_context_for(sc, twin)
    class_of = {tag: ctx.class_names[int(c)] for tag, c in zip(ids, ctx.device_class.tolist(), strict=True)}
    out = []
    for rate in rates:
        rules_cfg = sc.rules.model_copy(
            update={"missing": sc.rules.missing.model_copy(
                update={"false_alarms_per_day_per_1000_tags": rate})}
        )
        sink = ListSink()
        rules = RuleEngine(rules_cfg, rule_context_for(sc, twin), [sink])
        feed_rules(rules, res.sightings, fixes, np.zeros(0, FEED_DTYPE), end_t=sc.duration_s,
                   step_s=sc.engine.step_s)
        alarms = [e for e in sink.events if e.severity == "alarm"]
        first: dict[str, float] = {}
        false = 0
        false_by_class: dict[str, int] = dict.fromkeys(ctx.class_names, 0)
        for e in alarms:
            if e.tag is not None and e.tag in died_at and e.t >= died_at[e.tag]:
                first.setdefault(e.tag, e.t)
            else:
                false += 1
                if e.tag in class_of:
                    false_by_class[class_of[e.tag]] += 1
        alive = np.ones(len(ids), bool)
        alive[victims] = False
        _, k = rules.silence_threshold(np.flatnonzero(alive))
        out.append({
            "rate": rate,
            "delays_intervals": [(first[tag] - t) / interval[tag] for tag, t in died_at.items() if tag in first],
            "delays_by_class": {
                c: [(first[tag] - t) / interval[tag] for tag, t in died_at.items()
                    if tag in first and class_of[tag] == c]
                for c in ctx.class_names
            },
            "undetected": sum(tag not in first for tag in died_at),
            "false_alarms": false,
            "false_alarms_by_class": false_by_class,
            "k": k.astype(int).tolist(),
        })
    tags_by_class = {c: sum(1 for tag in ids if class_of[tag] == c) for c in ctx.class_names}
    dead_by_class = {c: sum(1 for tag in died_at if class_of[tag] == c) for c in ctx.class_names}
    return {
        "seed": seed,
        "tag_days": (len(ids) - deaths / 2) * duration / 86_400.0,
        "tag_days_by_class": {
            c: (tags_by_class[c] - dead_by_class[c] / 2) * duration / 86_400.0 for c in ctx.class_names
        },
        "per_rate": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--deaths", type=int, default=20, help="tags killed per seed")
    ap.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demo.toml"))
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    if args.duration < WARM_UP_S + TAIL_S + 60:
        ap.error(f"--duration must be at least {WARM_UP_S + TAIL_S + 60:.0f} s (warm-up and tail)")
    wall = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(one_seed, repeat(args.scenario), args.seeds, repeat(args.duration),
                             repeat(args.deaths), repeat(args.rates)))
    thousand = sum(r["tag_days"] for r in runs) / 1000.0
    table = []
    for i, rate in enumerate(args.rates):
        rows = [r["per_rate"][i] for r in runs]
        delays = [d for row in rows for d in row["delays_intervals"]]
        ks = [k for row in rows for k in row["k"]]
        false = sum(row["false_alarms"] for row in rows)
        table.append({
            "design_rate_per_day_per_1000_tags": rate,
            "k_median": float(np.median(ks)),
            "k_p10_p90": [float(np.quantile(ks, 0.1)), float(np.quantile(ks, 0.9))],
            "sudden_death_delay_intervals": delay_stats(delays),
            "within_3_intervals": round(float(np.mean(np.asarray(delays) <= 3.0)), 3) if delays else None,
            "undetected": sum(row["undetected"] for row in rows),
            "false_alarms": false,
            "false_alarms_per_day_per_1000_tags": round(false / thousand, 1),
            "false_alarm_rate": rate_reading(false, thousand, rate).as_dict(),
            "by_class": {
                c: {
                    "delay_intervals": delay_stats(d := [x for row in rows for x in row["delays_by_class"][c]]),
                    "within_3_intervals": round(float(np.mean(np.asarray(d) <= 3.0)), 3) if d else None,
                    "false_alarm_rate": rate_reading(
                        sum(row["false_alarms_by_class"][c] for row in rows),
                        sum(r["tag_days_by_class"][c] for r in runs) / 1000.0,
                        rate,
                    ).as_dict(),
                }
                for c in runs[0]["tag_days_by_class"]
            },
        })
    print(json.dumps({
        "scenario": Path(args.scenario).name,
        "seeds": args.seeds,
        "duration_s": args.duration,
        "deaths": args.deaths * len(runs),
        "thousand_tag_days": round(thousand, 4),
        "trade_off": table,
        "wall_s": round(time.perf_counter() - wall, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
