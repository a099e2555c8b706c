"""The server: MQTT batches in, verified, into the same sans-IO Engine, positions out.

:class:`ServerCore` has no sockets (like the engine): ``handle(topic, body, now)`` and
``tick(now)`` return the messages to publish. :func:`serve` wraps it in a paho client.

Checks, in order, each rejection counted and sent to the dead-letter topic with its
reason: envelope shape, known gateway, HMAC signature, schema, topic matches the
signed gateway id, batch sequence not replayed (a sliding window per gateway, like
IPsec's anti-replay window, RFC 4303 section 3.4.3, so reordering inside the window
is accepted). Sightings are deduplicated by the engine's ingest.

Time: the engine counts windows from 0, so live Unix times are shifted by an origin
chosen at the first accepted batch. In ``wall`` clock mode windows also close as wall
time passes (positions keep coming when a gateway goes quiet); in ``event`` mode only
event time drives them (replays of old captures, the twin as fast as possible).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from engine.contract import UNKNOWN, IdTable, sightings_from_columns
from engine.ingest import NewDeviceCap
from engine.localize import METHOD_NAMES
from engine.pipeline import Engine, EngineConfig
from live_bridge.adapters import AdapterError, parse_espresense, parse_theengs
from live_bridge.config import KeyRing, load_key_ring
from live_bridge.decoders import ANON_PREFIX
from live_bridge.gateway import ConfigError
from live_bridge.wire import (
    BATCH_SUBSCRIPTION,
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    POSITIONS_TOPIC,
    REPLAY_WINDOW,
    SERVER_STATUS_TOPIC,
    Advert,
    DeadLetter,
    Event,
    WireError,
    verify_signed,
)
from siteplan.zones import NO_ZONE

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    import paho.mqtt.client as paho
    from numpy.typing import NDArray

    from engine.audit import LiveAudit
    from engine.contract import Sightings
    from engine.rules import Event as RuleEvent
    from engine.rules import RuleEngine

log = logging.getLogger("tagtwin.serve")

Outgoing = tuple[str, bytes, bool]  # topic, payload, retain
ClockMode = Literal["wall", "event"]
ORIGIN_MARGIN_S = 60.0  # event times may precede the first batch's by this much
SEQ_MASK = 0x7FFFFFFF  # the sighting contract's seq is int32
MAX_MESSAGE_BYTES = 1 << 20  # larger messages are refused unread (the backbone's stream cap too)
REVOKED_EVENT_EVERY_S = 60.0  # one revoked-traffic event per gateway or tag per minute


class EventSink(Protocol):
    """Turns sightings and closed-window fixes into events; the rules engine plugs in here."""

    def on_sightings(self, rows: Sightings) -> None: ...

    def on_fixes(
        self, fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float
    ) -> list[Event]: ...


class NullSink:
    def on_sightings(self, rows: Sightings) -> None:
        del rows  # positions only

    def on_fixes(
        self, fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float
    ) -> list[Event]:
        del fixes, devices, zone_names, origin  # nothing to report
        return []


class ZoneChangeSink:
    """Emits ``zone-change`` when a device's fix lands in another zone than its last one."""

    def __init__(self) -> None:
        self.last = np.zeros(0, np.int32)

    def on_sightings(self, rows: Sightings) -> None:
        del rows  # zone changes come from fixes alone

    def on_fixes(
        self, fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float
    ) -> list[Event]:
        if len(fixes) == 0:
            return []
        n = int(fixes["device"].max()) + 1
        if n > len(self.last):
            self.last = np.r_[self.last, np.full(n - len(self.last), -2, np.int32)]
        order = np.lexsort((fixes["t"], fixes["device"]))
        dev, zone = fixes["device"][order], fixes["zone"][order]
        prev = self.last[dev]
        same = np.r_[False, dev[1:] == dev[:-1]]
        prev[same] = zone[:-1][same[1:]]  # within a device, the previous row's zone
        self.last[dev] = zone  # rows are time-ordered per device: the last write wins
        events = []
        for i in np.flatnonzero((zone != prev) & (prev != -2)):  # changes only: few rows
            j = order[i]
            events.append(
                Event(
                    t=float(fixes["t"][j]) + origin,
                    kind="zone-change",
                    dev=devices.ids[int(dev[i])],
                    detail={
                        "from": zone_names[prev[i]] if prev[i] >= 0 else None,
                        "to": zone_names[zone[i]] if zone[i] >= 0 else None,
                    },
                )
            )
        return events


