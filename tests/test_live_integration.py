"""The live bridge with real parts: mosquitto, bleak's BlueZ backend on an emulated BlueZ
(python-dbusmock bluez5 on a private system bus), gateway and server processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from live_bridge.decoders import (
    EDDYSTONE_UUID,
    MIBEACON_UUID,
    build_eddystone_tlm,
    build_eddystone_uid,
    build_ibeacon,
    build_mibeacon,
)
from live_bridge.gateway import BleakSource, Gateway, GatewayConfig
from live_bridge.server import ServerCore, serve
from live_bridge.wire import (
    POSITIONS_TOPIC,
    TOPIC_ROOT,
    Advert,
    Batch,
    batch_topic,
    encode_batch,
    split_envelope,
    status_topic,
)
from tagtwin.live import site_engine_config
from tests import live_fixtures
from tests.live_fixtures import Collector
from twin.scenario import parse_scenario

pytestmark = pytest.mark.integration
mosquitto = live_fixtures.mosquitto  # fixtures: a broker, an emulated BlueZ
persistent_mosquitto = live_fixtures.persistent_mosquitto
fake_bluez = live_fixtures.fake_bluez

ROOM = """
name = "live-room"
duration_s = 30
seed = 7
[site]
outline = [[0, 0], [12, 0], [12, 12], [0, 12]]
[[zones]]
name = "west"
polygon = [[0, 0], [6, 0], [6, 12], [0, 12]]
[[zones]]
name = "east"
polygon = [[6, 0], [12, 0], [12, 12], [6, 12]]
[gateways.defaults]
z_m = 1.0
[[gateways.list]]
id = "gw-0"
x = 0
y = 0
[[gateways.list]]
id = "gw-1"
x = 12
y = 0
[[gateways.list]]
id = "gw-2"
x = 12
y = 12
[[gateways.list]]
id = "gw-3"
x = 0
y = 12
[[tags]]
name = "tag"
count = 20
[[movers]]
name = "picker"
route = ["west", "east"]
dwell_s = 2
"""
GW_XY = np.array([[0, 0], [12, 0], [12, 12], [0, 12]], float)
ADAPTERS = ["hci0", "hci1", "hci2", "hci3"]
KEYS = {f"gw-{i}": bytes([i + 1]) * 32 for i in range(4)}
BINDKEY = bytes.fromhex("a115210eed7a88e50ad52662e732a9fb")


def rssi(xy: tuple[float, float], g: int, tx: float = -59.0) -> int:
    """Log-distance mean RSSI at n = 2 (docs/references.md section 1), as BlueZ's int16."""
    return round(tx - 20 * np.log10(max(float(np.hypot(*(GW_XY[g] - xy))), 0.1)))


def gateway_config(i: int, tmp: Path, broker: str, **extra: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "id": f"gw-{i}",
            "key_hex": KEYS[f"gw-{i}"].hex(),
            "broker": broker,
            "scan": {"adapter": ADAPTERS[i], "backoff_min_s": 0.2, "backoff_max_s": 1.0},
            "batch": {"max_age_s": 0.2},
            "mqtt": {"heartbeat_s": 1.0},
            "spool": {"path": str(tmp / f"spool-{i}.sqlite")},
            "filter": {"service_uuids": ["fe95", "feaa"], "manufacturer_ids": [0x004C]},
            "bindkeys": {"A4:C1:38:56:53:84": BINDKEY.hex()},
            **extra,
        }
    )


def start_server(broker: str, **kw: object) -> tuple[ServerCore, threading.Event, threading.Thread]:
    cfg = site_engine_config(parse_scenario(ROOM), **kw)  # type: ignore[arg-type]
    core = ServerCore(cfg, KEYS, clock="wall")
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(
        target=serve, args=(core, broker, stop), kwargs={"ready": ready}, daemon=True
    )
    th.start()
    assert ready.wait(60)
    return core, stop, th


