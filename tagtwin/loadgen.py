"""Load generation for ``tagtwin loadtest``: the twin's traffic, scaled, from publisher processes.

The twin runs once per site for a loop of ``loop_s`` seconds (its own seed per site), and
its sightings are replayed in real time, loop after loop, with event times on the wall
clock. A rate is reached by *copies of tags*, never by compressing time: scale 2.5 means
every tag twice plus half of the tags a third time (copy ``k`` of ``pallet-00001`` is
``pallet-00001~k``), each with the radio traffic the twin made for it, so windows, tags per
window and sightings per tag stay what the site would see. Each copy and loop gets its
own advert sequence numbers, so the engine's redelivery check never merges two copies.

Publishers are separate processes (``spawn``), each owning a share of the (site, gateway)
pairs. Every ``batch_s`` of wall time each sends one signed batch per gateway it owns (the
gateway's adverts of that interval), as a real gateway does, and reports what it
generated, what the broker acknowledged and how far behind its schedule it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.contract import copy_id
from live_bridge.wire import encode_payload
from live_bridge.wire_columns import encode_columns

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as MpEvent

    from numpy.typing import NDArray

SEQ_MASK = 0x7FFFFFFF
MAX_ADS_PER_BATCH = 4000  # ~350 kB of JSON: well under the stream's 1 MiB message limit
UNKNOWN_CODE = -1


@dataclass
class SiteTraffic:
    """One site's loop of twin sightings (columns, loop time in [0, loop_s)) and its ids."""

    site: str
    loop_s: float
    t: NDArray[np.float64]
    gateway: NDArray[np.int32]
    device: NDArray[np.int32]
    rssi: NDArray[np.float32]
    channel: NDArray[np.uint8]
    battery: NDArray[np.int8]
    motion: NDArray[np.int8]
    seq: NDArray[np.int32]
    gateway_ids: tuple[str, ...]
    device_ids: list[str]
    keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def natural_rate(self) -> float:
        """Sightings per second of the site as the twin made it (scale 1)."""
        return len(self.t) / self.loop_s

    def per_device_rate(self) -> NDArray[np.float64]:
        return np.bincount(self.device, minlength=len(self.device_ids)) / self.loop_s

    def offered_at(self, scale: float) -> float:
        """Sightings per second at ``scale`` (whole copies plus a share of the devices)."""
        whole, part = divmod(scale, 1.0)
        per_dev = self.per_device_rate()
        return float(whole * per_dev.sum() + per_dev[: round(part * len(per_dev))].sum())

    def select(self, gateways: list[int]) -> SiteTraffic:
        """Only the rows of these gateway codes (what one publisher sends)."""
        keep = np.isin(self.gateway, np.asarray(gateways, np.int32))
        cols = {k: getattr(self, k)[keep] for k in ("t", "gateway", "device", "rssi", "channel", "battery", "motion",
                                                    "seq")}
        return SiteTraffic(self.site, self.loop_s, **cols, gateway_ids=self.gateway_ids,
                           device_ids=self.device_ids, keys={self.gateway_ids[g]: self.keys[self.gateway_ids[g]]
                                                             for g in gateways})


def encode_gateway_batch(gw: str, batch_seq: int, epoch: int, sent: float, t: NDArray[np.float64],
                         devices: list[str], rssi: NDArray[np.float32], channel: NDArray[np.uint8],
                         battery: NDArray[np.int8], motion: NDArray[np.int8], seq: NDArray[np.int64],
                         key: bytes) -> bytes:
    """A signed wire batch (docs/wire-format.md) built as text: the pydantic models cost
    ~10 us per advert, this ~1.5 us; tests check the worker's verifier accepts it."""
    parts = []
    for ti, d, r, c, b, m, q in zip(t.tolist(), devices, rssi.tolist(), channel.tolist(), battery.tolist(),
                                    motion.tolist(), seq.tolist(), strict=True):
        s = f'{{"t":{ti:.4f},"dev":"{d}","rssi":{r:.2f},"ch":{c},"fmt":"twin"'
        if b >= 0:
            s += f',"bat":{b}'
        if m >= 0:
            s += f',"mot":{m}'
        if q >= 0:
            s += f',"seq":{q}'
        parts.append(s + "}")
    payload = (f'{{"v":1,"gw":"{gw}","seq":{batch_seq},"ep":{epoch},"sent":{sent:.4f},"ads":['
               + ",".join(parts) + "]}")
    return encode_payload(payload.encode(), key)


