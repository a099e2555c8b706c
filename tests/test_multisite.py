"""Multi-site scenarios (twin/multisite.py): ids, seeds, overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SCENARIOS
from twin.multisite import MultiSiteError, load_multisite, parse_multisite
from twin.scenario import ScenarioError
from twin.sweep import replicate_seeds

DEMO = SCENARIOS / "demo.toml"


def test_the_shipped_chain_has_five_sites_with_their_own_seeds() -> None:
    chain = load_multisite(SCENARIOS / "multisite" / "demo-chain.toml")
    assert chain.ids == ["store-01", "store-02", "store-03", "store-04", "flagship"]
    seeds = [s.scenario.seed for s in chain.sites]
    assert len(set(seeds)) == 5
    assert seeds[:4] == replicate_seeds(4, 7, (0,)) and seeds[4] == replicate_seeds(1, 7, (1,))[0]
    assert chain.sites[4].scenario.name == "demo-incidents" and chain.sites[4].scenario.incidents
    assert load_multisite(SCENARIOS / "multisite" / "demo-chain.toml") == chain  # same file, same sites


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 120), min_size=1, max_size=4), st.integers(0, 2**32))
def test_replicas_get_unique_ids_and_seeds_that_grow_stably(counts: list[int], entropy: int) -> None:
    groups = "".join(f'[[sites]]\nscenario = "{DEMO}"\ncount = {n}\nid = "g{i}"\n' for i, n in enumerate(counts))
    chain = parse_multisite(f'name = "x"\nentropy = {entropy}\n' + groups, "m.toml")
    assert len(chain.sites) == sum(counts) == len(set(chain.ids))
    assert len({s.scenario.seed for s in chain.sites}) == sum(counts)
    width = max(2, len(str(counts[0])))
    assert chain.ids[0] == ("g0" if counts[0] == 1 else f"g0-{1:0{width}d}")
    # one more replica in the first group keeps every earlier seed
    grown = parse_multisite(f'name = "x"\nentropy = {entropy}\n' + groups.replace(
        f"count = {counts[0]}\n", f"count = {counts[0] + 1}\n", 1), "m.toml")
    assert [s.scenario.seed for s in grown.sites if s.group == 0][: counts[0]] == [
        s.scenario.seed for s in chain.sites if s.group == 0]


def test_overrides_and_a_fixed_seed_apply_to_their_group() -> None:
    text = (f'name = "x"\n[[sites]]\nscenario = "{DEMO}"\ncount = 2\nset = {{ duration_s = 30, "tags[0].count" = 9 }}\n'
            f'[[sites]]\nscenario = "{DEMO}"\nid = "solo"\nseed = 5\n')
    chain = parse_multisite(text, "m.toml")
    assert chain.ids == ["demo-warehouse-01", "demo-warehouse-02", "solo"]
    a, b, solo = (s.scenario for s in chain.sites)
    assert a.duration_s == b.duration_s == 30 and a.tags[0].count == 9
    assert solo.duration_s == 600 and solo.seed == 5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[sites]]\nscenario = "DEMO"\nid = "a b"\n', "m.toml: sites[0].id: 'a b' is not a site id"),
        ('[[sites]]\nscenario = "DEMO"\nid = "a"\n[[sites]]\nscenario = "DEMO"\nid = "a"\n',
         "m.toml: sites: site ids must be unique; repeated: a"),
        ('[[sites]]\nscenario = "DEMO"\ncount = 2\nseed = 3\n', "m.toml: sites[0]: seed is for a single site"),
        ('[[sites]]\nscenario = "DEMO"\nset = { radio.sigma = 3 }\n',
         "m.toml: sites[0].set.radio.sigma: radio has no field 'sigma'"),
        ('[[sites]]\nscenario = "DEMO"\nset = { duration_s = 0 }\n',
         "m.toml: sites[0].set: duration_s: Input should be greater than 0"),
        ("sites = []\n", "m.toml: sites: List should have at least 1 item"),
        ('[[sites]]\nscenario = "DEMO"\ncount = 0\n',
         "m.toml: sites[0].count: Input should be greater than or equal to 1"),
    ],
)
def test_bad_multisite_files_name_the_file_and_field(body: str, expected: str) -> None:
    with pytest.raises(MultiSiteError) as info:
        parse_multisite('name = "x"\n' + body.replace("DEMO", str(DEMO)), "m.toml")
    lines = [f"{info.value.path}: {p}" for p in info.value.problems]
    assert any(line.startswith(expected) for line in lines), lines


def test_a_missing_scenario_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_multisite('name = "x"\n[[sites]]\nscenario = "gone.toml"\n', tmp_path / "m.toml")
    assert info.value.path == str(tmp_path / "gone.toml")
