"""Trackers: fuse a tag's fixes over time, vectorized across the tags of one window.

Three filters, selectable per scenario (``[engine] tracker``):

* :class:`KalmanTracker`: constant-velocity Kalman filter on the single-shot fixes
  (Bar-Shalom, Li & Kirubarajan, *Estimation with Applications to Tracking and
  Navigation*, 2001, section 6.3.2, the discrete white-noise-acceleration model);
* :class:`GridFilter`: an HMM forward filter over the free cells of a radio map; the
  transition spreads a tag's belief only to cells it can walk to (never through a wall
  or a rack) and the emission is the radio map's likelihood of the RSSI row;
* :class:`ParticleFilter`: the same model with particles instead of cells, which scales
  to 10,000 tags; a particle's move that would cross a wall or enter a rack is refused.

All three read the tag's motion flag where the advertisement carries one: a still tag
gets (almost) no process noise, so noise does not walk it around. :class:`ZoneHysteresis`
keeps a still tag from flapping between neighbouring zones.

Every tracker keeps per-device arrays indexed by device code and exposes one call,
``step(t, device, rssi, fixes, motion, tx_power)`` for the rows of one window; rows are
distinct devices. Floor-plan constraints come from shapely geometry rasterised once
into a :class:`FloorPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy import sparse
from scipy.spatial import cKDTree

from engine.localize import (
    CHI2_2DOF_90,
    METHOD_HMM,
    METHOD_KALMAN,
    METHOD_PARTICLE,
    Estimates,
    RadioMap,
    normalise_log,
    posterior_estimates,
    r90_from_cov,
)
from radio_models.environment import Grid
from siteplan.zones import NO_ZONE, ZoneIndex

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int32]

MOTION_STILL = 0
MOTION_MOVING = 1
MAX_GAP_S = 10.0  # a longer silence is treated as this long: the prior is wide by then
MAX_INIT_CELLS = 4096  # cells a new tag's particle cloud is drawn over
COLLAPSE_ODDS = 1e6  # particle filter: restart when the best particle is this unlikely


class Tracker(Protocol):
    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates: ...


# -- the floor plan -------------------------------------------------------------------


@dataclass(frozen=True)
class FloorPlan:
    """Where a tag can be, rasterised from shapely geometry: inside the outline, outside
    every rack, and never on a wall. Walls are widened by a cell on each side, so that a
    move sampled every cell cannot jump across one."""

    grid: Grid
    free: NDArray[np.bool_]  # (cells,)

    @classmethod
    def from_geometry(
        cls,
        outline: shapely.Geometry,
        racks: list[shapely.Geometry] | tuple[shapely.Geometry, ...] = (),
        walls: list[shapely.Geometry] | tuple[shapely.Geometry, ...] = (),
        cell_m: float = 0.25,
    ) -> FloorPlan:
        grid = Grid.covering(outline.bounds, cell_m)
        cen = grid.centres()
        free = shapely.contains_xy(outline, cen[:, 0], cen[:, 1])
        blocked = [*racks, *(shapely.buffer(w, cell_m) for w in walls)]
        if blocked:
            union = shapely.union_all(blocked)
            shapely.prepare(union)
            free &= ~shapely.intersects_xy(union, cen[:, 0], cen[:, 1])
        return cls(grid, free)

    @classmethod
    def from_occupancy(
        cls,
        brightness: FloatArray,
        scale_m: float,
        origin: tuple[float, float],
        free_threshold: float = 0.5,
    ) -> FloorPlan:
        """From an occupancy-grid image (rows top to bottom, brightness 0..1; light is
        free floor, the ROS map_server convention): one cell per pixel, ``origin`` the
        image's lower-left corner in site metres."""
        img = np.asarray(brightness, dtype=float)
        if img.ndim != 2 or img.size == 0:
            raise ValueError(f"an occupancy image must be a 2-D grey image, got shape {img.shape}")
        ny, nx = img.shape
        grid = Grid(float(origin[0]), float(origin[1]), float(scale_m), nx, ny)
        return cls(grid, (img[::-1] > free_threshold).ravel())

    @classmethod
    def open_floor(
        cls, bounds: tuple[float, float, float, float], cell_m: float = 0.25
    ) -> FloorPlan:
        grid = Grid.covering(bounds, cell_m)
        return cls(grid, np.ones(grid.nx * grid.ny, bool))

    def is_free(self, xy: FloatArray) -> NDArray[np.bool_]:
        """Free cell and inside the grid (the grid clamps outside points; we do not)."""
        g = self.grid
        inside = (xy[..., 0] >= g.x0) & (xy[..., 0] < g.x0 + g.nx * g.cell_m)
        inside &= (xy[..., 1] >= g.y0) & (xy[..., 1] < g.y0 + g.ny * g.cell_m)
        idx = g.cell_index(xy.reshape(-1, 2)).reshape(xy.shape[:-1])
        return np.asarray(inside & self.free[idx])

    def path_free(self, a: FloatArray, b: FloatArray) -> NDArray[np.bool_]:
        """Is the straight move a -> b clear? (..., 2) arrays. Samples every cell: a wall
        band is two cells wide, so a move crossing it leaves a sample inside it."""
        length = float(np.max(np.hypot(*(b - a).reshape(-1, 2).T), initial=0.0))
        n = max(1, int(np.ceil(length / self.grid.cell_m)))
        ok = self.is_free(b)
        for k in range(1, n):
            ok &= self.is_free(a + (b - a) * (k / n))
        return ok

    def cell_free(self, radio_grid: Grid) -> NDArray[np.bool_]:
        """Which cells of another grid have a free centre here."""
        return self.is_free(radio_grid.centres())


# -- constant-velocity Kalman -----------------------------------------------------------


