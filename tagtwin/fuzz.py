"""One registry of every parser that reads outside input, for the fuzz tests and benchmark.

Each :class:`FuzzTarget` is a callable taking the raw bytes (a message body, a file's
contents) plus the exception types that count as a *clean rejection*: the parser's own
error, which carries a one-line reason naming the file, field or message. Anything else
escaping is a crash. ``tests/test_fuzz.py`` runs a few thousand hypothesis cases over
every target; ``benchmarks/fuzz.py`` runs >= 100,000 seeded cases and reports crashes and
slow cases per target.

The live bridge's byte parsers (advertisement decoders, the Theengs and ESPresense
adapters, the envelope) register in their own room, live_bridge/fuzz_targets.py, one
line each (``register("mibeacon", parse, expected, seeds)``); every one of them runs here
as ``live.<name>``. The parsers of files (scenario and rule TOML, keys, gateway config,
captures, run directories, ROI reports), the signed batch schema and the whole server
path register below, with :func:`register` here, also one line each.

Inputs come from two sources: byte-level mutation of the seeds (bit flips, splices,
hostile tokens such as ``1e999``, ``NaN``, deep nesting) and structure-aware mutation for
JSON and TOML seeds (a value anywhere in the tree replaced by a hostile one), so schema
checks behind the syntax are reached too (AFL's mutation stages and libFuzzer's
dictionary, simplified).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from live_bridge.server import ServerCore


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    parse: Callable[[bytes], object]
    rejects: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...] = ()
    structure: str = "bytes"  # "json" or "toml": seeds get structure-aware mutation too
    generate: Callable[[np.random.Generator], bytes] | None = field(default=None, compare=False)


TARGETS: dict[str, FuzzTarget] = {}


def register(
    name: str,
    parse: Callable[[bytes], object],
    rejects: tuple[type[BaseException], ...],
    seeds: Sequence[bytes] = (),
    structure: str = "bytes",
    generate: Callable[[np.random.Generator], bytes] | None = None,
) -> None:
    """Add a parser to the registry (one line per parser)."""
    TARGETS[name] = FuzzTarget(name, parse, rejects, tuple(seeds), structure, generate)


def outcome(target: FuzzTarget, data: bytes) -> tuple[str, BaseException | None]:
    """("accepted" | "rejected" | "crash", the exception): the one classification rule."""
    try:
        target.parse(data)
    except target.rejects as exc:
        return "rejected", exc
    except Exception as exc:  # the point: anything else is a finding, reported, not raised
        return "crash", exc
    return "accepted", None


# -- hostile values and mutation -------------------------------------------------------

TOKENS = (
    b"0", b"-1", b"1e999", b"-1e999", b"NaN", b"nan", b"inf", b"-inf", b"Infinity", b"null",
    b"true", b'""', b"[]", b"{}", b"\x00", b"\xff\xfe", b"9" * 40, b"-0", b"1e-400",
    b'"' + b"A" * 300 + b'"', b"[" * 64, b"{" * 32, b"\\u0000", b"\\ud800", b"=", b"[[x]]",
    b"'''", b'"""', b"\n", b",", b":", b"\r\n", b"\xe2\x80\xae", b"1979-05-27T07:32:00Z",
)


