"""The backbone side of spatial partitions (engine/cells.py): one partition per cell.

A cell's partition is the site's raw stream read through a consumer that filters on the
subjects of the gateways the cell reads (``filter_subjects``: its own gateways and its
neighbours' border gateways), with its own durable consumer ``engine-<site>-<cell>`` and
checkpoint ``<site>.<cell>``. Gateways publish as before, once, on their own subject
(``tagtwin.v1.<site>.raw.<gateway>``): a border gateway's batch is stored once and read
by every cell it reaches, so the stream holds no copies and a batch has one stream
sequence, and moving a cell border changes consumers, never gateways. Every cell
publishes the fixes it owns on the site's positions subject; revisions are stream
sequences of the one raw stream, so they compare across cells.

In a pool (live_bridge/pool.py) a cell is a partition like a site: ``<site>-<cell>``
under its own lease.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from engine.cells import border_distance
from live_bridge.backbone import raw_subject, token
from live_bridge.worker import WorkerCore, WorkerSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from engine.cells import CellPlan
    from engine.pipeline import Engine, EngineConfig


def cell_subjects(site: str, plan: CellPlan, cell: int) -> tuple[str, ...]:
    """The raw subjects cell ``cell`` reads."""
    return tuple(raw_subject(site, g) for g in plan.gateways_of(cell))


def cell_partitions(site: str, plan: CellPlan) -> dict[str, int]:
    """Pool partition name (``<site>-<cell>``) -> cell index."""
    return {token("partition", f"{site}-{name}"): i for i, name in enumerate(plan.names)}


def cell_worker(config: EngineConfig, keys: Mapping[str, bytes | tuple[bytes, ...]], plan: CellPlan, cell: int,
                settings: WorkerSettings) -> WorkerCore:
    """A worker for one cell of ``settings.site``: reads its gateways, publishes what it owns."""
    s = replace(settings, partition=token("cell", plan.names[cell]), subjects=cell_subjects(settings.site, plan, cell))
    core = WorkerCore(config, keys, s)
    core.publish_filter = plan.owned_by(cell, core.config.window_s, core.config.step_s)
    core.windows.engine = cast("Engine", OwnTagsEngine(core.engine, plan.home == cell))
    return core


class OwnTagsEngine:
    """The engine as a cell's windows see it: it localizes only the tags one of the cell's
    own gateways heard in the rows of the windows asked for. A cell can own no other tag's
    fix (engine.cells), and a fix depends only on its own tag's rows, so the fixes it
    publishes are the same and the border band's other tags cost decoding, not localizing."""

    def __init__(self, engine: Engine, own_gateways: np.ndarray) -> None:
        self.engine: Any = engine  # Any: the windows of another branch ask it for localize_events
        self.config = engine.config
        self.own = np.asarray(own_gateways, bool)

    def own_tags(self, rows: np.ndarray) -> np.ndarray:
        """The rows of the tags one of the cell's own gateways heard (in time order still)."""
        heard = np.unique(rows["device"][self.own[rows["gateway"]]])
        return rows[np.isin(rows["device"], heard)]

    def localize_windows(self, rows: np.ndarray, k_first: int, k_last: int) -> np.ndarray:
        return self.engine.localize_windows(self.own_tags(rows), k_first, k_last)

    def localize_events(self, events: np.ndarray, k_first: int, k_last: int) -> np.ndarray:
        """The same for merged events (the engine-speed branch's windows call this one)."""
        return self.engine.localize_events(self.own_tags(events), k_first, k_last)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # anything else the windows ask of the engine


# -- the same traffic through every cell without IO: exactly-once and border figures -------