@dataclass
class KalmanTracker:
    """Constant-velocity Kalman filter on fixes, one (x, y, vx, vy) state per device.

    Process noise is the discrete white-noise acceleration model with spectral density
    ``accel_mps2**2`` (Bar-Shalom et al. 2001, eq. 6.3.2-4); the measurement covariance
    of a fix is circular with per-axis variance r90^2 / chi2_2(0.9), the inverse of how
    localizers report r90. A still tag (motion flag 0) gets no acceleration noise and its
    velocity is zeroed, so its estimate converges instead of drifting.

    Real fixes have outliers (a radio-map fix in the wrong room): a fix whose
    innovation's squared Mahalanobis distance exceeds ``gate`` (chi-square, 2 dof) has its
    covariance inflated by d^2 / gate, so it moves the track only as far as a fix at
    the gate would (soft gating, Bar-Shalom et al. 2001 sec. 2.3.2), and not its velocity; after
    ``reset_after`` gated fixes in a row the track of a tag not known to be still is lost
    and restarts at the fix. The
    state never leaves ``bounds`` (the site's): a coordinate outside is clamped and its
    velocity zeroed.
    """

    STATE: ClassVar[tuple[str, ...]] = ('x', 'p', 't', 'gated')  # what Engine.tracking_state copies

    accel_mps2: float = 0.5
    still_accel_mps2: float = 0.01
    initial_speed_mps: float = 1.0
    bounds: tuple[float, float, float, float] | None = None
    # Successive fixes of one tag share their errors (the same shadowing, the same
    # carrier): widen each fix by this factor so the filter does not count them as
    # independent looks (1: the twin's independent windows; a surveyed site's map says
    # how correlated its readings are, RadioMap.track_inflation).
    fix_inflation: float = 1.0
    gate: float = 13.8  # chi2_2(0.999)
    reset_after: int = 3
    # The last step's prediction for the rows that had a track (mask over the rows,
    # x-, P-, F_eff) and which of those restarted: what a fixed-lag smoother records.
    last_prediction: tuple[NDArray[np.bool_], FloatArray, FloatArray, FloatArray] = field(
        default_factory=lambda: (np.zeros(0, bool), np.zeros((0, 4)), np.zeros((0, 4, 4)), np.zeros((0, 4, 4))))
    last_restart: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    gated: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    x: FloatArray = field(default_factory=lambda: np.zeros((0, 4)))
    p: FloatArray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    t: FloatArray = field(default_factory=lambda: np.zeros(0))

    def _grow(self, n: int) -> None:
        have = len(self.t)
        if n > have:
            self.x = np.vstack([self.x, np.zeros((n - have, 4))])
            self.p = np.concatenate([self.p, np.zeros((n - have, 4, 4))])
            self.t = np.r_[self.t, np.full(n - have, np.nan)]
            self.gated = np.r_[self.gated, np.zeros(n - have, np.int32)]

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        del rssi, tx_power  # the Kalman filter works on fixes, not on RSSI
        if len(device) == 0:
            return fixes
        self._grow(int(device.max()) + 1)
        rvar = (self.fix_inflation * np.maximum(fixes.r90, 0.05)) ** 2 / CHI2_2DOF_90
        z = np.column_stack([fixes.x, fixes.y])
        new = np.isnan(self.t[device])
        self.last_prediction = (~new, np.zeros((0, 4)), np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
        self.last_restart = np.zeros(0, bool)
        if new.any():
            d = device[new]
            self.x[d] = np.column_stack([z[new], np.zeros((int(new.sum()), 2))])
            self.p[d] = 0.0
            self.p[d, 0, 0] = self.p[d, 1, 1] = rvar[new]
            self.p[d, 2, 2] = self.p[d, 3, 3] = self.initial_speed_mps**2
            self.t[d] = t
        old = ~new
        d = device[old]
        if len(d):
            dt = np.clip(t - self.t[d], 0.0, MAX_GAP_S)
            still = motion[old] == MOTION_STILL
            q = np.where(still, self.still_accel_mps2, self.accel_mps2) ** 2
            xs, ps = self.x[d], self.p[d]
            xs[still, 2:] = 0.0
            ps[still, 2:, :] = 0.0
            ps[still, :, 2:] = 0.0
            f = np.tile(np.eye(4), (len(d), 1, 1))
            f[:, 0, 2] = f[:, 1, 3] = dt
            qm = np.zeros((len(d), 4, 4))
            q11, q12, q22 = dt**3 / 3 * q, dt**2 / 2 * q, dt * q
            qm[:, 0, 0] = qm[:, 1, 1] = q11
            qm[:, 0, 2] = qm[:, 2, 0] = qm[:, 1, 3] = qm[:, 3, 1] = q12
            qm[:, 2, 2] = qm[:, 3, 3] = q22
            xs = np.einsum("nij,nj->ni", f, xs)
            ps = f @ ps @ f.transpose(0, 2, 1) + qm
            # The prediction as a smoother needs it: x- = F_eff x, with F_eff = F Z where
            # Z zeroes a still tag's velocity (FixedLagKalmanSmoother, the RTS gain).
            f[still, :, 2:] = 0.0
            self.last_prediction = (old, xs.copy(), ps.copy(), f)
            # Update with H = [I 0]: S = P[:2,:2] + R, K = P[:, :2] S^-1.
            innov = z[old] - xs[:, :2]
            s = ps[:, :2, :2] + rvar[old, None, None] * np.eye(2)
            d2 = np.einsum("ni,nij,nj->n", innov, np.linalg.inv(s), innov)
            gated = d2 > self.gate
            inflate = np.where(gated, d2 / self.gate, 1.0)
            s = ps[:, :2, :2] + (inflate * rvar[old])[:, None, None] * np.eye(2)
            k = ps[:, :, :2] @ np.linalg.inv(s)
            k[gated, 2:, :] = 0.0  # a doubtful fix may nudge the position, never the velocity
            xs = xs + np.einsum("nij,nj->ni", k, innov)
            ps = ps - k @ ps[:, :2, :]
            self.gated[d] = np.where(gated, self.gated[d] + 1, 0)
            # A tag that reports itself still has not gone anywhere: no restart for it.
            lost = (self.gated[d] >= self.reset_after) & ~still
            self.last_restart = lost.copy()
            if lost.any():  # the fixes agree with each other, not with the track: restart
                xs[lost] = np.column_stack([z[old][lost], np.zeros((int(lost.sum()), 2))])
                ps[lost] = 0.0
                ps[lost, 0, 0] = ps[lost, 1, 1] = rvar[old][lost]
                ps[lost, 2, 2] = ps[lost, 3, 3] = self.initial_speed_mps**2
                self.gated[d[lost]] = 0
            if self.bounds is not None:
                minx, miny, maxx, maxy = self.bounds
                for axis, lo, hi in ((0, minx, maxx), (1, miny, maxy)):
                    out = (xs[:, axis] < lo) | (xs[:, axis] > hi)
                    xs[:, axis] = np.clip(xs[:, axis], lo, hi)
                    xs[out, axis + 2] = 0.0
            self.x[d], self.p[d], self.t[d] = xs, ps, t
        st = self.x[device]
        cov = self.p[device]
        return Estimates(
            st[:, 0].copy(),
            st[:, 1].copy(),
            r90_from_cov(cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]),
            fixes.n_gateways,
            np.full(len(device), METHOD_KALMAN, np.int8),
        )


