"""benchmarks/misplaced_quiet.py replays only the tags that can fire and every seed side by
side in one rule engine: both must give exactly the alarms of the plain replay, seed by seed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pipeline import FIX_DTYPE
from engine.rules import RuleEngine, RuleSet
from engine.rules.events import ListSink
from tests.test_misplaced import walled_context
from tests.test_rules import rules_with

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import misplaced_quiet


def _run(seed: int, n_tags: int = 2, seconds: int = 240) -> np.ndarray:
    """Random carries and rests about the office (0..10, 20..30) and its door, one fix a
    second per tag: some tags rest inside, some by its wall, some far away."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_tags):
        x, y = rng.uniform(0, 20), rng.uniform(12, 30)
        moving = False
        for t in range(1, seconds + 1):
            if rng.random() < 0.03:
                moving = not moving
            if moving:
                x = float(np.clip(x + rng.normal(0, 1.5), 0, 26))
                y = float(np.clip(y + rng.normal(0, 1.5), 0, 30))
            r = np.zeros(1, FIX_DTYPE)
            r["t"], r["device"], r["motion"] = t, d, int(moving)
            r["x"], r["y"] = x + rng.normal(0, 0.3), y + rng.normal(0, 0.3)
            r["r90"] = rng.uniform(2.0, 8.0)
            rows.append(r)
    f = np.concatenate(rows)
    return f[np.lexsort((f["device"], f["t"]))]


def _plain(rules: RuleSet, f: np.ndarray, end_t: float) -> list[tuple[str | None, float]]:
    sink = ListSink()
    eng = RuleEngine(rules, walled_context(2), [sink])
    eng.process_fixes(f)
    eng.flush(end_t)
    return [(e.tag, e.t) for e in sink.events if e.rule == "misplaced" and e.severity == "alarm"]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=3),
       st.sampled_from([{}, {"threshold": 0.7}, {"opening_tier": False}, {"alone_threshold": 0.75}]))
def test_side_by_side_replay_of_the_tags_that_can_fire_is_the_plain_replay(
    seeds: list[int], settings_: dict
) -> None:
    _same_alarms(seeds, settings_)


def test_the_runs_that_fire_fire_the_same_side_by_side() -> None:
    """Three runs that fire (four alarms in all), with one that does not between them (run 15
    fired before walled rooms needed their door; run 30 does with it)."""
    assert [len(a) for a in _same_alarms([2, 1, 8, 30], {})] == [1, 0, 2, 1]


def _same_alarms(seeds: list[int], settings_: dict) -> list[list[tuple[str | None, float]]]:
    rules = misplaced_quiet.misplaced_only(rules_with(), settings_)
    runs = [_run(s) for s in seeds]
    plain = [_plain(rules, f, 240.0) for f in runs]
    engine = RuleEngine(rules, walled_context(2))
    engine._grow(2)
    kept = [misplaced_quiet.candidates(f, engine, misplaced_quiet.lowest_look(rules)) for f in runs]
    together = misplaced_quiet.replay_side_by_side(rules, walled_context(2), kept, 240.0)
    got = [[(e.tag, e.t) for j, e in together if j == i] for i in range(len(runs))]
    assert got == plain
    return plain


def test_kept_candidates_are_reused_only_by_a_replay_they_cover(tmp_path: Path) -> None:
    """--keep-candidates: a seed's candidates kept at the rule's lowest look (0.25) stand in
    for its kept fixes in a later replay whose lowest look is at least that, never in one
    that can fire lower (its candidates may be more)."""
    from typing import get_args

    import pytest

    from siteplan.schema import ZoneRole
    from twin.run import save_fixes

    fixes_dir, keep = tmp_path / "fixes", tmp_path / "keep"
    sc = misplaced_quiet._scenario(str(misplaced_quiet.ROOT / "scenarios" / "demo.toml"), 7, 60.0)
    f = _run(3)
    f["x"] += 30.0  # about the demo's office (32..40, 18..25)
    f["y"] = np.clip(f["y"] - 5.0, 0.0, 25.0)
    source = fixes_dir / f"{sc.name}-seed7-60s.npz"
    save_fixes(source, f)
    args = (str(misplaced_quiet.ROOT / "scenarios" / "demo.toml"), 7, 60.0, str(fixes_dir))
    first, tag_days = misplaced_quiet.seed_candidates(*args, {}, (), str(keep))
    key = misplaced_quiet.forbidden_key(sc, misplaced_quiet.misplaced_only(sc.rules))
    assert [p.name for p in keep.iterdir()] == [f"{sc.name}-seed7-60s-zones{key}-floor0.25.npy"]
    assert len(first) > 0 and tag_days == pytest.approx(200 * 60 / 86_400)
    source.unlink()
    again, _ = misplaced_quiet.seed_candidates(*args, {"threshold": 0.6}, (), str(keep))
    assert np.array_equal(again, first)
    with pytest.raises(SystemExit, match="no kept fixes"):
        misplaced_quiet.seed_candidates(*args, {"opening_look_threshold": 0.22}, (), str(keep))
    # other forbidden zones (every role allowed by default): other candidates, so not these
    with pytest.raises(SystemExit, match="no kept fixes"):
        misplaced_quiet.seed_candidates(*args, {"default_allowed_roles": list(get_args(ZoneRole))}, (), str(keep))
