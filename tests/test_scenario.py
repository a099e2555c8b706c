"""Scenario files: the shipped ones load; bad ones fail naming file, field and problem."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SCENARIOS
from twin.scenario import ScenarioError, load_scenario, parse_scenario

DEMO_TEXT = (SCENARIOS / "demo.toml").read_text()


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name and sc.duration_s > 0
    assert sum(g.count for g in sc.tags) > 0


def test_demo_matches_its_brief(demo_scenario) -> None:
    xs = [p[0] for p in demo_scenario.site.outline]
    ys = [p[1] for p in demo_scenario.site.outline]
    assert (max(xs) - min(xs), max(ys) - min(ys)) == (40, 25)
    assert 8 <= len(demo_scenario.gateways.units) <= 12
    assert sum(g.count for g in demo_scenario.tags) == 200
    assert demo_scenario.site.all_racks() and demo_scenario.movers


def _problems(text: str, name: str = "bad.toml") -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, name)
    assert all(line.startswith(f"{name}: ") for line in str(info.value).splitlines())
    return info.value.problems


def test_invalid_toml_names_the_file_and_line() -> None:
    problems = _problems("name = \n")
    assert "not valid TOML" in problems[0] and "line 1" in problems[0]


def test_missing_field_is_named() -> None:
    text = DEMO_TEXT.replace("seed = 42\n", "")
    assert any(p.startswith("seed: Field required") for p in _problems(text))


def test_wrong_type_deep_in_a_list_names_the_path() -> None:
    text = DEMO_TEXT.replace('id = "gw-03"\nx = 26', 'id = "gw-03"\nx = "east"')
    problems = _problems(text)
    assert any(p.startswith("gateways.list[2].x:") for p in problems), problems


def test_typo_in_a_key_is_rejected() -> None:
    text = DEMO_TEXT.replace("duration_s = 600", "duraton_s = 600\nduration_s = 600")
    assert any(p.startswith("duraton_s: Extra inputs are not permitted") for p in _problems(text))


def test_self_intersecting_zone_is_rejected() -> None:
    text = DEMO_TEXT.replace(
        "polygon = [[2, 2], [28, 2], [28, 9], [2, 9]]", "polygon = [[2, 2], [28, 9], [28, 2], [2, 9]]"
    )
    problems = _problems(text)
    assert any(p.startswith("zones[0].polygon:") and "simple polygon" in p for p in problems), problems


def test_route_to_unknown_zone_is_rejected() -> None:
    text = DEMO_TEXT.replace('route = ["storage", "packing"]', 'route = ["storage", "loading-bay"]')
    assert any("movers[0].route" in p and "loading-bay" in p for p in _problems(text))


def test_scan_window_longer_than_interval_is_rejected() -> None:
    text = DEMO_TEXT.replace("scan_window_ms = 100\n", "scan_window_ms = 150\n")
    assert any(p.startswith("gateways.defaults:") and "scan_window_ms" in p for p in _problems(text))


def test_duplicate_gateway_ids_are_rejected() -> None:
    text = DEMO_TEXT.replace('id = "gw-02"', 'id = "gw-01"')
    assert any("unique" in p for p in _problems(text))


def test_unknown_wall_material_lists_the_known_ones() -> None:
    text = DEMO_TEXT.replace('material = "drywall"', 'material = "cardboard"')
    assert any("cardboard" in p and "concrete" in p for p in _problems(text))


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_scenario(tmp_path / "nope.toml")


def test_cli_reports_bad_file_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text(DEMO_TEXT.replace("seed = 42", "seed = -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "tagtwin", "simulate", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{bad}: seed: Input should be greater than or equal to 0" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# Any value dropped into any top-level field either validates or fails as a ScenarioError.
toml_values = st.recursive(
    st.none().map(lambda _: "x")
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, width=32)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["x", "y", "name", "count"]), inner, max_size=3)
    ),
    max_leaves=8,
)


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(["duration_s", "seed", "tick_s", "name", "tags", "movers", "zones", "radio", "engine"]),
    value=toml_values,
)
def test_parser_never_crashes(field: str, value: object) -> None:
    data = tomllib.loads(DEMO_TEXT)
    lines = [f"{field} = {_toml_literal(value)}"]
    # Re-emit the demo with one top-level field replaced: keep the rest verbatim.
    head, _, rest = DEMO_TEXT.partition("[site]")
    kept = [ln for ln in head.splitlines() if not ln.startswith(f"{field} =")]
    text = "\n".join([*lines, *kept, "[site]" + rest])
    if field in {"tags", "movers", "zones", "radio", "engine"}:
        text = text.replace(f"[[{field}]]", f"[[ignored_{field}]]").replace(f"[{field}]", f"[ignored_{field}]")
    assert data["name"]
    try:
        parse_scenario(text, "prop.toml")
    except ScenarioError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
