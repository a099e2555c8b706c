"""Backpressure on the backbone: a backlog waits in the stream, the worker's memory stays flat.

Fills a site's raw stream with ``--seconds`` of traffic (10 gateways x 50 tags x 2 Hz =
1,000 sightings/s of event time) before any worker runs, then starts one worker process
(``python -m tagtwin.worker``) and samples its resident memory (/proc) and the lag it
reports on the status subject until it has caught up. Prints JSON: the worker's
throughput through the whole path (verify, dedup, windows, positions, checkpoint, ack)
and its memory at the start, the peak and the end of the catch-up.

    .venv/bin/python benchmarks/backbone_backlog.py [--seconds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit

from live_bridge.backbone import StreamSettings, connect, ensure_streams, out_subject, publish_batch, raw_subject
from live_bridge.faults import Load, WorkerProcess, traffic
from live_bridge.natsserver import EmbeddedNats
from live_bridge.wire import Batch, encode_batch
from tagtwin.worker import FAULT_SITE, site_config, worker_command

SITE = "backlog"


def accounted(counters: dict[str, object]) -> int:
    """Sightings placed or dead-lettered: every one the worker is done with."""
    return sum(int(v) for k, v in counters.items()  # type: ignore[call-overload]
               if k == "processed" or k.startswith("dead_lettered"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(seconds: float, max_ack_pending: int) -> dict[str, object]:
    config = site_config(FAULT_SITE)
    load = Load(duration_s=seconds)
    adverts = traffic(config, load)
    keys = {g: bytes([i]) * 32 for i, g in enumerate(config.gateways.ids)}
    total = sum(len(a) for a in adverts.values())
    with tempfile.TemporaryDirectory(prefix="tagtwin-backlog-") as d:
        server = EmbeddedNats.on_free_ports(Path(d) / "nats", mqtt=False)
        server.start()
        try:
            nc = await connect(server.url, name="backlog")
            js = nc.jetstream()
            await ensure_streams(js, SITE, StreamSettings())
            t0 = time.monotonic()
            batches = 0
            pending = []
            # Every gateway's batches of 0.5 s of event time, in time order across gateways (as
            # a site's gateways would have sent them while no worker ran).
            chunks = []
            for gw, ads in adverts.items():
                t = np.array([a.t for a in ads])
                edges = np.searchsorted(t, load.t_base + np.arange(0, seconds + 0.5, 0.5))
                chunks += [(float(t[lo]), gw, n, ads[lo:hi]) for n, (lo, hi) in enumerate(pairwise(edges)) if hi > lo]
            for _, gw, n, part in sorted(chunks, key=lambda c: (c[0], c[1])):
                body = encode_batch(Batch(gw=gw, seq=n, ep=1, sent=part[-1].t, ads=part), keys[gw])
                pending.append(publish_batch(js, raw_subject(SITE, gw), body))
                batches += 1
                if len(pending) >= 256:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)
            publish_s = time.monotonic() - t0
            status: dict[str, object] = {}

            async def on_status(msg: object) -> None:
                status.update(json.loads(msg.data))  # type: ignore[attr-defined]

            await nc.subscribe(out_subject(SITE, "status"), cb=on_status)
            keys_path = Path(d) / "keys.toml"
            keys_path.write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in keys.items()))
            settings = {"site": SITE, "status_every_s": 0.5, "max_ack_pending": max_ack_pending}
            worker = WorkerProcess([*worker_command(FAULT_SITE), "--nats", server.url, "--keys", str(keys_path),
                                    "--settings", json.dumps(settings)], Path(d) / "worker.log")
            worker.start()
            assert worker.proc is not None
            samples: list[tuple[float, float, int, int]] = []
            t_start = None
            try:
                while True:
                    await asyncio.sleep(0.5)
                    counters = status.get("counters", {})
                    done = accounted(counters) if isinstance(counters, dict) else 0
                    lag = status.get("lag", {})
                    pend = int(lag.get("pending", 0)) + int(lag.get("ack_pending", 0)) if isinstance(lag, dict) else -1
                    if done and t_start is None:
                        t_start = time.monotonic()
                    samples.append((time.monotonic(), rss_mb(worker.proc.pid), done, pend))
                    if done >= total:
                        break
                    if worker.proc.poll() is not None:
                        raise RuntimeError(f"worker exited: {(Path(d) / 'worker.log').read_text()[-800:]}")
                t_end = time.monotonic()
            finally:
                worker.stop()
            await nc.close()
        finally:
            server.stop()
    rss = [s[1] for s in samples if s[2] > 0]
    catchup_s = t_end - (t_start or t_end)
    counters = status.get("counters", {})
    return {
        "sightings": total,
        "dead_lettered": {k: v for k, v in counters.items() if k.startswith("dead_lettered")}
        if isinstance(counters, dict) else None,
        "batches": batches,
        "event_time_s": seconds,
        "publish_s": round(publish_s, 2),
        "catchup_s": round(catchup_s, 2),
        "worker_sightings_per_s": round(total / catchup_s) if catchup_s > 0 else None,
        "max_ack_pending": max_ack_pending,
        "worker_rss_mb": {"first": round(rss[0], 1), "peak": round(max(rss), 1), "last": round(rss[-1], 1)}
        if rss else None,
        "lag_batches": {"first": samples[0][3], "max": max(s[3] for s in samples), "last": samples[-1][3]},
        "samples": len(samples),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="event time of backlog at 1,000 sightings/s")
    ap.add_argument("--max-ack-pending", type=int, default=256)
    args = ap.parse_args()
    emit("backbone_backlog", asyncio.run(main(args.seconds, args.max_ack_pending)))
