"""The ML localizer's work across windows: rows equal to rows already solved take their
answers (always on: the same bytes), and the opt-in warm start (EngineConfig.wls_warm_start):
a tag's fix before each aligned block of windows replaces the strongest gateways' starts."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import SIGHTING_DTYPE, GatewayInfo
from engine.localize import ObstacleMap
from engine.parallel import PartitionedEngine
from engine.pipeline import WINDOWS_PER_CHUNK, Engine, EngineConfig
from radio_models.environment import Grid, Obstacles, crossing_loss_db
from siteplan.zones import ZoneIndex

BOUNDS = (0.0, 0.0, 40.0, 30.0)
DURATION_S = 40.0


def _site() -> tuple[np.ndarray, ObstacleMap]:
    """A 40 x 30 m floor, 12 gateways on a 10 m grid, four 12 dB racks, its 1 m obstacle map."""
    gx, gy = np.meshgrid(np.arange(5, 40, 10.0), np.arange(5, 30, 10.0))
    gw = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 3.0)])
    grid = Grid.covering(BOUNDS, 1.0)
    racks = Obstacles(tuple(shapely.box(5, y, 35, y + 1.2) for y in (6.0, 12.0, 18.0, 24.0)), (12.0,) * 4)
    return gw, ObstacleMap(grid, crossing_loss_db(racks, grid.centres(), gw[:, :2]).astype(np.float32))


def _config(**kw: object) -> EngineConfig:
    gw, wall = _site()
    zones = ZoneIndex.from_points([("all", "storage", [(0, 0), (40, 0), (40, 30), (0, 30)])])
    return EngineConfig(gateways=GatewayInfo(tuple(f"g{i}" for i in range(len(gw))), gw), zones=zones,
                        bounds=BOUNDS, sigma_db=4.0, obstacle_map=wall, **kw)  # type: ignore[arg-type]


def _traffic(n_tags: int = 60, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sightings (4 dB) of still tags, one advert a second, each gateway hearing
    70 % of them; and the tags' true positions."""
    gw, wall = _site()
    rng = np.random.default_rng(seed)
    xy = rng.uniform([1.0, 1.0], [39.0, 29.0], (n_tags, 2))
    d = np.sqrt(((xy[:, None, :] - gw[None, :, :2]) ** 2).sum(-1) + (gw[None, :, 2] - 1.0) ** 2)
    mean = -59.0 - 20.0 * np.log10(d) - wall.loss_db(xy)
    times = np.arange(0.0, DURATION_S, 1.0)
    tag, g, k = np.meshgrid(np.arange(n_tags), np.arange(len(gw)), np.arange(len(times)), indexing="ij")
    out = np.zeros(tag.size, SIGHTING_DTYPE)
    out["t"] = times[k.ravel()] + 0.01 * tag.ravel() / n_tags
    out["device"], out["gateway"], out["seq"], out["channel"] = tag.ravel(), g.ravel(), k.ravel(), 37
    out["rssi"] = (mean[tag.ravel(), g.ravel()] + rng.normal(0, 4.0, tag.size)).astype(np.float32)
    out["battery"], out["motion"] = 90, 0
    out = out[rng.random(len(out)) < 0.7]
    return out[np.argsort(out["t"], kind="stable")], xy


def _run(engine: Engine | PartitionedEngine, traffic: np.ndarray, feed_s: float) -> np.ndarray:
    out = []
    for lo in np.arange(0.0, DURATION_S, feed_s):
        engine.ingest(traffic[(traffic["t"] >= lo) & (traffic["t"] < lo + feed_s)])
        out.append(engine.advance())
    out.append(engine.flush(DURATION_S))
    return np.concatenate(out)


