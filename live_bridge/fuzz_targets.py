"""Every parser that reads bytes from outside, as one registry the fuzzers run.

A target is ``name -> (parse(bytes) -> object, expected errors, seed inputs)``: on any
input the parser returns, or raises one of its expected errors (a clear, counted
refusal); anything else is a crash. ``benchmarks/fuzz_decoders.py`` runs random and
mutated inputs through every target and prints JSON; tests/test_live_fuzz.py runs a
few thousand hypothesis cases in the default test run. Other parsers (scenario TOML,
rule sets, captures, the CLI) register here with :func:`register` from their own
room's test or benchmark code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from live_bridge.adapters import AdapterError, canonical_id, parse_espresense, parse_theengs
from live_bridge.decoders import (
    APPLE_COMPANY_ID,
    build_eddystone_tlm,
    build_eddystone_uid,
    build_findhub,
    build_findmy,
    build_ibeacon,
    build_mibeacon,
    decode,
    mibeacon_sensor_objects,
)
from live_bridge.finding import Resolver, fmdn_eid
from live_bridge.wire import Advert, Batch, WireError, encode_batch, verify_and_parse

FUZZ_MAC = "A4:C1:38:00:00:01"
FUZZ_KEY = bytes(range(16))
FUZZ_LEGACY_KEY = bytes(range(12))
FUZZ_EIK = bytes(range(32))
FUZZ_NOW = 1_780_000_000.0
FUZZ_GW_KEY = b"k" * 32


@dataclass(frozen=True)
class FuzzTarget:
    parse: Callable[[bytes], object]
    expected: tuple[type[Exception], ...]
    seeds: tuple[bytes, ...]


FUZZ_TARGETS: dict[str, FuzzTarget] = {}


def register(
    name: str,
    parse: Callable[[bytes], object],
    expected: tuple[type[Exception], ...] = (),
    seeds: tuple[bytes, ...] = (),
) -> None:
    """Add a parser to the registry (a later registration of the same name replaces it)."""
    FUZZ_TARGETS[name] = FuzzTarget(parse, expected, seeds)


_RESOLVER = Resolver({"fuzz-tag": FUZZ_EIK}, {"fuzz-cart": [bytes(range(28))]})
_BINDKEYS = {FUZZ_MAC: FUZZ_KEY, "A4:C1:38:00:00:02": FUZZ_LEGACY_KEY}


def _service(uuid: str) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        return decode(FUZZ_MAC, {}, {uuid: data}, _BINDKEYS, resolver=_RESOLVER, now=FUZZ_NOW)

    return parse


def _apple(data: bytes) -> object:
    return decode(FUZZ_MAC, {APPLE_COMPANY_ID: data}, {}, _BINDKEYS, resolver=_RESOLVER, now=FUZZ_NOW)


def _legacy(data: bytes) -> object:
    return decode("A4:C1:38:00:00:02", {}, {"fe95": data}, _BINDKEYS)


def _theengs(body: bytes) -> object:
    return parse_theengs("home/gw-a/BTtoMQTT/A4C138000001", body, FUZZ_NOW)


def _espresense(body: bytes) -> object:
    return parse_espresense("espresense/devices/x/gw-a", body, FUZZ_NOW)


def _canonical(data: bytes) -> object:
    return canonical_id(data.decode("utf-8", "replace"))


def _envelope(body: bytes) -> object:
    return verify_and_parse(body, {"gw-a": FUZZ_GW_KEY})


_SENSORS = mibeacon_sensor_objects(21.5, 40.0)
register(
    "mibeacon",
    _service("fe95"),
    seeds=(
        build_mibeacon(FUZZ_MAC, 1, battery=80, motion=1, bindkey=FUZZ_KEY, objects=_SENSORS),
        build_mibeacon(FUZZ_MAC, 2, battery=80, motion=0, objects=_SENSORS),
        bytes.fromhex("70229103 0fdbab531824d0 09 0a00 02 750d 07".replace(" ", "")),
    ),
)
register(
    "mibeacon-legacy",
    _legacy,
    seeds=(build_mibeacon("A4:C1:38:00:00:02", 3, battery=50, bindkey=FUZZ_LEGACY_KEY, version=3),),
)
register(
    "eddystone",
    _service("feaa"),
    seeds=(
        build_eddystone_uid(bytes(10), bytes(6)),
        build_eddystone_tlm(2900, 21.0, 5, 100.0),
        bytes.fromhex("21010f0e5befbb42d1ffc200000407"),
        b"\x20\x01" + bytes(16),
    ),
)
register("findhub", _service("feaa"), seeds=(build_findhub(fmdn_eid(FUZZ_EIK, int(FUZZ_NOW))),))
register(
    "apple",
    _apple,
    seeds=(build_ibeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2), build_findmy(bytes(range(28)))[1]),
)
register("other-service", _service("180f"), seeds=(b"\x55",))
_THEENGS_SEED = json.dumps(
    {"id": FUZZ_MAC, "rssi": -70, "servicedatauuid": "0xfe95", "servicedata": build_mibeacon(FUZZ_MAC, 1).hex()}
).encode()
register("theengs", _theengs, (AdapterError,), (_THEENGS_SEED, b'{"id":"x","rssi":-60,"model_id":"IBEACON"}'))
register(
    "espresense",
    _espresense,
    (AdapterError,),
    (b'{"id":"iBeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825-1-2","rssi":-70,"batt":50,"temp":21.5}',),
)
register("canonical-id", _canonical, seeds=(b"eddy:0102030405050607080910-aabbccddeeff", b"flora:a4c138000001"))
register(
    "wire-envelope",
    _envelope,
    (WireError,),
    (encode_batch(Batch(gw="gw-a", seq=0, sent=1.7e9, ads=[Advert(t=1.7e9, dev="x", rssi=-60.0)]), FUZZ_GW_KEY),),
)
