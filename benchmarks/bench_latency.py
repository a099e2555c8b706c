"""Advertisement-to-position latency through mosquitto, at half the measured maximum load.

Processes: mosquitto, ``tagtwin serve`` (demo site, 10 gateways, wall clock, engine step
0.1 s, allowed lateness 0.05 s), and this script as ten gateways plus a subscriber.

1. Maximum load, in real time: offered rates double from 250 sightings/s (every
   advertisement heard by all ten gateways) for a few seconds each; a rate is
   sustained when every advertisement gets a position and latency does not grow
   from the first half of the run to the second (a backlog grows linearly). The
   highest sustained rate is the maximum load. (A flood of pre-signed batches is
   also timed: it closes windows sixteen at a time, so it overstates what real time
   allows, and is reported for reference only.)
2. Latency at half of the maximum: gateways batch every 20 ms in real time, advertisements
   stamped when "heard". An advertisement's latency is from that stamp until the first
   position of its device whose window contains it arrives at the subscriber: gateway
   batching, MQTT both ways, verification, the engine's window wait and its work.

    .venv/bin/python benchmarks/bench_latency.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _mosquitto import broker

from live_bridge.mqtt import BrokerUrl, make_client
from live_bridge.wire import POSITIONS_TOPIC, SERVER_STATUS_TOPIC, batch_topic, encode_payload

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "demo.toml"
N_TAGS = 200
BATCH_EVERY_S = 0.02


class Site:
    """Tags at fixed random spots; RSSI = log-distance (n = 2) + 4 dB Gaussian shadowing."""

    def __init__(self, seed: int = 1) -> None:
        from tagtwin.live import site_engine_config
        from twin.scenario import load_scenario

        cfg = site_engine_config(load_scenario(SCENARIO))
        self.gw_ids = cfg.gateways.ids
        self.gw_xyz = cfg.gateways.xyz
        self.rng = np.random.default_rng(seed)
        minx, miny, maxx, maxy = cfg.bounds
        self.tag_xy = np.column_stack(
            [self.rng.uniform(minx, maxx, N_TAGS), self.rng.uniform(miny, maxy, N_TAGS)]
        )
        d = np.sqrt(
            ((self.tag_xy[:, None, :] - self.gw_xyz[None, :, :2]) ** 2).sum(-1)
            + (self.gw_xyz[None, :, 2] - 1) ** 2
        )
        self.mean_rssi = -59.0 - 20.0 * np.log10(d)
        self.keys = {g: bytes([i + 1]) * 32 for i, g in enumerate(self.gw_ids)}
        self.seq = dict.fromkeys(self.gw_ids, 0)
        self.frame = np.zeros(N_TAGS, np.int64)

    def batches(self, tags: np.ndarray, t: np.ndarray, sent: float) -> list[tuple[str, bytes]]:
        """One signed batch per gateway holding every advert in ``tags`` (heard by all)."""
        rssi = self.mean_rssi[tags] + self.rng.normal(0, 4.0, (len(tags), len(self.gw_ids)))
        frames = self.frame[tags]
        self.frame[tags] += 1
        out = []
        for g, gw in enumerate(self.gw_ids):
            ads = ",".join(
                f'{{"t":{ti:.6f},"dev":"tag-{k:04d}","rssi":{r:.1f},"seq":{f}}}'
                for ti, k, r, f in zip(t, tags, rssi[:, g], frames, strict=True)
            )
            head = f'{{"v":1,"gw":"{gw}","seq":{self.seq[gw]},"sent":{sent:.6f}'
            payload = f'{head},"ads":[{ads}]}}'.encode()
            self.seq[gw] += 1
            out.append((batch_topic(gw), encode_payload(payload, self.keys[gw])))
        return out


class Listener:
    def __init__(self, url: str) -> None:
        b = BrokerUrl.parse(url)
        self.client = make_client(f"bench-sub-{os.getpid()}", b)
        self.positions: list[tuple[float, bytes]] = []
        self.sightings = 0
        self.first_full: float | None = None
        self.target = -1
        self.ready = threading.Event()
        self.status_seen = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(b.host, b.port)
        self.client.loop_start()
        self.ready.wait(10)

    def _on_connect(self, c: object, *_: object) -> None:
        c.subscribe([(POSITIONS_TOPIC, 0), (SERVER_STATUS_TOPIC, 0)])  # type: ignore[attr-defined]

    def _on_subscribe(self, *_: object) -> None:
        self.ready.set()

    def _on_message(self, _c: object, _u: object, msg: object) -> None:
        now = time.time()
        if msg.topic == POSITIONS_TOPIC:  # type: ignore[attr-defined]
            self.positions.append((now, msg.payload))  # type: ignore[attr-defined]
        else:
            status = json.loads(msg.payload)  # type: ignore[attr-defined]
            self.status_seen.set()
            self.sightings = status.get("counters", {}).get("sightings", 0)
            if self.first_full is None and self.target > 0 and self.sightings >= self.target:
                self.first_full = now


def publisher(url: str) -> object:
    b = BrokerUrl.parse(url)
    client = make_client(f"bench-pub-{os.getpid()}", b)
    client.max_inflight_messages_set(1000)
    client.connect(b.host, b.port)
    client.loop_start()
    return client


def start_server(
    url: str, keys: dict[str, bytes], tmp: Path, step: float, lateness: float
) -> subprocess.Popen[bytes]:
    keys_file = tmp / "keys.toml"
    keys_file.write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in keys.items()))
    keys_file.chmod(0o600)  # serve refuses keys other users can read
    tagtwin = str(Path(sys.executable).parent / "tagtwin")
    return subprocess.Popen(
        [
            tagtwin,
            "serve",
            "--broker",
            url,
            "--scenario",
            str(SCENARIO),
            "--keys",
            str(keys_file),
            "--step",
            str(step),
            "--lateness",
            str(lateness),
            "--events",
            "none",
            "--status-every",
            "0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def max_load(site: Site, url: str, listener: Listener, adverts: int) -> dict[str, float]:
    """Flood pre-signed batches (4 s of event time) and time the server's ingest."""
    tags = site.rng.integers(0, N_TAGS, adverts)
    now = time.time()
    t = now + np.sort(site.rng.uniform(0, 4.0, adverts))
    bodies = []
    for lo in range(0, adverts, 40):
        bodies += site.batches(tags[lo : lo + 40], t[lo : lo + 40], now)
    client = publisher(url)
    listener.target = listener.sightings + adverts * len(site.gw_ids)
    t0 = time.time()
    infos = [client.publish(topic, body, qos=1) for topic, body in bodies]  # type: ignore[attr-defined]
    for info in infos:
        info.wait_for_publish(30)
    t_pub = time.time() - t0
    deadline = time.time() + 60
    while listener.first_full is None and time.time() < deadline:
        time.sleep(0.01)
    client.disconnect()  # type: ignore[attr-defined]
    elapsed = (listener.first_full or time.time()) - t0
    n = adverts * len(site.gw_ids)
    return {
        "sightings": n,
        "publish_s": round(t_pub, 3),
        "ingest_s": round(elapsed, 3),
        "max_sightings_per_s": round(n / elapsed),
    }


