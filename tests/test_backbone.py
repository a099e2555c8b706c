"""The stream backbone: embedded nats-server, the worker's poison isolation, publishers that
delete a spool row only on the stream's ack, twin-publish across a backbone restart, and
MQTT into the stream through the NATS listener. Real nats-server on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest

from live_bridge.backbone import (
    StreamSettings,
    connect,
    ensure_streams,
    gateway_status_subject,
    mqtt_topic,
    out_subject,
    publish_batch,
    raw_stream,
    raw_subject,
    token,
)
from live_bridge.faults import Fault
from live_bridge.gateway import BatchConfig, Gateway, GatewayConfig, MqttConfig, SpoolConfig
from live_bridge.natsserver import ClusterConfig, EmbeddedNats, NatsServerError, ServerConfig
from live_bridge.wire import Advert, Batch, encode_batch, encode_payload
from live_bridge.worker import WorkerCore, WorkerSettings, run_worker
from tests.test_eventtime import engine

KEY = bytes(range(32))
SITE = "t1"
NOW = time.time()


def core(**kw) -> WorkerCore:
    cfg = engine().config
    return WorkerCore(cfg, dict.fromkeys(cfg.gateways.ids, KEY), WorkerSettings(site=SITE, **kw))


def signed(gw: str, seq: int, ads: list[Advert], ep: int = 1) -> bytes:
    return encode_batch(Batch(gw=gw, seq=seq, ep=ep, sent=NOW, ads=ads), KEY)


def good_ads(t: float, n: int = 3) -> list[Advert]:
    return [Advert(t=t, dev=f"tag{i}", rssi=-60.0 - i, ch=37, seq=int(t) % 1000) for i in range(n)]


def reasons(out: list[tuple[str, bytes]]) -> list[str]:
    return [json.loads(body)["reason"] for _, body in out]


# -- sans-IO: what a message may contain ----------------------------------------------------


def payload_with(gw: str, ad_json: str, seq: int = 9) -> bytes:
    return (f'{{"gw":"{gw}","seq":{seq},"ep":1,"sent":{NOW},"ads":[{ad_json}]}}').encode()


GOOD_AD = f'{{"t":{NOW},"dev":"x","rssi":-60}}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 1000, "malformed envelope"),  # unsigned, 1 kB of nesting: refused before parsing
        (encode_payload(b'{"gw":"a","ads":' + b"[" * 1000 + b"]" * 1000 + b"}", KEY), "schema violation"),
        (encode_payload(payload_with("a", f'{{"t":{NOW},"dev":"x","rssi":-60,"ch":300}}'), KEY), "schema violation"),
        (encode_payload(payload_with("a", f'{{"t":{NOW},"dev":"x","rssi":-60,"ch":"37"}}'), KEY), "schema violation"),
        (encode_payload(payload_with("a", '{"t":NaN,"dev":"x","rssi":-60}'), KEY), "schema violation"),
        (encode_payload(payload_with("a", '{"t":Infinity,"dev":"x","rssi":-60}'), KEY), "schema violation"),
        (encode_payload(payload_with("a", '{"t":1e308,"dev":"x","rssi":-60}'), KEY), "schema violation"),
        (encode_payload(payload_with("a", GOOD_AD, seq=2**62), KEY), "schema violation"),
        (encode_payload(payload_with("a", GOOD_AD), b"wrong key 123456"), "bad signature"),
        (encode_payload(payload_with("b", GOOD_AD), KEY), "topic does not match signed gateway"),
        (b"x" * (2 << 20), "oversized"),
    ],
    ids=["deep-unsigned", "deep-signed", "ch-300", "ch-string", "t-nan", "t-inf", "t-1e308", "seq-2^62",
         "bad-sig", "other-gateway", "oversized"],
)
def test_poison_is_dead_lettered_and_good_traffic_keeps_flowing(body, reason):
    w = core()
    out = w.handle(raw_subject(SITE, "a"), body, 1, NOW)
    assert reasons(out) == [reason]
    assert w.counters[f"rejected: {reason}"] == 1
    for i in range(20):  # the same worker then serves good traffic
        for gw in "abcd":
            w.handle(raw_subject(SITE, gw), signed(gw, i, good_ads(NOW - 30 + i)), 2 + 4 * i + "abcd".index(gw), NOW)
    assert w.counters["processed"] == 20 * 4 * 3
    assert w.tick(NOW)  # positions come out


def test_unknown_subject_and_gateway_are_dead_lettered():
    w = core()
    assert reasons(w.handle("tagtwin.v1.other.raw.a", signed("a", 0, good_ads(NOW)), 1, NOW)) == ["unexpected subject"]
    assert reasons(w.handle(raw_subject(SITE, "zz"), signed("zz", 0, good_ads(NOW)), 2, NOW)) == ["unknown gateway"]


def test_future_sightings_are_dead_lettered_and_never_move_the_watermark():
    w = core(max_skew_s=30)
    for i in range(10):
        for gw in "abcd":
            w.handle(raw_subject(SITE, gw), signed(gw, i, good_ads(NOW - 20 + i)), 1 + 4 * i + "abcd".index(gw), NOW)
    w.tick(NOW)
    mark = w.marks.mark
    ahead = [Advert(t=NOW + 3600, dev="liar", rssi=-50.0)] + good_ads(NOW - 9)
    out = w.handle(raw_subject(SITE, "a"), signed("a", 100, ahead), 1000, NOW)
    assert reasons(out) == ["future event time"]
    assert w.counters["dead_lettered: future event time"] == 1
    w.tick(NOW)
    assert w.marks.mark <= NOW - 9  # the hour-ahead advert moved nothing
    assert mark <= w.marks.mark
    processed = w.counters["processed"]
    for gw in "abcd":  # good traffic after it is not late
        w.handle(raw_subject(SITE, gw), signed(gw, 200, good_ads(NOW - 5)), 2000 + "abcd".index(gw), NOW)
    assert w.counters["processed"] == processed + 12
    assert not any(k.startswith("dead_lettered: older") for k in w.counters)


def test_replays_seq_jumps_and_reprovisioning():
    w = core()
    body = signed("a", 5, good_ads(NOW))
    w.handle(raw_subject(SITE, "a"), body, 1, NOW)
    w.handle(raw_subject(SITE, "a"), body, 2, NOW)  # the same batch stored twice
    assert w.counters["duplicates"] == 3 and w.counters["processed"] == 3
    w.handle(raw_subject(SITE, "a"), signed("a", 2**50, good_ads(NOW)), 3, NOW)  # a jump ...
    w.handle(raw_subject(SITE, "a"), signed("a", 6, good_ads(NOW)), 4, NOW)  # ... locks nobody out
    w.handle(raw_subject(SITE, "a"), signed("a", 0, good_ads(NOW), ep=2), 5, NOW)  # re-provisioned
    assert w.counters["processed"] == 12
    w.handle(raw_subject(SITE, "a"), signed("a", 7, good_ads(NOW)), 5, NOW)  # seq already covered
    assert w.counters["skipped: already in checkpoint"] == 1


def test_rotation_and_revocation_take_effect_without_a_restart(tmp_path: Path):
    """The worker re-reads its keys file: during a rotation old and new keys verify; a
    revoked gateway's batches and a revoked tag's sightings are refused and dead-lettered."""
    from live_bridge.config import load_key_ring
    from live_bridge.server import KeysWatch

    new_key = bytes(range(100, 132))
    w = core()
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys]\na = ["{new_key.hex()}", "{KEY.hex()}"]\nb = "{KEY.hex()}"\n')
    watch = KeysWatch(keys, every_s=0.0)
    assert watch.poll(w) is False  # unchanged since the watch started
    keys.write_text(keys.read_text() + "\n")
    assert watch.poll(w) is True and w.counters["key reloads"] == 1
    old_signed = signed("a", 0, good_ads(NOW))
    new_signed = encode_batch(Batch(gw="a", seq=1, ep=1, sent=NOW, ads=good_ads(NOW + 1)), new_key)
    assert w.handle(raw_subject(SITE, "a"), old_signed, 1, NOW) == []
    assert w.handle(raw_subject(SITE, "a"), new_signed, 2, NOW) == []
    assert w.counters["processed"] == 6
    w.reload_keys(load_key_ring_with(keys, '[revoked]\ngateways = ["b"]\ntags = ["tag1"]\n', load_key_ring))
    assert reasons(w.handle(raw_subject(SITE, "b"), signed("b", 0, good_ads(NOW)), 3, NOW)) == ["revoked gateway"]
    out = w.handle(raw_subject(SITE, "a"), signed("a", 2, good_ads(NOW + 2)), 4, NOW)
    assert reasons(out) == ["revoked tag"]
    assert w.counters["sightings of revoked tags"] == 1 and w.counters["processed"] == 8
    assert w.counters["rejected: revoked gateway"] == 1 and w.counters["rejected: revoked tag"] == 1


def load_key_ring_with(path: Path, extra: str, load):  # type: ignore[no-untyped-def]
    path.write_text(path.read_text() + extra)
    return load(path)


def restored(blob: bytes, log: list[tuple[str, bytes, int, float]]) -> WorkerCore:
    """A worker from a checkpoint, its held rows read back from ``log`` (the raw stream)."""
    w = core()
    w.restore(blob)
    rb = w.begin_history()
    if rb is not None:
        for subject, body, seq, received in log:
            if seq >= w.history_from:
                w.read_back(rb, subject, body, seq, received)
        w.end_read_back(rb, NOW)
    return w


def test_checkpoint_refers_to_the_stream_and_resumes_exactly():
    a = core()
    log = []
    for i in range(8):
        log.append((raw_subject(SITE, "a"), signed("a", i, good_ads(NOW - 20 + i)), i + 1, NOW))
        a.handle(*log[-1])
    log.append((raw_subject(SITE, "a"), signed("a", 2, good_ads(NOW - 18)), 9, NOW))  # a repeat
    a.handle(*log[-1])
    blob = a.checkpoint()
    header = json.loads(blob)
    assert header["history"] == {"from_seq": 1, "through_seq": 9} and b"rows" not in blob
    b = restored(blob, log)
    assert b.counters.pop("read back: history batches") == 8  # the repeat dropped again
    assert b.stream_seq == 9 and b.counters == a.counters
    assert np.array_equal(np.sort(b.windows.snapshot()[1], order="t"), np.sort(a.windows.snapshot()[1], order="t"))
    log.append((raw_subject(SITE, "a"), signed("a", 3, good_ads(NOW)), 10, NOW))  # a repeat: dropped by both
    for w in (a, b):
        w.handle(*log[-1])
    assert a.counters == b.counters
    c = restored(a.checkpoint(), log)
    assert [p for _, p in a.tick(NOW, final=True)] != []
    c.windows.closed_through = None  # recompute everything the checkpoint holds
    assert json.loads(b.tick(NOW, final=True)[0][1])["positions"] == json.loads(
        c.tick(NOW, final=True)[0][1])["positions"]


def test_checkpoint_size_does_not_grow_with_the_rows_held():
    small, big = core(), core()
    for i in range(20):
        small.handle(raw_subject(SITE, "a"), signed("a", i, good_ads(NOW - 30 + i, 2)), i + 1, NOW)
        big.handle(raw_subject(SITE, "a"), signed("a", i, good_ads(NOW - 30 + i, 60)), i + 1, NOW)
    assert len(big.windows.snapshot()[1]) == 30 * len(small.windows.snapshot()[1])
    # only the device list (60 names vs 2) differs; no rows are copied
    assert len(big.checkpoint()) - len(small.checkpoint()) < 60 * 12


def test_server_config_renders_jetstream_sync_mqtt_and_routes(tmp_path: Path):
    cfg = ServerConfig(name="n1", store_dir=tmp_path / "js", port=4222, http_port=8222, mqtt_port=1883,
                       cluster=ClusterConfig("c", 6222, ["nats-route://127.0.0.1:6223"]))
    cfg.extra.append("# tls {} would go here")
    text = cfg.render()
    assert "sync_interval: always" in text and '"127.0.0.1:1883"' in text
    assert 'routes: ["nats-route://127.0.0.1:6223"]' in text and text.endswith("# tls {} would go here\n")
    with pytest.raises(ValueError, match="subject token"):
        token("gateway", "gw.1")
    assert mqtt_topic(raw_subject("s", "g")) == "tagtwin/v1/s/raw/g"
    assert Fault.parse("link-cut@10+30") == Fault("link-cut", 10, 30)
    with pytest.raises(ValueError, match="expected one of"):
        Fault.parse("meteor@3")


# -- real nats-server ---------------------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path):
    srv = EmbeddedNats.on_free_ports(tmp_path / "nats")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.integration
def test_a_picked_port_taken_before_the_bind_is_picked_again(tmp_path: Path) -> None:
    """free_port() closes its probe socket, so another process can take the port before
    nats-server binds it (it failed CI once): the server picks its own ports again; a port
    the caller gave is never changed, and the error names the taken address."""
    import socket

    srv = EmbeddedNats.on_free_ports(tmp_path / "a")
    taken = srv.config.mqtt_port
    assert taken is not None
    with socket.socket() as holder:
        holder.bind((srv.config.host, taken))
        holder.listen()
        srv.start()
        try:
            assert srv.config.mqtt_port != taken and srv.running
        finally:
            srv.stop()
        given = EmbeddedNats.on_free_ports(tmp_path / "b", mqtt_port=taken)
        with pytest.raises(NatsServerError, match="address already in use"):
            given.start()
        given.stop()


async def until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.integration
def test_worker_on_the_stream_dead_letters_poison_and_keeps_serving(nats_server):
    async def main():
        w = core(status_every_s=0.2)
        nc = await connect(nats_server.url, name="worker")
        pub = await connect(nats_server.url, name="pub")
        js = pub.jetstream()
        dead: list[dict] = []
        positions: list[dict] = []
        await pub.subscribe(out_subject(SITE, "deadletter"), cb=functools.partial(_append, dead))
        await pub.subscribe(out_subject(SITE, "positions"), cb=functools.partial(_append, positions))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop, ready=ready))
        await ready.wait()
        await publish_batch(js, raw_subject(SITE, "a"), b"[" * 1000)
        await publish_batch(js, raw_subject(SITE, "a"), encode_payload(
            payload_with("a", f'{{"t":{NOW},"dev":"x","rssi":-60,"ch":300}}'), KEY))
        for i in range(10):
            for gw in "abcd":
                await publish_batch(js, raw_subject(SITE, gw), signed(gw, i, good_ads(NOW - 15 + i)))
        await until(lambda: w.counters["processed"] == 120 and len(dead) == 2 and positions, what="worker")
        stop.set()
        await task
        info = await js.stream_info(raw_stream(SITE))
        await nc.close()
        await pub.close()
        return dead, info

    dead, info = asyncio.run(main())
    assert sorted(d["reason"] for d in dead) == ["malformed envelope", "schema violation"]
    assert info.state.messages == 42  # the raw log keeps everything, poison included


@pytest.mark.integration
def test_read_stream_from_a_sequence_or_a_receive_time_through_a_sequence(nats_server):
    """What a restore (by sequence) and a deep pass (by receive time) read back."""
    from live_bridge.backbone import read_stream

    async def main():
        nc = await connect(nats_server.url, name="reader")
        js = nc.jetstream()
        await ensure_streams(js, SITE)
        seqs = [await publish_batch(js, raw_subject(SITE, "a"), signed("a", i, good_ads(NOW))) for i in range(6)]
        info = await js.get_msg(raw_stream(SITE), seqs[3])
        by_seq = [m.metadata.sequence.stream async for m in read_stream(js, raw_stream(SITE), start_seq=seqs[2],
                                                                          through_seq=seqs[4])]
        stored_at = info.time.timestamp() if info.time else 0.0
        by_time = [m.metadata.sequence.stream async for m in read_stream(js, raw_stream(SITE), start_time=stored_at,
                                                                           through_seq=seqs[-1] + 100, timeout=0.5)]
        left = (await js.stream_info(raw_stream(SITE))).state.consumer_count
        await nc.close()
        return seqs, by_seq, by_time, left

    seqs, by_seq, by_time, left = asyncio.run(main())
    assert by_seq == seqs[2:5]
    assert by_time[-1] == seqs[-1] and seqs[3] in by_time and seqs[0] not in by_time  # to the end of the stream
    assert left == 0  # the ephemeral consumers are gone


@pytest.mark.integration
def test_a_checkpoint_of_an_older_version_is_rebuilt_from_the_raw_stream(nats_server):
    """A v1 checkpoint (rows copied in) cannot be read: the worker says so and rebuilds its
    state from the stream's first batch instead of refusing to start."""
    from nats.js.api import ObjectStoreConfig

    from live_bridge.backbone import CHECKPOINT_BUCKET

    async def main():
        w = core()
        nc = await connect(nats_server.url, name="worker")
        js = nc.jetstream()
        await ensure_streams(js, SITE)
        for i in range(5):
            await publish_batch(js, raw_subject(SITE, "a"), signed("a", i, good_ads(NOW - 10 + i)))
        obs = await js.create_object_store(CHECKPOINT_BUCKET, config=ObjectStoreConfig())
        await obs.put(w.settings.checkpoint_name, b'{"version":1,"stream_seq":5,"n_rows":0}\n')
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop, ready=ready))
        await until(lambda: w.counters["processed"] == 15, what="rebuilt from the stream")
        stop.set()
        await task
        await nc.close()
        return w

    w = asyncio.run(main())
    assert w.counters["checkpoint unreadable: rebuilt from the stream"] == 1 and w.counters["batches"] == 5
    with pytest.raises(ValueError, match="checkpoint version None"):
        core().restore(b"\x00garbage")


