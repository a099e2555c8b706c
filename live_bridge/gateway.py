"""The gateway: scan (bleak) -> filter -> decode -> batch -> sign -> spool -> MQTT QoS 1.

Threads: bleak and the gateway's own bookkeeping run on one asyncio loop; paho's
network thread only pushes acknowledgements and connection changes into thread-safe
queues, so the spool and the counters have a single owner and need no locks.

The radio source is swappable like bleak's backends: :class:`BleakSource` scans a real
adapter (or BlueZ's D-Bus emulation in tests); the twin publisher and the benchmarks
call :meth:`Gateway.on_advertisement` directly or hand over ready records.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import queue
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import paho.mqtt.client as paho
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from live_bridge.backbone import connect, drain_spool, gateway_status_subject, raw_subject
from live_bridge.decoders import ANON_PREFIX, BASE_UUID_SUFFIX, decode, norm_mac, norm_uuid
from live_bridge.filters import AdvertFilter, privacy_hash
from live_bridge.finding import FINDMY_KEY_LEN, Resolver
from live_bridge.mqtt import BrokerUrl, Creds, make_client
from live_bridge.spool import FullPolicy, Spool
from live_bridge.wire import (
    Advert,
    Batch,
    GatewayStatus,
    advert_from,
    batch_topic,
    encode_batch,
    status_topic,
)
from siteplan.config_file import ConfigFileError, load_toml, validation_problems

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

log = logging.getLogger("tagtwin.gateway")
MAX_REMEMBERED_ADDRESSES = 100_000
REFUSED_RETRY_S = 30.0  # pause after the broker refuses a publish (MQTT 5 PUBACK reason)


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScanConfig(_Cfg):
    mode: Literal["active", "passive"] = "active"
    adapter: str | None = Field(
        default=None, description="BlueZ adapter, e.g. hci0; default: the system's"
    )
    duty_on_s: float | None = Field(
        default=None, gt=0, description="scan this long, then pause; unset: continuous"
    )
    duty_off_s: float = Field(default=0.0, ge=0)
    backoff_min_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    watchdog_s: float = Field(
        default=120.0, gt=0, description="restart the scanner after this long without adverts"
    )
    duplicate_data: bool = Field(
        default=True, description="active mode: ask BlueZ for repeated packets too"
    )


class BatchConfig(_Cfg):
    max_age_s: float = Field(default=0.5, gt=0, le=60)
    max_size: int = Field(default=200, ge=1, le=10_000)


class MqttConfig(_Cfg):
    max_inflight: int = Field(default=20, ge=1, le=1000)
    keepalive_s: int = Field(default=30, ge=5)
    heartbeat_s: float = Field(default=10.0, gt=0)


class SpoolConfig(_Cfg):
    path: Path = Path("gateway-spool.sqlite")
    max_mb: float = Field(default=64.0, gt=0)
    full_policy: FullPolicy = "drop-oldest"


class FilterConfig(_Cfg):
    addresses: list[str] = []
    service_uuids: list[str] = []
    manufacturer_ids: list[int] = []


class PrivacyConfig(_Cfg):
    enabled: bool = False
    salt_hex: str = ""

    @field_validator("salt_hex")
    @classmethod
    def _hex(cls, v: str) -> str:
        bytes.fromhex(v)
        return v


class FindHubTagConfig(_Cfg):
    eik_hex: str = Field(
        min_length=64, max_length=64, description="ephemeral identity key, 32 bytes hex"
    )
    clock_offset_s: float = Field(
        default=0.0, description="tag clock minus Unix time at provisioning, seconds"
    )
    search_periods: int = Field(
        default=2, ge=0, le=96, description="rotation periods searched either side"
    )

    @field_validator("eik_hex")
    @classmethod
    def _eik(cls, v: str) -> str:
        bytes.fromhex(v)
        return v


def findmy_key_bytes(text: str) -> bytes:
    """A Find My key as OpenHaystack-style tools print it (base64) or as hex."""
    t = text.strip()
    try:
        return bytes.fromhex(t) if len(t) == 2 * FINDMY_KEY_LEN else base64.b64decode(t, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"find my key {t[:12]}... is neither hex nor base64") from None


class GatewayConfig(_Cfg):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=64)
    key_hex: str = Field(
        min_length=32, description="HMAC key shared with the server, hex (>= 16 bytes)"
    )
    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="mqtt://host:port (a broker), or nats://host:port[,nats://...] (the backbone: "
        "a spool row is deleted only when the stream has stored the batch)",
    )
    site: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="site (backbone subjects)")
    scan: ScanConfig = ScanConfig()
    batch: BatchConfig = BatchConfig()
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    filter: FilterConfig = FilterConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    bindkeys: dict[str, str] = Field(
        default_factory=dict,
        description="MAC -> MiBeacon bindkey: 32 hex chars (v4/v5), 24 or 32 (legacy v2/v3)",
    )
    findhub: dict[str, FindHubTagConfig] = Field(
        default_factory=dict, description="tag id -> Find Hub (FMDN) identity key and clock"
    )
    findmy: dict[str, list[str]] = Field(
        default_factory=dict,
        description="tag id -> Find My advertised public keys (28 bytes, base64 or hex)",
    )

    @field_validator("key_hex")
    @classmethod
    def _key(cls, v: str) -> str:
        bytes.fromhex(v)
        return v

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        if not v.startswith("nats://"):
            BrokerUrl.parse(v, Creds())  # the scheme and host only; credentials load at connect
        return v

    @field_validator("bindkeys")
    @classmethod
    def _bindkeys(cls, v: dict[str, str]) -> dict[str, str]:
        for mac, key in v.items():
            if len(bytes.fromhex(key)) not in (12, 16):
                raise ValueError(f"bindkey of {mac} must be 16 bytes (32 hex chars) or 12 (24)")
        return v

    @field_validator("findmy")
    @classmethod
    def _findmy(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for tag, keys in v.items():
            for key in keys:
                if len(findmy_key_bytes(key)) != FINDMY_KEY_LEN:
                    raise ValueError(f"find my key of {tag} must be 28 bytes (base64 or hex)")
        return v

    def resolver(self) -> Resolver | None:
        """The finding-network resolver for the configured tags, if any."""
        if not self.findhub and not self.findmy:
            return None
        return Resolver(
            {t: bytes.fromhex(c.eik_hex) for t, c in self.findhub.items()},
            {t: [findmy_key_bytes(k) for k in keys] for t, keys in self.findmy.items()},
            clock_offsets={t: c.clock_offset_s for t, c in self.findhub.items()},
            search_periods=max((c.search_periods for c in self.findhub.values()), default=2),
        )

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.key_hex)


class ConfigError(ConfigFileError):
    """A gateway config or key file that cannot be used, naming file and field."""


def load_gateway_config(path: Path | str) -> GatewayConfig:
    """Read gateway.toml; errors name the file and the field."""
    data = load_toml(path, ConfigError)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None


class Gateway:
    """Batching, signing, spooling and publishing for one gateway id."""

    def __init__(self, config: GatewayConfig, client: paho.Client | None = None) -> None:
        self.config = config
        self.key = config.key
        self.filter = AdvertFilter.build(
            config.filter.addresses, config.filter.service_uuids, config.filter.manufacturer_ids
        )
        self.bindkeys = {norm_mac(m): bytes.fromhex(k) for m, k in config.bindkeys.items()}
        self.resolver = config.resolver()
        self.salt = bytes.fromhex(config.privacy.salt_hex) if config.privacy.enabled else None
        self.spool = Spool(
            config.spool.path, int(config.spool.max_mb * 2**20), config.spool.full_policy
        )
        self.nats = config.broker.startswith("nats://")
        self.topic = raw_subject(config.site, config.id) if self.nats else batch_topic(config.id)
        self.epoch = self.spool.epoch()
        self.counters: Counter[str] = Counter()
        self._pending: list[Advert] = []
        self._frame_owner: dict[str, str] = {}  # address -> Eddystone UID/EID id last seen there
        self._pending_since = 0.0
        self._inflight: dict[int, int] = {}  # paho mid -> spool row id
        self._last_sent_row = 0
        self._hold_until = 0.0  # after a refused publish, no sending until then
        self._events: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.last_advert = time.monotonic()
        self.client: paho.Client | None = None  # MQTT mode only; the backbone is asyncio
        if not self.nats:
            self.client = client or make_client(
                f"tagtwin-gw-{config.id}", BrokerUrl.parse(config.broker)
            )
            offline = GatewayStatus(gw=config.id, state="offline").model_dump_json().encode()
            self.client.will_set(status_topic(config.id), offline, qos=1, retain=True)
            self.client.on_connect = self._on_connect
            self.client.on_disconnect = self._on_disconnect
            self.client.on_publish = self._on_publish

    # -- paho thread: only enqueue ----------------------------------------------------

    def _notify(self, kind: str, value: int = 0) -> None:
        self._events.put((kind, value))
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._wake.set)

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: object,
        _properties: object = None,
    ) -> None:
        self._notify("connect", 0 if not getattr(reason, "is_failure", False) else 1)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        _reason: object,
        _properties: object = None,
    ) -> None:
        self._notify("disconnect")

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: object,
        _properties: object = None,
    ) -> None:
        # MQTT 5 (mqtts://): a refused publish is a PUBACK with a failure reason code.
        self._notify("refused" if getattr(reason, "is_failure", False) else "ack", mid)

    # -- input ------------------------------------------------------------------------

    def on_advertisement(
        self,
        address: str,
        rssi: float,
        manufacturer_data: Mapping[int, bytes],
        service_data: Mapping[str, bytes],
        t: float | None = None,
    ) -> None:
        """One advertisement from the radio: filter, decode, queue for the next batch."""
        self.counters["scanned"] += 1
        self.last_advert = time.monotonic()
        if not self.filter.accepts(address, manufacturer_data, service_data):
            self.counters["filtered_out"] += 1
            return
        now = time.time() if t is None else t
        d = decode(
            address, manufacturer_data, service_data, self.bindkeys, resolver=self.resolver, now=now
        )
        if d.error is not None:  # still forwarded: counted, never a dropped sighting
            self.counters[f"decode_error: {d.error}"] += 1
        if "trailing_bytes" in d.extra:
            self.counters[f"{d.fmt} trailing bytes"] += 1
        if d.dev.startswith(ANON_PREFIX):
            self.counters[f"anonymous {d.fmt}"] += 1
        if d.fmt in ("eddystone-uid", "eddystone-eid"):
            if len(self._frame_owner) > MAX_REMEMBERED_ADDRESSES:
                self._frame_owner.clear()
            self._frame_owner[address] = d.dev
        elif d.fmt == "eddystone-tlm" and address in self._frame_owner:
            # TLM carries no identity: an Eddystone beacon interleaves it with its UID or
            # EID frames from the same address, so its battery belongs to that identity.
            d.dev = self._frame_owner[address]
        hashed = self.salt is not None and not d.dev.startswith(ANON_PREFIX)
        dev = privacy_hash(d.dev, self.salt) if hashed and self.salt is not None else d.dev
        try:
            advert = advert_from(d, t=now, rssi=rssi, dev=dev)
        except ValidationError as exc:  # e.g. RSSI 127, "not available" on some adapters
            self.counters[f"invalid advert: {exc.errors()[0]['loc'][0]}"] += 1
            return
        self.add(advert)

    def add(self, advert: Advert) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(advert)
        self.counters["forwarded"] += 1
        if len(self._pending) >= self.config.batch.max_size:
            self.flush()

    # -- batching, spool, publish ---------------------------------------------------------

    def flush(self, now: float | None = None) -> None:
        """Seal the pending adverts into a signed batch in the spool, then send what fits."""
        if not self._pending:
            return
        batch = Batch(
            gw=self.config.id,
            seq=self.spool.next_seq(),
            ep=self.epoch,
            sent=time.time() if now is None else now,
            ads=self._pending,
        )
        self._pending = []
        if self.spool.put(self.topic, encode_batch(batch, self.key)):
            self.counters["batches"] += 1
        self.pump()

    def flush_due(self) -> None:
        if self._pending and time.monotonic() - self._pending_since >= self.config.batch.max_age_s:
            self.flush()

    def pump(self) -> None:
        """Handle acks and connection changes, then publish spooled batches up to the bound
        (MQTT mode; on the backbone the publish loop in :meth:`_run_nats` does this)."""
        if self.client is None:
            return
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "ack":
                row = self._inflight.pop(value, None)
                if row is not None:
                    self.spool.ack(row)
                    self.counters["published"] += 1
            elif kind == "refused":
                row = self._inflight.pop(value, None)
                if row is not None:
                    # Kept in the spool and sent again after a pause: the refusal is a
                    # configuration error (ACL, identity) someone must fix; no data is lost.
                    self.counters["refused"] += 1
                    self._last_sent_row = min(self._last_sent_row, row - 1)
                    self._hold_until = time.monotonic() + REFUSED_RETRY_S
                    log.error("broker refused the publish on %s (not authorized?); the batch stays "
                              "in the spool, retry in %.0f s", self.topic, REFUSED_RETRY_S)
            elif kind == "connect" and value == 0:
                self.connected = True
                self.counters["connects"] += 1
                self._publish_status("online")
            elif kind == "disconnect":
                self.connected = False
        if not self.connected or time.monotonic() < self._hold_until:
            return
        room = self.config.mqtt.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for row_id, topic, payload in self.spool.peek(self._last_sent_row, room):
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self.connected = False  # paho keeps it queued and resends it on reconnect
            self._inflight[info.mid] = row_id
            self._last_sent_row = row_id

    def status_counters(self) -> dict[str, int]:
        c = dict(self.counters)
        c["spool_rows"] = self.spool.rows
        c["spool_bytes"] = self.spool.bytes
        c["spool_dropped"] = self.spool.dropped
        c["inflight"] = len(self._inflight)
        if self.resolver is not None:  # resolved / anonymous / clock corrections
            c.update(self.resolver.counters)
        return c

    def _publish_status(self, state: Literal["online", "offline"]) -> None:
        if self.client is None:
            return
        msg = GatewayStatus(
            gw=self.config.id, state=state, t=time.time(), counters=self.status_counters()
        )
        self.client.publish(
            status_topic(self.config.id), msg.model_dump_json().encode(), qos=1, retain=True
        )

    @property
    def idle(self) -> bool:
        """Nothing pending, nothing spooled, nothing in flight."""
        return not self._pending and self.spool.rows == 0 and not self._inflight

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, then flush by age, pump and heartbeat until ``stop`` is set."""
        if self.client is None:
            await self._run_nats(stop)
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        broker = BrokerUrl.parse(self.config.broker)
        self.client.connect_async(broker.host, broker.port, keepalive=self.config.mqtt.keepalive_s)
        self.client.loop_start()
        tick = min(self.config.batch.max_age_s / 4, 0.05)
        next_beat = time.monotonic() + self.config.mqtt.heartbeat_s
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick)
                self._wake.clear()
                self.flush_due()
                self.pump()
                if time.monotonic() >= next_beat:
                    next_beat += self.config.mqtt.heartbeat_s
                    if self.connected:
                        self._publish_status("online")
        finally:
            await self.shutdown()

    async def _run_nats(self, stop: asyncio.Event, drain_s: float = 5.0) -> None:
        """The backbone: seal batches by age into the spool and drain it into the stream,
        each row deleted on its publish ack; a refusal or a missing ack keeps the row, is
        logged and counted, and the next try waits a little (the client reconnects itself)."""
        nc = await connect(self.config.broker, name=f"tagtwin-gw-{self.config.id}", wait_s=float("inf"))
        js = nc.jetstream()
        self.connected = True
        tick = min(self.config.batch.max_age_s / 4, 0.05)
        status_subject = gateway_status_subject(self.config.site, self.config.id)
        next_beat = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.config.mqtt.heartbeat_s
                    beat = GatewayStatus(gw=self.config.id, state="online", t=time.time(),
                                         counters=self.status_counters())
                    with contextlib.suppress(Exception):  # a heartbeat is best effort
                        await nc.publish(status_subject, beat.model_dump_json().encode())
                self.flush_due()
                before = self.spool.rows
                if before:
                    await drain_spool(js, self.spool, self.counters, max_inflight=self.config.mqtt.max_inflight)
                    self.connected = nc.is_connected
                    if self.spool.rows and self.spool.rows >= before:
                        await asyncio.sleep(0.25)  # refused or unacked: back off before the retry
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
            self.flush()
            deadline = time.monotonic() + drain_s
            while self.spool.rows and time.monotonic() < deadline:
                await drain_spool(js, self.spool, self.counters, max_inflight=self.config.mqtt.max_inflight,
                                  timeout=max(0.1, deadline - time.monotonic()))
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
            self.spool.close()

    async def shutdown(self, drain_s: float = 5.0) -> None:
        """Flush, wait up to ``drain_s`` for acks, say offline, disconnect."""
        assert self.client is not None
        self.flush()
        deadline = time.monotonic() + drain_s
        while (
            self.connected and (self.spool.rows or self._inflight) and time.monotonic() < deadline
        ):
            self.pump()
            await asyncio.sleep(0.01)
        if self.connected:
            self._publish_status("offline")
            await asyncio.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()


