"""The fault-injection suite (live_bridge/faults.py): real nats-server, a worker process that
gets killed -9, gateways with SQLite spools behind links that get cut. Each case reconciles
the counts to the unit and compares every position's latest revision with the fault-free
answer, and every rule event's too. The default run has two short cases; the whole table is marked slow
(benchmarks/faults.py prints it for docs/reliability.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from live_bridge.faults import FAULT_KINDS, Fault, Load, run_case, suite_case
from tagtwin.worker import FAULT_SITE, core_factory, site_config, worker_command

SHORT = Load(devices=20, duration_s=6.0)
SITE = {"config": site_config(FAULT_SITE), "worker_command": worker_command(FAULT_SITE),
        "make_core": core_factory(FAULT_SITE)}


def check(result, generated_at_least: int = 1, events: bool = True) -> None:
    row = result.row()
    assert result.generated >= generated_at_least, row
    assert result.lost == 0, row
    assert result.processed + result.dead_lettered == result.generated, row
    assert result.stored >= result.generated, row  # every sighting is in the raw log
    assert result.positions > 0 and result.positions_match, row
    assert result.events > 0, row
    # the rules' events, latest revisions (late data beyond the horizon reruns them too)
    assert result.events_match or not events, row


@pytest.mark.integration
def test_worker_killed_mid_run_loses_nothing(tmp_path: Path):
    result = run_case(tmp_path, Fault("worker-kill", at_s=2.0, down_s=1.0), SHORT, **SITE)
    check(result, 2000)


@pytest.mark.integration
def test_link_cut_spool_replay_revises_positions_instead_of_dropping(tmp_path: Path):
    result = run_case(tmp_path, Fault("link-cut", at_s=1.5, down_s=3.0), SHORT, **SITE)
    check(result, 2000)
    assert result.revised_positions > 0  # the outage windows were published, then revised


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "none"])
def test_fault_table_quick(kind: str, tmp_path: Path):
    fault, load = suite_case(kind, quick=True)
    result = run_case(tmp_path, fault, load, **SITE)
    check(result, 10_000)
    assert result.duplicates == result.resent  # every re-sent sighting dropped once, none else
    if kind == "duplicate-resend":
        assert result.resent > 0 and result.stored == result.generated + result.resent


@pytest.mark.integration
@pytest.mark.slow  # ~30 s each: the cut must outlast window + lateness (6 s) + horizon
@pytest.mark.parametrize("kind", ["link-cut", "worker-kill-during-replay"])
def test_link_cut_longer_than_the_horizon_is_recomputed_from_the_stream(kind: str, tmp_path: Path):
    """Rows older than the in-memory horizon (0.5 s) + window (4 s) + lateness (2 s) behind the
    watermark come back from an 8 s cut: their windows are read back from the raw stream and
    revised, none dead-lettered; also when the worker is killed -9 during the replay (the
    windows waiting for the deep pass are in its checkpoint)."""
    import asyncio
    from dataclasses import replace

    from live_bridge.faults import Harness

    harness = Harness(tmp_path, Fault(kind, at_s=1.5, down_s=8.0), replace(SHORT, duration_s=11.0),
                      worker_settings={"horizon_s": 0.5}, **SITE)  # type: ignore[arg-type]
    result = asyncio.run(harness.run())
    check(result, 2000)  # the site runs rules: the deep pass reruns them, events match too
    counters = harness.status["counters"]
    assert isinstance(counters, dict), harness.status
    assert counters["late beyond horizon: recomputed from stream"] > 0 and counters["deep recomputations"] >= 1
    assert result.dead_lettered == 0 and result.revised_positions > 0


@pytest.mark.integration
@pytest.mark.slow  # ~20 s: the demo's tracker and rules in a worker process, a link cut replayed
def test_a_tracked_site_link_cut_revises_tracked_positions_and_events(tmp_path: Path):
    """The demo site (Kalman tracker, zone hysteresis, its rules) on real processes: half the
    gateways cut for 3 s, their spools replayed; the latest revision of every tracked
    position and every rule event equals the one-pass run of the same worker core."""
    demo = FAULT_SITE.parent / "demo.toml"
    result = run_case(tmp_path, Fault("link-cut", at_s=2.0, down_s=3.0), replace(SHORT, duration_s=8.0),
                      config=site_config(demo), worker_command=worker_command(demo), make_core=core_factory(demo))
    check(result, 2000)
    assert result.revised_positions > 0


@pytest.mark.integration
@pytest.mark.slow  # ~30 s: the demo's tracker and rules in a worker process, a cut beyond the horizon
def test_a_tracked_site_link_cut_longer_than_the_horizon_loses_nothing(tmp_path: Path):
    """The demo site (Kalman, hysteresis, rules) with a 0.5 s rows horizon and an 8 s cut: the
    spool replay is older than the rows held (it used to be dead-lettered as older than the
    tracked site's horizon); the deep pass reads the rows back from the raw stream, reruns
    tracker and rules from the saved state before it, and the latest positions and events
    equal the one-pass run's. Nothing dead-lettered."""
    import asyncio

    from live_bridge.faults import Harness

    demo = FAULT_SITE.parent / "demo.toml"
    harness = Harness(tmp_path, Fault("link-cut", at_s=1.5, down_s=8.0), replace(SHORT, duration_s=11.0),
                      worker_settings={"horizon_s": 0.5}, config=site_config(demo),
                      worker_command=worker_command(demo), make_core=core_factory(demo))
    result = asyncio.run(harness.run())
    check(result, 2000)
    counters = harness.status["counters"]
    assert isinstance(counters, dict), harness.status
    assert counters["late beyond horizon: recomputed from stream"] > 0 and counters["deep recomputations"] >= 1
    assert result.dead_lettered == 0 and result.revised_positions > 0