# -- grid (HMM) forward filter -----------------------------------------------------------


def common_offset_log_likelihood(
    radio_map: RadioMap,
    values: FloatArray,
    weights: FloatArray,
    cells: NDArray[np.intp],
    inflate: float,
    offset_sigma_db: float,
) -> FloatArray:
    """The radio map's log-likelihood with one unknown offset b ~ N(0, tau^2) shared by
    every gateway that heard a row, integrated out (``offset_sigma_db`` = tau; 0: the
    map's own likelihood). What shifts every reading of a window alike (the carrier's
    body, the tag's orientation, its battery) then costs a cell nothing, and a cell is
    judged by the shape of the row across gateways.

    Heard residuals r = v - m_c are N(0, S + tau^2 1 1^T), S = diag(s_g^2); by the
    Sherman-Morrison formula (Sherman & Morrison, Ann. Math. Stat. 21(1), 1950)
        r^T (S + tau^2 1 1^T)^-1 r = r^T S^-1 r - tau^2 (1^T S^-1 r)^2 / (1 + tau^2 1^T S^-1 1),
    and the determinant depends on which gateways were heard, not on the cell: a
    constant per row. Unheard gateways (the map's floor) keep their own term. The
    shared-offset sums are two more matrix products (rows x cells), as the map's are.
    """
    ll = radio_map.log_likelihood(values, weights, cells, inflate)
    if offset_sigma_db <= 0:
        return ll
    w = weights
    if radio_map.floor_dbm is not None:
        w = np.where(values == radio_map.floor_dbm, 0.0, weights)
    wi = w / (radio_map.sigma_db * inflate) ** 2  # (rows, G)
    m = radio_map.mean_dbm[cells].astype(float)  # (cells, G)
    s = np.sum(wi * values, axis=1, keepdims=True) - wi @ m.T  # 1^T S^-1 r per row and cell
    tau2 = offset_sigma_db**2
    return np.asarray(ll + 0.5 * tau2 * s**2 / (1.0 + tau2 * wi.sum(axis=1, keepdims=True)))



def walkable_transition(
    xy: FloatArray,
    plan: FloorPlan,
    sigma_m: float,
    radius_sigmas: float = 2.5,
) -> sparse.csr_matrix:
    """Row-stochastic transition between cells ``xy`` for one step: a Gaussian random
    walk with per-axis spread ``sigma_m``, truncated at ``radius_sigmas`` sigmas, with
    every move that crosses a wall or a rack removed (checked on the floor plan raster)."""
    radius = max(radius_sigmas * sigma_m, 1e-6)
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    a = np.r_[pairs[:, 0], pairs[:, 1]] if len(pairs) else np.zeros(0, np.intp)
    b = np.r_[pairs[:, 1], pairs[:, 0]] if len(pairs) else np.zeros(0, np.intp)
    ok = plan.path_free(xy[a], xy[b]) if len(a) else np.zeros(0, bool)
    a, b = a[ok], b[ok]
    w = np.exp(-0.5 * np.sum((xy[a] - xy[b]) ** 2, axis=1) / max(sigma_m, 1e-6) ** 2)
    n = len(xy)
    rows = np.r_[a, np.arange(n)]
    cols = np.r_[b, np.arange(n)]
    vals = np.r_[w, np.ones(n)]
    mat = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    norm = np.asarray(mat.sum(axis=1)).ravel()
    return sparse.csr_matrix(sparse.diags(1.0 / norm) @ mat)