def latency(
    site: Site, url: str, listener: Listener, rate: float, *, seconds: float, step: float
) -> dict[str, float]:
    """Offer ``rate`` sightings/s in real time; latency per advert to its first position."""
    client = publisher(url)
    adverts_per_s = rate / len(site.gw_ids)
    listener.positions.clear()
    sent_dev: list[np.ndarray] = []
    sent_t: list[np.ndarray] = []
    t_start = time.time() + 0.5
    next_t = t_start
    carry = 0.0
    while next_t < t_start + seconds:
        time.sleep(max(0.0, next_t - time.time()))
        now = time.time()
        carry += adverts_per_s * BATCH_EVERY_S
        k = int(carry)
        carry -= k
        if k:
            tags = site.rng.integers(0, N_TAGS, k)
            t = np.sort(now - site.rng.uniform(0, BATCH_EVERY_S, k))  # heard during the last 20 ms
            for topic, body in site.batches(tags, t, now):
                client.publish(topic, body, qos=1)  # type: ignore[attr-defined]
            sent_dev.append(tags)
            sent_t.append(t)
        next_t += BATCH_EVERY_S
    time.sleep(1.0)
    client.disconnect()  # type: ignore[attr-defined]
    dev = np.concatenate(sent_dev)
    t_ad = np.concatenate(sent_t)
    # Position arrivals per device, by window end.
    per: dict[int, list[tuple[float, float]]] = {}
    for arrival, body in listener.positions:
        for p in json.loads(body)["positions"]:
            per.setdefault(int(p["dev"][4:]), []).append((p["t"], arrival))
    lat = np.full(len(dev), np.nan)
    for d, rows in per.items():
        rows.sort()
        ends = np.array([r[0] for r in rows])
        arrivals = np.array([r[1] for r in rows])
        sel = np.flatnonzero(dev == d)
        idx = np.searchsorted(ends, t_ad[sel], side="right")  # first window ending after the advert
        ok = idx < len(ends)
        lat[sel[ok]] = arrivals[idx[ok]] - t_ad[sel[ok]]
    steady = (t_ad < t_start + seconds - 0.5) & (t_ad > t_start + 1.0)
    measured = lat[steady]
    got = measured[np.isfinite(measured)]
    mid = t_start + 1.0 + (seconds - 1.5) / 2
    first, second = lat[steady & (t_ad < mid)], lat[steady & (t_ad >= mid)]
    if len(got) == 0:
        return {
            "offered_sightings_per_s": round(rate),
            "adverts_measured": len(measured),
            "sustained": False,
        }
    out = {
        "offered_sightings_per_s": round(rate),
        "adverts_per_s": round(adverts_per_s),
        "seconds": seconds,
        "adverts_measured": len(measured),
        "adverts_without_position": int(np.isnan(measured).sum()),
        "p50_ms": round(float(np.percentile(got, 50)) * 1000, 1),
        "p90_ms": round(float(np.percentile(got, 90)) * 1000, 1),
        "p99_ms": round(float(np.percentile(got, 99)) * 1000, 1),
        "max_ms": round(float(got.max()) * 1000, 1),
    }
    growth = (
        float(np.nanpercentile(second, 90) - np.nanpercentile(first, 90))
        if len(first) and len(second)
        else 0
    )
    out["p90_growth_ms"] = round(growth * 1000, 1)
    # A backlog grows by seconds over a run; window discretisation moves p90 by up to a step.
    out["sustained"] = bool(
        out["adverts_without_position"] == 0
        and growth < max(0.1, step)
        and out["p99_ms"] < 2000 + 1000 * step
    )
    return out