@dataclass
class ReplayGuard:
    """Sliding anti-replay window of batch sequence numbers for one gateway."""

    highest: int = -1
    seen: set[int] | None = None

    def check_and_mark(self, seq: int) -> bool:
        if self.seen is None:
            self.seen = set()
        if seq <= self.highest - REPLAY_WINDOW or seq in self.seen:
            return False
        self.seen.add(seq)
        if seq > self.highest:
            self.highest = seq
            if len(self.seen) > 2 * REPLAY_WINDOW:
                self.seen = {s for s in self.seen if s > self.highest - REPLAY_WINDOW}
        return True


class RulesSink:
    """The rules engine (engine/rules) behind the server: zone, dwell, exit, missing-tag,
    battery, gateway-health, registry and after-hours events on the events topic.

    Sightings go to the rules as they are ingested (presence and gateway health need
    them), fixes as windows close; each rule event becomes a wire Event whose ``kind`` is
    the rule and whose ``detail`` carries position, 90 % radius, confidence, rule-set
    version and the evidence, flattened.
    """

    def __init__(self, rules: RuleEngine, audit: LiveAudit | None = None) -> None:
        self.rules = rules
        self.audit = audit  # money-relevant events to the audit log, with their evidence
        self._held: list[RuleEvent] = []
        self._now = 0.0

    def on_sightings(self, rows: Sightings) -> None:
        if len(rows):
            self._held += self.rules.observe_sightings(rows)
            self._now = max(self._now, float(rows["t"].max()))
            if self.audit is not None:
                self.audit.observe(sightings=rows)

    def on_fixes(
        self, fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float
    ) -> list[Event]:
        del devices, zone_names  # the rule context shares the server's registry and zones
        events = self._held + self.rules.process_fixes(fixes)
        self._held = []
        if len(fixes):
            self._now = max(self._now, float(fixes["t"].max()))
        events += self.rules.advance(self._now)
        if self.audit is not None:
            self.audit.observe(fixes=fixes)
            self.audit.record(events, origin)
        return [self._wire(ev, origin) for ev in events]

    @staticmethod
    def _wire(ev: RuleEvent, origin: float) -> Event:
        record = ev.to_dict()
        evidence = record.pop("evidence", {})
        detail: dict[str, float | int | str | None] = {}
        for key, value in [*record.items(), *(evidence.items() if isinstance(evidence, dict) else ())]:
            if key in ("rule", "t", "tag"):
                continue
            detail[key] = value if value is None or isinstance(value, int | float | str) else json.dumps(value)
        return Event(t=round(ev.t + origin, 3), kind=ev.rule, dev=ev.tag, detail=detail)


