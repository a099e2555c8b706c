"""The fault table: each backbone fault injected into a live run, counts reconciled to the unit.

Real processes on loopback (nats-server, an engine worker process, ten gateways with
SQLite spools, 1,000 sightings/s); see live_bridge/faults.py for what each case does and
docs/reliability.md for the table this prints. ``--quick`` runs every fault with short
outages (all of them in under 3 minutes on 2 idle cores); without it the outages are
the issue's (link cut 30 s, host down 10 s).

    .venv/bin/python benchmarks/faults.py --json faults.json [--quick] [--faults link-cut,worker-kill]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from live_bridge.faults import FAULT_KINDS, Load, run_case, suite_case
from tagtwin.worker import FAULT_SITE, core_factory, site_config, worker_command

COLUMNS = ("fault", "generated", "stored", "processed", "duplicates", "dead_lettered", "lost", "recovery_s",
           "positions_match", "revised_positions", "events_match", "events", "revised_events")


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) and not isinstance(r[c], bool) else str(r[c])
                                for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the list of cases here")
    ap.add_argument("--quick", action="store_true", help="short outages: every fault in under 3 minutes")
    ap.add_argument("--faults", default=",".join(k for k in FAULT_KINDS if k != "none"),
                    help=f"comma list from {', '.join(FAULT_KINDS)}")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--site", type=Path, default=FAULT_SITE, help="scenario or site file (>= 10 gateways)")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        print(f"--faults: unknown {unknown}; expected from {list(FAULT_KINDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    config = site_config(args.site)
    make_core = core_factory(args.site)
    rows = []
    t0 = time.monotonic()
    for kind in kinds:
        fault, load = suite_case(kind, args.quick, Load(seed=args.seed))
        with tempfile.TemporaryDirectory(prefix=f"tagtwin-fault-{kind}-") as d:
            result = run_case(Path(d), fault, load, config=config, worker_command=worker_command(args.site),
                              make_core=make_core)
        row = result.row() | {"at_s": fault.at_s, "down_s": fault.down_s, "duration_s": load.duration_s}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(table(rows))
    print(f"\n{len(rows)} faults in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["lost"] == 0 and r["positions_match"] and r["events_match"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