@pytest.fixture
def newton_solves(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the rows the Newton loop solves (``["n"]``, reset it to count anew)."""
    import engine.localize as localize

    newton = localize.newton_solve
    solves = {"n": 0}

    def counted(*args: object) -> object:
        solves["n"] += len(args[0])  # type: ignore[arg-type]
        return newton(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(localize, "newton_solve", counted)
    return solves


def test_warm_starts_do_not_depend_on_feeding_or_partitions() -> None:
    """Blocks are aligned to the window index, and each device's starts come from its own
    fixes: any batching, and devices split over worker processes, give the same bytes."""
    traffic, _ = _traffic()
    cfg = _config(wls_warm_start=True)
    want = _run(Engine(cfg), traffic, 5.0)
    assert _run(Engine(cfg), traffic, 7.0).tobytes() == want.tobytes()
    with PartitionedEngine(cfg, workers=2) as two:
        assert _run(two, traffic, 3.0).tobytes() == want.tobytes()


def test_windows_recomputed_in_any_chunks_get_the_same_warm_starts() -> None:
    """engine.timeline reruns windows in chunks of its own: a chunk across blocks is done
    block by block, so chunks of 7 windows and one chunk of all give the same fixes."""
    traffic, _ = _traffic(n_tags=20)
    cfg = _config(wls_warm_start=True)
    whole = Engine(cfg).localize_windows(traffic, 1, 40)
    eng = Engine(cfg)
    chunks = np.concatenate([eng.localize_windows(traffic, k, min(k + 6, 40)) for k in range(1, 41, 7)])
    assert chunks.tobytes() == whole.tobytes()
    assert whole.tobytes() != Engine(_config()).localize_windows(traffic, 1, 40).tobytes()


def test_the_first_block_is_the_default_and_later_blocks_are_warm() -> None:
    """Before a device has a fix (the first block of windows) its starts are the default's,
    so are its fixes, bit for bit; after it, the warm start changes the search."""
    traffic, _ = _traffic()
    warm, cold = _run(Engine(_config(wls_warm_start=True)), traffic, 5.0), _run(Engine(_config()), traffic, 5.0)
    first = warm["t"] < WINDOWS_PER_CHUNK  # windows 1..15 end before 16 s
    assert first.any() and np.array_equal(warm["t"], cold["t"])
    assert warm[first].tobytes() == cold[first].tobytes()
    assert not np.array_equal(warm["x"][~first], cold["x"][~first])


def test_warm_starts_are_as_accurate_as_the_default_with_fewer_solves(newton_solves: dict[str, int]) -> None:
    """On noisy racked-site traffic the warm start's errors are no worse than the default's
    (within 3 %), with fewer Newton row solves."""
    traffic, xy = _traffic(n_tags=120, seed=9)
    solves = newton_solves
    errors, counts = [], []
    for cfg in (_config(), _config(wls_warm_start=True)):
        solves["n"] = 0
        fixes = _run(Engine(cfg), traffic, 10.0)
        late = fixes[fixes["t"] >= 2 * WINDOWS_PER_CHUNK]
        errors.append(np.hypot(late["x"] - xy[late["device"], 0], late["y"] - xy[late["device"], 1]))
        counts.append(solves["n"])
    (e0, e1), (n0, n1) = errors, counts
    assert n1 < 0.85 * n0  # the first block (15 of 40 windows) starts cold
    assert np.median(e1) <= 1.03 * np.median(e0) and np.quantile(e1, 0.9) <= 1.03 * np.quantile(e0, 0.9)


def test_warm_state_is_part_of_the_tracking_state() -> None:
    """The backbone's revision runs windows again from a saved tracking state: with warm
    starts that state holds them, so a rerun from it gives the same fixes after the engine
    has moved on to later blocks (where, without it, those windows would start cold)."""
    traffic, _ = _traffic(n_tags=20)
    rows = traffic[(traffic["t"] >= 14.0) & (traffic["t"] < 26.0)]
    assert Engine(_config(wls_warm_start=True)).stateful and not Engine(_config()).stateful
    reruns = []
    for restore in (True, False):
        eng = Engine(_config(wls_warm_start=True))
        eng.ingest(traffic[traffic["t"] < 20.0])
        eng.advance()  # windows up to 17: the block of windows 16-31 has begun
        saved = eng.tracking_state()
        first = eng.localize_windows(rows, 18, 21)
        eng.ingest(traffic[traffic["t"] >= 20.0])
        eng.flush(DURATION_S)  # on to the next block
        if restore:
            eng.set_tracking_state(saved)
        reruns.append(eng.localize_windows(rows, 18, 21).tobytes() == first.tobytes())
    assert reruns == [True, False]


def test_rows_equal_to_solved_rows_take_their_answers_bit_for_bit(newton_solves: dict[str, int]) -> None:
    """Rows with the same gateways, RSSI means and P0 as a row already solved (in the same
    call, or kept from the last one in SolvedRows) take its answer without a solve: the
    same bytes as solving every row, with fewer rows solved."""
    from engine.localize import Heard, SolvedRows, wls_localize_heard

    gw, wall = _site()
    rng = np.random.default_rng(11)
    solved_rows = newton_solves

    def call(rows: int) -> tuple[Heard, np.ndarray]:
        """Rows heard by 1-4 gateways with whole-dB means from a small set, so many repeat."""
        n = rng.integers(1, 5, rows)
        cols = [np.sort(rng.choice(len(gw), k, replace=False)) for k in n]
        cols = [c if rng.random() < 0.5 else np.arange(k) for c, k in zip(cols, n, strict=True)]
        rssi = [rng.integers(-80, -76, len(c)).astype(float) for c in cols]
        heard = Heard(rows, len(gw), np.repeat(np.arange(rows), n), np.concatenate(cols), np.concatenate(rssi))
        return heard, rng.choice([-59.0, -60.0], rows)

    memo = SolvedRows.empty()
    got: list[bytes] = []
    want: list[bytes] = []
    counts: list[int] = []
    for _ in range(3):
        heard, p0 = call(400)
        for solved, out in ((memo, got), (None, want)):
            solved_rows["n"] = 0
            est = wls_localize_heard(heard, gw, p0, 2.0, 4.0, 1.0, BOUNDS, obstacle_map=wall, solved=solved)
            out.append(np.concatenate([est.x, est.y, est.r90]).tobytes())
            counts.append(solved_rows["n"])
    assert got == want
    assert len(memo.counts) > 0
    assert counts[0] == counts[1] and counts[2] < counts[3] and counts[4] < counts[5]  # the kept rows served
    # Within a call too: each row solved alone (no other row to repeat) gives the same bytes.
    heard, p0 = call(60)
    together = wls_localize_heard(heard, gw, p0, 2.0, 4.0, 1.0, BOUNDS, obstacle_map=wall)
    alone = [wls_localize_heard(Heard(1, len(gw), np.zeros(k, np.intp), heard.col[a:a + k], heard.rssi[a:a + k]),
                                gw, p0[i:i + 1], 2.0, 4.0, 1.0, BOUNDS, obstacle_map=wall)
             for i, (a, k) in enumerate(zip(heard.start.tolist(), heard.counts.tolist(), strict=True))]
    assert np.concatenate([e.x for e in alone]).tobytes() == together.x.tobytes()
    assert np.concatenate([e.r90 for e in alone]).tobytes() == together.r90.tobytes()


def test_warm_start_setting_is_off_by_default_and_reaches_the_engine() -> None:
    """Left off, the scenario setting is not written (scenario hashes unchanged); set, it
    reaches the engine's config."""
    from pathlib import Path

    from twin.run import engine_config_for
    from twin.scenario import EngineSettings, load_scenario
    from twin.sim import WarehouseTwin

    assert "wls_warm_start" not in EngineSettings().model_dump()
    assert EngineSettings(wls_warm_start=True).model_dump()["wls_warm_start"] is True
    demo = load_scenario(Path(__file__).parents[1] / "scenarios" / "demo.toml")
    demo = demo.model_copy(update={"duration_s": 1.0, "engine": demo.engine.model_copy(
        update={"wls_warm_start": True})})
    assert engine_config_for(demo, WarehouseTwin(demo).run()).wls_warm_start


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=3), st.sampled_from([-59.0, -60.0, -0.0, 0.0]),
                          st.booleans()), max_size=40),
       st.integers(0, 3))
def test_first_equal_rows_is_the_first_row_with_the_same_content(rows: list, value: int) -> None:
    """Each used row maps to the first used row with the same gateways, RSSI bits and P0
    bits (-0.0 and 0.0 are different bits); unused rows map to themselves."""
    from engine._newton import first_equal_rows

    counts = np.array([len(c) for c, _, _ in rows], np.intp)
    col = np.array([g for c, _, _ in rows for g in c], np.intp)
    rssi = np.array([float(-70 - (g + value) % 2) for c, _, _ in rows for g in c])
    p0 = np.array([p for _, p, _ in rows])
    use = np.array([u for _, _, u in rows], bool)
    got = first_equal_rows(np.cumsum(counts) - counts, counts, col, rssi.view(np.int64), p0.view(np.int64), use)
    first: dict[tuple[object, ...], int] = {}
    at = 0
    for r, (c, p, u) in enumerate(rows):
        key = (tuple(c), tuple(rssi[at:at + len(c)].view(np.int64).tolist()), float(np.float64(p).view(np.int64)))
        at += len(c)
        if not u:
            assert got[r] == r
            continue
        assert got[r] == first.setdefault(key, r)