class ServerCore:
    """Verification, dedup, engine feeding and output formatting, without IO."""

    def __init__(
        self,
        config: EngineConfig,
        keys: dict[str, bytes] | KeyRing,
        *,
        clock: ClockMode = "wall",
        sink: EventSink | None = None,
        adapters: Iterable[str] = (),
        tx_power_default: float | None = None,
        devices: IdTable | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        new_id_cap: NewDeviceCap | None = None,
    ) -> None:
        self.engine = Engine(config)
        self.config = config
        self.ring = KeyRing({g: (k,) for g, k in keys.items()}) if isinstance(keys, dict) else keys
        self.max_message_bytes = max_message_bytes
        self.new_id_cap = new_id_cap or NewDeviceCap()
        self._revoked_seen: dict[str, float] = {}  # gateway or tag -> last event time
        self.clock = clock
        self.sink: EventSink = sink or NullSink()
        self.adapters = set(adapters)
        self.gateways = IdTable(list(config.gateways.ids))
        self.site_gateways = frozenset(config.gateways.ids)
        xyz = config.gateways.xyz
        zone_of = config.zones.assign(xyz[:, 0], xyz[:, 1]).tolist()
        self.gateway_zone = {
            g: config.zones.names[z] for g, z in zip(config.gateways.ids, zone_of, strict=True) if z >= 0
        }
        self.devices = devices if devices is not None else IdTable()  # may start with a registry
        self.tx_default = (
            config.default_tx_power_1m_dbm if tx_power_default is None else tx_power_default
        )
        self.origin: float | None = None
        self.guards: dict[str, ReplayGuard] = {}
        self.counters: Counter[str] = Counter()
        self._pending: list[tuple[int, list[Advert]]] = []  # (gateway code, adverts) to ingest

    # -- input ------------------------------------------------------------------------

    @property
    def keys(self) -> dict[str, bytes]:
        """Each gateway's newest key (what a signer uses)."""
        return self.ring.signing_keys()

    def reload_keys(self, ring: KeyRing) -> None:
        """A rotated or revoked keys file takes effect from the next message."""
        self.ring = ring
        self.counters["key reloads"] += 1

    def handle(self, topic: str, body: bytes, now: float) -> list[Outgoing]:
        """One MQTT message; returns dead letters (if rejected) and any positions it closed.

        Cheapest checks first: size, then (for signed batches) the topic's gateway and its
        HMAC over the raw bytes, and only then any parsing."""
        self.counters["messages"] += 1
        try:
            if len(body) > self.max_message_bytes:
                raise WireError("message too large", f"{len(body)} bytes > {self.max_message_bytes}")
            if topic.startswith("tagtwin/"):
                ads, gw = self._verify(topic, body)
            elif topic.startswith("espresense/") and "espresense" in self.adapters:
                gw, ads = parse_espresense(topic, body, now)
            elif "/BTtoMQTT/" in topic and "theengs" in self.adapters:
                gw, ads = parse_theengs(topic, body, now)
            else:
                raise WireError("unexpected topic", topic[:120])
            if gw in self.ring.revoked_gateways:
                raise WireError("revoked gateway", gw[:64])
            if gw not in self.site_gateways:
                raise WireError("gateway not in site plan", gw[:64])
        except (WireError, AdapterError) as exc:
            out = [self._dead_letter(topic, body, exc.reason, exc.detail, now)]
            if exc.reason == "revoked gateway":
                out += self._revoked_event(exc.detail, "gateway", exc.detail, 1, now)
            return out
        self.counters["batches_accepted"] += 1
        out = []
        if any(a.dev.startswith(ANON_PREFIX) for a in ads):
            ads = self._count_anonymous(gw, ads)
        if ads and self.ring.revoked_tags:
            out += self._drop_revoked_tags(gw, ads, now)
            ads = [a for a in ads if a.dev not in self.ring.revoked_tags]
        if ads:
            ads = self._cap_new_ids(gw, ads, now)
        if ads:
            self._pending.append((self.gateways.code(gw), ads))
            self.counters["sightings"] += len(ads)
        return out

    def _count_anonymous(self, gw: str, ads: list[Advert]) -> list[Advert]:
        """Finding-network frames no key resolved: counted per zone, not tracked.

        The zone is the one the hearing gateway stands in (one count per frame heard, so
        a frame heard by three gateways counts in each of their zones); the device table
        does not grow with someone else's rotating identifiers.
        """
        zone = self.gateway_zone.get(gw, "outside zones")
        kept = []
        for a in ads:
            if a.dev.startswith(ANON_PREFIX):
                self.counters[f"anonymous {a.dev.removeprefix(ANON_PREFIX)} in {zone}"] += 1
            else:
                kept.append(a)
        return kept

    def _verify(self, topic: str, body: bytes) -> tuple[list[Advert], str]:
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "batch":
            raise WireError("unexpected topic", topic[:120])
        gw = parts[3]
        if gw in self.ring.revoked_gateways:
            raise WireError("revoked gateway", gw[:64])
        ring = self.ring.keys.get(gw)
        if ring is None:
            raise WireError("unknown gateway", gw[:64])
        batch = verify_signed(body, gw, ring)
        if not self.guards.setdefault(batch.gw, ReplayGuard()).check_and_mark(batch.seq):
            raise WireError("replayed batch sequence", f"{batch.gw} seq {batch.seq}")
        return batch.ads, batch.gw

    def _cap_new_ids(self, gw: str, ads: list[Advert], now: float) -> list[Advert]:
        """Register at most the cap's share of new ids; count the rest per zone, unnamed."""
        distinct = list(dict.fromkeys(a.dev for a in ads))
        known = self.devices.codes(distinct, register=False) != UNKNOWN
        new = [d for d, k in zip(distinct, known, strict=True) if not k]
        if not new:
            return ads
        admitted = self.new_id_cap.admit(gw, new, now)
        for dev in admitted:
            self.devices.code(dev)
        if len(admitted) == len(new):
            return ads
        refused = set(new[len(admitted):])
        kept = [a for a in ads if a.dev not in refused]
        zone = self.gateway_zone.get(gw, "outside zones")  # counted as _count_anonymous counts
        self.new_id_cap.count_anonymous(zone, len(ads) - len(kept))
        self.counters[f"anonymous over new-id cap in {zone}"] += len(ads) - len(kept)
        return kept

    def _drop_revoked_tags(self, gw: str, ads: list[Advert], now: float) -> list[Outgoing]:
        hits = Counter(a.dev for a in ads if a.dev in self.ring.revoked_tags)
        out: list[Outgoing] = []
        for tag, n in hits.items():
            self.counters["rejected: revoked tag"] += n
            out += self._revoked_event(tag, "tag", gw, n, now)
        return out

    def _revoked_event(self, who: str, what: str, gateway: str, n: int, now: float) -> list[Outgoing]:
        """An event for revoked traffic, at most once a minute per gateway or tag."""
        last = self._revoked_seen.get(who)
        if last is not None and now - last < REVOKED_EVENT_EVERY_S:
            return []
        self._revoked_seen[who] = now
        self.counters["events"] += 1
        ev = Event(t=now, kind="revoked-traffic", dev=who if what == "tag" else None,
                   detail={"revoked": what, "gateway": gateway[:64], "messages": n})
        return [(EVENTS_TOPIC, ev.model_dump_json().encode(), False)]

    def flush(self) -> None:
        """Hand every accepted advert since the last call to the engine as one array.

        One ``Engine.ingest`` per drain of the inbox instead of one per message: the
        per-call cost (validation, id look-ups) is then paid once for many batches.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ads = [a for _, batch_ads in pending for a in batch_ads]
        n = len(ads)
        t = np.fromiter((a.t for a in ads), float, n)
        if self.origin is None:
            self.origin = math.floor(float(t.min())) - ORIGIN_MARGIN_S
        devs = self.devices.codes([a.dev for a in ads])
        rows = sightings_from_columns(
            t=t - self.origin,
            gateway=np.repeat([g for g, _ in pending], [len(b) for _, b in pending]),
            device=devs,
            rssi=np.fromiter((a.rssi for a in ads), np.float32, n),
            channel=np.fromiter((a.ch for a in ads), np.uint8, n),
            battery=np.fromiter((UNKNOWN if a.bat is None else a.bat for a in ads), np.int8, n),
            motion=np.fromiter((UNKNOWN if a.mot is None else a.mot for a in ads), np.int8, n),
            seq=np.fromiter(
                (UNKNOWN if a.seq is None else a.seq & SEQ_MASK for a in ads), np.int32, n
            ),
        )
        self._learn_tx_power(devs, ads)
        self.engine.ingest(rows)
        self.sink.on_sightings(rows)

    def _learn_tx_power(self, devs: NDArray[np.int32], ads: list[Advert]) -> None:
        """Beacons that announce their 1 m power (iBeacon, Eddystone) get it in the model."""
        tx = self.engine.tx_power
        if len(tx) < len(self.devices):
            self.engine.tx_power = np.r_[tx, np.full(len(self.devices) - len(tx), self.tx_default)]
        for code, a in zip(devs, ads, strict=True):
            if a.tx is not None:
                self.engine.tx_power[code] = a.tx

    # -- output ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Ingest what is pending, close the windows that are due, format the output."""
        self.flush()
        if self.origin is None:
            return []
        mark = None if self.clock == "event" else now - self.origin
        fixes = self.engine.advance(mark)
        if len(fixes) == 0:
            return []
        self.counters["positions"] += len(fixes)
        out: list[Outgoing] = [(POSITIONS_TOPIC, self.positions_json(fixes, now), False)]
        zone_names = self.config.zones.names
        for ev in self.sink.on_fixes(fixes, self.devices, zone_names, self.origin):
            out.append((EVENTS_TOPIC, ev.model_dump_json().encode(), False))
            self.counters["events"] += 1
        return out

    def seconds_to_next_close(self, now: float) -> float:
        """Wall clock: how long until the next window is due to close (inf if unknown)."""
        if self.origin is None or self.clock == "event":
            return float("inf")
        cfg = self.config
        since = now - self.origin - cfg.allowed_lateness_s
        k = math.floor(since / cfg.step_s + 1e-9) + 1
        return max(0.0, k * cfg.step_s - since)

    def positions_json(self, fixes: NDArray[np.void], now: float) -> bytes:
        """A PositionBatch as JSON, built from the arrays (one dict per fix, no models)."""
        assert self.origin is not None
        return positions_payload(fixes, self.devices, self.config.zones.names, self.origin, now)

    def _dead_letter(
        self, topic: str, body: bytes, reason: str, detail: str, now: float
    ) -> Outgoing:
        self.counters[f"rejected: {reason}"] += 1
        msg = DeadLetter(
            t=now,
            topic=topic[:200],
            reason=reason,
            detail=detail,
            payload_head=body[:200].decode("latin-1"),
        )
        return DEADLETTER_TOPIC, msg.model_dump_json().encode(), False

    def status(self) -> dict[str, object]:
        return {
            "v": 1,
            "counters": dict(sorted(self.counters.items())),
            "engine": self.engine.counters.as_dict(),
            "devices": len(self.devices),
            "new_ids": self.new_id_cap.as_dict(),
            "origin": self.origin,
        }