@dataclass
class GridFilter:
    """HMM forward filter (the discrete Bayes filter, Thrun, Burgard & Fox,
    *Probabilistic Robotics*, 2005, table 4.1) over the free cells of a radio map.

    belief_t = normalise(lik(rssi_t | cell) * (belief_{t-1} T^m)), with T one step of a
    walkable random walk of spread ``speed_mps * step_s`` and m the number of steps since
    the tag's last update. A still tag skips the transition. Memory is one float32 per
    (device, cell): meant for sites of up to a few thousand cells and tags.
    """

    STATE: ClassVar[tuple[str, ...]] = ('belief', 't')  # what Engine.tracking_state copies

    radio_map: RadioMap
    plan: FloorPlan
    step_s: float = 1.0
    speed_mps: float = 1.0
    max_steps: int = 8
    # Spread of an offset shared by every gateway of a window, integrated out of the
    # emission (common_offset_log_likelihood); 0: the map's own likelihood.
    offset_sigma_db: float = 0.0
    cells: NDArray[np.intp] = field(init=False)
    xy: FloatArray = field(init=False)
    transition: sparse.csr_matrix = field(init=False)
    _tree: cKDTree = field(init=False, repr=False)
    belief: NDArray[np.float32] = field(init=False)
    t: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        centres = self.radio_map.grid.centres()
        keep = self.radio_map.free & self.plan.is_free(centres)
        self.cells = np.flatnonzero(keep)
        self.xy = centres[self.cells]
        self.transition = walkable_transition(self.xy, self.plan, self.speed_mps * self.step_s)
        self._tree = cKDTree(self.xy)
        self.belief = np.zeros((0, len(self.cells)), np.float32)
        self.t = np.zeros(0)

    def _grow(self, n: int) -> None:
        have = len(self.t)
        if n > have:
            self.belief = np.vstack(
                [
                    self.belief,
                    np.full((n - have, len(self.cells)), 1.0 / len(self.cells), np.float32),
                ]
            )
            self.t = np.r_[self.t, np.full(n - have, np.nan)]

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        if len(device) == 0:
            return fixes
        post, _, _ = self._forward(t, device, rssi, motion, tx_power)
        return self._estimate(post, fixes.n_gateways)

    def _forward(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        """One forward step: the rows' posteriors, log-likelihoods and the number of
        transition steps applied since each device's last update."""
        self._grow(int(device.max()) + 1)
        prior = self.belief[device].astype(float)
        last = self.t[device]
        steps = np.where(
            np.isnan(last),
            0,
            np.clip(
                np.rint(np.minimum(t - np.nan_to_num(last), MAX_GAP_S) / self.step_s),
                0,
                self.max_steps,
            ),
        ).astype(int)
        steps[motion == MOTION_STILL] = 0
        for k in range(1, int(steps.max(initial=0)) + 1):
            go = steps >= k
            prior[go] = (self.transition.T @ prior[go].T).T
        values, weights = self.radio_map.prepare(rssi, tx_power)
        ll = common_offset_log_likelihood(
            self.radio_map, values, weights, self.cells, self.radio_map.track_inflation, self.offset_sigma_db
        )
        post = normalise_log(ll + np.log(prior + 1e-30))
        self.belief[device] = post
        self.t[device] = t
        return post, ll, steps.astype(np.int32)

    def _estimate(self, post: FloatArray, n_gateways: NDArray[np.int32]) -> Estimates:
        """Posterior mean and r90 of cell posteriors, a mean in a rack moved to a free cell."""
        est = posterior_estimates(post, self.xy, n_gateways, METHOD_HMM, self.radio_map.grid.cell_m)
        # The mean of a belief split between two aisles can fall in the rack between
        # them: such an estimate moves to the nearest cell a tag can occupy.
        xy = np.column_stack([est.x, est.y])
        bad = ~self.plan.is_free(xy)
        if bad.any():
            _, near = self._tree.query(xy[bad])
            xy[bad] = self.xy[near]
        return Estimates(xy[:, 0], xy[:, 1], est.r90, est.n_gateways, est.method)


# -- particle filter ----------------------------------------------------------------------


def systematic_resample(
    weights: FloatArray, rng: np.random.Generator, n: int | None = None
) -> NDArray[np.intp]:
    """Systematic resampling of every row at once (Kitagawa 1996): one uniform per row,
    ``n`` (default: columns) evenly spaced pointers into the row's cumulative weights;
    returns column indices, shape (rows, n)."""
    rows, cols = weights.shape
    p = cols if n is None else n
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    u = (rng.random((rows, 1)) + np.arange(p)[None, :]) / p
    # Offsetting each row by its index turns the per-row searches into one flat search.
    off = np.arange(rows)[:, None]
    idx = np.searchsorted(
        (cum + off).ravel(), (np.minimum(u, 1 - 1e-12) + off).ravel(), side="right"
    )
    return np.asarray(idx.reshape(rows, p) - off * cols).clip(0, cols - 1)


@dataclass
class ParticleFilter:
    """Sequential importance resampling (Gordon, Salmond & Smith, IEE Proc. F 140(2),
    1993) on the radio map's likelihood, constrained by the floor plan.

    Each particle carries a position and a velocity (constant-velocity model with
    acceleration noise ``accel_mps2``, speed capped at ``max_speed_mps``); a proposed move
    that would cross a wall, enter a rack or leave the site is refused and the particle
    stops there. A still tag's particles only jitter by ``still_sigma_m``. Only the
    ``top_k`` loudest gateways of a row enter the likelihood, which keeps a step at
    (tags x particles x top_k) map look-ups.
    """

    STATE: ClassVar[tuple[str, ...]] = ('pos', 'vel', 't', 'rng', 'restarts')  # what Engine.tracking_state copies

    radio_map: RadioMap
    plan: FloorPlan
    particles: int = 128
    accel_mps2: float = 1.0
    max_speed_mps: float = 2.0
    still_sigma_m: float = 0.15
    top_k: int = 12
    seed: int = 0
    pos: NDArray[np.float32] = field(init=False)
    vel: NDArray[np.float32] = field(init=False)
    t: FloatArray = field(init=False)
    rng: np.random.Generator = field(init=False)
    _init_cells: NDArray[np.intp] = field(init=False)
    _init_stride: int = field(init=False)
    restarts: int = field(init=False, default=0)
    # The last step's (moved cloud, weights, resampling parents, rows started afresh).
    last_cloud: tuple[Any, ...] = field(init=False, default=(), repr=False)

    def __post_init__(self) -> None:
        p = self.particles
        self.pos = np.zeros((0, p, 2), np.float32)
        self.vel = np.zeros((0, p, 2), np.float32)
        self.t = np.zeros(0)
        self.rng = np.random.default_rng(self.seed)
        centres = self.radio_map.grid.centres()
        cells = np.flatnonzero(self.radio_map.free & self.plan.is_free(centres))
        # A new tag's particles come from its posterior over at most MAX_INIT_CELLS cells
        # (every k-th free cell), then jitter over the k cells each one stands for.
        self._init_stride = max(1, int(np.ceil(len(cells) / MAX_INIT_CELLS)))
        self._init_cells = cells[:: self._init_stride]

    def _grow(self, n: int) -> None:
        have = len(self.t)
        if n > have:
            p = self.particles
            self.pos = np.concatenate([self.pos, np.zeros((n - have, p, 2), np.float32)])
            self.vel = np.concatenate([self.vel, np.zeros((n - have, p, 2), np.float32)])
            self.t = np.r_[self.t, np.full(n - have, np.nan)]

    def _subset(
        self, rssi: FloatArray, tx_power: FloatArray
    ) -> tuple[FloatArray, FloatArray, NDArray[np.intp]]:
        values, weights = self.radio_map.prepare(rssi, tx_power)
        k = min(self.top_k, rssi.shape[1])
        score = np.where(np.isnan(rssi), -np.inf, rssi)
        gk = (
            np.argpartition(-score, k - 1, axis=1)[:, :k]
            if k < rssi.shape[1]
            else np.broadcast_to(np.arange(k), (len(rssi), k))
        )
        return np.take_along_axis(values, gk, 1), np.take_along_axis(weights, gk, 1), np.asarray(gk)

    def _log_lik(
        self, values: FloatArray, weights: FloatArray, gk: NDArray[np.intp], xy: NDArray[Any]
    ) -> FloatArray:
        rm = self.radio_map
        cells = rm.grid.cell_index(xy.reshape(-1, 2)).reshape(xy.shape[:2])
        m = rm.mean_dbm[cells[:, :, None], gk[:, None, :]]  # (rows, P, k)
        scale = (1.0 / (rm.sigma_db[gk] * rm.track_inflation)).astype(np.float32)[:, None, :]
        z = (values.astype(np.float32)[:, None, :] - m) * scale
        wz = z * weights.astype(np.float32)[:, None, :]
        if rm.floor_dbm is not None and rm.miss_probability > 0:  # a lost report costs at most this
            unheard = (values == rm.floor_dbm)[:, None, :]
            z2 = np.where(unheard, np.minimum(z * z, np.float32(rm.miss_cap)), z * z)
            return np.asarray(np.einsum("rpk,rk->rp", z2, weights.astype(np.float32)), dtype=float) * -0.5
        return np.asarray(np.einsum("rpk,rpk->rp", wz, z), dtype=float) * -0.5

    def _initialise(self, values: FloatArray, weights: FloatArray) -> FloatArray:
        """Particles drawn from the single-shot radio-map posterior over free cells."""
        rm = self.radio_map
        post = normalise_log(
            rm.log_likelihood(values, weights, self._init_cells, rm.track_inflation)
        )
        pick = systematic_resample(post, self.rng, self.particles)
        centre = rm.grid.centres()[self._init_cells[pick]]
        spread = rm.grid.cell_m * max(0.5, float(np.sqrt(self._init_stride)))
        jittered = centre + (self.rng.random(centre.shape) - 0.5) * spread
        return np.asarray(np.where(self.plan.is_free(jittered)[..., None], jittered, centre))

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        if len(device) == 0:
            return fixes
        self._grow(int(device.max()) + 1)
        values, weights, gk = self._subset(rssi, tx_power)
        new = np.isnan(self.t[device])
        if new.any():
            d = device[new]
            full_v, full_w = self.radio_map.prepare(rssi[new], tx_power[new])
            init = np.empty((len(d), self.particles, 2))
            for lo in range(0, len(d), 256):  # bounds the (rows x cells) temporaries
                sl = slice(lo, lo + 256)
                init[sl] = self._initialise(full_v[sl], full_w[sl])
            self.pos[d] = init
            self.vel[d] = 0.0
            self.t[d] = t
        # float32 throughout: at 10,000 tags x 128 particles the step is memory-bound.
        f32 = np.float32
        pos = self.pos[device]
        vel = self.vel[device]
        dt = np.clip(t - self.t[device], 0.0, MAX_GAP_S).astype(f32)[:, None, None]
        still_row = motion == MOTION_STILL
        p = self.particles
        noise = self.rng.standard_normal((len(device), p, 2), dtype=f32)
        accel = f32(self.accel_mps2) * np.sqrt(np.maximum(dt, f32(1e-3)))
        vel = np.where(still_row[:, None, None], f32(0.0), vel + noise * accel)
        speed = np.hypot(vel[..., 0], vel[..., 1])[..., None]
        vel = vel * np.minimum(f32(1.0), f32(self.max_speed_mps) / np.maximum(speed, f32(1e-9)))
        jitter = np.where(still_row[:, None, None], noise * f32(self.still_sigma_m), f32(0.0))
        prop = pos + vel * dt + jitter
        # Still tags only jitter: checking their short moves separately keeps the number
        # of samples along each move (one per floor-plan cell) small for most tags.
        ok = np.empty(pos.shape[:2], bool)
        for group in (still_row, ~still_row):
            if group.any():
                ok[group] = self.plan.path_free(pos[group], prop[group])
        pos = np.where(ok[..., None], prop, pos)
        vel = np.where(ok[..., None], vel, f32(0.0))
        ll = self._log_lik(values, weights, gk, pos)
        # Collapse: even the best particle explains the readings worse than all but one
        # in COLLAPSE_ODDS chance (-2 log-likelihood is chi-square with one degree per
        # gateway used): the tag is not where the cloud is (a jump the motion model
        # forbids, a wrong start). Those rows restart from the single-shot posterior.
        from scipy.stats import chi2  # here: scipy.stats takes ~0.5 s to import, and few runs need it

        dof = np.maximum(weights.sum(axis=1), 1.0)
        collapsed = -2.0 * ll.max(axis=1) > chi2.isf(1.0 / COLLAPSE_ODDS, dof)
        if collapsed.any():
            full_v, full_w = self.radio_map.prepare(rssi[collapsed], tx_power[collapsed])
            pos[collapsed] = self._initialise(full_v, full_w)
            vel[collapsed] = 0.0
            ll[collapsed] = self._log_lik(values[collapsed], weights[collapsed], gk[collapsed], pos[collapsed])
            self.restarts += int(collapsed.sum())
        w = normalise_log(ll)
        idx = systematic_resample(w, self.rng)
        # What a fixed-lag smoother by ancestry records: the moved cloud, its weights, each
        # resampled particle's parent, and the rows that started afresh (new or restarted).
        self.last_cloud = (pos, w, idx, new | collapsed)
        self.pos[device] = np.take_along_axis(pos, idx[..., None], 1)
        self.vel[device] = np.take_along_axis(vel, idx[..., None], 1)
        self.t[device] = t
        return self._cloud_estimate(w, pos, fixes.n_gateways)

    def _cloud_estimate(self, w: FloatArray, pos: NDArray[Any], n_gateways: NDArray[np.int32]) -> Estimates:
        """Weighted mean and r90 of weighted clouds ``pos`` (rows, P, 2). The mean of free
        positions can fall in a rack between two clusters: it snaps to the nearest
        particle when it does."""
        mx = np.einsum("rp,rp->r", w, pos[..., 0])
        my = np.einsum("rp,rp->r", w, pos[..., 1])
        vx = np.einsum("rp,rp->r", w, (pos[..., 0] - mx[:, None]) ** 2)
        vy = np.einsum("rp,rp->r", w, (pos[..., 1] - my[:, None]) ** 2)
        cxy = np.einsum("rp,rp->r", w, (pos[..., 0] - mx[:, None]) * (pos[..., 1] - my[:, None]))
        est = np.column_stack([mx, my])
        bad = ~self.plan.is_free(est)
        if bad.any():
            near = np.argmin(np.sum((pos[bad] - est[bad, None, :]) ** 2, axis=2), axis=1)
            est[bad] = pos[bad][np.arange(int(bad.sum())), near]
        cell_var = self.radio_map.grid.cell_m**2 / 12.0
        return Estimates(
            est[:, 0],
            est[:, 1],
            r90_from_cov(vx + cell_var, vy + cell_var, cxy),
            n_gateways,
            np.full(len(w), METHOD_PARTICLE, np.int8),
        )


# -- fixed-lag smoothers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothed:
    """Estimates a fixed-lag smoother has made final: each row is one device at one
    earlier fix time ``t`` (the time of the window it smooths, not the time it left)."""

    device: IntArray
    t: FloatArray
    est: Estimates

    @classmethod
    def concat(cls, parts: list[Smoothed]) -> Smoothed:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0), Estimates.empty())
        e = [p.est for p in parts]
        return cls(
            np.concatenate([p.device for p in parts]).astype(np.int32),
            np.concatenate([p.t for p in parts]),
            Estimates(*(np.concatenate([getattr(x, f) for x in e]) for f in ("x", "y", "r90", "n_gateways", "method"))),
        )


