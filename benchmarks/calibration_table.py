"""Every candidate of a `benchmarks/calibration.py` run as one markdown table (what
docs/calibration-candidates.md holds): rank by meet share / by pooled ratio, the
cross-validation figures the choice used, and the test track's figures, listed so a
reader can see they were not used. Run: ``python benchmarks/calibration_table.py out.json``."""

from __future__ import annotations

import json
import sys
from typing import Any


def table(result: dict[str, Any]) -> str:
    cv, test, ranks = result["cross_validation_on_calibration"], result["test_track"], result["cross_validation_rank"]
    rows = [
        "| CV rank (meet share / ratio) | method @ step / window | 6-min tracks meeting both (CV) "
        "| CV pooled median / p90 m | r90 cov. raw -> factor | track p90 5/50/95 % (CV) "
        "| test median / p90 m / r90 cov. |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sorted(cv, key=lambda n: ranks["meet_share"][n]):
        r, t = cv[name], test[name]
        mark = " (chosen)" if name == result["chosen_on_calibration"] else ""
        rows.append(
            f"| {ranks['meet_share'][name]} / {ranks['target_ratio'][name]} | {name}{mark} "
            f"| {100 * r['track_meet_share']:.0f} % | {r['median_error_m']:.2f} / {r['p90_error_m']:.2f} "
            f"| {r['r90_coverage']:.2f} -> x{r['r90_scale']:.2f} "
            f"| {r['track_p90_q05_m']:.2f} / {r['track_p90_q50_m']:.2f} / {r['track_p90_q95_m']:.2f} "
            f"| {t['median_error_m']:.2f} / {t['p90_error_m']:.2f} / {t['r90_coverage']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