def positions_payload(
    fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float, now: float
) -> bytes:
    """A PositionBatch as JSON from fix arrays; fixes with a ``revision`` column
    (engine.eventtime) carry it as ``rev``. Written column by column: the bytes
    ``json.dumps`` gives for one dict per fix (same key order, floats rounded by Python's
    ``round`` and printed by ``repr``), without a dict or a numpy scalar per fix."""
    return positions_payloads(fixes, devices, zone_names, origin, now, max_bytes=None)[0]


# Below this magnitude a value to 3 decimals has at most 15 significant digits, which a
# double holds exactly enough that no shorter decimal maps to it (DBL_DIG), and repr()
# uses no exponent.
DECIMALS_FAST_BELOW = 1e12


def decimals3(values: list[float]) -> list[str]:
    """``repr(round(v, 3))`` for finite ``|v| < DECIMALS_FAST_BELOW``, at half the cost:
    ``'%.3f'`` rounds the exact binary value correctly to 3 decimals as ``round`` does,
    and the shortest repr of the double nearest that decimal (at most 15 significant
    digits) is the decimal itself without its trailing zeros (one kept after the point;
    -0.0 stays "-0.0")."""
    out = []
    for fixed in [f"{v:.3f}" for v in values]:
        text = fixed.rstrip("0")
        out.append(text + "0" if text[-1] == "." else text)
    return out


