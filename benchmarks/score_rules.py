"""Rule quality against ground truth: precision, recall and detection delay per rule on
scenarios/demo_incidents.toml for each seed and pooled over all seeds, with exact 95 %
intervals (Clopper-Pearson, Poisson; engine.rules.scoring), and false alarms per day per
1,000 tags on the plain demo (no incidents), shown under the too-little-exposure rule.
Prints JSON.
Usage: python benchmarks/score_rules.py [--seeds 42 7 1 2] [--quiet-duration S] [--fixes-dir DIR]
[--scenario FILE] [--engine KEY=VALUE ...] [--misplaced KEY=VALUE ...]
(``--fixes-dir``: keep and reuse each run's fixes, twin.run.simulate_keeping_fixes, keyed by the
scenario's name, seed and duration; ``--scenario``: another incident scenario than
demo_incidents; ``--engine``: replace its [engine] settings, e.g. ``--engine
localizer=radio-map --engine radio_map=survey`` for a site with a calibration survey.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import engine_variant, misplaced_variant

from engine.rules.scoring import ScoreTally, score_report
from twin.run import simulate_keeping_fixes
from twin.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[1]
KEEP = (
    "exit_without_checkout",
    "exit_unresolved",
    "missing_tag",
    "battery_low",
    "misplaced",
    "gateway_health",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument(
        "--quiet-duration", type=float, default=1800.0,
        help="seconds of the no-incident run (0: skip it)",
    )
    ap.add_argument("--fixes-dir", help="keep and reuse each run's fixes here")
    ap.add_argument(
        "--scenario", default=str(ROOT / "scenarios" / "demo_incidents.toml"),
        help="the incident scenario (default demo_incidents)",
    )
    ap.add_argument(
        "--engine", action="append", default=[], metavar="KEY=VALUE",
        help="replace one [engine] setting of the scenarios (repeatable)",
    )
    ap.add_argument(
        "--misplaced", action="append", default=[], metavar="KEY=VALUE",
        help="replace one [rules.misplaced] setting (repeatable; kept fixes are reused)",
    )
    args = ap.parse_args()
    wall = time.perf_counter()
    fixes_dir = Path(args.fixes_dir) if args.fixes_dir else None
    out: dict[str, object] = {}
    pooled = ScoreTally()
    inc = misplaced_variant(engine_variant(load_scenario(Path(args.scenario)), args.engine), args.misplaced)
    for seed in args.seeds:
        run, _ = simulate_keeping_fixes(
            Scenario.model_validate(inc.model_dump() | {"seed": seed}), fixes_dir
        )
        pooled.merge(run.rule_tally)
        r = run.metrics["rules"]
        assert isinstance(r, dict)
        out[f"demo_incidents_seed{seed}"] = {
            **{k: r[k] for k in KEEP if k in r},
            "false_alarms": r["false_alarms"],
            "reviews": r["reviews"],
            "false_reviews": r["false_reviews"],
            "false_alarm_rate": r["false_alarm_rate"],
            "count_accuracy": r["count_accuracy"],
            "legit_exits": r["legit_exits"],
            "incidents": r["incidents"],
            "median_error_m": run.metrics["median_error_m"],
            "rules_wall_s": round(run.timings_s["rules_s"], 2),
        }
    rep = score_report(pooled)
    per_rule = rep.pop("per_rule")
    assert isinstance(per_rule, dict)
    out["demo_incidents_pooled"] = {
        "seeds": args.seeds,
        **{k: per_rule[k] for k in KEEP if k in per_rule},
        **rep,
    }
    if args.quiet_duration > 0:
        quiet = misplaced_variant(
            engine_variant(load_scenario(ROOT / "scenarios" / "demo.toml"), args.engine), args.misplaced
        )
        run, _ = simulate_keeping_fixes(
            Scenario.model_validate(quiet.model_dump() | {"duration_s": args.quiet_duration}),
            fixes_dir,
        )
        r = run.metrics["rules"]
        assert isinstance(r, dict)
        out["demo_no_incidents"] = {
            "duration_s": args.quiet_duration,
            "tags": len(run.twin.device_ids),
            "thousand_tag_days": r["thousand_tag_days"],
            "alarms": r["alarms"],
            "reviews": r["reviews"],
            "false_alarm_rate": r["false_alarm_rate"],
            "false_review_rate": r["false_review_rate"],
            "events_by_rule": r["events_by_rule"],
            "count_accuracy": r["count_accuracy"],
        }
    out["wall_s"] = round(time.perf_counter() - wall, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