def replay_cells(config: EngineConfig, keys: Mapping[str, bytes | tuple[bytes, ...]], plan: CellPlan | None,
                 batches: Sequence[tuple[str, bytes, float]], site: str) -> dict[str, list[bytes]]:
    """Stored batches (subject, body, receive time; stream order) through one worker per
    cell (or one for the site when ``plan`` is None), each fed the batches of the gateways
    it reads, as the backbone's filtered consumers would: partition -> position payloads.
    What the backbone test compares its published positions against."""
    settings = WorkerSettings(site=site, horizon_s=1e9)
    if plan is None:
        cores = {"all": WorkerCore(config, keys, settings)}
        reads: dict[str, frozenset[str] | None] = {"all": None}
    else:
        cores = {plan.names[c]: cell_worker(config, keys, plan, c, settings) for c in range(len(plan))}
        reads = {plan.names[c]: frozenset(plan.gateways_of(c)) for c in range(len(plan))}
    out: dict[str, list[bytes]] = {p: [] for p in cores}
    last = 0.0
    for seq, (subject, body, received) in enumerate(batches, start=1):
        gw = subject.rsplit(".", 1)[-1]
        for p, core in cores.items():
            r = reads[p]
            if r is None or gw in r:
                core.handle(subject, body, seq, received)
                out[p] += [payload for subj, payload in core.tick(received) if subj.endswith(".positions")]
        last = max(last, received)
    for p, core in cores.items():
        out[p] += [payload for subj, payload in core.tick(last, final=True) if subj.endswith(".positions")]
    return out


Position = tuple[float, float]
Published = dict[tuple[str, float], list[tuple[int, str, Position]]]


def latest_by_partition(payloads: Mapping[str, Iterable[bytes]]) -> Published:
    """(device, window end) -> every partition's latest (revision, partition, (x, y)) for it."""
    out: dict[tuple[str, float], list[tuple[int, str, Position]]] = {}
    for part, bodies in payloads.items():
        mine: dict[tuple[str, float], tuple[int, Position]] = {}
        for body in bodies:
            for p in json.loads(body)["positions"]:
                key, rev = (p["dev"], p["t"]), int(p.get("rev", 0))
                if key not in mine or rev >= mine[key][0]:
                    mine[key] = (rev, (p["x"], p["y"]))
        for key, (rev, xy) in mine.items():
            out.setdefault(key, []).append((rev, part, xy))
    return out


def compare_to_single(single: Mapping[tuple[str, float], Position], cells: Published,
                      plan: CellPlan | None = None, near_m: float = 10.0) -> dict[str, Any]:
    """How the cells' published positions match one worker's: (device, window) keys
    published by exactly one cell (in any number of revisions), by several, missing,
    extra; how many of the latest revisions differ from the single-partition position and
    by how much (metres); with ``plan``, the same split into windows whose position lies
    within ``near_m`` of another cell and those farther from every border."""
    once = several = 0
    dist: list[float] = []
    where: list[tuple[float, float]] = []
    for key, entries in cells.items():
        if len({p for _, p, _ in entries}) == 1:
            once += 1
        else:
            several += 1
        if key in single:
            x, y = max(entries)[2]
            sx, sy = single[key]
            dist.append(float(np.hypot(x - sx, y - sy)))
            where.append((sx, sy))
    d = np.asarray(dist)
    out: dict[str, Any] = {
        "windows": len(single),
        "published_once": once,
        "published_by_several": several,
        "missing": len(set(single) - set(cells)),
        "extra": len(set(cells) - set(single)),
        **_differ(d),
    }
    if plan is not None and len(d):
        xy = np.asarray(where)
        near = border_distance(plan, xy[:, 0], xy[:, 1]) <= near_m
        out[f"within_{near_m:g}_m_of_a_border"] = {"windows": int(near.sum()), **_differ(d[near])}
        out[f"farther_than_{near_m:g}_m"] = {"windows": int((~near).sum()), **_differ(d[~near])}
    return out


def _differ(d: np.ndarray) -> dict[str, Any]:
    differ = d > 1e-3
    return {
        "differ": int(differ.sum()),
        "differ_share": round(float(differ.mean()), 6) if len(d) else 0.0,
        "differ_m": {"max": round(float(d.max()), 3), "p50": round(float(np.median(d[differ])), 3),
                     "p90": round(float(np.quantile(d[differ], 0.9)), 3)} if differ.any() else None,
    }