_QUOTED_IDS: dict[int, tuple[weakref.ref[IdTable], list[str]]] = {}


def quoted_ids(devices: IdTable) -> list[str]:
    """Each device id as json.dumps writes it, kept per table: ids are only ever appended
    (IdTable.code), so a window's positions quote only the ids registered since the last."""
    quote = json.encoder.encode_basestring_ascii
    held = _QUOTED_IDS.get(id(devices))
    if held is None or held[0]() is not devices:
        for key in [k for k, (ref, _) in _QUOTED_IDS.items() if ref() is None]:
            del _QUOTED_IDS[key]
        held = _QUOTED_IDS[id(devices)] = (weakref.ref(devices), [])
    quoted = held[1]
    if quoted and quoted[-1] != quote(str(devices.ids[len(quoted) - 1])):  # not appended to: start again
        quoted.clear()
    if len(quoted) < len(devices.ids):
        quoted += [quote(str(d)) for d in devices.ids[len(quoted):]]
    return quoted


def positions_payloads(
    fixes: NDArray[np.void], devices: IdTable, zone_names: tuple[str, ...], origin: float, now: float,
    max_bytes: int | None,
) -> list[bytes]:
    """:func:`positions_payload` cut into PositionBatches of at most ``max_bytes`` each (None:
    one): the backbone refuses a message over its limit (1 MiB), and a busy site's window
    is larger than that (7,200 tags make ~1 MB), so a single message would be refused on
    every retry. Fixes stay in their order; each message is a whole PositionBatch."""
    fixes = fixes[np.isfinite(fixes["x"])]
    if len(fixes) == 0:
        return [json.dumps({"v": 1, "t": now, "positions": []}, separators=(",", ":")).encode()]
    quote = json.encoder.encode_basestring_ascii  # what json.dumps writes a str with

    def numbers(col: NDArray[np.float64], add: float | None = None) -> list[str]:
        if add is not None:
            col = col + add  # the same IEEE sum as Python's v + add
        if np.isfinite(col).all() and (len(col) == 0 or float(np.abs(col).max()) < DECIMALS_FAST_BELOW):
            return decimals3(col.tolist())
        vals = [round(v, 3) for v in col.tolist()]
        return [json.dumps(v) for v in vals] if not np.isfinite(col).all() else list(map(float.__repr__, vals))

    def few_numbers(col: NDArray[np.float64], add: float) -> list[str]:
        """numbers() of a column of few distinct values (a window's fix times): each written once."""
        values, at = np.unique(col, return_inverse=True)
        return by_code(numbers(values, add), at)

    def by_code(texts: list[str], codes: NDArray[np.integer]) -> list[str]:
        """texts[c] for each code, without a Python loop over the rows."""
        table = np.empty(len(texts), dtype=object)
        table[:] = texts
        return table[codes].tolist()

    def small_ints(col: NDArray[np.integer], null: int | None = None) -> list[str]:
        """str of each value (``null``: that value as JSON null), from a table of the range."""
        if len(col) == 0:
            return []
        lo, hi = int(col.min()), int(col.max())
        if hi - lo > 4096:
            return ["null" if v == null else str(v) for v in col.tolist()]
        return by_code(["null" if v == null else str(v) for v in range(lo, hi + 1)], col.astype(np.int64) - lo)

    zones = [quote(z) for z in zone_names]
    zone = [zones[z] if z != NO_ZONE else "null" for z in fixes["zone"].tolist()]
    method = [quote(m) for m in METHOD_NAMES]
    cols = [few_numbers(fixes["t"], origin), by_code(quoted_ids(devices), fixes["device"]),
            numbers(fixes["x"]), numbers(fixes["y"]), numbers(fixes["r90"]), zone,
            small_ints(fixes["n_gateways"]), by_code(method, fixes["method"]), small_ints(fixes["battery"], UNKNOWN),
            small_ints(fixes["motion"], UNKNOWN)]
    keys = ["t", "dev", "x", "y", "r90", "zone", "n_gw", "method", "bat", "mot"]
    if "revision" in (fixes.dtype.names or ()):
        cols.append(small_ints(fixes["revision"]))
        keys.append("rev")
    template = "{" + ",".join(f'"{k}":%s' for k in keys) + "}"
    rows = [template % row for row in zip(*cols, strict=True)]
    head = json.dumps({"v": 1, "t": now}, separators=(",", ":"))[:-1]
    if max_bytes is None:
        return [f'{head},"positions":[{",".join(rows)}]}}'.encode()]
    # cut where the running size (each row plus its comma; ASCII, so characters are bytes)
    # would pass the limit less the envelope
    room = max_bytes - len(head) - len(',"positions":[]}')
    ends = np.cumsum(np.fromiter((len(r) + 1 for r in rows), np.int64, len(rows)))
    out, start, used = [], 0, 0
    while start < len(rows):
        stop = max(start + 1, int(np.searchsorted(ends, used + room, side="right")))
        out.append(f'{head},"positions":[{",".join(rows[start:stop])}]}}'.encode())
        used, start = int(ends[stop - 1]), stop
    return out


