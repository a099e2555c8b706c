"""Real processes for the live-bridge tests: a mosquitto broker and an emulated BlueZ.

Both start on private addresses (a free loopback port; a D-Bus bus in a temp dir that
stands in as the *system* bus through DBUS_SYSTEM_BUS_ADDRESS) and are stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"""


def broker_conf(port: int, persist_dir: Path | None = None) -> str:
    """mosquitto's config for the tests. With ``persist_dir`` the broker keeps sessions
    (subscriptions, queued QoS 1 messages) and retained messages across a restart: it
    writes them there when stopped (SIGTERM) and reads them back on start. Run as root,
    mosquitto drops to user ``mosquitto``, which cannot write into pytest's private
    tmp_path (it logs the failure and keeps nothing), so it is told to stay root."""
    conf = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_inflight_messages 0\nmax_queued_messages 100000\n"
    )
    if persist_dir is None:
        return conf + "persistence false\n"
    conf += f"persistence true\npersistence_location {persist_dir}/\n"
    return conf + ("user root\n" if os.geteuid() == 0 else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@dataclass
class Broker:
    conf: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    store: Path | None = None  # persistence_location, when the broker persists

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            self.proc.wait(10)
        self.proc = None


def _broker(tmp_path: Path, persist: bool) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.skip(
            "mosquitto is not installed (tests/system-packages.txt; ./run test installs it)"
        )
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    store = None
    if persist:
        store = tmp_path / "mosquitto-store"
        store.mkdir()
    conf.write_text(broker_conf(port, store))
    broker = Broker(conf, port, store=store)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    yield from _broker(tmp_path, persist=False)


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions and queued messages across its restart (stop, start)."""
    yield from _broker(tmp_path, persist=True)


@dataclass
class FakeBluez:
    """python-dbusmock's bluez5 template on a private bus; drive it like a radio."""

    address: str
    bus: object
    device_paths: dict[tuple[str, str], str] = field(default_factory=dict)

    def _mock(self, path: str, iface: str) -> object:
        import dbus

        return dbus.Interface(self.bus.get_object("org.bluez", path), iface)  # type: ignore[attr-defined]

    def add_adapter(self, name: str) -> str:
        return str(self._mock("/", "org.bluez.Mock").AddAdapter(name, f"tagtwin-{name}"))  # type: ignore[attr-defined]

    def advertise(
        self,
        adapter: str,
        mac: str,
        rssi: int,
        manufacturer: dict[int, bytes] | None = None,
        service: dict[str, bytes] | None = None,
    ) -> None:
        """One advertisement as BlueZ reports it: RSSI, ManufacturerData, ServiceData."""
        import dbus

        key = (adapter, mac)
        if key not in self.device_paths:
            # The template's AddDevice types the empty ManufacturerData/ServiceData as
            # arrays of dicts (bleak logs one error for that InterfacesAdded); every
            # advertisement below sets both as the dicts BlueZ sends, which repairs them.
            self.device_paths[key] = str(
                self._mock("/", "org.bluez.Mock").AddDevice(adapter, mac, "tag")
            )  # type: ignore[attr-defined]
        props = {
            "RSSI": dbus.Int16(rssi),
            "ManufacturerData": dbus.Dictionary(
                {
                    dbus.UInt16(k): dbus.Array(v, signature="y")
                    for k, v in (manufacturer or {}).items()
                },
                signature="qv",
            ),
            "ServiceData": dbus.Dictionary(
                {k: dbus.Array(v, signature="y") for k, v in (service or {}).items()},
                signature="sv",
            ),
        }
        self._mock(self.device_paths[key], "org.freedesktop.DBus.Mock").UpdateProperties(  # type: ignore[attr-defined]
            "org.bluez.Device1", props
        )


@pytest.fixture
def fake_bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBluez]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus)")
    dbus = pytest.importorskip("dbus", reason="dbus-python is not installed (test extra)")
    pytest.importorskip("dbusmock", reason="python-dbusmock is not installed (test extra)")
    sock_dir = tmp_path / "bus"
    sock_dir.mkdir()
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONFIG.format(dir=sock_dir))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--print-address=1", "--nofork"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    mock = None
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        mock = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "bluez5"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": address},
        )
        bus = dbus.bus.BusConnection(address)
        deadline = time.monotonic() + 60  # python -m dbusmock imports for seconds on a loaded machine
        while not bus.name_has_owner("org.bluez"):
            if time.monotonic() > deadline:
                raise TimeoutError("dbusmock bluez5 did not come up")
            time.sleep(0.02)
        yield FakeBluez(address, bus)
        bus.close()
    finally:
        for proc in (mock, daemon):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, 15)
                proc.wait(10)


class Collector:
    """A paho subscriber that keeps (topic, payload) of everything on its filters."""

    def __init__(
        self, url: str, topics: list[str], client_id: str | None = None, clean_session: bool = True
    ) -> None:
        """``client_id`` with ``clean_session`` false: a persistent session, as the MQTT
        server keeps (``live_bridge.server.serve``): the broker queues QoS 1 messages for it
        while it is away, and keeps them across its own restart when it persists."""
        from live_bridge.mqtt import BrokerUrl, make_client

        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        broker = BrokerUrl.parse(url)
        self.client = make_client(client_id or f"collector-{id(self)}", broker, clean_session=clean_session)

        def on_connect(c, u, f, reason, p=None):  # type: ignore[no-untyped-def]
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(c, u, mid, reason_codes, p=None):  # type: ignore[no-untyped-def]
            self.ready.set()

        def on_message(c, u, msg):  # type: ignore[no-untyped-def]
            with self.lock:
                self.messages.append((msg.topic, msg.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.ready.wait(60):
            raise TimeoutError("collector did not subscribe")

    def on(self, prefix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t.startswith(prefix)]

    def wait_for(self, prefix: str, n: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(prefix)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return self.on(prefix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
