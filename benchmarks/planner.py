"""What the planner costs per interaction, printed as JSON (never asserted).

    .venv/bin/python -m benchmarks.planner [--full-demo]

Coverage maps (demo and large sites), a demo run reduced to a RunView, the size of that
cached view, building the playback figure, the plan editor's data, auto-placement, and a
batch of seeds on the process pool against the budget the app shows before it starts
(planner.replicates.estimate). --full-demo also times the demo at its full 600 s.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

from planner import backend, editor, placement
from planner import figures as figs
from planner import replicates as reps
from planner.requirements import Requirement
from siteplan.model import SiteModel
from twin.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat: int = 1):  # type: ignore[no-untyped-def]
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, round(best, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-demo", action="store_true", help="also run the demo for its full 600 s")
    args = ap.parse_args()
    result: dict[str, object] = {}
    demo = load_scenario(ROOT / "scenarios" / "demo.toml")
    large = load_scenario(ROOT / "scenarios" / "large.toml")
    demo_site = SiteModel.from_scenario(demo)
    rows = backend.gateway_rows(demo, demo_site)
    maps, result["coverage_maps_demo_s"] = timed(
        lambda: backend.coverage_maps(demo, rows, demo_site), 3
    )
    result["coverage_cells_demo"] = int(maps.inside.size)
    large_site = SiteModel.from_scenario(large)
    large_rows = backend.gateway_rows(large, large_site)
    large_maps, result["coverage_maps_large_s"] = timed(
        lambda: backend.coverage_maps(large, large_rows, large_site)
    )
    result["coverage_cells_large"] = int(large_maps.inside.size)
    result["coverage_gateways_large"] = len(large_rows)
    short = backend.with_gateways(demo, rows, duration_s=60)
    view, result["demo_60s_run_view_s"] = timed(lambda: backend.run_view(short))
    blob, result["run_view_pickle_s"] = timed(lambda: pickle.dumps(view), 3)
    result["run_view_bytes"] = len(blob)
    _, result["run_view_unpickle_s"] = timed(lambda: pickle.loads(blob), 3)

    def playback_figure() -> object:
        fig = figs.floorplan(demo_site, rows, "t")
        figs.add_frame(fig, view.frame(float(view.times[-1])), view.device_ids)
        return fig.to_json()

    spec, result["playback_figure_build_s"] = timed(playback_figure, 3)
    result["playback_figure_json_bytes"] = len(str(spec))
    _, result["error_map_s"] = timed(lambda: view.error_map(maps.grid), 3)
    _, result["editor_data_s"] = timed(
        lambda: json.dumps(
            editor.editor_data(editor.site_data(demo_site), rows, editable=True, ack=0, default_z=3.0)
        ),
        3,
    )
    req = Requirement()
    _, result["requirement_layer_s"] = timed(
        lambda: json.dumps(editor.layer_for(maps, "requirement (pass/fail)", req)), 3
    )
    search, result["placement_search_setup_s"] = timed(lambda: placement.search_for(demo, demo_site, req))
    result["placement_candidates"] = len(search.xyz)
    fewest, result["placement_fewest_s"] = timed(lambda: placement.fewest_meeting(search))
    result["placement_fewest_gateways"] = len(fewest.rows)
    _, result["placement_best_10_s"] = timed(lambda: placement.best_for(search, 10))
    # A batch as the app runs it: one layout, the default seeds, on the pool.
    text = backend.scenario_toml(short)
    seeds = reps.replicate_seeds(demo.seed, reps.DEFAULT_SEEDS)
    budget = reps.estimate(sum(g.count for g in demo.tags), 60, len(seeds))
    t0 = time.perf_counter()
    found, errors = reps.run_batch([(text, s, i == 0) for i, s in enumerate(seeds)], lambda _p: None)
    result["batch_3_seeds_60s_s"] = round(time.perf_counter() - t0, 3)
    result["batch_estimated_s"] = round(budget.seconds, 1)
    result["batch_estimated_mb"] = round(budget.memory_mb)
    result["batch_errors"] = len(errors)
    result["batch_run_s"] = sorted(round(r.elapsed_s, 2) for r in found.values())
    if args.full_demo:
        full, result["demo_600s_run_view_s"] = timed(lambda: backend.run_view(demo))
        result["demo_600s_fixes"] = len(full.fixes)
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