class ReloadsKeys(Protocol):
    counters: Counter[str]

    def reload_keys(self, ring: KeyRing) -> None: ...


class KeysWatch:
    """Reloads a keys file into a core (the MQTT server's or a backbone worker's) when its
    modification time changes: rotation and revocation without a restart."""

    def __init__(self, path: Path, every_s: float = 1.0) -> None:
        self.path = path
        self.every_s = every_s
        self._next = time.monotonic() + every_s
        self._stamp = self._mtime()

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def poll(self, core: ReloadsKeys) -> bool:
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.every_s
        stamp = self._mtime()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            core.reload_keys(load_key_ring(self.path))
        except ConfigError as exc:
            log.error("keys file not reloaded, keeping the previous keys: %s", exc)
            core.counters["key reload failures"] += 1
            return False
        log.warning("keys reloaded from %s", self.path)
        return True


def status_line(core: ServerCore, connected: bool) -> str:
    """One line a person can read while the server runs."""
    c = core.counters
    rejected = sum(v for k, v in c.items() if k.startswith("rejected"))
    engine_rejected = core.engine.counters.as_dict().get("rejected")
    late = engine_rejected.get("late: window already closed", 0) if isinstance(engine_rejected, dict) else 0
    return (f"serve: {'connected' if connected else 'NOT connected to the broker'}; batches {c['batches_accepted']}, "
            f"sightings {c['sightings']}, devices {len(core.devices)}, rejected {rejected}, late {late}")