def engine_step_cost(site: Site, rate: float, step: float, lateness: float) -> dict[str, float]:
    """In-process, no MQTT: the engine's time per window step at ``rate`` sightings/s,
    the floor under the latency (same site, tags and RSSI model as the MQTT runs)."""
    from engine.contract import sightings_from_columns
    from engine.pipeline import Engine
    from tagtwin.live import site_engine_config
    from twin.scenario import load_scenario

    engine = Engine(site_engine_config(load_scenario(SCENARIO), step_s=step, lateness_s=lateness))
    n_gw = len(site.gw_ids)
    costs = []
    t = 0.0
    for k in range(int(8.0 / step)):  # 8 s: the 4 s window fills, then 4 s are measured
        n = max(1, round(rate / n_gw * step))
        tags = site.rng.integers(0, N_TAGS, n)
        rssi = site.mean_rssi[tags] + site.rng.normal(0, 4.0, (n, n_gw))
        engine.ingest(
            sightings_from_columns(
                t=np.repeat(t + np.sort(site.rng.uniform(0, step, n)), n_gw),
                gateway=np.tile(np.arange(n_gw), n),
                device=np.repeat(tags, n_gw),
                rssi=rssi.ravel().astype(np.float32),
                seq=np.repeat(np.arange(n) + k * n, n_gw),
                channel=0,
            )
        )
        t += step
        t0 = time.perf_counter()
        engine.advance(t)
        if t > 4.0:
            costs.append(time.perf_counter() - t0)
    c = np.array(costs) * 1000
    return {
        "sightings_per_s": round(rate),
        "mean_ms": round(float(c.mean()), 1),
        "p99_ms": round(float(np.percentile(c, 99)), 1),
        "cpu_share_at_this_rate": round(float(c.sum()) / 1000 / (len(c) * step), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--step", type=float, default=0.1, help="engine step_s")
    ap.add_argument("--lateness", type=float, default=0.05, help="engine allowed_lateness_s")
    ap.add_argument("--flood-adverts", type=int, default=4000)
    ap.add_argument("--ramp-seconds", type=float, default=6.0)
    ap.add_argument(
        "--max-rate", type=float, default=None,
        help="stop the ramp here even if it still sustains (default: no cap, it runs until it fails)",
    )
    args = ap.parse_args()
    site = Site()
    with broker() as url, tempfile.TemporaryDirectory() as tmp:
        server = start_server(url, site.keys, Path(tmp), args.step, args.lateness)
        try:
            listener = Listener(url)
            if not listener.status_seen.wait(60):  # the server's first status: it is subscribed
                raise SystemExit("tagtwin serve did not come up")
            ramp = []
            rate = 250.0
            while args.max_rate is None or rate <= args.max_rate:
                level = latency(
                    site, url, listener, rate, seconds=args.ramp_seconds, step=args.step
                )
                ramp.append(level)
                time.sleep(1.5)  # let any backlog drain before the next level
                if not level["sustained"]:
                    break
                rate *= 2
            sustained = [lv["offered_sightings_per_s"] for lv in ramp if lv["sustained"]]
            best = float(max(sustained)) if sustained else 0.0
            lat = (
                latency(site, url, listener, best / 2, seconds=args.seconds, step=args.step)
                if best
                else {}
            )
            time.sleep(1.0)
            flood = max_load(site, url, listener, args.flood_adverts)  # last: it leaves a backlog
        finally:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(20)
    step_cost = engine_step_cost(site, best / 2 if best else 250.0, args.step, args.lateness)
    print(
        json.dumps(
            {
                "engine": {
                    "step_s": args.step,
                    "allowed_lateness_s": args.lateness,
                    "window_s": 4.0,
                    "gateways": len(site.gw_ids),
                    "tags": N_TAGS,
                    "gateway_batch_s": BATCH_EVERY_S,
                },
                "flood_reference": flood,
                "ramp": [
                    {
                        k: lv.get(k)
                        for k in (
                            "offered_sightings_per_s",
                            "p50_ms",
                            "p99_ms",
                            "p90_growth_ms",
                            "sustained",
                        )
                    }
                    for lv in ramp
                ],
                "max_sustained_sightings_per_s": best,
                # a maximum is a measurement only if the ramp went on until a level failed
                "limit_found": bool(ramp) and not ramp[-1]["sustained"],
                "at_half_max_load": lat,
                "engine_step_cost_at_half_max": step_cost,
                "p99_under_250_ms": bool(lat) and lat["p99_ms"] < 250,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
