"""The twin as a set of gateways: its sightings published as signed batches on the
same topics a real gateway uses, in real time (simpy.rt) or as fast as possible."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import simpy
import simpy.rt

from engine.contract import UNKNOWN
from live_bridge.mqtt import BrokerUrl, make_client
from live_bridge.wire import Advert, Batch, batch_topic, encode_batch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from engine.contract import Sightings
    from twin.sim import TwinResult


def twin_batches(
    sightings: Sightings,
    *,
    gateway_ids: tuple[str, ...],
    device_ids: list[str],
    keys: dict[str, bytes],
    origin: float,
    t0: float,
    t1: float,
    seqs: Counter[str],
) -> Iterator[tuple[str, bytes]]:
    """(topic, signed body) per gateway for the sightings with t in [t0, t1)."""
    lo, hi = np.searchsorted(sightings["t"], [t0, t1], side="left")
    rows = sightings[lo:hi]
    for g in np.unique(rows["gateway"]):
        gw = gateway_ids[int(g)]
        if gw not in keys:
            continue
        mine = rows[rows["gateway"] == g]
        ads = [
            Advert(
                t=origin + float(r["t"]),
                dev=device_ids[int(r["device"])],
                rssi=round(float(r["rssi"]), 2),
                ch=int(r["channel"]),
                fmt="twin",
                bat=None if r["battery"] == UNKNOWN else int(r["battery"]),
                mot=None if r["motion"] == UNKNOWN else int(r["motion"]),
                seq=None if r["seq"] == UNKNOWN else int(r["seq"]),
            )
            for r in mine
        ]
        batch = Batch(gw=gw, seq=seqs[gw], sent=origin + t1, ads=ads)
        seqs[gw] += 1
        yield batch_topic(gw), encode_batch(batch, keys[gw])


def publish_twin(
    result: TwinResult,
    keys: dict[str, bytes],
    broker_url: str,
    *,
    realtime: bool = False,
    speed: float = 1.0,
    batch_s: float = 0.5,
    origin: float | None = None,
    max_inflight: int = 50,
) -> dict[str, float]:
    """Publish a finished twin run; returns counts and the origin used (Unix time of t=0)."""
    sightings = result.sightings[np.argsort(result.sightings["t"], kind="stable")]
    origin = time.time() if origin is None else origin
    broker = BrokerUrl.parse(broker_url)
    client = make_client(f"tagtwin-twin-{int(time.time() * 1000) % 10**9}", broker)
    client.max_inflight_messages_set(max_inflight)
    client.connect(broker.host, broker.port)
    client.loop_start()
    seqs: Counter[str] = Counter()
    sent = {"batches": 0, "sightings": 0}
    pending: list[object] = []
    env: simpy.Environment = (
        simpy.rt.RealtimeEnvironment(factor=1.0 / speed, strict=False)
        if realtime
        else simpy.Environment()
    )

    def run(env: simpy.Environment) -> simpy.events.ProcessGenerator:
        t = 0.0
        while t < result.scenario.duration_s:
            yield env.timeout(batch_s)
            for topic, body in twin_batches(
                sightings,
                gateway_ids=result.gateways.ids,
                device_ids=result.device_ids,
                keys=keys,
                origin=origin,
                t0=t,
                t1=t + batch_s,
                seqs=seqs,
            ):
                pending.append(client.publish(topic, body, qos=1))
                sent["batches"] += 1
                if len(pending) >= max_inflight:
                    pending.pop(0).wait_for_publish(10)  # type: ignore[attr-defined]
            t += batch_s
        sent["sightings"] = len(sightings)

    env.process(run(env))
    env.run()
    for info in pending:
        info.wait_for_publish(10)  # type: ignore[attr-defined]
    client.disconnect()
    client.loop_stop()
    return {"origin": origin, **sent}