async def _append(into: list, msg) -> None:
    into.append(json.loads(msg.data))


@pytest.mark.integration
def test_gateway_keeps_the_row_until_the_stream_acks_it(nats_server, tmp_path: Path):
    """No stream for the subject yet: the publish is refused, the row stays and the reason is
    counted; once the stream exists the same row is stored and only then deleted."""

    async def main():
        cfg = GatewayConfig(id="a", key_hex=KEY.hex(), broker=nats_server.url, site=SITE,
                            spool=SpoolConfig(path=tmp_path / "spool.sqlite"), batch=BatchConfig(max_age_s=0.05),
                            mqtt=MqttConfig(heartbeat_s=0.2))
        watch = await connect(nats_server.url, name="watch")
        beats: list[dict] = []
        await watch.subscribe(gateway_status_subject(SITE, "a"), cb=functools.partial(_append, beats))
        gw = Gateway(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        for a in good_ads(NOW):
            gw.add(a)
        await until(lambda: any(k.startswith("publish not acked") for k in gw.counters), what="a refusal")
        assert gw.spool.rows == 1
        nc = await connect(nats_server.url, name="setup")
        js = nc.jetstream()
        await ensure_streams(js, SITE, StreamSettings())
        await until(lambda: gw.spool.rows == 0, what="the stored ack")
        await until(lambda: any(b["counters"].get("published") == 1 for b in beats), what="a heartbeat")
        stop.set()
        await task
        await watch.close()
        info = await js.stream_info(raw_stream(SITE))
        await nc.close()
        return gw, info

    gw, info = asyncio.run(main())
    assert info.state.messages == 1 and gw.counters["published"] == 1


@pytest.mark.integration
def test_twin_publish_survives_a_backbone_restart(nats_server):
    from tagtwin.twin_publish import publish_twin_nats
    from twin.scenario import Scenario, load_scenario
    from twin.sim import run_twin

    d = load_scenario(Path(__file__).parents[1] / "scenarios" / "static-open.toml").model_dump()
    d["duration_s"], d["tags"][0]["count"] = 4, 30
    result = run_twin(Scenario.model_validate(d))
    keys = dict.fromkeys(result.gateways.ids, KEY)

    async def main():
        nc = await connect(nats_server.url, name="setup")
        await ensure_streams(nc.jetstream(), SITE)
        pub = asyncio.create_task(publish_twin_nats(result, keys, nats_server.url, site=SITE, realtime=True,
                                                    speed=2.0, batch_s=0.25))
        # Kill once the stream has acknowledged a first batch (not after a fixed sleep, which on
        # a busy machine could come before the first publish): the kill then lands mid-publish.
        js, deadline = nc.jetstream(), time.monotonic() + 60
        while (before := (await js.stream_info(raw_stream(SITE))).state.messages) < 1:
            assert not pub.done(), "the publisher ended before a batch was stored"
            assert time.monotonic() < deadline, "timed out waiting for the first stored batch"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(nats_server.kill)
        assert not pub.done()  # killed mid-publish
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.start)
        sent = await asyncio.wait_for(pub, 60)
        info = await nc.jetstream().stream_info(raw_stream(SITE))
        await nc.close()
        return sent, info, before

    sent, info, before = asyncio.run(main())
    assert sent["stored"] == sent["batches"] > before  # batches were still to come at the kill
    assert info.state.messages >= sent["batches"]  # every batch stored (a re-send may repeat)