class FixedLagSmoother(Tracker, Protocol):
    """A tracker whose ``step`` returns the filter's estimates and which also makes, for
    each device and fix time t, the estimate given the readings up to t + ``lag_s``."""

    lag_s: float

    def smoothed(self) -> Smoothed: ...  # what became final since the last call

    def finish(self) -> Smoothed: ...  # end of the stream: every estimate still waiting


LAG_EPS_S = 1e-6  # fix times are multiples of the step; this absorbs their rounding


@dataclass
class LagBuffer:
    """The last ``slots`` entries of each device for a fixed-lag smoother: their times,
    which still wait for readings up to t + lag, and whether an entry starts a new
    chain (a new track or a restart: nothing before it is linked to it)."""

    slots: int
    t: FloatArray = field(init=False)
    pending: NDArray[np.bool_] = field(init=False)
    starts: NDArray[np.bool_] = field(init=False)
    n_gateways: NDArray[np.int32] = field(init=False)
    head: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.t = np.zeros((0, self.slots))
        self.pending = np.zeros((0, self.slots), bool)
        self.starts = np.zeros((0, self.slots), bool)
        self.n_gateways = np.zeros((0, self.slots), np.int32)
        self.head = np.zeros(0, np.int64)

    def grow(self, n: int) -> bool:
        have = len(self.head)
        if n <= have:
            return False
        k = self.slots
        self.t = np.vstack([self.t, np.full((n - have, k), np.nan)])
        self.pending = np.vstack([self.pending, np.zeros((n - have, k), bool)])
        self.starts = np.vstack([self.starts, np.zeros((n - have, k), bool)])
        self.n_gateways = np.vstack([self.n_gateways, np.zeros((n - have, k), np.int32)])
        self.head = np.r_[self.head, np.zeros(n - have, np.int64)]
        return True

    def next_slots(self, device: IntArray) -> NDArray[np.int64]:
        return np.asarray(self.head[device] % self.slots)

    def write(
        self, device: IntArray, t: float, starts: NDArray[np.bool_], n_gateways: NDArray[np.int32]
    ) -> NDArray[np.int64]:
        s = self.next_slots(device)
        self.t[device, s] = t
        self.pending[device, s] = True
        self.starts[device, s] = starts
        self.n_gateways[device, s] = n_gateways
        self.head[device] += 1
        return s

    def due(self, t_now: float, lag_s: float) -> tuple[IntArray, NDArray[np.int64]]:
        """Entries whose lag has passed at ``t_now``; inf: all that wait."""
        d, s = np.nonzero(self.pending & (self.t + lag_s <= t_now + LAG_EPS_S))
        return d.astype(np.int32), s.astype(np.int64)

    def chains(self, d: IntArray, s: NDArray[np.int64], lag_s: float) -> tuple[NDArray[np.int64], IntArray]:
        """For entries (d, s): the slots of the entry itself, then of the device's later
        entries up to t + lag in time order, stopping before a new chain; and how many
        later ones there are. Shape (rows, slots + 1), (rows,)."""
        t_row = self.t[d]  # (rows, slots)
        tj = self.t[d, s][:, None]
        later = (t_row > tj + LAG_EPS_S) & (t_row <= tj + lag_s + LAG_EPS_S)
        broken = np.where(later & self.starts[d], t_row, np.inf).min(axis=1, initial=np.inf)
        later &= t_row < broken[:, None]
        order = np.argsort(np.where(later, t_row, np.inf), axis=1, kind="stable")
        return np.column_stack([s, order]), later.sum(axis=1).astype(np.int32)