# The topic filter each adapter subscribes to (every adapter the server knows).
ADAPTER_SUBSCRIPTIONS = {"espresense": "espresense/devices/+/+", "theengs": "+/+/BTtoMQTT/+"}


def subscriptions(adapters: Iterable[str]) -> list[str]:
    chosen = set(adapters)
    return [BATCH_SUBSCRIPTION, *(sub for name, sub in ADAPTER_SUBSCRIPTIONS.items() if name in chosen)]


def stale_subscriptions(adapters: Iterable[str]) -> list[str]:
    """Filters a persistent session may still hold from a run with other adapters: the
    broker keeps a session's subscriptions, so without an unsubscribe their messages would
    keep coming and be dead-lettered as unexpected topics."""
    wanted = set(subscriptions(adapters))
    return [sub for sub in ADAPTER_SUBSCRIPTIONS.values() if sub not in wanted]


class SessionTakenOverError(RuntimeError):
    """Another client connected with this server's client id (a second server for the
    same site): the broker gives the session to the newest connection."""


# A takeover, seen from the client that loses it: MQTT 5 says so (reason 0x8E); MQTT 3.1.1
# only closes the connection, so repeated closes soon after connecting stand for it.
SESSION_TAKEN_OVER = 0x8E
TAKEOVER_CLOSES = 3
TAKEOVER_WINDOW_S = 30.0
TAKEOVER_SHORT_S = 10.0


