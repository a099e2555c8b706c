"""Bytes per worker checkpoint at a given sighting rate (sans-IO: the worker core alone).

Feeds :class:`live_bridge.worker.WorkerCore` ``--seconds`` of signed version-2 batches
(10 gateways, every gateway hears every tag at 2 Hz, a batch per gateway per 0.5 s), closes
windows as the stream clock passes, and measures ``len(core.checkpoint())`` every 10 s of
event time. Run at 1,000 and 10,000 sightings/s; the checkpoint is rewritten about once a
second while batches arrive (WorkerSettings.checkpoint_every_s), so this is what the object
store is written per second. The price of a checkpoint without rows is paid on restore: a
new core restores the last checkpoint and reads the held batches back (``restore_s``, the
worker's CPU time for that, without the stream's transfer), and must then hold the same rows.

    .venv/bin/python benchmarks/checkpoint_size.py [--seconds 150] [--rates 1000,10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit

from live_bridge.backbone import raw_subject
from live_bridge.wire_columns import encode_columns
from live_bridge.worker import WorkerCore, WorkerSettings
from tagtwin.worker import FAULT_SITE, site_config

SITE = "ckpt"
GATEWAYS = 10
HZ = 2.0
BATCH_S = 0.5
T_BASE = 1_790_000_000.0


def run(rate: int, seconds: float, seed: int = 3) -> dict[str, object]:
    config = site_config(FAULT_SITE)
    gws = config.gateways.ids[:GATEWAYS]
    keys = {g: bytes([i + 1]) * 32 for i, g in enumerate(config.gateways.ids)}
    devices = max(1, round(rate / (GATEWAYS * HZ)))
    core = WorkerCore(config, keys, WorkerSettings(site=SITE))
    rng = np.random.default_rng(seed)
    names = [f"tag-{d:05d}" for d in range(devices)]
    offset = rng.uniform(0, 1 / HZ, devices)
    sizes: list[int] = []
    log: list[tuple[str, bytes, int, float]] = []  # the raw stream, for the restore
    stream_seq = 0
    sightings = 0
    t0 = time.perf_counter()
    for step in range(int(seconds / BATCH_S)):
        lo = T_BASE + step * BATCH_S
        ticks = np.arange(np.ceil((lo - T_BASE) * HZ), np.ceil((lo + BATCH_S - T_BASE) * HZ))
        t = (T_BASE + ticks[:, None] / HZ + offset[None, :]).ravel()
        inside = (t >= lo) & (t < lo + BATCH_S)
        dev = np.tile(np.arange(devices), len(ticks))[inside]
        t = t[inside]
        received = lo + BATCH_S + 0.05
        for g, gw in enumerate(gws):
            n = len(t)
            body = encode_columns(
                gw, step, 1, received, t, [names[d] for d in dev],
                rssi=np.round(rng.uniform(-95, -50, n), 2), channel=np.full(n, 37), battery=np.full(n, -1),
                motion=np.full(n, -1), aseq=np.full(n, step), key=keys[gw],
            )
            stream_seq += 1
            log.append((raw_subject(SITE, gw), body, stream_seq, received + g * 1e-3))
            core.handle(*log[-1])
            sightings += n
        core.tick(received)
        if (step + 1) % int(10 / BATCH_S) == 0:
            sizes.append(len(core.checkpoint()))
    blob = core.checkpoint()
    t1 = time.perf_counter()
    again = WorkerCore(config, keys, WorkerSettings(site=SITE))
    again.restore(blob)
    rb = again.begin_history()
    batches_read = 0
    if rb is not None:
        for entry in log[again.history_from - 1:]:
            again.read_back(rb, *entry)
            batches_read += 1
        again.end_read_back(rb, time.time())
    restore_s = time.perf_counter() - t1
    held, rebuilt = core.windows.snapshot()[1], again.windows.snapshot()[1]
    return {
        "rate_sightings_per_s": rate,
        "devices": devices,
        "seconds_of_traffic": seconds,
        "sightings": sightings,
        "checkpoint_bytes_last": sizes[-1],
        "checkpoint_bytes_max": max(sizes),
        "checkpoint_bytes_every_10s": sizes,
        "rows_held": len(held),
        "restore_batches_read": batches_read,
        "restore_s": round(restore_s, 2),
        "restore_rows_equal": bool(np.array_equal(np.sort(held, order=["t", "gateway", "device"]),
                                                  np.sort(rebuilt, order=["t", "gateway", "device"]))),
        "feed_s": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=150.0, help="event time fed (the horizon is 120 s)")
    ap.add_argument("--rates", default="1000,10000", help="sightings per second, comma-separated")
    args = ap.parse_args()
    results = [run(int(r), args.seconds) for r in args.rates.split(",")]
    emit("checkpoint_size", {"runs": results})


if __name__ == "__main__":
    main()
