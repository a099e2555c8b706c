"""One worker process of a pool sharing the partitions of several sites (live_bridge/pool.py).

    python -m tagtwin.pool_worker SCENARIO --nats URL --keys-dir DIR --sites a,b,c --id w1

Every site is a partition of the same scenario's plan; ``DIR/keys-<site>.toml`` holds its
gateway keys (what ``tagtwin loadtest`` writes). Start more of these with other ids and
the partitions spread over them; stop one (SIGTERM) and its partitions move back.
With ``--cells`` every site is cut into the scenario's ``[cells]`` and each cell is a
partition (``<site>-<cell>``, live_bridge/cells.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from engine.cells import plan_cells
from live_bridge.backbone import StreamSettings, connect
from live_bridge.cells import cell_partitions, cell_worker
from live_bridge.config import load_keys
from live_bridge.pool import PoolSettings, WorkerPool
from live_bridge.worker import WorkerCore, WorkerSettings
from siteplan.config_file import ConfigFileError
from tagtwin.live import site_engine_config
from tagtwin.worker import site_worker_core
from twin.scenario import load_scenario


def pool_command(scenario: Path | str, nats_url: str, keys_dir: Path, sites: list[str], worker_id: str,
                 settings: dict[str, object] | None = None, min_members: int = 1, cells: bool = False) -> list[str]:
    return [sys.executable, "-m", "tagtwin.pool_worker", str(scenario), "--nats", nats_url, "--keys-dir",
            str(keys_dir), "--sites", ",".join(sites), "--id", worker_id, "--settings", json.dumps(settings or {}),
            "--min-members", str(min_members), *(["--cells"] if cells else [])]


async def run_pool(args: argparse.Namespace) -> dict[str, object]:
    scenario = load_scenario(args.scenario)
    config = site_engine_config(scenario)
    sites = [s for s in args.sites.split(",") if s]
    keys = {s: load_keys(Path(args.keys_dir) / f"keys-{s}.toml") for s in sites}
    given = json.loads(args.settings)
    # partition -> (site, cell index or None for the whole site)
    partitions: dict[str, tuple[str, int | None]] = {s: (s, None) for s in sites}
    plan = None
    if args.cells:
        if scenario.cells is None:
            raise ValueError(f"{args.scenario}: --cells needs a [cells] section in the scenario")
        plan = plan_cells(config, scenario.cells)
        partitions = {p: (s, c) for s in sites for p, c in cell_partitions(s, plan).items()}

    def make_core(p: str) -> WorkerCore:
        site, cell = partitions[p]
        settings = WorkerSettings(**(given | {"site": site}))
        if plan is None or cell is None:  # the whole site: its rules too
            return site_worker_core(scenario, config, keys[site], settings)
        return cell_worker(config, keys[site], plan, cell, settings)
    streams = StreamSettings(replicas=args.replicas)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(args.nats, name=f"tagtwin-pool-{args.id}")
    pool = WorkerPool(args.id, list(partitions), make_core, nc, PoolSettings(min_members=args.min_members), streams)
    try:
        await pool.run(stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return {"id": args.id, "history": pool.history}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tagtwin.pool_worker", description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--nats", required=True)
    ap.add_argument("--keys-dir", required=True)
    ap.add_argument("--sites", required=True, help="comma-separated site partitions")
    ap.add_argument("--id", required=True, help="this worker's id (letters, digits, _ and -)")
    ap.add_argument("--settings", default="{}", help="JSON object of WorkerSettings fields")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--min-members", type=int, default=1)
    ap.add_argument("--cells", action="store_true", help="one partition per cell of the scenario's [cells]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        out = asyncio.run(run_pool(args))
    except ConfigFileError as exc:
        print(f"{exc.path}: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    except (ValueError, OSError, TypeError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    sys.stderr.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