@dataclass(frozen=True)
class Schedule:
    """Scale of the natural rate over run time: constant for ``duration_s``, or a ramp that
    multiplies by ``factor`` every ``step_s`` and never ends by itself (the controller stops
    it when the SLOs fail)."""

    base_scale: float
    duration_s: float | None = None  # None: ramp until stopped
    factor: float = 1.0
    step_s: float = 10.0

    def scale_at(self, t: float) -> float | None:
        if self.duration_s is not None:
            return self.base_scale if t < self.duration_s else None
        return self.base_scale * self.factor ** math.floor(t / self.step_s)

    def copies(self) -> int | None:
        """How many copies of each device the run sends at most (None: a ramp, unbounded)."""
        return max(1, math.ceil(self.base_scale - 1e-9)) if self.duration_s is not None else None

    def step_of(self, t: float) -> int:
        return 0 if self.duration_s is not None else math.floor(t / self.step_s)


@dataclass
class PublisherSpec:
    index: int
    url: str
    mode: str  # "nats" or "mqtt"
    traffic: list[SiteTraffic]  # each already reduced to this publisher's gateways
    schedule: Schedule
    t0: float  # wall clock of run time 0 (the event time of loop time 0)
    batch_s: float
    epoch: int = 1
    wire: int = 1  # 1: an object per advert; 2: columns (live_bridge/wire_columns.py)


class TickBuilder:
    """The batches of one run-time interval for one publisher: copies, loops, sequence numbers."""

    def __init__(self, spec: PublisherSpec) -> None:
        self.spec = spec
        self.batch_seq: dict[tuple[str, str], int] = {}
        self.names: dict[tuple[int, int], list[str]] = {}
        self.seq_span = [int(tr.seq.max()) + 1 if len(tr.seq) else 1 for tr in spec.traffic]

    def _names(self, site_index: int, copy: int) -> list[str]:
        key = (site_index, copy)
        if key not in self.names:
            self.names[key] = [copy_id(d, copy) for d in self.spec.traffic[site_index].device_ids]
        return self.names[key]

    def build(self, a: float, b: float, scale: float) -> list[tuple[str, str, bytes, int]]:
        """(site, gateway, body, sightings) for run time [a, b)."""
        from live_bridge.backbone import raw_subject

        out = []
        sent = self.spec.t0 + b
        for si, tr in enumerate(self.spec.traffic):
            n_dev = len(tr.device_ids)
            copies = math.ceil(scale - 1e-9)
            rows_t, rows_i, rows_copy, rows_loop = [], [], [], []
            lo_cycle, hi_cycle = math.floor(a / tr.loop_s), math.floor((b - 1e-12) / tr.loop_s)
            for cycle in range(lo_cycle, hi_cycle + 1):
                base = cycle * tr.loop_s
                lo, hi = np.searchsorted(tr.t, [a - base, b - base], side="left")
                if hi <= lo:
                    continue
                idx = np.arange(lo, hi)
                for k in range(copies):
                    limit = n_dev if k + 1 <= scale else round((scale - k) * n_dev)
                    sel = idx[tr.device[idx] < limit]
                    if len(sel) == 0:
                        continue
                    rows_i.append(sel)
                    rows_t.append(tr.t[sel] + base)
                    rows_copy.append(np.full(len(sel), k, np.int64))
                    rows_loop.append(np.full(len(sel), cycle, np.int64))
            if not rows_i:
                continue
            i = np.concatenate(rows_i)
            t = np.concatenate(rows_t) + self.spec.t0
            copy = np.concatenate(rows_copy)
            loop = np.concatenate(rows_loop)
            gw_codes = tr.gateway[i]
            order = np.lexsort((t, gw_codes))
            i, t, copy, loop, gw_codes = i[order], t[order], copy[order], loop[order], gw_codes[order]
            raw_seq = tr.seq[i].astype(np.int64)
            seq = np.where(raw_seq >= 0, (raw_seq + (loop * 64 + copy) * self.seq_span[si]) & SEQ_MASK, -1)
            bounds = np.flatnonzero(np.diff(gw_codes)) + 1
            for lo_r, hi_r in zip(np.r_[0, bounds], np.r_[bounds, len(i)], strict=True):
                gw = tr.gateway_ids[int(gw_codes[lo_r])]
                for start in range(int(lo_r), int(hi_r), MAX_ADS_PER_BATCH):
                    stop = min(int(hi_r), start + MAX_ADS_PER_BATCH)
                    rs = slice(start, stop)
                    names_by_copy = {int(k): self._names(si, int(k)) for k in np.unique(copy[rs])}
                    devs = [names_by_copy[int(k)][int(d)] for k, d in zip(copy[rs], tr.device[i[rs]], strict=True)]
                    n = self.batch_seq.get((tr.site, gw), 0)
                    self.batch_seq[(tr.site, gw)] = n + 1
                    encode = encode_columns if self.spec.wire == 2 else encode_gateway_batch
                    body = encode(gw, n, self.spec.epoch, sent, t[rs], devs, tr.rssi[i[rs]], tr.channel[i[rs]],
                                  tr.battery[i[rs]], tr.motion[i[rs]], seq[rs], tr.keys[gw])
                    out.append((raw_subject(tr.site, gw), gw, body, stop - start))
        return out