def scanner_problem(exc: BaseException) -> str:
    """What a scanner error means for the person at the gateway: bleak reaches the radio
    through BlueZ over the system D-Bus, and a missing socket reads as a bare ENOENT."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) or "org.freedesktop.DBus" in text or "dbus" in text.lower():
        return (f"{text}: cannot reach BlueZ over the system D-Bus; is bluetoothd running "
                "(systemctl status bluetooth) and /run/dbus/system_bus_socket present?")
    if "org.bluez" in text and ("NotReady" in text or "No such adapter" in text or "not found" in text.lower()):
        return f"{text}: the Bluetooth adapter is missing or powered off (bluetoothctl power on)"
    return text


class BleakSource:
    """Scans with bleak's BleakScanner and a detection callback; restarts with backoff.

    Passive scanning on BlueZ needs advertisement-monitor patterns: they are derived from
    the filter (or MiBeacon, Eddystone and Apple data when no filter is set).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cfg = gateway.config.scan

    def scanner_kwargs(self) -> dict[str, object]:
        """BleakScanner arguments: mode, adapter, and BlueZ filters or monitor patterns."""
        from bleak.args.bluez import OrPattern
        from bleak.assigned_numbers import AdvertisementDataType

        bluez: dict[str, object] = {}
        if self.cfg.adapter:
            bluez["adapter"] = self.cfg.adapter
        if self.cfg.mode == "active":
            # Report every packet, not only changed ones (BlueZ still merges identical
            # consecutive reports into one D-Bus property change).
            bluez["filters"] = {"DuplicateData": self.cfg.duplicate_data}
        else:
            f = self.gateway.config.filter
            uuids = [norm_uuid(u) for u in (f.service_uuids or ["fe95", "feaa"])]
            patterns = [
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, bytes.fromhex(u[4:8])[::-1])
                for u in uuids
                if u.endswith(BASE_UUID_SUFFIX)
            ]
            patterns += [
                OrPattern(
                    0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, m.to_bytes(2, "little")
                )
                for m in (f.manufacturer_ids or [0x004C])
            ]
            bluez["or_patterns"] = patterns
        kwargs: dict[str, object] = {"scanning_mode": self.cfg.mode, "bluez": bluez}
        return kwargs

    def _scanner(self) -> object:
        from bleak import BleakScanner

        def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
            self.gateway.on_advertisement(
                device.address, adv.rssi, adv.manufacturer_data, adv.service_data
            )

        return BleakScanner(on_adv, **self.scanner_kwargs())  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.cfg.backoff_min_s
        while not stop.is_set():
            scanner = self._scanner()
            try:
                await scanner.start()  # type: ignore[attr-defined]
                self.gateway.counters["scanner_starts"] += 1
                backoff = self.cfg.backoff_min_s
                self.gateway.last_advert = time.monotonic()
                await self._scan_period(stop)
                await scanner.stop()  # type: ignore[attr-defined]
                if self.cfg.duty_on_s is not None and self.cfg.duty_off_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.cfg.duty_off_s)
            except Exception as exc:  # bleak raises BleakError, D-Bus and OS errors alike
                self.gateway.counters["scanner_errors"] += 1
                log.warning("scanner failed (%s); restarting in %.1f s", scanner_problem(exc), backoff)
                with contextlib.suppress(Exception):
                    await scanner.stop()  # type: ignore[attr-defined]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self.cfg.backoff_max_s)

    async def _scan_period(self, stop: asyncio.Event) -> None:
        """Until stop, the end of the duty-cycle on-time, or the watchdog fires."""
        end = (
            time.monotonic() + self.cfg.duty_on_s
            if self.cfg.duty_on_s is not None
            else float("inf")
        )
        while not stop.is_set() and time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, max(end - time.monotonic(), 0.01)))
            if time.monotonic() - self.gateway.last_advert > self.cfg.watchdog_s:
                raise RuntimeError(f"no advertisement for {self.cfg.watchdog_s:g} s")


async def run_gateway(config: GatewayConfig, stop: asyncio.Event | None = None) -> Gateway:
    """The ``tagtwin gateway`` main loop: scanner and publisher until ``stop``."""
    stop = stop or asyncio.Event()
    gw = Gateway(config)
    await asyncio.gather(gw.run(stop), BleakSource(gw).run(stop))
    return gw
