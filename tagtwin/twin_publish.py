"""The twin as a set of gateways: its sightings published as signed batches on the
same topics a real gateway uses, in real time (simpy.rt) or as fast as possible.

Tag groups with a ``frame`` kind other than ``twin`` go through real advertisements:
each sighting becomes the bytes its tag sends (MiBeacon, iBeacon, Eddystone, Find Hub)
and is decoded as a gateway decodes it (live_bridge.tag_frames)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import simpy
import simpy.rt

from engine.contract import UNKNOWN
from live_bridge.backbone import PUBLISH_ERRORS, connect, publish_batch, raw_subject
from live_bridge.mqtt import BrokerUrl, make_client
from live_bridge.tag_frames import TagFrames
from live_bridge.wire import Advert, Batch, advert_from, batch_topic, encode_batch
from twin.sim import tag_ids

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from engine.contract import Sightings
    from twin.scenario import Scenario
    from twin.sim import TwinResult


def tag_frames_for(scenario: Scenario, device_ids: list[str], *, resolve: bool = True) -> TagFrames:
    """The frame kind of every device of a twin run, from its scenario's tag groups."""
    kind_of = {d: g.frame for g in scenario.tags for d in tag_ids(g.name, g.count)}
    return TagFrames(device_ids, [kind_of.get(d, "twin") for d in device_ids], scenario.seed, resolve=resolve)


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
    frames: TagFrames | None = None,
    topic_of: Callable[[str], str] = batch_topic,
    epoch: int = 0,
) -> Iterator[tuple[str, bytes]]:
    """(topic, signed body) per gateway for the sightings with t in [t0, t1).

    With ``frames``, devices whose kind is not ``twin`` are sent as their decoded
    advertisement (fmt, battery, motion, counter and id as the decoders read them)."""
    lo, hi = np.searchsorted(sightings["t"], [t0, t1], side="left")
    rows = sightings[lo:hi]
    for g in np.unique(rows["gateway"]):
        gw = gateway_ids[int(g)]
        if gw not in keys:
            continue
        mine = rows[rows["gateway"] == g]
        ads = [_advert(r, device_ids, origin, frames) for r in mine]
        batch = Batch(gw=gw, seq=seqs[gw], ep=epoch, sent=origin + t1, ads=ads)
        seqs[gw] += 1
        yield topic_of(gw), encode_batch(batch, keys[gw])


log = logging.getLogger("tagtwin.twin_publish")


def _advert(r: np.void, device_ids: list[str], origin: float, frames: TagFrames | None) -> Advert:
    i = int(r["device"])
    t = origin + float(r["t"])
    bat = None if r["battery"] == UNKNOWN else int(r["battery"])
    mot = None if r["motion"] == UNKNOWN else int(r["motion"])
    seq = None if r["seq"] == UNKNOWN else int(r["seq"])
    rssi = round(float(r["rssi"]), 2)
    if frames is not None and frames.kinds[i] != "twin":
        heard = advert_from(frames.heard(i, t, bat, mot, seq), t=t, rssi=rssi)
        return heard.model_copy(update={"ch": int(r["channel"])})
    return Advert(t=t, dev=device_ids[i], rssi=rssi, ch=int(r["channel"]), fmt="twin", bat=bat, mot=mot, seq=seq)


def run_windows(
    result: TwinResult,
    keys: dict[str, bytes],
    origin: float,
    batch_s: float,
    *,
    topic_of: Callable[[str], str] = batch_topic,
    epoch: int = 0,
) -> Iterator[tuple[float, list[tuple[str, bytes]]]]:
    """A finished run as its gateways send it: (end of window, signed batches) for each
    ``batch_s`` window in turn. The publishers differ only in pacing and transport."""
    sightings = result.sightings[np.argsort(result.sightings["t"], kind="stable")]
    frames = tag_frames_for(result.scenario, result.device_ids)
    seqs: Counter[str] = Counter()
    t = 0.0
    while t < result.scenario.duration_s:
        yield t + batch_s, list(twin_batches(
            sightings, gateway_ids=result.gateways.ids, device_ids=result.device_ids, keys=keys,
            origin=origin, t0=t, t1=t + batch_s, seqs=seqs, frames=frames if frames.active else None,
            topic_of=topic_of, epoch=epoch,
        ))
        t += batch_s


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
    origin = time.time() if origin is None else origin
    broker = BrokerUrl.parse(broker_url)
    client = make_client(f"tagtwin-twin-{int(time.time() * 1000) % 10**9}", broker)
    client.max_inflight_messages_set(max_inflight)
    client.connect(broker.host, broker.port)
    client.loop_start()
    sent = {"batches": 0, "sightings": 0}
    pending: list[object] = []
    env: simpy.Environment = (
        simpy.rt.RealtimeEnvironment(factor=1.0 / speed, strict=False)
        if realtime
        else simpy.Environment()
    )

    def run(env: simpy.Environment) -> simpy.events.ProcessGenerator:
        for _, batches in run_windows(result, keys, origin, batch_s):
            yield env.timeout(batch_s)
            for topic, body in batches:
                pending.append(client.publish(topic, body, qos=1))
                sent["batches"] += 1
                if len(pending) >= max_inflight:
                    pending.pop(0).wait_for_publish(10)  # type: ignore[attr-defined]
        sent["sightings"] = len(result.sightings)

    env.process(run(env))
    env.run()
    for info in pending:
        info.wait_for_publish(10)  # type: ignore[attr-defined]
    client.disconnect()
    client.loop_stop()
    return {"origin": origin, **sent}


async def publish_until_stored(js: object, subject: str, body: bytes, counters: Counter[str]) -> None:
    """Publish one batch, retrying until the stream acks it: a backbone restart is a pause.
    Re-sends are harmless (the stream's message id and the worker's dedup drop repeats)."""
    delay = 0.1
    while True:
        try:
            await publish_batch(js, subject, body)  # type: ignore[arg-type]
            counters["stored"] += 1
            return
        except PUBLISH_ERRORS as exc:
            counters[f"retried: {type(exc).__name__}"] += 1
            log.info("batch on %s not stored yet (%s); retrying", subject, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)


async def publish_twin_nats(
    result: TwinResult,
    keys: dict[str, bytes],
    nats_url: str,
    *,
    site: str = "default",
    creds: str | None = None,
    realtime: bool = False,
    speed: float = 1.0,
    batch_s: float = 0.5,
    origin: float | None = None,
    max_inflight: int = 64,
) -> dict[str, float]:
    """Publish a finished twin run on the backbone, each batch retried until stored."""
    origin = time.time() if origin is None else origin
    nc = await connect(nats_url, name="tagtwin-twin-publish", creds=creds)
    js = nc.jetstream()
    counters: Counter[str] = Counter()
    inflight: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    try:
        windows = run_windows(result, keys, origin, batch_s, topic_of=lambda gw: raw_subject(site, gw),
                              epoch=int(origin * 1000))
        for t_end, batches in windows:
            if realtime:
                await asyncio.sleep(max(0.0, start + t_end / speed - time.monotonic()))
            for subject, body in batches:
                counters["batches"] += 1
                task = asyncio.create_task(publish_until_stored(js, subject, body, counters))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if len(inflight) >= max_inflight:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        if inflight:
            await asyncio.gather(*inflight)
    finally:
        await nc.close()
    return {"origin": origin, "sightings": float(len(result.sightings)), **{k: float(v) for k, v in counters.items()}}
