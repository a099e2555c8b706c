"""Finding-network tags owned by the site: rotating identifiers -> stable tag ids.

**Google Find Hub (FMDN).** A tag advertises service data 0xFEAA, frame type 0x40
(0x41 in unwanted-tracking-protection mode), a 20-byte ephemeral identifier (EID) and
a hashed-flags byte. Per Google's *Find Hub Network accessory specification* (Fast Pair
extension, "Ephemeral identifier"), with the tag's 32-byte ephemeral identity key (EIK),
rotation exponent K = 10 (1024 s) and the tag's own clock TS (seconds; its lowest K bits
cleared):

1. a 32-byte block: 11 x 0xFF, K, TS (u32 big-endian), 11 x 0x00, K, TS (u32 BE);
2. r' = AES-256-ECB(EIK, block); r = r' (big-endian integer) mod n, n the SECP160R1 order;
3. EID = x coordinate of r * G on SECP160R1, 20 bytes big-endian.

GoogleFindMyTools (``FMDNCrypto/eid_generator.py``) implements the same steps; 21 EIDs
computed with it are this module's test vectors (tests/data/vectors/fmdn_eid.json).

The tag's clock counts from its provisioning, not Unix time, and drifts: each tag is
configured with its clock offset (tag clock - Unix time, 0 for tags that run on Unix
time), the resolver searches ``search_periods`` rotation periods either side of where
the offset puts it, and when it finds a frame in a neighbouring period it remembers the
corrected offset, so a drifting tag is followed without widening the search.

**Apple Find My.** A tag in "separated" state advertises Apple manufacturer data type
0x12: 22 bytes of its 28-byte P-224 public key in the payload, the other 6 in its BLE
address (Heinrich et al., *Who Can Find My Devices?*, PETS 2021; OpenHaystack). Tags
built on OpenHaystack-style firmware use fixed keys or a known list of keys, and their
owner has the list: those are resolved here by exact match (28 bytes) or, for the short
frame sent near the owner, by the 6 address bytes. Apple's own AirTags derive a new key
every 15 minutes from a master key pair and a symmetric key that live in the owner's
iCloud keychain; the derivation is published (ANSI X9.63 KDF on P-224, same paper) but
the key material is not exportable by a site, so AirTags are counted as anonymous.

Frames whose identifier matches no configured key get the device id ``anon:findhub`` or
``anon:findmy`` and no identifier: the server counts them per zone and does not track
them (someone else's tag is not ours to follow).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from ecdsa import SECP160r1

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

from live_bridge.decoders import Decoded, anonymize

ROTATION_EXPONENT = 10
ROTATION_PERIOD_S = 1 << ROTATION_EXPONENT
EIK_LEN = 32
EID_LEN = 20
FINDMY_KEY_LEN = 28


def eid_block(ts: int, k: int = ROTATION_EXPONENT) -> bytes:
    """The 32-byte AES input for beacon time ``ts`` (its lowest k bits are cleared)."""
    masked = (ts >> k << k) & 0xFFFFFFFF
    t = masked.to_bytes(4, "big")
    return b"\xff" * 11 + bytes([k]) + t + b"\x00" * 11 + bytes([k]) + t


def eid_scalar(eik: bytes, ts: int, k: int = ROTATION_EXPONENT) -> int:
    """r = AES-256-ECB(EIK, block) mod n (SECP160R1 order)."""
    if len(eik) != EIK_LEN:
        raise ValueError(f"ephemeral identity key must be {EIK_LEN} bytes, got {len(eik)}")
    enc = Cipher(algorithms.AES(eik), modes.ECB()).encryptor()
    r_prime = enc.update(eid_block(ts, k)) + enc.finalize()
    return int.from_bytes(r_prime, "big") % SECP160r1.order


def fmdn_eid(eik: bytes, ts: int, k: int = ROTATION_EXPONENT) -> bytes:
    """The 20-byte Find Hub EID a tag with ``eik`` advertises at its clock ``ts``."""
    point = SECP160r1.generator * eid_scalar(eik, ts, k)
    return int(point.x()).to_bytes(EID_LEN, "big")


def find_clock_offset(eik: bytes, eid: bytes, heard_at: float, max_clock_s: int = 2 * 365 * 86400) -> float | None:
    """The tag clock minus Unix time, from one EID heard at Unix time ``heard_at``.

    For a tag whose clock offset is not known (its clock counts from provisioning):
    tries every rotation period from 0 to ``max_clock_s`` (two years: about 62,000
    EIDs, some 25 s of pure-Python curve arithmetic), once per tag at commissioning.
    Returns None when no period matches (wrong key, or an older tag).
    """
    for ts in range(0, max_clock_s + 1, ROTATION_PERIOD_S):
        if fmdn_eid(eik, ts) == eid:
            return float(ts - int(heard_at) + ROTATION_PERIOD_S // 2)
    return None


def findmy_short_key(key: bytes) -> bytes:
    """The 6 key bytes a Find My tag puts in its address, top two bits cleared."""
    return bytes([key[0] & 0x3F]) + key[1:6]


@dataclass
class FindHubTag:
    tag: str
    eik: bytes
    offset_s: float = 0.0  # tag clock minus gateway (Unix) clock, learned as frames arrive


class Resolver:
    """Maps Find Hub EIDs and Find My keys heard by a gateway to the site's tag ids.

    EIDs are computed lazily per tag for the rotation periods around the tag's expected
    clock and cached; a period's EIDs are computed once (about 1 ms each, pure-Python
    curve arithmetic), so the steady cost is a dict look-up per frame.
    """

    def __init__(
        self,
        findhub: Mapping[str, bytes] | None = None,
        findmy: Mapping[str, Iterable[bytes]] | None = None,
        *,
        clock_offsets: Mapping[str, float] | None = None,
        search_periods: int = 2,
    ) -> None:
        offsets = clock_offsets or {}
        self.tags = [FindHubTag(t, eik, float(offsets.get(t, 0.0))) for t, eik in (findhub or {}).items()]
        for t in self.tags:
            if len(t.eik) != EIK_LEN:
                raise ValueError(f"find hub key of {t.tag} must be {EIK_LEN} bytes")
        self.search_periods = search_periods
        self._eids: dict[bytes, tuple[int, int]] = {}  # EID -> (tag index, period start)
        self._computed: dict[int, set[int]] = {i: set() for i in range(len(self.tags))}
        self.findmy_full: dict[bytes, str] = {}
        self.findmy_short: dict[bytes, str] = {}
        for tag, keys in (findmy or {}).items():
            for key in keys:
                if len(key) != FINDMY_KEY_LEN:
                    raise ValueError(f"find my key of {tag} must be {FINDMY_KEY_LEN} bytes")
                self.findmy_full[key] = tag
                self.findmy_short[findmy_short_key(key)] = tag
        self.counters: Counter[str] = Counter()

    def _periods(self, tag: FindHubTag, now: float) -> list[int]:
        centre = int(now + tag.offset_s) >> ROTATION_EXPONENT << ROTATION_EXPONENT
        n = self.search_periods
        return [centre + j * ROTATION_PERIOD_S for j in range(-n, n + 1)]

    def _ensure(self, now: float) -> None:
        for i, tag in enumerate(self.tags):
            done = self._computed[i]
            for ts in self._periods(tag, now):
                if ts not in done and ts >= 0:
                    self._eids[fmdn_eid(tag.eik, ts)] = (i, ts)
                    done.add(ts)

    def lookup_findhub(self, eid: bytes, now: float) -> tuple[str, float] | None:
        """(tag id, clock offset learned) for an EID heard at gateway time ``now``."""
        hit = self._eids.get(eid)
        if hit is None:
            self._ensure(now)
            hit = self._eids.get(eid)
        if hit is None:
            return None
        i, ts = hit
        tag = self.tags[i]
        expected = int(now + tag.offset_s) >> ROTATION_EXPONENT << ROTATION_EXPONENT
        if ts != expected:
            # Heard in a neighbouring period: the tag's clock moved by whole periods.
            tag.offset_s += ts - expected
            self.counters["findhub clock corrected"] += 1
        return tag.tag, tag.offset_s

    def lookup_findmy(self, key: bytes) -> str | None:
        if len(key) == FINDMY_KEY_LEN:
            return self.findmy_full.get(key)
        return self.findmy_short.get(findmy_short_key(key)) if len(key) == 6 else None

    def resolve(self, d: Decoded, now: float | None) -> None:
        """Rewrite a findhub/findmy record in place: stable id, or anonymous."""
        try:
            ident = bytes.fromhex(str(d.extra.get("eid", "")))
        except ValueError:
            ident = b""
        tag: str | None = None
        if d.fmt == "findhub" and now is not None:
            found = self.lookup_findhub(ident, now)
            if found is not None:
                tag = found[0]
                d.extra["clock_offset_s"] = found[1]
        elif d.fmt == "findmy":
            tag = self.lookup_findmy(ident)
        if tag is None:  # the gateway counts these ("anonymous <fmt>")
            anonymize(d)
        else:
            self.counters[f"resolved {d.fmt}"] += 1
            d.dev = tag
