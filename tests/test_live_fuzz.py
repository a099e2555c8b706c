"""Hostile bytes into every registered parser: an answer or a declared refusal, never a
crash. A few thousand hypothesis cases here; benchmarks/fuzz_decoders.py runs 100,000+."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.fuzz_targets import FUZZ_TARGETS


def _inputs(seeds: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    """Random bytes, or a seed with a stretch overwritten, cut or extended."""
    if not seeds:
        return st.binary(max_size=64)

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        seed = draw(st.sampled_from(seeds))
        i = draw(st.integers(0, len(seed)))
        j = draw(st.integers(i, len(seed)))
        return seed[:i] + draw(st.binary(max_size=8)) + seed[j:]

    return st.one_of(st.binary(max_size=64), mutated())


@pytest.mark.parametrize("name", sorted(FUZZ_TARGETS))
def test_parser_never_crashes(name):
    target = FUZZ_TARGETS[name]

    @settings(max_examples=300, deadline=None, database=None)
    @given(_inputs(target.seeds))
    def run(data: bytes) -> None:
        with contextlib.suppress(*target.expected):  # a declared refusal is fine
            target.parse(data)

    run()


def test_seeds_parse_cleanly():
    """The seeds are valid inputs: the fuzzer mutates something real."""
    for name, target in FUZZ_TARGETS.items():
        for seed in target.seeds:
            target.parse(seed)  # no refusal expected for a valid input
            assert seed, name
