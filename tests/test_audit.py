"""The audit log: money-relevant events keep their own evidence, re-derive from it, and
an edited, removed or reordered record is detected (engine/audit.py, `tagtwin audit`)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.audit import MONEY_RULES, AuditError, find_event, read_audit, rederive
from tests.conftest import SCENARIOS, shortened
from twin.run import simulate, write_outputs
from twin.scenario import load_scenario


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit-run")
    sc = shortened(load_scenario(SCENARIOS / "demo_incidents.toml"), 200.0)
    write_outputs(simulate(sc), out)
    return out


def tagtwin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tagtwin", *args], capture_output=True, text=True, check=False)


def test_every_money_event_is_logged_with_its_evidence(run_dir: Path) -> None:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    money = [e for e in events if e["rule"] in MONEY_RULES]
    records = list(read_audit(run_dir / "audit.jsonl"))
    assert len(money) >= 5
    assert [(r["event"]["rule"], r["event"]["tag"], r["event"]["t"]) for r in records] == [
        (e["rule"], e["tag"], e["t"]) for e in money]
    assert {r["kind"] for r in records} >= {"theft", "missing"}
    for r in records:
        assert r["ruleset_version"] == r["ruleset"]["version"]
        assert r["model"]["settings_sha256"]
        assert len(r["evidence"]["sightings"]["t"]) > 0
        assert r["site_state"] is not None
    assert stat.S_IMODE((run_dir / "audit.jsonl").stat().st_mode) == 0o600


def test_every_record_rederives_exactly(run_dir: Path) -> None:
    results = [rederive(r) for r in read_audit(run_dir / "audit.jsonl")]
    assert all(r.reproduced for r in results), [r.note for r in results if not r.reproduced]


def test_cli_rederives_and_lists(run_dir: Path) -> None:
    log = run_dir / "audit.jsonl"
    first = next(iter(read_audit(log)))
    proc = tagtwin("audit", first["id"][:12], "--log", str(log))
    assert proc.returncode == 0, proc.stderr
    assert "reproduced: same rule, same tag, same time" in proc.stdout
    listing = tagtwin("audit", "--log", str(log))
    assert listing.returncode == 0 and first["id"] in listing.stdout


def test_stripped_evidence_does_not_reproduce(run_dir: Path, tmp_path: Path) -> None:
    """A record whose evidence was cut (and whose hashes an attacker recomputed) no longer
    re-derives its event: the evidence, not the stored verdict, decides."""
    from engine.audit import AuditLog

    rec = next(r for r in read_audit(run_dir / "audit.jsonl") if r["event"]["rule"] == "exit_without_checkout")
    keep = [i for i, t in enumerate(rec["evidence"]["fixes"]["t"]) if t < rec["event"]["t"] - 60]
    rec["evidence"]["fixes"] = {k: [v[i] for i in keep] for k, v in rec["evidence"]["fixes"].items()}
    forged = tmp_path / "forged.jsonl"
    ids = AuditLog(forged).append([rec])
    proc = tagtwin("audit", ids[0], "--log", str(forged))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT reproduced" in proc.stderr and "Traceback" not in proc.stderr


def test_edits_removals_and_reordering_are_detected(run_dir: Path, tmp_path: Path) -> None:
    lines = (run_dir / "audit.jsonl").read_text().splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["evidence"]["sightings"]["rssi"][0] += 10
    cases = {
        "edited": [lines[0], json.dumps(edited) + "\n", *lines[2:]],
        "removed": [lines[0], *lines[2:]],
        "reordered": [lines[1], lines[0], *lines[2:]],
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(content))
        with pytest.raises(AuditError, match=r"line [12]"):
            list(read_audit(path))
        proc = tagtwin("audit", "--log", str(path))
        assert proc.returncode == 2 and str(path) in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(AuditError, match="no event"):
        find_event(run_dir / "audit.jsonl", "ffffffffffff")


def test_live_server_writes_a_missing_tag_that_rederives(tmp_path: Path, demo_scenario) -> None:  # type: ignore[no-untyped-def]
    """`tagtwin serve --audit`: twin traffic signed and verified as gateways send it, one tag
    dies 20 s in; its missing_tag is written with its evidence, and that evidence alone
    re-derives it."""
    from collections import Counter

    import numpy as np

    from engine.audit import AuditLog, LiveAudit
    from live_bridge.server import ServerCore
    from tagtwin.live import rules_sink_for, site_engine_config
    from tagtwin.twin_publish import twin_batches
    from twin.run import model_version
    from twin.sim import WarehouseTwin

    origin, key, killed = 1_700_000_000.0, bytes(range(32)), 7
    sc = shortened(demo_scenario, 40.0, movers=[])
    twin = WarehouseTwin(sc)

    def kill(env):  # type: ignore[no-untyped-def]
        yield env.timeout(20.0)
        twin.tag_alive[killed] = False

    twin.agents.append(kill)
    result = twin.run()
    cfg = site_engine_config(sc)
    devices, sink = rules_sink_for(sc, cfg)
    sink.audit = LiveAudit(sink.rules, AuditLog(tmp_path / "audit.jsonl"), cfg.step_s, model_version(sc))
    keys = dict.fromkeys(result.gateways.ids, key)
    core = ServerCore(cfg, keys, clock="event", sink=sink, devices=devices)
    seqs: Counter[str] = Counter()
    for t0 in np.arange(0.0, sc.duration_s, 1.0):
        for topic, body in twin_batches(result.sightings, gateway_ids=result.gateways.ids,
                                        device_ids=result.device_ids, keys=keys, origin=origin, t0=t0,
                                        t1=t0 + 1.0, seqs=seqs):
            core.handle(topic, body, origin + t0 + 1.0)
        core.tick(origin + t0 + 1.0)
    records = list(read_audit(tmp_path / "audit.jsonl"))
    assert [(r["event"]["rule"], r["event"]["tag"]) for r in records] == [("missing_tag", result.device_ids[killed])]
    assert records[0]["model"]["time_origin"] == core.origin
    derived = rederive(records[0])
    assert derived.reproduced, derived.note