class LagRelease:
    """What both fixed-lag smoothers share: the ring, the queue of final estimates, and
    writing a step's entries (a slot still waiting is made final before it is reused)."""

    lag_s: float
    step_s: float
    _ring: LagBuffer
    _stores: tuple[str, ...]
    _done: list[Smoothed]

    def _start_ring(self, **stores: tuple[tuple[int, ...], type]) -> None:
        """A ring of ceil(lag / step) + 2 entries per device (every fix within the lag, the
        one it smooths, one spare) and the per-entry arrays ``stores``: name = (shape of
        one entry, dtype), each stored as (devices, slots, *shape)."""
        k = int(np.ceil(self.lag_s / self.step_s - 1e-9)) + 2
        self._ring = LagBuffer(k)
        for name, (shape, dtype) in stores.items():
            setattr(self, name, np.zeros((0, k, *shape), dtype))
        self._stores = tuple(stores)
        self._done = []

    def _grow_ring(self, device: IntArray) -> None:
        """Room for ``device`` in the ring and in every per-entry array."""
        if self._ring.grow(int(device.max()) + 1):
            for name in self._stores:
                a = getattr(self, name)
                extra = len(self._ring.head) - len(a)
                setattr(self, name, np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)]))

    def _finalise(self, d: IntArray, s: NDArray[np.int64]) -> None:
        raise NotImplementedError

    def _slots(self, device: IntArray, t: float, starts: NDArray[np.bool_], n_gateways: NDArray[np.int32]
               ) -> NDArray[np.int64]:
        s = self._ring.next_slots(device)
        clash = self._ring.pending[device, s]
        if clash.any():  # never with slots > lag / step; kept safe: finalise before reuse
            self._finalise(device[clash].astype(np.int32), s[clash])
        return self._ring.write(device, t, starts, n_gateways)

    def smoothed(self) -> Smoothed:
        out, self._done = Smoothed.concat(self._done), []
        return out

    def finish(self) -> Smoothed:
        self._finalise(*self._ring.due(np.inf, self.lag_s))
        return self.smoothed()