def hostile_value(rng: np.random.Generator, depth: int = 0, toml: bool = False) -> Any:
    """A JSON/TOML value chosen to break assumptions: extremes, wrong types, nesting."""
    k = int(rng.integers(14 if depth < 3 else 10))
    if k == 0:
        return int(rng.choice([0, -1, 1, 2**31, -(2**31) - 1, 2**63, 10**30, 255, 128, 9999]))
    if k == 1:
        return float(rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 50.0, -130.5]))
    if k == 2:
        return "" if rng.random() < 0.3 else "x" * int(rng.choice([1, 64, 65, 128, 129, 5000]))
    if k == 3:
        return str(rng.choice(["nan", "1e999", "-1", "\u202e", "\x00", "../../etc/passwd", "ff" * 33]))
    if k == 4:
        return bool(rng.random() < 0.5)
    if k == 5:
        return "" if toml else None
    if k == 6:
        return float(rng.normal(0, 1e3))
    if k in (7, 8, 9):
        return int(rng.integers(-200, 200))
    if k in (10, 11):
        return [hostile_value(rng, depth + 1, toml) for _ in range(int(rng.integers(0, 4)))]
    return {f"k{i}": hostile_value(rng, depth + 1, toml) for i in range(int(rng.integers(0, 4)))}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def mutate_tree(rng: np.random.Generator, tree: Any, toml: bool = False) -> Any:
    """Replace, delete or add one node anywhere in a parsed JSON/TOML document."""
    paths = _paths(tree)
    path = paths[int(rng.integers(len(paths)))]
    if not path:
        return hostile_value(rng, toml=toml) if not toml else tree
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[last]
    elif op < 0.25 and isinstance(parent, dict):
        parent[f"extra{int(rng.integers(100))}"] = hostile_value(rng, toml=toml)
    elif op < 0.3 and isinstance(parent, list):
        parent.extend(parent[:1] * int(rng.integers(1, 50)))
    else:
        parent[last] = hostile_value(rng, toml=toml)
    return tree


def mutate_bytes(rng: np.random.Generator, data: bytes, pool: Sequence[bytes]) -> bytes:
    """A few byte-level edits: flips, random bytes, deletions, hostile tokens, splices."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(8))
        n = len(buf)
        i = int(rng.integers(n + 1))
        if op == 0 and n:
            j = min(i, n - 1)
            buf[j] ^= 1 << int(rng.integers(8))
        elif op == 1 and n:
            buf[min(i, n - 1)] = int(rng.integers(256))
        elif op == 2:
            del buf[i : i + int(rng.integers(1, 16))]
        elif op == 3:
            buf[i:i] = rng.bytes(int(rng.integers(1, 16)))
        elif op == 4:
            buf[i:i] = TOKENS[int(rng.integers(len(TOKENS)))]
        elif op == 5 and n:
            j = int(rng.integers(n))
            buf[i:i] = buf[j : j + int(rng.integers(1, 64))]
        elif op == 6 and pool:
            other = pool[int(rng.integers(len(pool)))]
            j = int(rng.integers(len(other) + 1))
            buf = buf[:i] + bytearray(other[j:])
        else:
            del buf[i:]
    return bytes(buf)


def fuzz_input(target: FuzzTarget, rng: np.random.Generator) -> bytes:
    """One case for ``target``: generated, structure-mutated or byte-mutated, or random."""
    r = rng.random()
    if target.generate is not None and r < 0.4:
        return target.generate(rng)
    if not target.seeds or r > 0.95:
        return rng.bytes(int(rng.integers(0, 256)))
    seed = target.seeds[int(rng.integers(len(target.seeds)))]
    if target.structure != "bytes" and r < 0.7:
        toml = target.structure == "toml"
        tree = tomllib.loads(seed.decode()) if toml else json.loads(seed)
        for _ in range(int(rng.integers(1, 4))):
            tree = mutate_tree(rng, tree, toml)
        try:
            return tomli_w.dumps(tree).encode() if toml else json.dumps(tree).encode()
        except (TypeError, ValueError):
            return seed
    return mutate_bytes(rng, seed, target.seeds)


# -- the parsers -----------------------------------------------------------------------

FUZZ_ADDRESS = "A4:C1:38:00:00:01"
FUZZ_BINDKEY = bytes(range(16))
FUZZ_KEY = b"k" * 32
FUZZ_NOW = 1.7e9


@cache
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tagtwin-fuzz-"))


def _as_file(data: bytes, suffix: str) -> Path:
    """The file-reading parsers read a real file (same path as the CLI)."""
    path = _workdir() / f"case{suffix}"
    path.write_bytes(data)
    return path


def _parquet_bytes(columns: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _hostile_column(rng: np.random.Generator, n: int) -> Any:
    import pyarrow as pa

    k = int(rng.integers(8))
    if k == 0:
        return pa.array(rng.normal(0, 100, n))
    if k == 1:
        return pa.array(rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e308], n))
    if k == 2:
        return pa.array(rng.integers(-(2**31), 2**31, n), pa.int64())
    if k == 3:
        return pa.array([str(v) for v in rng.integers(0, 5, n)])
    if k == 4:
        return pa.array([None] * n, pa.null())
    if k == 5:
        return pa.array([bool(v) for v in rng.integers(0, 2, n)])
    if k == 6:
        return pa.array([[1, 2]] * n)
    return pa.array([f"g{v}" for v in rng.integers(0, 3, n)]).dictionary_encode()


def _table_generator(names: Sequence[str]) -> Callable[[np.random.Generator], bytes]:
    """Parquet files with the expected column names (some dropped, some extra) of hostile types."""

    def generate(rng: np.random.Generator) -> bytes:
        n = int(rng.integers(0, 20))
        chosen = [c for c in names if rng.random() < 0.9] + (["zz"] if rng.random() < 0.1 else [])
        return _parquet_bytes({c: _hostile_column(rng, n) for c in chosen})

    return generate


@cache
def fuzz_server() -> ServerCore:
    """A server core on the demo site with both adapters on; reused across cases (its
    state grows like a real server's would)."""
    from live_bridge.server import ServerCore, ZoneChangeSink
    from tagtwin.live import site_engine_config
    from twin.scenario import load_scenario

    site = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "demo.toml")
    config = site_engine_config(site)
    keys = dict.fromkeys(config.gateways.ids, FUZZ_KEY)
    return ServerCore(config, keys, clock="event", sink=ZoneChangeSink(), adapters=("theengs", "espresense"))