@dataclass
class TickReport:
    """What one publisher tells the controller after each tick."""

    index: int
    generated: int  # sightings it was due to send so far
    published: int  # sightings the broker acknowledged so far
    behind_s: float  # wall time past the tick's end when its batches were handed over
    errors: int
    ack_ms: list[float] = field(default_factory=list)  # a sample of publish-ack latencies
    done: bool = False


def publisher_main(spec: PublisherSpec, reports: mp.Queue[TickReport], stop: MpEvent) -> None:
    """Process entry: publish ticks until the schedule ends or ``stop``; nothing here raises out."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        if spec.mode == "mqtt":
            _mqtt_loop(spec, reports, stop)
        else:
            asyncio.run(_nats_loop(spec, reports, stop))
    except KeyboardInterrupt:
        pass


async def _nats_loop(spec: PublisherSpec, reports: mp.Queue[TickReport], stop: MpEvent) -> None:
    from live_bridge.backbone import PUBLISH_ERRORS, connect, message_id

    nc = await connect(spec.url, name=f"tagtwin-loadtest-pub-{spec.index}")
    js = nc.jetstream()
    builder = TickBuilder(spec)
    generated = published = errors = 0
    retry: list[tuple[str, str, bytes, int]] = []
    k = 0

    async def send(item: tuple[str, str, bytes, int]) -> float:
        t = time.monotonic()
        await js.publish(item[0], item[2], timeout=5.0, headers={"Nats-Msg-Id": message_id(item[2])})
        return (time.monotonic() - t) * 1000

    ended = False
    while not ended or retry:
        a, b = k * spec.batch_s, (k + 1) * spec.batch_s
        delay = spec.t0 + b - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        scale = None if (ended or stop.is_set()) else spec.schedule.scale_at(a)
        items = []
        if scale is None:
            ended = True
            if time.time() - spec.t0 - b > 60:  # a minute of retrying after the end: give up, count as lost
                break
        else:
            items = builder.build(a, b, scale)
            generated += sum(x[3] for x in items)
        behind = time.time() - (spec.t0 + b)
        todo = retry + items
        results = await asyncio.gather(*(send(x) for x in todo), return_exceptions=True)
        retry = []
        acks = []
        for x, res in zip(todo, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, PUBLISH_ERRORS):
                    raise res
                errors += 1
                retry.append(x)
            else:
                published += x[3]
                acks.append(res)
        if retry:
            await asyncio.sleep(0.2)
        reports.put(TickReport(spec.index, generated, published, behind, errors, acks[:50]))
        k += 1
    reports.put(TickReport(spec.index, generated, published, 0.0, errors, [], done=True))
    with contextlib.suppress(Exception):
        await nc.close()


def _mqtt_loop(spec: PublisherSpec, reports: mp.Queue[TickReport], stop: MpEvent) -> None:
    """QoS 1 to a user's broker: only broker-side figures (PUBACK latency, acked rate)."""
    import threading

    import paho.mqtt.client as paho

    from live_bridge.backbone import mqtt_topic
    from live_bridge.mqtt import BrokerUrl, make_client

    client = make_client(f"tagtwin-loadtest-{spec.index}-{int(spec.t0)}", BrokerUrl.parse(spec.url))
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    lock = threading.Lock()
    sent_at: dict[int, tuple[float, int]] = {}
    acked: list[float] = []
    state = {"published": 0}

    early: dict[int, float] = {}  # PUBACKs that beat the bookkeeping of their publish

    def on_publish(_c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # paho calls this holding its own message lock: only our lock here, never a paho call
        with lock:
            got = sent_at.pop(mid, None)
            if got is None:
                early[mid] = time.monotonic()
            else:
                state["published"] += got[1]
                acked.append((time.monotonic() - got[0]) * 1000)

    client.on_publish = on_publish
    url = BrokerUrl.parse(spec.url)
    client.connect(url.host, url.port)
    client.loop_start()
    builder = TickBuilder(spec)
    generated = errors = k = 0
    try:
        while not stop.is_set():
            a, b = k * spec.batch_s, (k + 1) * spec.batch_s
            delay = spec.t0 + b - time.time()
            if delay > 0:
                time.sleep(delay)
            scale = spec.schedule.scale_at(a)
            if scale is None:
                break
            items = builder.build(a, b, scale)
            generated += sum(x[3] for x in items)
            behind = time.time() - (spec.t0 + b)
            for subject, _gw, body, n in items:
                t_send = time.monotonic()
                info = client.publish(mqtt_topic(subject), body, qos=1)  # not under our lock: see on_publish
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    errors += 1
                    continue
                with lock:
                    t_ack = early.pop(info.mid, None)
                    if t_ack is None:
                        sent_at[info.mid] = (t_send, n)
                    else:
                        state["published"] += n
                        acked.append((t_ack - t_send) * 1000)
            with lock:
                acks = acked[:50]
                acked.clear()
                published = state["published"]
            reports.put(TickReport(spec.index, generated, published, behind, errors, acks))
            k += 1
        deadline = time.monotonic() + 30
        while sent_at and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        with lock:
            published = state["published"]
        reports.put(TickReport(spec.index, generated, published, 0.0, errors, [], done=True))
        client.loop_stop()
        client.disconnect()


def drain_reports(reports: mp.Queue[TickReport]) -> list[TickReport]:
    out = []
    while True:
        try:
            out.append(reports.get_nowait())
        except queue.Empty:
            return out


def stored_batches(traffic: SiteTraffic, seconds: float, t0: float, batch_s: float = 0.5
                   ) -> list[tuple[str, str, bytes, int, float]]:
    """``seconds`` of one site's traffic as the batches its gateways would have stored, in
    time order: (subject, gateway, body, sightings, receive time), event time 0 at ``t0``
    (pre-filled streams in tests and benchmarks)."""
    b = TickBuilder(PublisherSpec(0, "", "nats", [traffic], Schedule(1.0, seconds), t0, batch_s))
    out = []
    for k in range(int(seconds / batch_s)):
        for subject, gw, body, n in b.build(k * batch_s, (k + 1) * batch_s, 1.0):
            out.append((subject, gw, body, n, t0 + (k + 1) * batch_s))
    return out
