"""One engine worker as its own process, for a scenario's or site file's site.

``tagtwin serve`` runs the same worker in-process; the fault suite
(live_bridge/faults.py) starts this module so that it can kill it -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from engine.config_file import ConfigFileError
from engine.pipeline import EngineConfig
from live_bridge.backbone import StreamSettings, connect
from live_bridge.config import load_keys
from live_bridge.worker import WorkerCore, WorkerSettings, run_worker
from tagtwin.live import site_engine_config
from twin.scenario import load_scenario


def site_config(path: Path | str) -> EngineConfig:
    """The engine configuration of a scenario or site file."""
    return site_engine_config(load_scenario(path))


FAULT_SITE = Path(__file__).resolve().parent.parent / "scenarios" / "static-open.toml"


def worker_command(site_file: Path | str) -> list[str]:
    """The command line that starts a worker process for ``site_file`` (fault harness)."""
    return [sys.executable, "-m", "tagtwin.worker", str(site_file)]


def main(argv: list[str] | None = None) -> int:
    """``python -m tagtwin.worker``: one engine worker process (what ``tagtwin serve``
    runs in-process; the fault suite runs it as a process it can kill)."""
    import argparse
    import signal
    from dataclasses import fields


    ap = argparse.ArgumentParser(prog="python -m tagtwin.worker", description=main.__doc__)
    ap.add_argument("scenario", help="scenario or site file (gateways and plan)")
    ap.add_argument("--nats", required=True, help="nats://host:port[,nats://...]")
    ap.add_argument("--creds", default=None, help="NATS credentials file")
    ap.add_argument("--keys", required=True, help="keys.toml")
    ap.add_argument("--settings", default="{}", help="JSON object of WorkerSettings fields")
    ap.add_argument("--replicas", type=int, default=1, help="stream replicas (3 on a 3-node cluster)")
    ap.add_argument("--raw-max-age", type=float, default=StreamSettings.raw_max_age_s, help="raw retention, s")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        known = {f.name for f in fields(WorkerSettings)}
        given = json.loads(args.settings)
        if not isinstance(given, dict) or set(given) - known:
            raise ValueError(f"--settings: expected a JSON object with keys from {sorted(known)}")
        settings = WorkerSettings(**given)
        config = site_config(args.scenario)
        keys = load_keys(args.keys)
    except ConfigFileError as exc:
        print(f"{exc.path}: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    streams = StreamSettings(raw_max_age_s=args.raw_max_age, replicas=args.replicas)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        nc = await connect(args.nats, name=f"tagtwin-{settings.durable}", creds=args.creds)
        core = WorkerCore(config, keys, settings)
        try:
            await run_worker(core, nc, stop, streams=streams)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        sys.stderr.write(json.dumps(core.status(), default=str) + "\n")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
