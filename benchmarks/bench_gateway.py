"""Gateway throughput: decode, filter, batch, sign, spool and publish (QoS 1, acked by a
real mosquitto) as fast as advertisements can be handed to it. Prints JSON.

The advertisements are real frames: half encrypted MiBeacon (AES-CCM decrypt per
advert), a quarter iBeacon, a quarter Eddystone UID, from 500 devices; 5 % fail the
filter. Target: >= 5,000 advertisements per second forwarded.

    .venv/bin/python benchmarks/bench_gateway.py [--adverts 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _mosquitto import broker

from live_bridge.decoders import build_eddystone_uid, build_ibeacon, build_mibeacon
from live_bridge.gateway import Gateway, GatewayConfig

KEY = bytes(range(16))


def adverts(n_devices: int) -> list[tuple[str, dict[int, bytes], dict[str, bytes]]]:
    """One advertisement per device (frame counters advance per round when reused)."""
    out: list[tuple[str, dict[int, bytes], dict[str, bytes]]] = []
    for i in range(n_devices):
        mac = f"A4:C1:38:00:{i // 256:02X}:{i % 256:02X}"
        kind = i % 20
        if kind == 19:
            out.append((mac, {0x0006: b"\x01\x02"}, {}))  # not a site tag: filtered out
        elif kind < 10:
            out.append(
                (
                    mac,
                    {},
                    {"fe95": build_mibeacon(mac, i % 256, battery=80, bindkey=KEY, ext_counter=i)},
                )
            )
        elif kind < 15:
            out.append(
                (
                    mac,
                    {0x004C: build_ibeacon("e5ca1ade-f007-ba11-0000-000000000000", 1, i, -59)},
                    {},
                )
            )
        else:
            out.append((mac, {}, {"feaa": build_eddystone_uid(bytes(10), i.to_bytes(6, "big"))}))
    return out


async def run(url: str, n: int, spool: Path) -> dict[str, float]:
    devices = adverts(500)
    cfg = GatewayConfig.model_validate(
        {
            "id": "bench",
            "key_hex": "ab" * 32,
            "broker": url,
            "spool": {"path": str(spool)},
            "batch": {"max_age_s": 0.1, "max_size": 200},
            "mqtt": {"max_inflight": 50},
            "filter": {"service_uuids": ["fe95", "feaa"], "manufacturer_ids": [0x004C]},
            "bindkeys": {mac: KEY.hex() for mac, _, svc in devices if "fe95" in svc},
        }
    )
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    while not gw.connected:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    for k in range(n):
        mac, mfr, svc = devices[k % len(devices)]
        gw.on_advertisement(mac, -60 - k % 30, mfr, svc, t=1e9 + k * 1e-4)
        if k % 200 == 199:
            await asyncio.sleep(0)  # let acks and batching run, as the scanner callback would
    t_in = time.perf_counter() - t0
    while not gw.idle:
        await asyncio.sleep(0.002)
    t_all = time.perf_counter() - t0
    counters = gw.status_counters()
    stop.set()
    await task
    return {
        "adverts": n,
        "forwarded": counters["forwarded"],
        "filtered_out": counters.get("filtered_out", 0),
        "batches": counters["batches"],
        "published_acked": counters["published"],
        "handoff_s": round(t_in, 3),
        "total_s": round(t_all, 3),
        "adverts_per_s": round(n / t_all),
        "forwarded_per_s": round(counters["forwarded"] / t_all),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adverts", type=int, default=50_000)
    args = ap.parse_args()
    with broker() as url, tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(url, args.adverts, Path(tmp) / "spool.sqlite"))
    result["target_adverts_per_s"] = 5000
    result["meets_target"] = result["adverts_per_s"] >= 5000
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