def test_bleak_bluez_adverts_become_positions(fake_bluez, mosquitto, tmp_path):
    """MiBeacon (encrypted), iBeacon and Eddystone through BlueZ D-Bus, bleak, four signed
    gateways, mosquitto and the server, to positions near the truth."""
    for name in ADAPTERS:
        fake_bluez.add_adapter(name)
    core, stop_server, server_thread = start_server(mosquitto.url, lateness_s=0.5)
    sub = Collector(mosquitto.url, [POSITIONS_TOPIC, f"{TOPIC_ROOT}/gw/+/status"])
    truth = {
        "A4:C1:38:56:53:84": (3.0, 4.0),
        "ibeacon:e5ca1ade-f007-ba11-0000-000000000000:7:9": (9.0, 8.0),
        f"eddystone:{'00112233445566778899'}:{'a1a2a3a4a5a6'}": (6.5, 2.5),
    }

    async def drive() -> list[Gateway]:
        stop = asyncio.Event()
        gws = [Gateway(gateway_config(i, tmp_path, mosquitto.url)) for i in range(4)]
        tasks = [asyncio.create_task(g.run(stop)) for g in gws]
        tasks += [asyncio.create_task(BleakSource(g).run(stop)) for g in gws]
        while not all(g.counters["scanner_starts"] for g in gws):
            await asyncio.sleep(0.05)
        for n in range(40):  # 4 s of adverts at 10 Hz per tag and gateway
            for g, adapter in enumerate(ADAPTERS):
                mi = build_mibeacon(
                    "A4:C1:38:56:53:84", n, battery=66, bindkey=BINDKEY, ext_counter=5
                )
                fake_bluez.advertise(
                    adapter,
                    "A4:C1:38:56:53:84",
                    rssi(truth["A4:C1:38:56:53:84"], g),
                    service={MIBEACON_UUID: mi},
                )
                fake_bluez.advertise(
                    adapter,
                    "5C:00:00:00:00:01",
                    rssi((9.0, 8.0), g, tx=-62),
                    manufacturer={
                        0x004C: build_ibeacon(
                            "e5ca1ade-f007-ba11-0000-000000000000", 7, 9, power=-62
                        )
                    },
                )
                frame = (
                    build_eddystone_uid(
                        bytes.fromhex("00112233445566778899"),
                        bytes.fromhex("a1a2a3a4a5a6"),
                        tx0=-18,
                    )
                    if n % 2 == 0
                    else build_eddystone_tlm(2900, 21.5, n, n / 10)
                )
                fake_bluez.advertise(
                    adapter,
                    "5C:00:00:00:00:02",
                    rssi((6.5, 2.5), g),
                    service={EDDYSTONE_UUID: frame},
                )
                fake_bluez.advertise(
                    adapter, "5C:00:00:00:00:03", -40, manufacturer={0x0006: b"\x01"}
                )  # filtered
            await asyncio.sleep(0.1)
        got = sub.wait_for(POSITIONS_TOPIC, 3, timeout=10)
        assert got
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and {
            p["dev"] for b in sub.on(POSITIONS_TOPIC) for p in json.loads(b)["positions"]
        } < set(truth):
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        return gws

    try:
        gws = asyncio.run(drive())
    finally:
        stop_server.set()
        server_thread.join(10)
    positions = [p for b in sub.on(POSITIONS_TOPIC) for p in json.loads(b)["positions"]]
    statuses = [json.loads(b) for b in sub.on(f"{TOPIC_ROOT}/gw/")]
    sub.close()
    assert {p["dev"] for p in positions} == set(truth)
    for dev, (x, y) in truth.items():
        mine = [p for p in positions if p["dev"] == dev and p["n_gw"] == 4]
        assert mine, dev
        err = np.median([np.hypot(p["x"] - x, p["y"] - y) for p in mine])
        assert err < 0.6, (dev, err)
    assert {p["bat"] for p in positions if p["dev"] == "A4:C1:38:56:53:84"} == {
        66
    }  # decrypted object
    eddy = [p["bat"] for p in positions if p["dev"].startswith("eddystone:")]
    assert set(eddy) <= {90, None}
    assert 90 in eddy
    for g in gws:
        assert g.counters["filtered_out"] >= 40
        assert g.counters["published"] == g.counters["batches"] > 0
        assert g.spool.rows == 0
    assert {s["state"] for s in statuses} >= {"online", "offline"}
    beats = [
        s["counters"] for s in statuses if s["state"] == "online" and s["counters"].get("scanned")
    ]
    assert beats, "no heartbeat carried scan counters"
    assert all({"scanned", "forwarded", "spool_rows", "inflight"} <= set(c) for c in beats)
    assert core.counters["batches_accepted"] == sum(g.counters["batches"] for g in gws)
    assert not any(k.startswith("rejected") for k in core.counters)