@pytest.mark.integration
def test_mqtt_publish_through_the_nats_listener_lands_in_the_raw_stream(nats_server):
    """Third-party and bridged MQTT gateways: QoS 1 to the listener, stored in the stream."""

    async def setup():
        nc = await connect(nats_server.url, name="setup")
        await ensure_streams(nc.jetstream(), SITE)
        await nc.close()

    asyncio.run(setup())
    port = int(nats_server.mqtt_url.rsplit(":", 1)[1])
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="theengs-1", protocol=paho.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(mqtt_topic(raw_subject(SITE, "a")), signed("a", i, good_ads(NOW)), qos=1)
             for i in range(5)]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()

    async def check():
        nc = await connect(nats_server.url, name="check")
        w = core()
        sub = await nc.jetstream().pull_subscribe(raw_subject(SITE, "a"), stream=raw_stream(SITE))
        msgs = await sub.fetch(5, timeout=10)
        for m in msgs:
            w.handle(m.subject, m.data, m.metadata.sequence.stream, m.metadata.timestamp.timestamp())
        await nc.close()
        return w

    w = asyncio.run(check())
    assert w.counters["batches"] == 5 and w.counters["processed"] == 15
    assert np.isfinite(w.marks.event["a"])


@contextlib.contextmanager
def mqtt_dashboard(server: EmbeddedNats, topic: str):
    """An MQTT 3.1.1 client of the backbone's listener subscribed to ``topic``: yields the
    queue its messages land in (subscription acknowledged first)."""
    import queue
    import threading

    assert server.mqtt_url is not None
    port = int(server.mqtt_url.rsplit(":", 1)[1])
    got: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    subscribed = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dashboard", protocol=paho.MQTTv311)
    client.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload))
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10)
        yield got
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
def test_positions_are_readable_over_mqtt(nats_server):
    """A dashboard speaking MQTT subscribes to tagtwin/v1/<site>/positions on the listener."""
    with mqtt_dashboard(nats_server, mqtt_topic(out_subject(SITE, "positions"))) as got:
        _publish_positions(nats_server)
        assert json.loads(got.get(timeout=10))["positions"][0]["rev"] == 40


