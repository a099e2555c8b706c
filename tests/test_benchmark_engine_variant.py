"""benchmarks/_common.engine_variant: the rule benchmarks' --engine KEY=VALUE overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._common import engine_variant
from twin.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_replace_engine_settings_and_rename_the_scenario() -> None:
    base = load_scenario(ROOT / "scenarios" / "demo_incidents.toml")
    v = engine_variant(base, ["localizer=radio-map", "radio_map=survey", "window_s=2"])
    assert (v.engine.localizer, v.engine.radio_map, v.engine.window_s) == ("radio-map", "survey", 2.0)
    assert v.engine.tracker == base.engine.tracker
    # kept fixes are filed under the name: a variant's never stand in for the base's
    assert v.name == "demo-incidents+localizer=radio-map+radio_map=survey+window_s=2"
    assert engine_variant(base, []) is base


@pytest.mark.parametrize(
    ("item", "says"),
    [("nope=1", "KEY one of"), ("localizer", "KEY one of"), ("localizer=foo", "engine.localizer")],
)
def test_bad_override_is_one_line_naming_it(item: str, says: str) -> None:
    base = load_scenario(ROOT / "scenarios" / "demo_incidents.toml")
    with pytest.raises(SystemExit) as err:
        engine_variant(base, [item])
    assert says in str(err.value) and "\n" not in str(err.value)
