"""What a simulated tag puts on the air, as bytes, and how a gateway reads it back.

The twin produces sightings (device, time, RSSI, battery, motion, frame counter). To run
the decoders end to end in a scenario, :class:`TagFrames` turns each sighting into the
advertisement its tag group's ``frame`` kind would send, then decodes it exactly as a
gateway does (:func:`live_bridge.decoders.decode`, with the keys a site would configure),
so a decoder that misreads a frame shows up as a wrong battery, a lost motion flag or an
unknown device downstream.

Frame kinds:

* ``twin``: no frame, the sighting as is (the default; fmt ``twin`` on the wire).
* ``mibeacon``, ``mibeacon-encrypted``: a v5 MiBeacon with battery, motion and the frame
  counter (32-bit with the extended counter when encrypted with the tag's bindkey).
* ``ibeacon``: UUID ``TWIN_IBEACON_UUID``, major/minor = the tag's index, 1 m power.
* ``eddystone``: Eddystone-UID, every ``TLM_EVERY``-th frame a TLM with battery mV.
* ``findhub``: Google Find Hub, the EID rotating every 1024 s with the tag's address.

Keys (bindkeys, EIKs) and addresses are derived from the scenario seed and the tag id
(HMAC-SHA256), so a run is reproducible and the gateway side can be configured with
the same keys (:meth:`TagFrames.gateway_keys`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Literal

from live_bridge.decoders import (
    APPLE_COMPANY_ID,
    Decoded,
    build_eddystone_tlm,
    build_eddystone_uid,
    build_findhub,
    build_ibeacon,
    build_mibeacon,
    decode,
)
from live_bridge.finding import ROTATION_EXPONENT, Resolver, fmdn_eid

FrameKind = Literal["twin", "mibeacon", "mibeacon-encrypted", "ibeacon", "eddystone", "findhub"]
FRAME_KINDS: tuple[FrameKind, ...] = ("twin", "mibeacon", "mibeacon-encrypted", "ibeacon", "eddystone", "findhub")
TWIN_IBEACON_UUID = "74616774-7769-6e00-0000-000000000000"  # "tagtwin" in ASCII, then zeros
TWIN_EDDYSTONE_NAMESPACE = bytes.fromhex("7461677477696e000000")  # "tagtwin"
TLM_EVERY = 10
TX_1M_DBM = -59
BATTERY_MV_FULL, BATTERY_MV_EMPTY = 3000, 2000


def _derive(seed: int, dev: str, what: str, n: int) -> bytes:
    """n deterministic bytes for one tag and purpose (keys, addresses)."""
    out = b""
    block = 0
    while len(out) < n:
        msg = f"{what}/{dev}/{block}".encode()
        out += hmac.new(seed.to_bytes(8, "little", signed=True), msg, hashlib.sha256).digest()
        block += 1
    return out[:n]


def _mac(b: bytes) -> str:
    b = bytes([b[0] | 0xC0]) + b[1:6]  # a static random address (top two bits 1)
    return ":".join(f"{x:02X}" for x in b)


@dataclass
class TagFrames:
    """Frames for a fleet: one kind per device, keys and addresses from the seed."""

    device_ids: list[str]
    kinds: list[FrameKind]
    seed: int
    resolve: bool = True  # configure the gateway with the Find Hub keys (else anonymous)
    macs: list[str] = field(init=False)
    bindkeys: dict[str, bytes] = field(init=False)
    eiks: dict[str, bytes] = field(init=False)
    aliases: dict[str, str] = field(init=False)  # decoded id -> the twin's tag id
    resolver: Resolver | None = field(init=False)
    _eid_cache: dict[tuple[int, int], bytes] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.device_ids):
            raise ValueError("one frame kind per device")
        self.macs = [_mac(_derive(self.seed, d, "mac", 6)) for d in self.device_ids]
        self.bindkeys, self.eiks, self.aliases = {}, {}, {}
        for i, (dev, kind) in enumerate(zip(self.device_ids, self.kinds, strict=True)):
            mac = self.macs[i]
            if kind == "mibeacon-encrypted":
                self.bindkeys[mac] = _derive(self.seed, dev, "bindkey", 16)
            elif kind == "findhub":
                self.eiks[dev] = _derive(self.seed, dev, "eik", 32)
            if kind in ("mibeacon", "mibeacon-encrypted", "eddystone"):
                self.aliases[mac] = dev
            if kind == "ibeacon":
                self.aliases[f"ibeacon:{TWIN_IBEACON_UUID}:{i >> 16}:{i & 0xFFFF}"] = dev
            if kind == "eddystone":
                self.aliases[f"eddystone:{TWIN_EDDYSTONE_NAMESPACE.hex()}:{i.to_bytes(6, 'big').hex()}"] = dev
        self.resolver = Resolver(self.eiks) if self.resolve and self.eiks else None

    @property
    def active(self) -> bool:
        return any(k != "twin" for k in self.kinds)

    def gateway_keys(self) -> dict[str, dict[str, str]]:
        """What a gateway.toml would hold for this fleet: bindkeys and Find Hub keys."""
        return {
            "bindkeys": {m: k.hex() for m, k in self.bindkeys.items()},
            "findhub": {d: k.hex() for d, k in self.eiks.items()},
        }

    def frame(
        self, i: int, t: float, battery: int | None, motion: int | None, seq: int | None
    ) -> tuple[str, dict[int, bytes], dict[str, bytes]]:
        """(address, manufacturer data, service data) device ``i`` sends at Unix time t."""
        kind, dev, mac = self.kinds[i], self.device_ids[i], self.macs[i]
        counter = 0 if seq is None else seq
        if kind in ("mibeacon", "mibeacon-encrypted"):
            key = self.bindkeys.get(mac)
            frame = build_mibeacon(
                mac,
                counter & 0xFF,
                battery=battery,
                motion=motion,
                bindkey=key,
                ext_counter=counter >> 8,
                pid=0x055B,  # LYWSD03MMC: a common, encrypted MiBeacon device
            )
            return mac, {}, {"fe95": frame}
        if kind == "ibeacon":
            return mac, {APPLE_COMPANY_ID: build_ibeacon(TWIN_IBEACON_UUID, i >> 16, i & 0xFFFF, TX_1M_DBM)}, {}
        if kind == "eddystone":
            if counter % TLM_EVERY == TLM_EVERY - 1 and battery is not None:
                mv = BATTERY_MV_EMPTY + battery * (BATTERY_MV_FULL - BATTERY_MV_EMPTY) // 100
                return mac, {}, {"feaa": build_eddystone_tlm(mv, 20.0, counter, float(counter))}
            return (
                mac,
                {},
                {"feaa": build_eddystone_uid(TWIN_EDDYSTONE_NAMESPACE, i.to_bytes(6, "big"), TX_1M_DBM + 41)},
            )
        if kind == "findhub":
            period = int(t) >> ROTATION_EXPONENT
            eid = self._eid_cache.get((i, period))
            if eid is None:  # one curve multiplication per tag and rotation period
                eid = self._eid_cache[(i, period)] = fmdn_eid(self.eiks[dev], int(t))
            return _mac(eid), {}, {"feaa": build_findhub(eid)}
        raise ValueError(f"no frame for kind {kind!r}")

    def heard(self, i: int, t: float, battery: int | None, motion: int | None, seq: int | None) -> Decoded:
        """Build device i's frame and decode it as a gateway with the site's keys does;
        the decoded id is mapped back to the twin's tag id when it is one of ours."""
        address, mfr, svc = self.frame(i, t, battery, motion, seq)
        d = decode(address, mfr, svc, self.bindkeys, resolver=self.resolver, now=t)
        d.dev = self.aliases.get(d.dev, d.dev)
        return d