def _publish_positions(nats_server) -> None:
    w = core()
    for i in range(10):
        for gw in "abcd":
            w.handle(raw_subject(SITE, gw), signed(gw, i, good_ads(NOW - 20 + i)), 1 + 4 * i + "abcd".index(gw), NOW)
    (subject, payload), *_ = w.tick(NOW, final=True)

    async def publish():
        nc = await connect(nats_server.url, name="worker-out")
        await nc.publish(subject, payload)
        await nc.flush()
        await nc.close()

    asyncio.run(publish())


@pytest.mark.integration
def test_mosquitto_edge_bridge_forwards_into_the_stream(nats_server, tmp_path: Path):
    """The documented edge config (protocol level 4, try_private false) against the real
    listener: batches published to mosquitto end up in the raw stream and verify."""
    import shutil

    from live_bridge.backbone import mosquitto_bridge_config
    from live_bridge.natsserver import free_port
    from tests.live_fixtures import Broker

    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (tests/system-packages.txt)")

    async def setup():
        nc = await connect(nats_server.url, name="setup")
        await ensure_streams(nc.jetstream(), SITE)
        await nc.close()

    asyncio.run(setup())
    nats_mqtt_port = int(nats_server.mqtt_url.rsplit(":", 1)[1])
    conf = tmp_path / "edge.conf"
    port = free_port()
    conf.write_text(mosquitto_bridge_config("127.0.0.1", nats_mqtt_port, SITE, listener_port=port))
    edge = Broker(conf, port)
    edge.start()
    try:
        async def stored() -> int:
            nc = await connect(nats_server.url, name="check")
            info = await nc.jetstream().stream_info(raw_stream(SITE))
            await nc.close()
            return info.state.messages

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-edge", protocol=paho.MQTTv311)
        client.connect("127.0.0.1", port)
        client.loop_start()
        deadline = time.monotonic() + 30
        seq = 0
        # The bridge connects on its own schedule: publish until the stream has batches.
        while asyncio.run(stored()) < 3:
            assert time.monotonic() < deadline, "nothing arrived through the bridge"
            body = signed("a", seq, good_ads(NOW))
            client.publish(mqtt_topic(raw_subject(SITE, "a")), body, qos=1).wait_for_publish(5)
            seq += 1
            time.sleep(0.1)
        client.disconnect()
        client.loop_stop()
    finally:
        edge.stop()

    async def check():
        nc = await connect(nats_server.url, name="check")
        sub = await nc.jetstream().pull_subscribe(raw_subject(SITE, "a"), stream=raw_stream(SITE))
        msgs = await sub.fetch(3, timeout=10)
        w = core()
        for m in msgs:
            w.handle(m.subject, m.data, m.metadata.sequence.stream, m.metadata.timestamp.timestamp())
        await nc.close()
        return w

    w = asyncio.run(check())
    assert w.counters["batches"] == 3 and not any(k.startswith("rejected") for k in w.counters)