def serve(
    core: ServerCore,
    broker_url: str,
    stop: object | None = None,
    status_every_s: float = 5.0,
    ready: object | None = None,
    keys_path: Path | None = None,
    say: Callable[[str], None] | None = None,
    client_id: str | None = None,
) -> None:
    """Run the core against a broker until ``stop`` (a threading.Event) is set. ``say``
    gets a one-line status for people every ``status_every_s`` (the status topic gets the
    full counters).

    With ``client_id`` (``tagtwin serve`` gives ``tagtwin-serve-<site>``) the server keeps a
    persistent MQTT session: while it is away (restarting, or reconnecting after a broker
    restart) the broker queues the batches the gateways publish for it. Without one, the
    gateways' spools would drain into a broker with no subscriber the moment they reconnect
    first, and those batches, acknowledged and deleted from the spools, would be lost. A
    broker restart keeps the session only with ``persistence true`` (docs/live-bridge.md).
    Without ``client_id``: a clean session under a fresh id (tools and tests that want only
    what is published from now on). A session another client takes over (a second server
    with the same id) ends the run with :class:`SessionTakenOverError` rather than taking it
    back every second, each server getting part of the batches.

    With ``keys_path``, the keys file is re-read when it changes (checked every second):
    a rotation or revocation (``tagtwin keys rotate``, ``tagtwin revoke``) takes effect
    without a restart. A file that fails to load keeps the previous keys and is logged."""
    import threading

    from live_bridge.mqtt import BrokerUrl, make_client, session_connect_args

    stop_ev = stop if isinstance(stop, threading.Event) else threading.Event()
    broker = BrokerUrl.parse(broker_url)
    inbox: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
    if client_id is None:
        client = make_client(f"tagtwin-serve-{int(time.time() * 1000) % 10**9}", broker)
    else:
        client = make_client(client_id, broker, clean_session=False)
    client.will_set(SERVER_STATUS_TOPIC, b'{"v":1,"state":"offline"}', qos=1, retain=True)

    awaiting_suback: set[int] = set()
    connected = threading.Event()
    connected_at = [0.0]
    short_closes: list[float] = []
    taken_over: list[str] = []

    def on_connect(
        c: paho.Client, _u: object, _f: object, reason: object, _p: object = None
    ) -> None:
        if getattr(reason, "is_failure", False):
            # Refused (bad login, not authorized): nothing was established, so it is not a
            # session taken over; paho tries again and the status line says NOT connected.
            return
        connected.set()
        connected_at[0] = time.monotonic()
        for sub in stale_subscriptions(core.adapters):
            c.unsubscribe(sub)
        for sub in subscriptions(core.adapters):
            mid = c.subscribe(sub, qos=1)[1]
            if mid is not None:
                awaiting_suback.add(mid)

    def on_subscribe(_c: paho.Client, _u: object, mid: int, _codes: object, _p: object = None) -> None:
        # Ready means the broker acknowledged every subscription: from now on nothing
        # published to them is missed.
        awaiting_suback.discard(mid)
        if not awaiting_suback and isinstance(ready, threading.Event):
            ready.set()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        inbox.put((msg.topic, bytes(msg.payload), time.time()))

    def on_disconnect(c: paho.Client, _u: object, _f: object, reason: object, _p: object = None) -> None:
        was_connected = connected.is_set()
        connected.clear()
        if client_id is None or stop_ev.is_set() or not was_connected:
            return
        now = time.monotonic()
        if now - connected_at[0] < TAKEOVER_SHORT_S:
            short_closes.append(now)
        recent = [t for t in short_closes if now - t < TAKEOVER_WINDOW_S]
        code = getattr(reason, "value", reason)
        if code == SESSION_TAKEN_OVER or len(recent) >= TAKEOVER_CLOSES:
            why = ("reason 0x8E, session taken over" if code == SESSION_TAKEN_OVER
                   else f"the broker closed it {len(recent)} times within {TAKEOVER_WINDOW_S:.0f} s of connecting")
            taken_over.append(f"another client took over the MQTT session {client_id!r} ({why}): is a second "
                              "`tagtwin serve` running for this site? Give each server its own --session")
            stop_ev.set()
            c.disconnect()  # no reconnect: flapping would split the batches between the two

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    # Asynchronous: a server started before its broker waits for it (paho retries).
    client.connect_async(broker.host, broker.port, keepalive=30,
                         **session_connect_args(broker, client_id is not None))  # type: ignore[arg-type]
    client.loop_start()
    step = core.config.step_s
    next_status = time.monotonic()
    warn_at: float | None = time.monotonic() + 3.0
    keys_watch = KeysWatch(keys_path) if keys_path is not None else None
    try:
        while not stop_ev.is_set():
            if warn_at is not None and time.monotonic() > warn_at:
                warn_at = None
                if not connected.is_set():  # silence is the worst answer to a wrong address
                    log.warning("cannot reach the broker at %s:%s yet; retrying (is it running?)",
                                broker.host, broker.port)
            if keys_watch is not None:
                keys_watch.poll(core)
            out: list[Outgoing] = []
            # Wake for the next message or the next window close, whichever comes first;
            # drain what queued meanwhile, but never past a window that is due.
            due = core.seconds_to_next_close(time.time())
            try:
                topic, body, arrived = inbox.get(timeout=max(0.001, min(due, step / 4, 0.05)))
                out += core.handle(topic, body, arrived)
                drain_until = time.monotonic() + min(core.seconds_to_next_close(time.time()), 0.05)
                while time.monotonic() < drain_until:
                    topic, body, arrived = inbox.get_nowait()
                    out += core.handle(topic, body, arrived)
            except queue.Empty:
                pass
            out += core.tick(time.time())
            for topic, payload, retain in out:
                client.publish(topic, payload, qos=1, retain=retain)
            if time.monotonic() >= next_status:
                next_status += status_every_s
                status = core.status() | {"state": "online", "t": time.time()}
                client.publish(SERVER_STATUS_TOPIC, json.dumps(status).encode(), qos=1, retain=True)
                if say is not None:
                    say(status_line(core, connected.is_set()))
    finally:
        if taken_over:  # the session is the other server's now: publish nothing in its name
            client.loop_stop()
            raise SessionTakenOverError(taken_over[0])
        if core.clock == "event":
            for topic, payload, retain in core.tick(time.time()):
                client.publish(topic, payload, qos=1, retain=retain)
        info = client.publish(
            SERVER_STATUS_TOPIC,
            json.dumps(core.status() | {"state": "offline"}).encode(),
            qos=1,
            retain=True,
        )
        with contextlib.suppress(RuntimeError, ValueError):  # broker gone: the will says it
            info.wait_for_publish(2)
        client.disconnect()
        client.loop_stop()