@dataclass
class FixedLagGridSmoother(LagRelease, GridFilter):
    """The HMM's fixed-lag smoother: the posterior of each fix time t given the readings
    up to t + ``lag_s`` (forward-backward, Rabiner, Proc. IEEE 77(2), 1989, eqs. 24-27;
    fixed-lag form: Särkkä, *Bayesian Filtering and Smoothing*, 2013, ch. 8 and 12).

    gamma_t ∝ alpha_t * beta_t, where alpha_t is the forward filter's posterior (the
    GridFilter's belief) and beta_t = T^{m_{t+1}} (lik_{t+1} * beta_{t+1}), beta = 1 at
    the last reading within the lag. Each device keeps its last ceil(lag / step) + 2
    posteriors and likelihoods (memory: that many floats per device and cell, besides
    the filter's one); the backward pass runs over every due row at once. An estimate
    leaves ``lag_s`` after its window closed; lag 0 is the filter itself.
    """

    STATE: ClassVar[tuple[str, ...]] = (*GridFilter.STATE, "_ring", "_alpha", "_lik", "_steps", "_done")

    lag_s: float = 2.0
    _ring: LagBuffer = field(init=False, repr=False)
    _alpha: NDArray[np.float32] = field(init=False, repr=False)
    _lik: NDArray[np.float32] = field(init=False, repr=False)
    _steps: NDArray[np.int32] = field(init=False, repr=False)
    _done: list[Smoothed] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.cells)
        self._start_ring(_alpha=((n,), np.float32), _lik=((n,), np.float32), _steps=((), np.int32))

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        if len(device) == 0:
            return fixes
        known = device < len(self.t)
        first = np.ones(len(device), bool)
        first[known] = np.isnan(self.t[device[known]])
        post, ll, steps = self._forward(t, device, rssi, motion, tx_power)
        self._grow_ring(device)
        s = self._slots(device, t, first, fixes.n_gateways)
        self._alpha[device, s] = post
        self._lik[device, s] = np.exp(ll - ll.max(axis=1, keepdims=True))
        self._steps[device, s] = steps
        self._finalise(*self._ring.due(t, self.lag_s))
        return self._estimate(post, fixes.n_gateways)

    def _finalise(self, d: IntArray, s: NDArray[np.int64]) -> None:
        if len(d) == 0:
            return
        seq, n = self._ring.chains(d, s, self.lag_s)
        beta = np.ones((len(d), len(self.cells)))
        for o in range(int(n.max(initial=0)), 0, -1):
            act = np.flatnonzero(n >= o)
            da, cur = d[act], seq[act, o]
            v = self._lik[da, cur].astype(float) * beta[act]
            m = self._steps[da, cur]
            for k in range(1, int(m.max(initial=0)) + 1):
                go = m >= k
                v[go] = (self.transition @ v[go].T).T
            beta[act] = v / np.maximum(v.max(axis=1, keepdims=True), 1e-300)
        gamma = self._alpha[d, s].astype(float) * beta
        total = gamma.sum(axis=1, keepdims=True)
        # A row whose product vanished (the readings ahead contradict the filter): keep the filter's.
        gamma = np.where(total > 0, gamma / np.where(total > 0, total, 1.0), self._alpha[d, s])
        self._done.append(Smoothed(d, self._ring.t[d, s].copy(), self._estimate(gamma, self._ring.n_gateways[d, s])))
        self._ring.pending[d, s] = False


@dataclass
class FixedLagKalmanSmoother(LagRelease, KalmanTracker):
    """The Kalman filter's fixed-lag Rauch-Tung-Striebel smoother (Rauch, Tung &
    Striebel, AIAA J. 3(8), 1965; Särkkä 2013, theorem 8.2): for each fix time t the
    state given the fixes up to t + ``lag_s``, by the RTS backward recursion

        C_k = P_k F_{k+1}^T (P-_{k+1})^-1,  x^s_k = x_k + C_k (x^s_{k+1} - x-_{k+1}),
        P^s_k = P_k + C_k (P^s_{k+1} - P-_{k+1}) C_k^T,

    from the last fix within the lag back to t, over the stored filtered and predicted
    moments (F the still-aware transition the filter used). A restart or a gated fix
    breaks the chain: nothing from it on smooths what came before (a gated update is not
    the Gaussian posterior RTS assumes). Smoothed positions are kept in bounds.
    """

    STATE: ClassVar[tuple[str, ...]] = (*KalmanTracker.STATE, "_ring", "_xf", "_pf", "_xp", "_pp", "_f", "_done")

    lag_s: float = 2.0
    step_s: float = 1.0
    _ring: LagBuffer = field(init=False, repr=False)
    _xf: FloatArray = field(init=False, repr=False)
    _pf: FloatArray = field(init=False, repr=False)
    _xp: FloatArray = field(init=False, repr=False)
    _pp: FloatArray = field(init=False, repr=False)
    _f: FloatArray = field(init=False, repr=False)
    _done: list[Smoothed] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._start_ring(_xf=((4,), np.float64), _pf=((4, 4), np.float64), _xp=((4,), np.float64),
                         _pp=((4, 4), np.float64), _f=((4, 4), np.float64))

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        if len(device) == 0:
            return fixes
        est = super().step(t, device, rssi, fixes, motion, tx_power)
        self._grow_ring(device)
        had, xp, pp, f = self.last_prediction
        # A new track, a restart or a gated fix starts a chain. The gated update zeroes
        # the velocity gain, so its moments are not the posterior RTS assumes: carried
        # back, a doubtful fix would drag the earlier positions towards it.
        starts = ~had | (self.gated[device] > 0)
        if len(self.last_restart):
            starts[np.flatnonzero(had)[self.last_restart]] = True
        s = self._slots(device, t, starts, fixes.n_gateways)
        self._xf[device, s] = self.x[device]
        self._pf[device, s] = self.p[device]
        self._xp[device[had], s[had]] = xp
        self._pp[device[had], s[had]] = pp
        self._f[device[had], s[had]] = f
        self._finalise(*self._ring.due(t, self.lag_s))
        return est

    def _finalise(self, d: IntArray, s: NDArray[np.int64]) -> None:
        if len(d) == 0:
            return
        seq, n = self._ring.chains(d, s, self.lag_s)
        last = seq[np.arange(len(d)), n]
        xs, ps = self._xf[d, last].copy(), self._pf[d, last].copy()
        for o in range(int(n.max(initial=0)), 0, -1):
            act = np.flatnonzero(n >= o)
            da, prev, cur = d[act], seq[act, o - 1], seq[act, o]
            pf, xf = self._pf[da, prev], self._xf[da, prev]
            pp = self._pp[da, cur] + 1e-9 * np.eye(4)
            gain = np.linalg.solve(pp, self._f[da, cur] @ pf).transpose(0, 2, 1)  # P F^T (P-)^-1
            xs[act] = xf + np.einsum("nij,nj->ni", gain, xs[act] - self._xp[da, cur])
            ps[act] = pf + gain @ (ps[act] - self._pp[da, cur]) @ gain.transpose(0, 2, 1)
        if self.bounds is not None:
            minx, miny, maxx, maxy = self.bounds
            xs[:, 0] = np.clip(xs[:, 0], minx, maxx)
            xs[:, 1] = np.clip(xs[:, 1], miny, maxy)
        est = Estimates(
            xs[:, 0].copy(), xs[:, 1].copy(),
            r90_from_cov(ps[:, 0, 0], ps[:, 1, 1], ps[:, 0, 1]),
            self._ring.n_gateways[d, s].copy(),
            np.full(len(d), METHOD_KALMAN, np.int8),
        )
        self._done.append(Smoothed(d, self._ring.t[d, s].copy(), est))
        self._ring.pending[d, s] = False