@pytest.mark.integration
def test_cli_serve_starts_the_embedded_backbone_and_twin_publish_feeds_it(tmp_path: Path):
    """`tagtwin serve` with no --nats: says where it listens, takes twin-publish's batches,
    publishes positions, and stops its nats-server on SIGTERM with counters on stderr."""
    import os
    import re
    import signal
    import subprocess
    import sys

    repo = Path(__file__).parents[1]
    scenario = tmp_path / "site.toml"
    text = (repo / "scenarios" / "static-open.toml").read_text()
    scenario.write_text(text.replace("duration_s = 12", "duration_s = 3").replace("count = 400", "count = 20")
                        .replace("tag_height_m = 1.0", "tag_height_m = 1.0\nraw_retention_days = 2"))
    keys = tmp_path / "keys.toml"
    keys.write_text("[keys]\n" + "".join(f'"gw-{i:03d}" = "{KEY.hex()}"\n' for i in range(1, 16)))
    keys.chmod(0o600)  # a secret: serve refuses a keys file other users can read
    env = os.environ | {"PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "tagtwin"]
    serve = subprocess.Popen(
        [*cmd, "serve", "--scenario", str(scenario), "--keys", str(keys), "--data-dir", str(tmp_path / "bb"),
         "--nats-port", "0", "--mqtt-port", "0", "--status-every", "0.2", "--site", SITE],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert serve.stderr is not None
        line = serve.stderr.readline()
        found = re.search(r"listening on (nats://\S+) and (mqtt://\S+)", line)
        assert found, line
        url = found.group(1)

        async def positions_after_publish():
            nc = await connect(url, name="watch")
            got: list[dict] = []
            status: list[dict] = []
            await nc.subscribe(out_subject(SITE, "positions"), cb=functools.partial(_append, got))
            await nc.subscribe(out_subject(SITE, "status"), cb=functools.partial(_append, status))
            pub = await asyncio.create_subprocess_exec(
                *cmd, "twin-publish", str(scenario), "--nats", url, "--keys", str(keys), "--site", SITE,
                env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(pub.communicate(), 120)
            assert pub.returncode == 0, err.decode()
            sent = json.loads(out.decode().strip().splitlines()[-1])
            try:
                await until(lambda: sum(len(p["positions"]) for p in got) > 0, 60, "positions")
            except AssertionError:
                raise AssertionError(f"no positions: sent {sent}, last status {status[-1:]}, watcher connected "
                                     f"{nc.is_connected}, stats {nc.stats}") from None
            info = await nc.jetstream().stream_info(raw_stream(SITE))
            await nc.close()
            return sent, info

        try:
            sent, info = asyncio.run(positions_after_publish())
        except AssertionError as exc:
            os.kill(serve.pid, signal.SIGTERM)
            raise AssertionError(f"{exc}\nserve stderr:\n{serve.communicate(timeout=60)[1][-3000:]}") from None
        assert sent["stored"] == sent["batches"] > 0
        assert info.config.max_age == 2 * 86400  # the site's raw-data period
    finally:
        if serve.poll() is None:
            os.kill(serve.pid, signal.SIGTERM)
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    status = json.loads(err.strip().splitlines()[-1])
    assert status["counters"]["processed"] > 0
    assert "Traceback" not in err


# -- late data beyond the in-memory horizon: recomputed from the stream --------------------------


Log = list[tuple[str, bytes, int, float]]


def run_with_cut(w: WorkerCore, cut: range, replay_at: float) -> tuple[list[bytes], Log]:
    """Four gateways, a batch a second each for 30 s; gateway d's batches in ``cut`` are held in
    its spool and replayed at ``replay_at``. Deep passes read back from the returned log."""
    log: list[tuple[str, bytes, int, float]] = []
    out: list[bytes] = []
    t0 = NOW - 200
    spool = []
    for i in range(30):
        for gw in "abcd":
            body = signed(gw, i, good_ads(t0 + i + 0.1 * "abcd".index(gw)))
            if gw == "d" and i in cut:
                spool.append((raw_subject(SITE, gw), body))
                continue
            log.append((raw_subject(SITE, gw), body, len(log) + 1, t0 + i + 0.5))
            w.handle(*log[-1])
        if i == replay_at:
            for subject, body in spool:
                log.append((subject, body, len(log) + 1, t0 + i + 0.6))
                w.handle(*log[-1])
        out += [p for _, p in w.tick(t0 + i + 0.7)]
        rb = w.deep_due(t0 + i + 0.7)
        if rb is not None:
            start = w.deep_start_time(rb)
            for subject, body, seq, received in log:
                if received >= start:
                    w.read_back(rb, subject, body, seq, received)
            out += [p for _, p in w.end_read_back(rb, t0 + i + 0.7)]
    out += [p for _, p in w.tick(NOW, final=True)]
    return out, log


def test_late_batches_beyond_the_horizon_are_recomputed_from_the_stream():
    from live_bridge.faults import latest_positions

    w = core(horizon_s=2.0, idle_s=2.0)
    live, _ = run_with_cut(w, range(5, 17), replay_at=20)
    ref, _ = run_with_cut(core(horizon_s=1e9), range(0), replay_at=-1)
    assert w.counters["late beyond horizon: recomputed from stream"] > 0
    assert w.counters["deep recomputations"] >= 1 and not any(k.startswith("dead") for k in w.counters)
    got, revised = latest_positions(live)
    assert revised > 0 and got == latest_positions(ref)[0]  # the outage windows as if nothing happened


def test_late_data_beyond_max_lateness_is_dead_lettered_with_that_reason():
    w = core(horizon_s=2.0, idle_s=2.0, max_lateness_s=5.0)
    run_with_cut(w, range(5, 17), replay_at=20)
    assert w.counters["dead_lettered: beyond max lateness"] > 0
    with pytest.raises(ValueError, match="shorter than the horizon"):
        WorkerSettings(horizon_s=120, max_lateness_s=60)


def test_late_data_older_than_the_raw_retention_is_dead_lettered():
    w = core(horizon_s=2.0, idle_s=2.0, raw_retention_s=14.0, max_skew_s=1.0)
    run_with_cut(w, range(5, 17), replay_at=26)
    assert w.counters["dead_lettered: older than raw retention"] > 0
    assert w.counters["late beyond horizon: recomputed from stream"] > 0  # the younger part still is


# -- third-party gateways (Theengs, ESPresense) through the MQTT listener ------------------------


def test_third_party_messages_are_unsigned_and_only_from_the_site_gateways():
    w = core(adapters=["theengs", "espresense"])
    theengs = json.dumps({"id": "AA:BB:CC:DD:EE:01", "rssi": -61}).encode()
    espresense = json.dumps({"id": "aabbccddee01", "rssi": -64, "rssi@1m": -59}).encode()
    assert w.handle("home.a.BTtoMQTT.AABBCCDDEE01", theengs, 1, NOW) == []
    assert w.handle("espresense.devices.aabbccddee01.b", espresense, 2, NOW) == []
    assert w.counters["sightings_in: unsigned third-party"] == 2 and w.counters["processed"] == 2
    assert list(w.devices.ids) == ["AA:BB:CC:DD:EE:01"]  # one tag, whichever firmware heard it
    bad = [w.handle("home.intruder.BTtoMQTT.AABBCCDDEE01", theengs, 3, NOW),
           w.handle("espresense.devices.x.b", b"{not json", 4, NOW),
           w.handle("espresense.devices.x.b", json.dumps({"id": "x", "rssi": 300}).encode(), 5, NOW),
           core().handle("home.a.BTtoMQTT.AABBCCDDEE01", theengs, 1, NOW)]  # adapter not switched on
    assert [reasons(b) for b in bad] == [["gateway not in site plan"], ["malformed json"], ["schema violation"],
                                         ["unexpected subject"]]
    assert w.counters["processed"] == 2


@pytest.mark.integration
def test_theengs_and_espresense_over_mqtt_reach_positions(nats_server):
    """MQTT 3.1.1 publishes in each firmware's own topic and JSON, to the backbone's listener:
    stored in the raw stream, decoded by the adapters, placed, published as positions."""
    import threading

    async def main():
        w = core(adapters=("theengs", "espresense"), idle_s=0.5, status_every_s=0.2)
        nc = await connect(nats_server.url, name="worker")
        sub = await connect(nats_server.url, name="dashboard")
        positions: list[dict] = []
        dead: list[dict] = []
        await sub.subscribe(out_subject(SITE, "positions"), cb=functools.partial(_append, positions))
        await sub.subscribe(out_subject(SITE, "deadletter"), cb=functools.partial(_append, dead))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop, ready=ready))
        await ready.wait()  # streams exist with the third-party subjects
        port = int(nats_server.mqtt_url.rsplit(":", 1)[1])
        connected = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="firmware", protocol=paho.MQTTv311)
        client.on_connect = lambda *_: connected.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert await asyncio.to_thread(connected.wait, 10)
        infos = []
        for i in range(3):
            for gw, rssi in (("a", -55), ("b", -70)):  # Theengs Gateway: <base>/<gw>/BTtoMQTT/<MAC>
                body = json.dumps({"id": "AA:BB:CC:DD:EE:01", "rssi": rssi + i}).encode()
                infos.append(client.publish(f"home/{gw}/BTtoMQTT/AABBCCDDEE01", body, qos=1))
            for gw, rssi in (("c", -75), ("d", -66)):  # ESPresense: espresense/devices/<id>/<room>
                body = json.dumps({"id": "aabbccddee01", "rssi": rssi + i, "rssi@1m": -59}).encode()
                infos.append(client.publish(f"espresense/devices/aabbccddee01/{gw}", body, qos=1))
        infos.append(client.publish("espresense/devices/aabbccddee01/nowhere", b'{"id":"x","rssi":-50}', qos=1))
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)
        client.disconnect()
        client.loop_stop()
        await until(lambda: any(p["dev"] == "AA:BB:CC:DD:EE:01" for b in positions for p in b["positions"])
                    and dead, what="positions from third-party gateways")
        stop.set()
        await task
        await nc.close()
        await sub.close()
        return w, positions, dead

    w, positions, dead = asyncio.run(main())
    fix = next(p for b in positions for p in b["positions"] if p["dev"] == "AA:BB:CC:DD:EE:01")
    assert fix["n_gw"] >= 2 and 0 <= fix["x"] <= 12 and 0 <= fix["y"] <= 12
    assert w.counters["sightings_in: unsigned third-party"] == 12 and w.counters["processed"] == 12
    assert [d["reason"] for d in dead] == ["gateway not in site plan"]