def test_scanner_survives_missing_adapter_and_duty_cycles(fake_bluez, tmp_path):
    """An adapter that is not there yet: the scanner fails, backs off, and recovers; then
    it scans 0.4 s in every 0.7 s, and adverts sent while it pauses are not heard."""
    scan = {
        "adapter": "hci2",
        "backoff_min_s": 0.2,
        "backoff_max_s": 1.0,
        "duty_on_s": 0.4,
        "duty_off_s": 0.3,
    }

    async def run() -> Gateway:
        gw = Gateway(gateway_config(2, tmp_path, "mqtt://127.0.0.1:9", scan=scan))  # no broker
        stop = asyncio.Event()
        tasks = [asyncio.create_task(gw.run(stop)), asyncio.create_task(BleakSource(gw).run(stop))]
        while gw.counters["scanner_errors"] < 2:
            await asyncio.sleep(0.05)
        fake_bluez.add_adapter("hci2")
        while not gw.counters["scanner_starts"]:
            await asyncio.sleep(0.05)
        for n in range(30):  # 3 s: a little over four duty cycles
            fake_bluez.advertise(
                "hci2",
                "A4:C1:38:56:53:84",
                -60,
                service={MIBEACON_UUID: build_mibeacon("A4:C1:38:56:53:84", n, battery=9)},
            )
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        return gw

    gw = asyncio.run(asyncio.wait_for(run(), 30))
    assert gw.counters["scanner_errors"] >= 2
    assert gw.counters["scanner_starts"] >= 4
    assert 8 <= gw.counters["forwarded"] <= 24  # about 4/7 of 30 heard


def mibeacon_burst(gw: Gateway, n0: int, n: int = 50, t0: float | None = 1e9) -> Awaitable[None]:
    """``n`` MiBeacon frames (counters n0...) heard by ``gw``, 2 ms apart; event times
    ``t0 + counter`` (None: the gateway's clock)."""

    async def burst() -> None:
        for k in range(n0, n0 + n):
            gw.on_advertisement(
                "A4:C1:38:56:53:84",
                -60,
                {},
                {"fe95": build_mibeacon("A4:C1:38:56:53:84", k % 256, battery=50)},
                t=None if t0 is None else t0 + k,
            )
            await asyncio.sleep(0.002)

    return burst()


