"""Rule quality against ground truth: precision, recall and detection delay per rule on
scenarios/demo_incidents.toml, and false alarms per day per 1,000 tags on the plain demo
(no incidents). Prints JSON.
Usage: python benchmarks/score_rules.py [--seeds 42 7] [--quiet-duration S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from twin.run import simulate
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
        "--quiet-duration", type=float, default=1800.0, help="seconds of the no-incident run"
    )
    args = ap.parse_args()
    out: dict[str, object] = {}
    inc = load_scenario(ROOT / "scenarios" / "demo_incidents.toml")
    for seed in args.seeds:
        run = simulate(Scenario.model_validate(inc.model_dump() | {"seed": seed}))
        r = run.metrics["rules"]
        assert isinstance(r, dict)
        out[f"demo_incidents_seed{seed}"] = {
            **{k: r[k] for k in KEEP if k in r},
            "false_alarms": r["false_alarms"],
            "reviews": r["reviews"],
            "false_reviews": r["false_reviews"],
            "false_alarms_per_day_per_1000_tags": r["false_alarms_per_day_per_1000_tags"],
            "count_accuracy": r["count_accuracy"],
            "legit_exits": r["legit_exits"],
            "incidents": r["incidents"],
            "median_error_m": run.metrics["median_error_m"],
            "rules_wall_s": round(run.timings_s["rules_s"], 2),
        }
    quiet = load_scenario(ROOT / "scenarios" / "demo.toml")
    run = simulate(
        Scenario.model_validate(quiet.model_dump() | {"duration_s": args.quiet_duration})
    )
    r = run.metrics["rules"]
    assert isinstance(r, dict)
    out["demo_no_incidents"] = {
        "duration_s": args.quiet_duration,
        "tags": len(run.twin.device_ids),
        "thousand_tag_days": r["thousand_tag_days"],
        "alarms": r["alarms"],
        "reviews": r["reviews"],
        "false_alarms_per_day_per_1000_tags": r["false_alarms_per_day_per_1000_tags"],
        "false_reviews_per_day_per_1000_tags": r["false_reviews_per_day_per_1000_tags"],
        "events_by_rule": r["events_by_rule"],
        "count_accuracy": r["count_accuracy"],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