SERVER_TOPICS = ("tagtwin/v1/gw/{gw}/batch", "home/{gw}/BTtoMQTT/AABBCCDDEEFF", "espresense/devices/x/{gw}", "x/y")


def _server_case(data: bytes) -> object:
    """First byte picks the topic; the rest is the body. The whole server path must never raise."""
    core = fuzz_server()
    gw = core.config.gateways.ids[0]
    topic = SERVER_TOPICS[data[0] % len(SERVER_TOPICS)].format(gw=gw) if data else "x"
    core.handle(topic, data[1:], FUZZ_NOW)
    return core.tick(FUZZ_NOW + 1)


def _register_builtin() -> None:
    from engine.capture import CaptureError, read_capture, read_gateways
    from engine.contract import GatewayInfo
    from engine.pipeline import FIX_DTYPE
    from engine.roi import RoiReportError, measured_from_report, read_report
    from engine.rules.config import RulesError, load_rules
    from live_bridge import decoders as d
    from live_bridge.config import load_keys
    from live_bridge.fuzz_targets import FUZZ_TARGETS
    from live_bridge.gateway import ConfigError, load_gateway_config
    from live_bridge.wire import Advert, Batch, WireError, encode_batch, encode_payload, verify_and_parse
    from tagtwin.evaluation import RunDirError, read_columns
    from twin.scenario import ScenarioError, load_scenario

    root = Path(__file__).resolve().parent.parent
    # The live bridge's byte parsers (decoders, adapters, envelope) are registered in their
    # own room, live_bridge/fuzz_targets.py (one line each); every one of them runs here.
    for name, t in FUZZ_TARGETS.items():
        register(f"live.{name}", t.parse, t.expected, t.seeds,
                 structure="json" if name in ("theengs", "espresense") else "bytes")

    ad = Advert(t=FUZZ_NOW, dev="ibeacon:x:1:2", rssi=-70.0, ch=37, fmt="ibeacon", bat=80, mot=0, seq=5, tx=-59.0)
    batch = Batch(gw="gw1", seq=3, sent=FUZZ_NOW, ads=[ad, ad.model_copy(update={"dev": "m", "extra": {"a": 1}})])
    keys = {"gw1": FUZZ_KEY}
    payload = batch.model_dump_json(exclude_none=True).encode()
    register("wire.batch", lambda b: verify_and_parse(encode_payload(b, FUZZ_KEY), keys), (WireError,),
             [payload], structure="json")

    mib = d.build_mibeacon(FUZZ_ADDRESS, 7, battery=80, motion=1)
    theengs = json.dumps({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "servicedatauuid": "0xfe95",
                          "servicedata": mib.hex()}).encode()
    espresense = json.dumps({"id": "irk:abc", "rssi": -65.5, "rssi@1m": -59, "distance": 2.1}).encode()
    from live_bridge.wire_columns import encode_columns, verify_columns

    n = 3
    columns = encode_columns("gw1", 1, 0, FUZZ_NOW, np.full(n, FUZZ_NOW), ["a", "b", "c"], np.full(n, -60.0),
                             np.full(n, 37), np.full(n, 80), np.zeros(n, int), np.arange(n), FUZZ_KEY)
    body_start = columns.index(b',"batch":') + len(b',"batch":')
    register("wire.columns", lambda b: verify_columns(encode_payload(b, FUZZ_KEY), "gw1", FUZZ_KEY), (WireError,),
             [columns[body_start:-1]], structure="json")
    register("wire.columns-envelope", lambda b: verify_columns(b, "gw1", FUZZ_KEY), (WireError,), [columns])
    register("server.handle", _server_case, (),
             [b"\x00" + encode_batch(batch, FUZZ_KEY), b"\x01" + theengs, b"\x02" + espresense])

    scenarios = [p.read_bytes() for p in sorted((root / "scenarios").glob("*.toml")) if p.stat().st_size < 4000]
    register("scenario.toml", lambda b: load_scenario(_as_file(b, ".toml")), (ScenarioError,), scenarios,
             structure="toml")
    rules = [b'version = "site-3"\n[dwell]\nlimits_s = { exit = 90.0, storage = 3600 }\n'
             b"[zone_transition]\nconfirm_fixes = 3\n", b"[exit]\nenabled = true\n"]
    register("rules.toml", lambda b: load_rules(_as_file(b, ".toml")), (RulesError,), rules, structure="toml")
    register("keys.toml", lambda b: load_keys(_as_file(b, ".toml")), (ConfigError,),
             [b'[keys]\ngw1 = "' + b"ab" * 32 + b'"\n'], structure="toml")
    register("gateway.toml", lambda b: load_gateway_config(_as_file(b, ".toml")), (ConfigError,),
             [b'id = "gw1"\nkey_hex = "' + b"ab" * 32 + b'"\n'], structure="toml")

    gw_info = GatewayInfo(("gw1", "gw2", "gw3"), np.array([[0.0, 0, 2], [10, 0, 2], [0, 10, 2]]))
    capture_csv = (b"time,gateway,device,rssi,channel,truth_x,truth_y\n"
                   b"0.5,gw1,tagA,-60,37,1,2\n1.0,gw2,tagA,-71.5,38,1.1,2\n1.5,gw3,tagB,-80,,3,4\n")
    register("capture.csv", lambda b: read_capture(_as_file(b, ".csv"), gw_info), (CaptureError,), [capture_csv])
    capture_cols = ("time", "gateway", "device", "rssi", "channel", "battery", "truth_x", "truth_y")
    register("capture.parquet", lambda b: read_capture(_as_file(b, ".parquet"), gw_info), (CaptureError,),
             [_parquet_bytes({"time": [0.5, 1.0], "gateway": ["gw1", "gw2"], "device": ["a", "b"],
                              "rssi": [-60.0, -70.0]})], generate=_table_generator(capture_cols))
    register("gateways.csv", lambda b: read_gateways(_as_file(b, ".csv")), (CaptureError,),
             [b"id,x,y,z\ngw1,0,0,2\ngw2,10,0,2.5\n"])
    register("roi.report", lambda b: measured_from_report(read_report(_as_file(b, ".json"))), (RoiReportError,),
             [json.dumps({"tags": 100, "gateways": 8, "metrics": {
                 "zone_accuracy": 0.9, "device_coverage": 0.95,
                 "rules": {"count_accuracy": 0.9, "false_alarms_per_day_per_1000_tags": 1.5,
                           "exit_without_checkout": {"recall": 0.8, "incidents": 5, "detected": 4}}}}).encode()],
             structure="json")
    fix_names = FIX_DTYPE.names or ()
    register("run.estimates", lambda b: read_columns(_as_file(b, ".parquet"), FIX_DTYPE), (RunDirError,),
             [_parquet_bytes({n: np.zeros(3, FIX_DTYPE[n]) for n in fix_names})],
             generate=_table_generator(fix_names))


def targets() -> dict[str, FuzzTarget]:
    """The registry, filled on first use (imports are heavy: the tests and benchmark pay once)."""
    if not TARGETS:
        _register_builtin()
    return TARGETS
