"""Where one engine worker's CPU goes, per stage, in process (no IO): sightings per CPU-second.

The load test's traffic (static-open's twin, ``--scale`` copies of its tags, 0.25 s gateway
batches) through :class:`live_bridge.worker.WorkerCore` as the worker runs it: ``handle``
per batch (HMAC, pydantic parse, columns, dedup, windows.add) and ``tick`` after every
64 batches (windows closed, localized, positions JSON). Stages are timed with the
process's CPU clock, so the figures hold on a busy machine. Also: the wire decode alone
(verify + parse) and plain ``json.loads`` of the same payloads, the floor of any JSON decode.

    .venv/bin/python benchmarks/worker_stages.py [--scale 10] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, peak_rss_mb

from live_bridge.wire import split_envelope, verify_signed
from live_bridge.wire_columns import verify_columns
from live_bridge.worker import WorkerCore, WorkerSettings
from tagtwin.live import site_engine_config
from tagtwin.loadgen import PublisherSpec, Schedule, TickBuilder
from tagtwin.loadtest import site_traffic
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]


def main(scale: float, seconds: float, wire: int) -> dict[str, object]:
    sc = load_scenario(REPO / "scenarios" / "static-open.toml")
    tr = site_traffic(sc, "stages", 0, 12.0)
    b = TickBuilder(PublisherSpec(0, "", "nats", [tr], Schedule(scale, seconds), 1_790_000_000.0, 0.25, wire=wire))
    items = []
    for k in range(int(seconds / 0.25)):
        items += b.build(k * 0.25, (k + 1) * 0.25, scale)
    n = sum(x[3] for x in items)
    cpu = time.process_time
    t = cpu()
    verify = verify_columns if wire == 2 else verify_signed
    for _, gw, body, _ in items:
        verify(body, gw, tr.keys[gw])
    decode = cpu() - t
    t = cpu()
    for _, _, body, _ in items:
        json.loads(split_envelope(body)[1])
    plain = cpu() - t
    core = WorkerCore(site_engine_config(sc), tr.keys, WorkerSettings(site="stages"))
    handle = tick = 0.0
    for i, (subject, _, body, _) in enumerate(items):
        t = cpu()
        core.handle(subject, body, i + 1, 1_790_000_000.0 + seconds)
        handle += cpu() - t
        if i % 64 == 63:
            t = cpu()
            core.tick(core.latest_received)
            tick += cpu() - t
    t = cpu()
    core.tick(0.0, final=True)
    tick += cpu() - t
    t = cpu()
    blob = core.checkpoint()
    ckpt = cpu() - t
    return {
        "wire": wire, "sightings": n, "bytes_per_sighting": round(sum(len(x[2]) for x in items) / n, 1),
        "tags": round(scale * len(tr.device_ids)), "batches": len(items),
        "wire_decode_per_cpu_s": round(n / decode), "json_loads_only_per_cpu_s": round(n / plain),
        "handle_per_cpu_s": round(n / handle), "tick_per_cpu_s": round(n / tick),
        "worker_core_per_cpu_s": round(n / (handle + tick)),
        "share_cpu": {"handle": round(handle / (handle + tick), 2), "tick": round(tick / (handle + tick), 2)},
        "checkpoint_mb": round(len(blob) / 2**20, 1), "checkpoint_cpu_s": round(ckpt, 3),
        "positions": int(core.counters["positions"]), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=10.0, help="copies of the scenario's 400 tags")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--wire", type=int, choices=(1, 2), default=1, help="1: an object per advert, 2: columns")
    args = ap.parse_args()
    emit("worker_stages", main(args.scale, args.seconds, args.wire))