@dataclass
class FixedLagParticleSmoother(LagRelease, ParticleFilter):
    """The particle filter's fixed-lag smoother by resampled ancestry (Kitagawa, JCGS
    5(1), 1996, section 4.1; Doucet & Johansen, *A tutorial on particle filtering and
    smoothing*, 2009, section 5.1, the fixed-lag approximation p(x_t | y_1:t+L) ~
    p(x_t | y_1:T)): the particles alive at t + ``lag_s`` carry, through their resampling
    ancestry, the positions their ancestors had at t; their weights at t + lag on those
    ancestral positions are the smoothed cloud at t.

    Each device keeps its last ceil(lag / step) + 2 moved clouds, weights and resampling
    parents (P positions, a weight and a parent each per slot). Degeneracy bounds the lag
    that pays off: each resampling step leaves fewer distinct ancestors, so the lag is
    a few steps (Doucet & Johansen, ibid.). A new track or a restart of the cloud breaks
    the chain (its particles have no ancestors before it). The filter's draws are
    untouched: lag 0 is the filter itself.
    """

    STATE: ClassVar[tuple[str, ...]] = (*ParticleFilter.STATE, "_ring", "_cloud", "_weight", "_parent", "_done")

    lag_s: float = 2.0
    step_s: float = 1.0
    _ring: LagBuffer = field(init=False, repr=False)
    _cloud: NDArray[np.float32] = field(init=False, repr=False)
    _weight: NDArray[np.float32] = field(init=False, repr=False)
    _parent: NDArray[np.int32] = field(init=False, repr=False)
    _done: list[Smoothed] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        p = self.particles
        self._start_ring(_cloud=((p, 2), np.float32), _weight=((p,), np.float32), _parent=((p,), np.int32))

    def step(
        self,
        t: float,
        device: IntArray,
        rssi: FloatArray,
        fixes: Estimates,
        motion: NDArray[np.int8],
        tx_power: FloatArray,
    ) -> Estimates:
        if len(device) == 0:
            return fixes
        est = super().step(t, device, rssi, fixes, motion, tx_power)
        pos, w, parent, fresh = self.last_cloud
        self._grow_ring(device)
        s = self._slots(device, t, fresh, fixes.n_gateways)
        self._cloud[device, s] = pos
        self._weight[device, s] = w
        self._parent[device, s] = parent
        self._finalise(*self._ring.due(t, self.lag_s))
        return est

    def _finalise(self, d: IntArray, s: NDArray[np.int64]) -> None:
        if len(d) == 0:
            return
        seq, n = self._ring.chains(d, s, self.lag_s)
        rows = np.arange(len(d))
        w = self._weight[d, seq[rows, n]].astype(float)
        # ancestor[r, j]: the index, at the entry's own time, of particle j's ancestor.
        ancestor = np.broadcast_to(np.arange(self.particles), w.shape).copy()
        for o in range(int(n.max(initial=0)), 0, -1):
            act = np.flatnonzero(n >= o)
            ancestor[act] = np.take_along_axis(self._parent[d[act], seq[act, o - 1]], ancestor[act], 1)
        pos = np.take_along_axis(self._cloud[d, s], ancestor[..., None], 1)
        w /= w.sum(axis=1, keepdims=True)
        self._done.append(Smoothed(d, self._ring.t[d, s].copy(),
                                   self._cloud_estimate(w, pos, self._ring.n_gateways[d, s].copy())))
        self._ring.pending[d, s] = False


# -- zones with hysteresis ------------------------------------------------------------------


@dataclass
class ZoneHysteresis:
    """Zone assignment that does not flap: a device leaves its current zone only when its
    position is more than ``margin_m`` outside that zone, and the new zone must then win
    ``confirm`` consecutive windows (``confirm_still`` when the tag says it is still:
    a still tag cannot have changed zone, so it takes more evidence)."""

    STATE: ClassVar[tuple[str, ...]] = ('current', 'candidate', 'count')  # what Engine.tracking_state copies

    zones: ZoneIndex
    margin_m: float = 1.0
    confirm: int = 2
    confirm_still: int = 5
    current: IntArray = field(default_factory=lambda: np.zeros(0, np.int32))
    candidate: IntArray = field(default_factory=lambda: np.zeros(0, np.int32))
    count: IntArray = field(default_factory=lambda: np.zeros(0, np.int32))

    def _grow(self, n: int) -> None:
        have = len(self.current)
        if n > have:
            self.current = np.r_[
                self.current, np.full(n - have, -2, np.int32)
            ]  # -2: never assigned
            self.candidate = np.r_[self.candidate, np.full(n - have, NO_ZONE, np.int32)]
            self.count = np.r_[self.count, np.zeros(n - have, np.int32)]

    def assign(
        self, device: IntArray, x: FloatArray, y: FloatArray, motion: NDArray[np.int8]
    ) -> IntArray:
        if len(device) == 0:
            return np.zeros(0, np.int32)
        self._grow(int(device.max()) + 1)
        raw = self.zones.assign(x, y)
        cur = self.current[device]
        first = cur == -2
        # Still within margin of the current zone: stay.
        near = np.zeros(len(device), bool)
        for z in np.unique(cur[(cur >= 0)]):
            sel = cur == z
            near[sel] = shapely.dwithin(
                self.zones.polygons[int(z)], shapely.points(x[sel], y[sel]), self.margin_m
            )
        want = np.where(near, cur, raw)
        same_cand = want == self.candidate[device]
        cnt = np.where(same_cand, self.count[device] + 1, 1)
        need = np.where(motion == MOTION_STILL, self.confirm_still, self.confirm)
        switch = (want != cur) & (cnt >= need)
        out = np.where(first, raw, np.where(switch, want, cur)).astype(np.int32)
        self.current[device] = out
        self.candidate[device] = want
        self.count[device] = cnt
        return out