async def until(done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait (generously: the machine may be loaded) for ``done``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def spool_through_outage(broker: live_fixtures.Broker, gw: Gateway, n0: int, t0: float | None) -> int:
    """Stop the broker (it writes its sessions to its store), let ``gw`` spool a burst,
    start the broker and wait until the gateway has drained its spool into it. Returns how
    many batches were spooled."""
    broker.stop()
    assert broker.store is not None and (broker.store / "mosquitto.db").exists(), "mosquitto kept no store"
    await mibeacon_burst(gw, n0, t0=t0)
    await until(lambda: not gw.connected and gw.spool.rows >= 5, "the outage's batches in the spool")
    spooled = gw.spool.rows
    broker.start()
    await until(lambda: gw.idle, "the spool to drain after the restart")
    return spooled


def test_store_and_forward_through_broker_outage(persistent_mosquitto, tmp_path):
    """Batches made while the broker is down wait in the gateway's spool; after the restart
    they reach a subscriber with a persistent session (as the MQTT server keeps) even when it
    is back only after the spool has drained: at least once, none missing, in order.

    The subscriber is away through the whole outage and the drain, the order in which a
    clean session loses them all (the broker acknowledges the gateway's publishes to no
    one), so the test does not depend on who reconnects first."""
    broker = persistent_mosquitto
    topic = f"{TOPIC_ROOT}/gw/gw-0/batch"
    sub_id = "outage-subscriber"
    cfg = gateway_config(0, tmp_path, broker.url, batch={"max_age_s": 0.05, "max_size": 5})
    sub = Collector(broker.url, [f"{TOPIC_ROOT}/gw/+/batch"], client_id=sub_id, clean_session=False)

    def received(collector: Collector) -> list[Batch]:
        return [Batch.model_validate_json(split_envelope(b)[1]) for b in collector.on(topic)]

    async def run() -> tuple[Gateway, list[Batch], int]:
        gw = Gateway(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await until(lambda: gw.connected, "the gateway's connection")
        await mibeacon_burst(gw, 0)
        await until(lambda: gw.idle, "the first burst's acknowledgements")
        await until(lambda: len(received(sub)) >= gw.counters["batches"], "the first burst at the subscriber")
        got = received(sub)
        sub.close()  # away until the spool has drained; its session stays on the broker
        spooled = await spool_through_outage(broker, gw, 50, t0=1e9)
        stop.set()
        await task
        return gw, got, spooled

    gw, before_outage, spooled = asyncio.run(run())
    total = gw.counters["batches"]
    back = Collector(broker.url, [f"{TOPIC_ROOT}/gw/+/batch"], client_id=sub_id, clean_session=False)
    try:
        asyncio.run(until(lambda: {b.seq for b in before_outage + received(back)} >= set(range(total)),
                          "the batches queued for the subscriber's session"))
        after_outage = received(back)
    finally:
        back.close()
    # At least once (a batch in flight when the broker stopped may come twice, with the
    # same seq; the server drops the repeat as a replay), none missing, in order.
    batches = before_outage + after_outage
    assert list(dict.fromkeys(b.seq for b in batches)) == list(range(total))
    assert {a.t for b in batches for a in b.ads} == {1e9 + n for n in range(100)}
    assert spooled >= 5
    assert gw.counters["forwarded"] == 100
    assert gw.counters["connects"] == 2
    assert gw.spool.rows == 0
    assert gw.spool.dropped == 0


def test_server_gets_what_gateways_spooled_while_it_and_the_broker_were_down(persistent_mosquitto, tmp_path):
    """`tagtwin serve`'s persistent session (``client_id``): the server is stopped, the
    broker restarts and a gateway drains its spool into it before the server is back; the
    restarted server still verifies every batch, none twice."""
    broker = persistent_mosquitto
    session = "tagtwin-serve-test"

    def server() -> tuple[ServerCore, threading.Event, threading.Thread]:
        core = ServerCore(site_engine_config(parse_scenario(ROOM)), KEYS, clock="wall")
        stop, ready = threading.Event(), threading.Event()
        th = threading.Thread(target=serve, args=(core, broker.url, stop),
                              kwargs={"ready": ready, "client_id": session}, daemon=True)
        th.start()
        assert ready.wait(60), "server did not subscribe"
        return core, stop, th

    _, stop_first, first = server()
    stop_first.set()
    first.join(60)
    cfg = gateway_config(0, tmp_path, broker.url, batch={"max_age_s": 0.05, "max_size": 5})

    async def run() -> tuple[Gateway, int]:
        gw = Gateway(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await until(lambda: gw.connected, "the gateway's connection")
        await mibeacon_burst(gw, 0, t0=None)  # published while the server is away
        await until(lambda: gw.idle, "the first burst's acknowledgements")
        spooled = await spool_through_outage(broker, gw, 50, t0=None)
        stop.set()
        await task
        return gw, spooled

    gw, spooled = asyncio.run(run())
    core, stop_second, second = server()
    try:
        asyncio.run(until(lambda: core.counters["batches_accepted"] >= gw.counters["batches"],
                          "the restarted server to verify the queued batches"))
    finally:
        stop_second.set()
        second.join(60)
    assert spooled >= 5
    assert core.counters["batches_accepted"] == gw.counters["batches"]
    assert core.counters["sightings"] == gw.counters["forwarded"] == 100
    assert not {k: v for k, v in core.counters.items() if k.startswith("rejected")}


def test_twin_through_mqtt_matches_offline_engine_and_replays(mosquitto, tmp_path):
    """The twin published as gateways gives the positions the offline run gives; a
    recording of it replays to the same positions on a fresh server."""
    from engine.pipeline import Engine
    from live_bridge.capture import read_capture, record, replay
    from tagtwin.twin_publish import publish_twin
    from twin.run import feed_engine
    from twin.sim import run_twin

    scenario = parse_scenario(ROOM)
    result = run_twin(scenario)
    offline = feed_engine(
        Engine(site_engine_config(scenario), None), result.sightings, scenario.duration_s
    )

    def run_server() -> tuple[ServerCore, threading.Event, threading.Thread, Collector]:
        core = ServerCore(site_engine_config(scenario), KEYS, clock="event")
        stop, ready = threading.Event(), threading.Event()
        th = threading.Thread(
            target=serve, args=(core, mosquitto.url, stop), kwargs={"ready": ready}, daemon=True
        )
        th.start()
        assert ready.wait(60)
        return core, stop, th, Collector(mosquitto.url, [POSITIONS_TOPIC])

    capture = tmp_path / "capture.jsonl"
    rec_stop, rec_ready = threading.Event(), threading.Event()
    recorder = threading.Thread(
        target=record,
        args=(mosquitto.url, capture),
        kwargs={"stop": rec_stop, "ready": rec_ready},
        daemon=True,
    )
    recorder.start()
    assert rec_ready.wait(60)
    def positions(sub: Collector) -> list[dict[str, object]]:
        return [p for b in sub.on(POSITIONS_TOPIC) for p in json.loads(b)["positions"]]

    def run_to_the_end(core: ServerCore, stop: threading.Event, th: threading.Thread, sub: Collector,
                       batches: int) -> list[dict[str, object]]:
        """Wait until the server has every batch, stop it (its last windows go out), and
        until the collector has every position it published."""
        asyncio.run(until(lambda: core.counters["batches_accepted"] >= batches, "the server's batches"))
        stop.set()
        th.join(60)
        assert not th.is_alive()
        asyncio.run(until(lambda: len(positions(sub)) >= core.counters["positions"], "the positions published"))
        out = positions(sub)
        sub.close()
        return out

    core, stop, th, sub = run_server()
    sent = publish_twin(result, KEYS, mosquitto.url, origin=1_700_000_000.0, batch_s=0.5)
    live = run_to_the_end(core, stop, th, sub, sent["batches"])
    rec_stop.set()
    recorder.join(60)
    assert core.counters["batches_accepted"] == sent["batches"]
    assert len(read_capture(capture)) == sent["batches"]

    # Same windows, same devices, same positions (event times shifted by a whole second count).
    want = {
        (round(float(f["t"]) + 1_700_000_000.0, 3), result.device_ids[f["device"]]): (
            f["x"],
            f["y"],
        )
        for f in offline
        if np.isfinite(f["x"])
    }
    have = {(p["t"], p["dev"]): (p["x"], p["y"]) for p in live}
    # A live server never sees the end of time: the last windows (within the allowed
    # lateness of the newest event) stay open, where the offline run flushes them.
    last = max(t for t, _ in have)
    assert last >= 1_700_000_000.0 + scenario.duration_s - 3
    want = {k: v for k, v in want.items() if k[0] <= last}
    common = set(want) & set(have)
    assert common == set(want)
    diffs = [np.hypot(want[k][0] - have[k][0], want[k][1] - have[k][1]) for k in common]
    assert max(diffs) < 0.005  # float rounding of the shifted event times, no more

    core2, stop2, th2, sub2 = run_server()
    assert replay(capture, mosquitto.url, speed=0) == sent["batches"]
    replayed = {(p["t"], p["dev"]) for p in run_to_the_end(core2, stop2, th2, sub2, sent["batches"])}
    assert core2.counters["batches_accepted"] == sent["batches"]
    assert len(replayed & set(have)) >= 0.97 * len(have)


def test_cli_gateway_and_serve_processes(fake_bluez, mosquitto, tmp_path):
    """`tagtwin serve` and `tagtwin gateway` as processes; the last will marks a killed
    gateway offline; SIGTERM stops the server cleanly with its counters."""
    fake_bluez.add_adapter("hci0")
    scenario = tmp_path / "room.toml"
    scenario.write_text(ROOM)
    keys = tmp_path / "keys.toml"
    keys.write_text("[keys]\n" + "".join(f'"{g}" = "{k.hex()}"\n' for g, k in KEYS.items()))
    keys.chmod(0o600)  # secrets must be private: serve refuses a group/world-readable keys file
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'id = "gw-0"\nkey_hex = "{KEYS["gw-0"].hex()}"\nbroker = "{mosquitto.url}"\n'
        f'[scan]\nadapter = "hci0"\nmode = "passive"\n[batch]\nmax_age_s = 0.1\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite"}"\n[mqtt]\nheartbeat_s = 0.5\n'
    )
    conf.chmod(0o600)
    tagtwin = str(Path(sys.executable).parent / "tagtwin")
    env = os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": fake_bluez.address}
    sub = Collector(mosquitto.url, [f"{TOPIC_ROOT}/#"])
    server = subprocess.Popen(
        [tagtwin, "serve", "--broker", mosquitto.url, "--scenario", str(scenario), "--keys", str(keys),
         "--status-every", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    gateway = None

    def server_counters() -> dict:
        status = sub.on(f"{TOPIC_ROOT}/server/status")
        return json.loads(status[-1]).get("counters", {}) if status else {}

    def wait_server(key: str, n: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server_counters().get(key, 0) < n:
            time.sleep(0.05)
        return server_counters().get(key, 0) >= n

    def advertise_until_forwarded(first: int, count: int, batches_before: int) -> None:
        """Advertise frames first.. until the gateway has forwarded a batch (its scanner is
        up: readiness, not a sleep), then the rest of ``count``."""
        n, deadline = first, time.monotonic() + 60
        while len(sub.on(f"{TOPIC_ROOT}/gw/gw-0/batch")) <= batches_before and time.monotonic() < deadline:
            fake_bluez.advertise("hci0", "A4:C1:38:56:53:84", -61,
                                 service={MIBEACON_UUID: build_mibeacon("A4:C1:38:56:53:84", n, battery=30)})
            n += 1
            time.sleep(0.05)
        assert len(sub.on(f"{TOPIC_ROOT}/gw/gw-0/batch")) > batches_before, "the gateway never forwarded"
        for k in range(n, max(n, first + count)):
            fake_bluez.advertise("hci0", "A4:C1:38:56:53:84", -61,
                                 service={MIBEACON_UUID: build_mibeacon("A4:C1:38:56:53:84", k, battery=30)})
            time.sleep(0.05)

    def ads_published() -> int:
        return sum(len(Batch.model_validate_json(split_envelope(b)[1]).ads)
                   for b in sub.on(f"{TOPIC_ROOT}/gw/gw-0/batch"))

    try:
        # Readiness of the server: a probe batch from gw-1, published until the server's
        # status counts it, proves its subscription is in place before gw-0 starts.
        probe_seq, deadline = 0, time.monotonic() + 60
        while server_counters().get("batches_accepted", 0) < 1 and time.monotonic() < deadline:
            probe = Batch(gw="gw-1", seq=probe_seq, sent=time.time(),
                          ads=[Advert(t=time.time(), dev="probe-tag", rssi=-70.0)])
            sub.client.publish(batch_topic("gw-1"), encode_batch(probe, KEYS["gw-1"]), qos=1)
            probe_seq += 1
            wait_server("batches_accepted", 1, timeout=1)
        assert server_counters().get("batches_accepted", 0) >= 1, "the server never accepted a batch"
        probes = server_counters()["sightings"]
        gateway = subprocess.Popen(
            [tagtwin, "gateway", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
        )
        online = sub.wait_for(status_topic("gw-0"), 1, timeout=60)
        assert online
        assert json.loads(online[0])["state"] == "online"
        advertise_until_forwarded(0, 20, 0)
        os.kill(gateway.pid, signal.SIGKILL)  # no goodbye: the broker publishes the last will
        gateway.wait(10)
        deadline = time.monotonic() + 30
        while (
            json.loads(sub.on(status_topic("gw-0"))[-1])["state"] != "offline"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert json.loads(sub.on(status_topic("gw-0"))[-1])["state"] == "offline"
        # Restarted, it resumes the batch sequence from its spool; SIGTERM is a clean stop.
        seen = len(sub.on(status_topic("gw-0")))
        batches_before = len(sub.on(f"{TOPIC_ROOT}/gw/gw-0/batch"))
        gateway = subprocess.Popen(
            [tagtwin, "gateway", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
        )
        assert sub.wait_for(status_topic("gw-0"), seen + 1, timeout=60)[seen:]
        advertise_until_forwarded(100, 10, batches_before)
        os.kill(gateway.pid, signal.SIGTERM)
        _, gw_err = gateway.communicate(timeout=30)
        assert gateway.returncode == 0, gw_err
        gw_counters = json.loads(gw_err.strip().splitlines()[-1])
        assert gw_counters["forwarded"] >= 1
        assert gw_counters["spool_rows"] == 0
        assert gw_counters["inflight"] == 0
        assert json.loads(sub.on(status_topic("gw-0"))[-1])["state"] == "offline"
        seqs = [
            Batch.model_validate_json(split_envelope(b)[1]).seq
            for b in sub.on(f"{TOPIC_ROOT}/gw/gw-0/batch")
        ]
        assert seqs == list(range(len(seqs)))  # no sequence reused across the restart
        # Every advert the gateways published reaches the server: wait for its counter.
        published = ads_published()
        assert published >= 2
        assert wait_server("sightings", probes + published), (server_counters(), probes, published)
        os.kill(server.pid, signal.SIGTERM)
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        counters = json.loads(err.strip().splitlines()[-1])["counters"]
        assert counters["batches_accepted"] >= 3
        assert counters["sightings"] == probes + published
        assert not [k for k in counters if k.startswith("rejected")]  # the restart replayed nothing
    finally:
        sub.close()
        for proc in (gateway, server):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_twin_publisher_real_time_pacing(mosquitto):
    """simpy.rt paces the batches: 3 simulated seconds at 10x take about 0.3 s."""
    from tagtwin.twin_publish import publish_twin
    from twin.scenario import Scenario
    from twin.sim import run_twin

    short = Scenario.model_validate(parse_scenario(ROOM).model_dump() | {"duration_s": 3.0})
    result = run_twin(short)
    sub = Collector(mosquitto.url, [f"{TOPIC_ROOT}/gw/+/batch"])
    t0 = time.monotonic()
    sent = publish_twin(result, KEYS, mosquitto.url, realtime=True, speed=10.0, batch_s=0.5)
    elapsed = time.monotonic() - t0
    got = sub.wait_for(f"{TOPIC_ROOT}/gw/", int(sent["batches"]))
    sub.close()
    assert 0.28 <= elapsed < 3.0
    assert len(got) == sent["batches"] > 0
    assert sum(len(Batch.model_validate_json(split_envelope(b)[1]).ads) for b in got) == len(
        result.sightings
    )


def test_adapters_through_the_broker(mosquitto):
    """Theengs and ESPresense messages reach the server through its wildcard
    subscriptions; a room that is not a gateway of the site is dead-lettered."""
    from live_bridge.mqtt import BrokerUrl, make_client

    core = ServerCore(
        site_engine_config(parse_scenario(ROOM)),
        KEYS,
        clock="wall",
        adapters=["theengs", "espresense"],
    )
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(
        target=serve, args=(core, mosquitto.url, stop), kwargs={"ready": ready}, daemon=True
    )
    th.start()
    assert ready.wait(30)  # every subscription acknowledged by the broker
    sub = Collector(mosquitto.url, [f"{TOPIC_ROOT}/deadletter"])
    b = BrokerUrl.parse(mosquitto.url)
    pub = make_client("adapter-test", b)
    pub.connect(b.host, b.port)
    pub.loop_start()
    frame = build_mibeacon("A4:C1:38:56:53:84", 1, battery=70).hex()
    msgs = [
        (
            "home/gw-1/BTtoMQTT/A4C138565384",
            {
                "id": "A4:C1:38:56:53:84",
                "rssi": -70,
                "servicedatauuid": "0xfe95",
                "servicedata": frame,
            },
        ),
        (
            "espresense/devices/iBeacon:abc-1-2/gw-2",
            {"id": "iBeacon:abc-1-2", "rssi": -66, "rssi@1m": -60},
        ),
        ("espresense/devices/iBeacon:abc-1-2/kitchen", {"id": "iBeacon:abc-1-2", "rssi": -66}),
    ]
    for topic, body in msgs:
        pub.publish(topic, json.dumps(body).encode(), qos=1).wait_for_publish(5)
    dead = sub.wait_for(f"{TOPIC_ROOT}/deadletter", 1)
    deadline = time.monotonic() + 5
    while core.counters["sightings"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    th.join(10)
    pub.disconnect()
    pub.loop_stop()
    sub.close()
    assert core.counters["sightings"] == 2
    assert core.devices.ids == ["A4:C1:38:56:53:84", "iBeacon:abc-1-2"]
    assert [json.loads(d)["reason"] for d in dead] == ["gateway not in site plan"]


def test_replay_keeps_recorded_pace_and_order(mosquitto, tmp_path):
    """A capture replays at its recorded pace (here twice as fast), byte for byte."""
    import base64

    from live_bridge.capture import replay

    capture = tmp_path / "c.jsonl"
    lines = [json.dumps({"capture": 1, "started": 100.0})]
    lines += [
        json.dumps(
            {
                "t": 100.0 + 0.2 * i,
                "topic": f"{TOPIC_ROOT}/gw/gw-0/batch",
                "b64": base64.b64encode(f"m{i}".encode()).decode(),
            }
        )
        for i in range(6)
    ]
    capture.write_text("\n".join(lines) + "\n")
    sub = Collector(mosquitto.url, [f"{TOPIC_ROOT}/gw/+/batch"])
    t0 = time.monotonic()
    assert replay(capture, mosquitto.url, speed=2.0) == 6
    elapsed = time.monotonic() - t0
    got = sub.wait_for(f"{TOPIC_ROOT}/gw/", 6)
    sub.close()
    assert 0.5 <= elapsed < 3.0  # 1.0 s of recording at 2x: 0.5 s
    assert got == [f"m{i}".encode() for i in range(6)]


def _serve_in_thread(core: ServerCore, url: str, session: str) -> tuple[threading.Event, threading.Thread, list]:
    stop, ready, raised = threading.Event(), threading.Event(), []

    def run() -> None:
        try:
            serve(core, url, stop, ready=ready, client_id=session)
        except Exception as exc:  # the test inspects what serve raised
            raised.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(60), "server did not subscribe"
    return stop, th, raised


def test_a_second_server_with_the_same_session_stops_one_instead_of_flapping(mosquitto):
    """Two servers under one client id take the session from each other on every
    reconnect; one of them stops with SessionTakenOverError naming the id, the other keeps it."""
    from live_bridge.mqtt import BrokerUrl, make_client
    from live_bridge.server import SessionTakenOverError

    session = "tagtwin-serve-twice"
    cores = [ServerCore(site_engine_config(parse_scenario(ROOM)), KEYS, clock="wall") for _ in range(2)]
    first = _serve_in_thread(cores[0], mosquitto.url, session)
    second = _serve_in_thread(cores[1], mosquitto.url, session)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first[1].is_alive() and second[1].is_alive():
            time.sleep(0.1)
        stopped = [s for s in (first, second) if not s[1].is_alive()]
        assert len(stopped) == 1, "the two servers kept taking the session from each other"
        (exc,) = stopped[0][2]
        assert isinstance(exc, SessionTakenOverError)
        assert session in str(exc)
        # The survivor is no longer kicked: once the other has stopped it (re)connects and
        # handles, one by one, messages published after that (its persistent session queues
        # them while it reconnects), and is still running.
        survivor = cores[0] if first[1].is_alive() else cores[1]
        pub = make_client("takeover-pub", BrokerUrl.parse(mosquitto.url))
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            seen = survivor.counters["messages"]
            for n in range(1, 4):
                pub.publish(f"{TOPIC_ROOT}/gw/nobody/batch", b"not a batch", qos=1).wait_for_publish(30)

                def handled(n: int = n) -> bool:
                    return survivor.counters["messages"] >= seen + n

                asyncio.run(until(handled, "the survivor to handle a message published after the other stopped"))
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert [s for s in (first, second) if s[1].is_alive()]
    finally:
        for stop, th, _ in (first, second):
            stop.set()
            th.join(60)
    assert not [exc for _, _, raised in (first, second) for exc in raised if not isinstance(exc, SessionTakenOverError)]


def test_a_session_drops_the_adapter_subscriptions_of_an_earlier_run(mosquitto):
    """The broker keeps a persistent session's subscriptions: a server started without
    --adapters after one with espresense must not keep receiving (and dead-lettering)
    ESPresense messages. One publisher at QoS 1: the ESPresense message would arrive
    before the batch-topic one the test waits for."""
    from live_bridge.mqtt import BrokerUrl, make_client

    session = "tagtwin-serve-adapters"
    cfg = site_engine_config(parse_scenario(ROOM))
    stop, th, _ = _serve_in_thread(ServerCore(cfg, KEYS, clock="wall", adapters=["espresense"]), mosquitto.url,
                                   session)
    stop.set()
    th.join(60)
    core = ServerCore(cfg, KEYS, clock="wall")
    stop, th, raised = _serve_in_thread(core, mosquitto.url, session)
    try:
        pub = make_client("adapter-pub", BrokerUrl.parse(mosquitto.url))
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish("espresense/devices/aa/gw-0", b'{"rssi": -60}', qos=1).wait_for_publish(30)
        pub.publish(f"{TOPIC_ROOT}/gw/nobody/batch", b"not a batch", qos=1).wait_for_publish(30)
        asyncio.run(until(lambda: core.counters["messages"] >= 1 and any(
            k.startswith("rejected") for k in core.counters), "the batch topic's message"))
        pub.loop_stop()
        pub.disconnect()
    finally:
        stop.set()
        th.join(60)
    assert core.counters["messages"] == 1, dict(core.counters)
    assert not raised
