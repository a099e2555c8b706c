"""One engine worker as its own process, for a scenario's or site file's site.

``tagtwin serve`` runs the same worker in-process; the fault suite
(live_bridge/faults.py) starts this module so that it can kill it -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from engine.pipeline import EngineConfig
from live_bridge.backbone import StreamSettings, connect
from live_bridge.config import load_key_ring
from live_bridge.natsserver import EmbeddedNats, ServerConfig, free_port
from live_bridge.worker import WorkerCore, WorkerSettings, run_worker, warm_up
from siteplan.config_file import ConfigFileError
from tagtwin.live import site_engine_config, site_rules
from twin.scenario import Scenario, load_scenario


def site_config(path: Path | str) -> EngineConfig:
    """The engine configuration of a scenario or site file."""
    return site_engine_config(load_scenario(path))


def site_worker_core(scenario: Scenario, config: EngineConfig, keys: Mapping[str, bytes | tuple[bytes, ...]],
                     settings: WorkerSettings) -> WorkerCore:
    """A worker core for a scenario's site: its engine (tracker included) and its rules,
    the fleet as the registry (rule events on the backbone)."""
    devices, rules = site_rules(scenario, config, settings.registered_copies)
    return WorkerCore(config, keys, settings, rules=rules, devices=devices)


def core_factory(path: Path | str) -> Callable[[Mapping[str, bytes | tuple[bytes, ...]], WorkerSettings], WorkerCore]:
    """Worker cores for a site file, as its worker process builds them (the fault suite's
    one-pass reference runs one)."""
    scenario = load_scenario(path)
    config = site_engine_config(scenario)
    return lambda keys, settings: site_worker_core(scenario, config, keys, settings)


FAULT_SITE = Path(__file__).resolve().parent.parent / "scenarios" / "static-open.toml"


def worker_command(site_file: Path | str) -> list[str]:
    """The command line that starts a worker process for ``site_file`` (fault harness)."""
    return [sys.executable, "-m", "tagtwin.worker", str(site_file)]



async def run_site_worker(
    core: WorkerCore, streams: StreamSettings,
    nats_url: str, creds: str | None = None, duration_s: float | None = None,
    on_status: Callable[[dict[str, object]], None] | None = None, keys_path: Path | None = None,
) -> WorkerCore:
    """One worker until SIGINT/SIGTERM (or ``duration_s``); returns it for its status."""
    settings = core.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    nc = await connect(nats_url, name=f"tagtwin-{settings.durable}", creds=creds)
    try:
        await run_worker(core, nc, stop, streams=streams, on_status=on_status, keys_path=keys_path)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return core


def status_line(status: dict[str, object]) -> str:
    """One line of a worker's status for a person watching ``tagtwin serve``."""
    counters = status.get("counters")
    c = counters if isinstance(counters, dict) else {}
    lag = status.get("lag")
    pending = lag.get("pending", "?") if isinstance(lag, dict) else "?"
    dead = sum(v for k, v in c.items() if str(k).startswith(("dead", "rejected")))
    return (f"serve: stream seq {status.get('stream_seq')}, batches {c.get('batches', 0)}, "
            f"sightings {c.get('processed', 0)}, positions {c.get('positions', 0)}, events {c.get('events', 0)}, "
            f"dead-lettered {dead}, backlog {pending}")


def serve_backbone(
    core: WorkerCore, streams: StreamSettings, *,
    nats_url: str | None, creds: str | None, data_dir: Path, nats_port: int, mqtt_port: int,
    duration_s: float | None, say: Callable[[str], None], keys_path: Path | None = None,
) -> dict[str, object]:
    """``tagtwin serve``: the embedded nats-server when no URL is given (JetStream synced on
    every write, MQTT listener, store under ``data_dir``), one worker, both stopped on exit."""
    server = None
    if nats_url is None:
        server = EmbeddedNats(ServerConfig(
            name="tagtwin", store_dir=data_dir / "jetstream", port=nats_port or free_port(),
            mqtt_port=mqtt_port or free_port(),
        ))
        server.start()
        nats_url = server.url
        say(f"backbone listening on {server.url} and {server.mqtt_url} (MQTT 3.1.1), "
            f"store {server.config.store_dir}, nats-server pid {server.pid}")
    try:
        core = asyncio.run(run_site_worker(core, streams, nats_url, creds, duration_s,
                                           on_status=lambda status: say(status_line(status)),
                                           keys_path=keys_path))
    finally:
        if server is not None:
            server.stop()
    return core.status()


def main(argv: list[str] | None = None) -> int:
    """``python -m tagtwin.worker``: one engine worker process (what ``tagtwin serve``
    runs in-process; the fault suite runs it as a process it can kill)."""
    import argparse
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
        # the worker reads late data back from the stream as long as the stream keeps it
        settings = WorkerSettings(**({"raw_retention_s": args.raw_max_age} | given))
        scenario = load_scenario(args.scenario)
        keys = load_key_ring(args.keys).keys  # new and old key during a rotation
        config = site_engine_config(scenario)
        core = site_worker_core(scenario, config, keys, settings)
        warm_up(site_worker_core(scenario, config, keys, settings))  # before the first live close, not in it
    except ConfigFileError as exc:
        print(f"{exc.path}: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    streams = StreamSettings(raw_max_age_s=args.raw_max_age, replicas=args.replicas)
    core = asyncio.run(run_site_worker(core, streams, args.nats, args.creds, keys_path=Path(args.keys)))
    sys.stderr.write(json.dumps(core.status(), default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