@pytest.mark.integration
def test_a_stop_right_after_an_idle_close_checkpoints_it(nats_server):
    """An idle close published since the last checkpoint, with every input acked already: the
    checkpoint the stop writes covers it, so the next holder does not publish it again."""
    from live_bridge.backbone import CHECKPOINT_BUCKET, object_get
    from live_bridge.worker import checkpoint_bytes

    async def main():
        # every round with input checkpoints (max_ack_pending 2), a timed checkpoint never comes
        w = core(idle_s=0.5, checkpoint_every_s=3600.0, max_ack_pending=2)
        nc = await connect(nats_server.url, name="worker")
        js = nc.jetstream()
        await ensure_streams(js, SITE)
        for i in range(5):
            await publish_batch(js, raw_subject(SITE, "a"), signed("a", i, good_ads(NOW - 10 + i)))
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(w, nc, stop))
        await until(lambda: w.counters["processed"] == 15 and w.counters["positions"] > 0 and w.windows_open() == 0,
                    what="the idle close")
        stop.set()
        await task
        blob = await object_get(js, CHECKPOINT_BUCKET, w.settings.checkpoint_name)
        await nc.close()
        return w, json.loads(checkpoint_bytes(blob) if blob else b"{}")

    w, checkpoint = asyncio.run(main())
    assert checkpoint["windows"]["closed_through"] == w.windows.closed_through is not None
