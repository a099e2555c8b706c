"""The ML localizer's Newton iterations, compiled (numba): one row at a time, float32.

The numpy version of this loop (engine.localize before this module) spent its time on
~190 whole-array operations per iteration; compiled, a row's iteration is a few dozen
scalar operations per heard gateway. It releases the GIL, so chunks run on threads.
The arithmetic is the numpy loop's, operation for operation, in float32.

Each iteration first evaluates the cost alone and computes the derivatives only at a
point better than the best so far: a worse point's step is never taken (the loop halves
back towards the best point), and on the large scenario about half of all iterations are
worse points (rows whose minimum lies on the edge of an obstacle-map cell backtrack
towards it), so this saves their derivative sums without changing a bit of the answer.
The cost of such a point is not even finished: a sum of squares only grows, so once its
partial sum passes the best cost the point is known to be worse (a quarter of the
logarithms on the large scenario are skipped so, again with the same answer).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic
from numpy.typing import NDArray

F32 = np.float32
# cell_edges: how far inside its obstacle cell a point put on the cell's edge is (a point
# exactly on an edge belongs to the cell above or right of it).
EDGE_INSET_M = 1e-3


# -- log10f, inline -------------------------------------------------------------------------
# The float32 loop's logarithm was a call into the C library's log10f: on glibc (2.28 on)
# that is fdlibm's e_log10f.c scaffolding (exponent split, float32 products with log10(2)
# in two parts) around logf, which is Arm's optimized-routines logf (a 16-entry table of
# 1/c and log(c), a degree-3 polynomial in double; Szabolcs Nagy, glibc
# sysdeps/ieee754/flt-32/e_logf.c), whose x86-64 build with FMA runs on CPUs that have
# it. The same operations written here, with the same table and coefficients and the same
# fused multiply-adds, give the same bits for every float32 input (checked on all 2^31
# non-negative float32s against this machine's glibc 2.36 log10f: docs/scaling.md, ninth round;
# zeros, negatives, subnormals, infinities and NaN still go to the library), without two
# calls per term. It also makes the loop's bits the same on CPUs without FMA and on other
# C libraries, where log10f itself differs.
_LOGF_TABLE_HEX = (  # (1/c, log c) for the 16 subintervals of [0x1.66p-1, 0x1.66p0)
    "0x1.661ec79f8f3bep+0 -0x1.57bf7808caadep-2 0x1.571ed4aaf883dp+0 -0x1.2bef0a7c06ddbp-2 "
    "0x1.49539f0f010b0p+0 -0x1.01eae7f513a67p-2 0x1.3c995b0b80385p+0 -0x1.b31d8a68224e9p-3 "
    "0x1.30d190c8864a5p+0 -0x1.6574f0ac07758p-3 0x1.25e227b0b8ea0p+0 -0x1.1aa2bc79c8100p-3 "
    "0x1.1bb4a4a1a343fp+0 -0x1.a4e76ce8c0e5ep-4 0x1.12358f08ae5bap+0 -0x1.1973c5a611cccp-4 "
    "0x1.0953f419900a7p+0 -0x1.252f438e10c1ep-5 0x1.0000000000000p+0 0x0.0p+0 "
    "0x1.e608cfd9a47acp-1 0x1.aa5aa5df25984p-5 0x1.ca4b31f026aa0p-1 0x1.c5e53aa362eb4p-4 "
    "0x1.b2036576afce6p-1 0x1.526e57720db08p-3 0x1.9c2d163a1aa2dp-1 0x1.bc2860d224770p-3 "
    "0x1.886e6037841edp-1 0x1.1058bc8a07ee1p-2 0x1.767dcf5534862p-1 0x1.4043057b6ee09p-2"
)
LOGF_TABLE = np.array([float.fromhex(v) for v in _LOGF_TABLE_HEX.split()]).reshape(16, 2)
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_LOGF_A0 = float.fromhex("-0x1.00ea348b88334p-2")
_LOGF_A1 = float.fromhex("0x1.5575b0be00b6ap-2")
_LOGF_A2 = float.fromhex("-0x1.ffffef20a4123p-2")
# fdlibm e_log10f.c: log10(2) as hi + lo, and 1/ln(10), in float32
_LOG10_2HI = np.uint32(0x3E9A2080).view(np.float32)
_LOG10_2LO = np.uint32(0x355427DB).view(np.float32)
_IVLN10 = np.uint32(0x3EDE5BD9).view(np.float32)


def _fma_codegen(_ctx: Any, builder: Any, _sig: Any, args: Any) -> Any:
    return builder.fma(*args)


def _f32_bits_codegen(_ctx: Any, builder: Any, _sig: Any, args: Any) -> Any:
    return builder.bitcast(args[0], ir.IntType(32))


def _bits_f32_codegen(_ctx: Any, builder: Any, _sig: Any, args: Any) -> Any:
    return builder.bitcast(args[0], ir.FloatType())


def _fma_typer(_ctx: Any, _a: Any, _b: Any, _c: Any) -> Any:
    return types.float64(types.float64, types.float64, types.float64), _fma_codegen


def _f32_bits_typer(_ctx: Any, _x: Any) -> Any:
    return types.int32(types.float32), _f32_bits_codegen


def _bits_f32_typer(_ctx: Any, _i: Any) -> Any:
    return types.float32(types.int32), _bits_f32_codegen


# a * b + c rounded once (llvm.fma: the FMA instruction, or an exact emulation without it)
_fma: Any = intrinsic(_fma_typer)
# the bits of a float32 as an int32, and back
_f32_bits: Any = intrinsic(_f32_bits_typer)
_bits_f32: Any = intrinsic(_bits_f32_typer)


@numba.njit(inline="always", nogil=True)
def log10f(v: np.float32) -> np.float32:
    """glibc's log10f(v), bit for bit, inline (see above)."""
    hx = _f32_bits(v)
    if hx < 0x00800000 or hx > 0x7F7FFFFF:  # zero, subnormal, negative, inf, NaN: rare
        return np.float32(np.log10(v))
    return _log10f_normal(hx)


@numba.njit(inline="always", nogil=True)
def _log10f_normal(hx: np.int32) -> np.float32:
    """log10f of the positive normal float32 whose bits are ``hx``, without a branch (so a
    loop of them vectorizes); other inputs give some finite or NaN value, never a trap."""
    # e_log10f.c: v = 2^(k + i) * m, m in [1, 2) (k >= 0) or [0.5, 1) (k < 0)
    k = (hx >> 23) - 127
    i = np.int32(1) if k < 0 else np.int32(0)
    y = np.float32(k + i)
    ix = (hx & 0x7FFFFF) | ((0x7F - i) << 23)
    # e_logf.c on m: m = 2^kk z, z near 1/c of table row t
    tmp = ix - 0x3F330000
    t = (tmp >> 19) & 15
    kk = tmp >> 23
    z = np.float64(_bits_f32(np.int32(ix - (tmp & np.int32(-0x800000)))))
    r = _fma(z, LOGF_TABLE[t, 0], -1.0)
    y0 = _fma(np.float64(kk), _LN2, LOGF_TABLE[t, 1])
    p = _fma(r, _LOGF_A1, _LOGF_A2)
    r2 = r * r
    p = _fma(r2, _LOGF_A0, p)
    log_m = np.float32(_fma(r2, p, r + y0))
    return log_m * _IVLN10 + y * _LOG10_2LO + y * _LOG10_2HI


@numba.njit(inline="always", nogil=True)
def hypotf(a: np.float32, b: np.float32) -> np.float32:
    """glibc's hypotf (2.35 on, sysdeps/ieee754/flt-32/e_hypotf.c): the root of the
    exact float64 sum of squares, rounded to float32; inf if either is infinite. Inline,
    so a loop of them vectorizes, and the same bits on any C library (the same as this
    machine's glibc 2.36 on 80 M random pairs; tests/test_engine_fastpaths.py)."""
    if np.isinf(a) or np.isinf(b):
        return np.float32(np.inf)
    da = np.float64(a)
    db = np.float64(b)
    return np.float32(np.sqrt(da * da + db * db))


# The Newton loops' float32 constants, one tuple both loops unpack (so they cannot drift
# apart): a point is worse once its cost passes the best by one part in a million; 1/2, 0,
# 1 and 2; the floors of a determinant and of a step's length; the positive-definiteness
# margin; the Gauss-Newton step under which a row settles, and the move under which it stops.
LOOP_CONSTANTS = (F32(1.0 + 1e-6), F32(0.5), F32(0.0), F32(1.0), F32(2.0), F32(1e-30), F32(1e-12), F32(1e-6),
                  F32(0.05), F32(1e-3))


@numba.njit(inline="always", nogil=True)
def _floor_and_grid(bounds: NDArray[np.float64], grid: NDArray[np.float64]) -> tuple[Any, ...]:
    """The floor's bounds and the obstacle grid's origin and cell in float32, its size in cells."""
    return (F32(bounds[0]), F32(bounds[1]), F32(bounds[2]), F32(bounds[3]), F32(grid[0]), F32(grid[1]),
            F32(grid[2]), int(grid[3]), int(grid[4]))


@numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")  # x / 0 is inf or NaN, as in numpy
def newton_rows(  # the hot loop, inlined on purpose
    r: NDArray[np.float32], w: NDArray[np.float32], p0: NDArray[np.float32],
    gx: NDArray[np.float32], gy: NDArray[np.float32], dz2: NDArray[np.float32],
    cols: NDArray[np.intp], loss: NDArray[np.float32], grid: NDArray[np.float64],
    x_start: NDArray[np.float32], y_start: NDArray[np.float32],
    five_n: np.float32, k_slope: np.float32, bounds: NDArray[np.float64],
    iterations: int, max_step: np.float32, newton_radius: np.float32, cell_edges: bool = False,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Safeguarded Newton iterations for each row of (rows, width) arrays.
    ``loss`` is (cells, gateways) obstacle loss or empty; ``grid`` is (x0, y0, cell, nx, ny).

    ``cell_edges`` (off by default; the default path's arithmetic is unchanged by it): a
    worse point in another obstacle cell than the best point is not halved back towards
    it, which creeps towards the cell edge the step crossed (the loss jumps there) over
    the rest of the iterations; the trial is first the point just across that edge
    (``EDGE_INSET_M`` into the other cell), then the edge itself (as far inside the best
    point's cell). A best point already on that edge whose step crosses it again slides
    along the edge: the crossing component is dropped and the other coordinate takes its
    own 1-D Gauss-Newton step, as on the floor's bounds, and the row settles there as it
    does on a bound."""
    n, width = r.shape
    x_out = x_start.copy()
    y_out = y_start.copy()
    minx, miny, maxx, maxy, gx0, gy0, cell, nx, ny = _floor_and_grid(bounds, grid)
    has_wall = loss.shape[0] > 0
    one_eps, half, zero, one, two, tiny_det, tiny_len, pd_eps, settle_len, move_eps = LOOP_CONSTANTS
    inset = F32(EDGE_INSET_M)
    dxs = np.empty(width, np.float32)  # one row's terms, kept between the cost and its derivatives
    dys = np.empty(width, np.float32)
    d2s = np.empty(width, np.float32)
    ress = np.empty(width, np.float32)
    for j in range(n):
        x = x_start[j]
        y = y_start[j]
        px, py = x, y
        pcost = F32(np.inf)
        pj = p0[j]
        # cell_edges: the best point's cell, the edge each axis is held on (-1 low, +1
        # high, 0 free) and the best point's gradient and Gauss-Newton diagonal.
        pix, piy = -1, -1
        ex_dir, ey_dir = 0, 0
        pg1, pg2, pa11, pa22 = zero, zero, one, one
        across = False  # the point just across the edge was tried since the last best point
        for _ in range(iterations):
            c = 0
            ix, iy = 0, 0
            if has_wall:
                ix = int((x - gx0) / cell)
                iy = int((y - gy0) / cell)
                ix = min(max(ix, 0), nx - 1)
                iy = min(max(iy, 0), ny - 1)
                c = iy * nx + ix
            cost = zero
            # A sum of squares only grows: once it passes the bar the point is worse,
            # whatever the remaining terms (whose logarithms are then not computed).
            bar = pcost * one_eps
            for i in range(width):
                dx = x - gx[j, i]
                dy = y - gy[j, i]
                d2 = dx * dx
                d2 += dy * dy
                d2 += dz2[j, i]
                res = log10f(d2)
                res *= five_n
                res += r[j, i] - pj
                if has_wall:
                    res += loss[c, cols[j, i]]
                res *= w[j, i]
                cost += res * res
                dxs[i], dys[i], d2s[i], ress[i] = dx, dy, d2, res
                if cost > bar:
                    break
            worse = cost > bar
            if worse and cell_edges and has_wall and pix >= 0 and (ix != pix or iy != piy):
                # The step left the best point's cell for a worse point: find the edge it
                # crossed first, then try just across it, then just inside the best cell.
                ddx, ddy = x - px, y - py
                t = one
                cx, cy = 0, 0
                if ix != pix and ddx != zero:
                    side = 1 if ix > pix else 0
                    tx = (gx0 + F32(pix + side) * cell - px) / ddx
                    if tx < t:
                        t, cx, cy = tx, 2 * side - 1, 0
                if iy != piy and ddy != zero:
                    side = 1 if iy > piy else 0
                    ty = (gy0 + F32(piy + side) * cell - py) / ddy
                    if ty < t:
                        t, cx, cy = ty, 0, 2 * side - 1
                length = hypotf(ddx, ddy)
                back = inset / max(length, tiny_len)
                if not across and t + back < one:
                    # First the other side, just across the edge (the first point the
                    # halvings would not reach): a better point there is taken as any is.
                    across = True
                    x, y = px + ddx * (t + back), py + ddy * (t + back)
                    x_out[j], y_out[j] = px, py
                    continue
                if t - back > back:
                    # Far enough from the edge: the trial is the edge point.
                    x, y = px + ddx * (t - back), py + ddy * (t - back)
                    x_out[j], y_out[j] = px, py
                    continue
                # Already on that edge: hold the crossing axis there and slide along it.
                if cx != 0:
                    ex_dir = cx
                if cy != 0:
                    ey_dir = cy
                if ex_dir != 0 and ey_dir != 0:
                    break  # held in a corner of its cell
                sx = zero if ex_dir != 0 else pg1 / pa11
                sy = zero if ey_dir != 0 else pg2 / pa22
                scale = min(one, max_step / max(hypotf(sx, sy), tiny_len))
                nxx = min(max(px + sx * scale, minx), maxx)
                nyy = min(max(py + sy * scale, miny), maxy)
                if abs(nxx - px) + abs(nyy - py) < move_eps:
                    break  # settled on the edge
                x, y = nxx, nyy
                x_out[j], y_out[j] = px, py
                continue
            if worse:
                # A worse point's step is never taken: halve back towards the best point
                # without the derivatives (most iterations of rows that end on the edge
                # of an obstacle cell are these).
                nxx = half * (px + x)
                nyy = half * (py + y)
                x, y = nxx, nyy
                x_out[j], y_out[j] = px, py
                continue
            if cell_edges and has_wall:
                # An edge stays held while the best point slides along it.
                if ix != pix or x != px:
                    ex_dir = 0
                if iy != piy or y != py:
                    ey_dir = 0
                pix, piy = ix, iy
                across = False
            px, py, pcost = x, y, cost
            a11 = zero
            a22 = zero
            a12 = zero
            g1s = zero
            g2s = zero
            s0 = zero
            hxx = zero
            hxy = zero
            hyy = zero
            for i in range(width):
                dx, dy, d2, res = dxs[i], dys[i], d2s[i], ress[i]
                inv = w[j, i] / d2
                jx = dx * inv
                jy = dy * inv
                a11 += jx * jx
                a22 += jy * jy
                a12 += jx * jy
                g1s += jx * res
                g2s += jy * res
                q = res * inv
                s0 += q
                q /= d2
                qx = q * dx
                hxx += qx * dx
                hxy += qx * dy
                hyy += (q * dy) * dy
            g1 = -g1s / k_slope
            g2 = -g2s / k_slope
            h11 = (s0 - two * hxx) / k_slope
            h12 = -two * hxy / k_slope
            h22 = (s0 - two * hyy) / k_slope
            n11, n22, n12 = a11 + h11, a22 + h22, a12 + h12
            gdet = a11 * a22 - a12 * a12 + tiny_det
            gn_len = hypotf(a22 * g1 - a12 * g2, a11 * g2 - a12 * g1) / gdet
            near = gn_len < newton_radius
            pd = near and (n11 > 0) and (n11 * n22 - n12 * n12 > pd_eps * a11 * a22)
            ga11, ga22 = a11, a22
            if pd:
                a11, a22, a12 = n11, n22, n12
            det = a11 * a22 - a12 * a12 + tiny_det
            sx = (a22 * g1 - a12 * g2) / det
            sy = (a11 * g2 - a12 * g1) / det
            pin_x = ((x <= minx) and (sx < 0)) or ((x >= maxx) and (sx > 0))
            pin_y = ((y <= miny) and (sy < 0)) or ((y >= maxy) and (sy > 0))
            if cell_edges:
                pg1, pg2, pa11, pa22 = g1, g2, ga11, ga22
                # An edge held from before: a step across it again slides along it.
                pin_x = pin_x or (ex_dir != 0 and sx * F32(ex_dir) > 0)
                pin_y = pin_y or (ey_dir != 0 and sy * F32(ey_dir) > 0)
            if pin_x:
                sx = zero
            elif pin_y:
                sx = g1 / ga11
            if pin_y:
                sy = zero
            elif pin_x:
                sy = g2 / ga22
            scale = min(one, max_step / max(hypotf(sx, sy), tiny_len))
            nxx = min(max(x + sx * scale, minx), maxx)
            nyy = min(max(y + sy * scale, miny), maxy)
            moved = abs(nxx - x) + abs(nyy - y)
            x, y = nxx, nyy
            x_out[j], y_out[j] = px, py
            settled = (gn_len < settle_len) or pin_x or pin_y
            if settled and not (moved >= move_eps):
                break
    return x_out, y_out


# -- the same loop across rows, vectorized ---------------------------------------------------
# newton_rows works on one row at a time, and its terms are a handful of scalar operations
# (a row is heard by 2 to 10 gateways). newton_rows_lanes runs the same iterations for
# LANES rows side by side, each row in a lane: every step is a loop over the lanes with no
# branch, which LLVM's loop vectorizer turns into SIMD instructions (8 float32 or 4 float64
# lanes on AVX2). Each lane does exactly the scalar loop's operations in the scalar loop's
# order, so every row's answer is the same bits (tests/test_engine_fastpaths.py holds the
# two to each other). What differs is the work: a lane evaluates the whole cost and the
# derivatives at every point (the scalar loop stops a worse point's cost early and skips its
# derivatives), and a lane whose row settles takes the next row at once.
LANES = 64  # rows side by side; 32 and 128 were slower on the large scenario's rows


@numba.njit(inline="always", nogil=True)
def _lane_take_row(
    j: int, lane: int, r: NDArray[np.float32], w: NDArray[np.float32], gx: NDArray[np.float32],
    gy: NDArray[np.float32], dz2: NDArray[np.float32], cols: NDArray[np.intp], p0: NDArray[np.float32],
    x_start: NDArray[np.float32], y_start: NDArray[np.float32], rows: NDArray[np.float32],
    col_rows: NDArray[np.uint64], st: NDArray[np.float32], row: NDArray[np.int64], iters: NDArray[np.int64],
) -> None:
    """Row ``j`` into lane ``lane``: its terms into the (5, width, LANES) and (width, LANES)
    lane buffers, and the lane's state as the scalar loop starts a row (the start as point
    and best point, no best cost yet, the row's P0, no iteration)."""
    for i in range(r.shape[1]):
        rows[0, i, lane] = r[j, i]
        rows[1, i, lane] = w[j, i]
        rows[2, i, lane] = gx[j, i]
        rows[3, i, lane] = gy[j, i]
        rows[4, i, lane] = dz2[j, i]
        col_rows[i, lane] = cols[j, i]
    row[lane], iters[lane] = j, 0
    st[0, lane], st[1, lane], st[2, lane], st[3, lane] = x_start[j], y_start[j], x_start[j], y_start[j]
    st[4, lane], st[5, lane] = F32(np.inf), p0[j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def newton_rows_lanes(  # one kernel, on purpose (as newton_rows)
    r: NDArray[np.float32], w: NDArray[np.float32], p0: NDArray[np.float32],
    gx: NDArray[np.float32], gy: NDArray[np.float32], dz2: NDArray[np.float32],
    cols: NDArray[np.intp], loss: NDArray[np.float32], grid: NDArray[np.float64],
    x_start: NDArray[np.float32], y_start: NDArray[np.float32],
    five_n: np.float32, k_slope: np.float32, bounds: NDArray[np.float64],
    iterations: int, max_step: np.float32, newton_radius: np.float32,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """:func:`newton_rows` (without ``cell_edges``), LANES rows at a time: the same bits."""
    n, width = r.shape
    x_out = x_start.copy()
    y_out = y_start.copy()
    minx, miny, maxx, maxy, gx0, gy0, cell, nx, ny = _floor_and_grid(bounds, grid)
    has_wall = loss.shape[0] > 0
    one_eps, half, zero, one, two, tiny_det, tiny_len, pd_eps, settle_len, move_eps = LOOP_CONSTANTS
    lanes = LANES
    row = np.full(lanes, -1, np.int64)  # each lane's row; -1: none left
    iters = np.zeros(lanes, np.int64)
    # Each lane's point (x, y), best point (px, py), its cost and the row's P0; then the
    # scratch of one iteration: the cost, its bar, the logarithm, the obstacle loss, and
    # the derivative sums (a11, a22, a12, g1, g2, s0, hxx, hxy, hyy).
    st = np.zeros((19, lanes), np.float32)
    lx, ly, lpx, lpy, lpc, lpj = st[0], st[1], st[2], st[3], st[4], st[5]
    cost, bar, lg, lossv = st[6], st[7], st[8], st[9]
    a11, a22, a12, g1s, g2s, s0, hxx, hxy, hyy = st[10], st[11], st[12], st[13], st[14], st[15], st[16], st[17], st[18]
    rows = np.zeros((5, width, lanes), np.float32)  # the lanes' rows: r, w, gx, gy, dz2
    rows[4] = one  # an empty lane's distance stays a normal number (no slow logarithm)
    col_rows = np.zeros((width, lanes), np.uint64)
    terms = np.zeros((4, width, lanes), np.float32)  # dx, dy, d2, weighted residual
    alive = np.zeros(lanes, np.bool_)  # the cost so far is within the bar
    flag = np.zeros(lanes, np.bool_)
    # The obstacle loss as a flat array indexed by unsigned integers (no negative-index
    # wrap-around to check): each lane's cell row, then each cell's index.
    loss_flat = loss.ravel()
    n_gw = loss.shape[1]
    cell_at = np.zeros(lanes, np.uint64)
    at = np.zeros(lanes, np.uint64)
    nxt = 0
    active = 0
    for lane in range(min(lanes, n)):
        _lane_take_row(nxt, lane, r, w, gx, gy, dz2, cols, p0, x_start, y_start, rows, col_rows, st, row, iters)
        nxt += 1
        active += 1
    while active > 0:
        for lane in range(lanes):
            ix = min(max(int((lx[lane] - gx0) / cell), 0), nx - 1)
            iy = min(max(int((ly[lane] - gy0) / cell), 0), ny - 1)
            cell_at[lane] = (iy * nx + ix) * n_gw if has_wall else 0
            bar[lane] = lpc[lane] * one_eps
            cost[lane] = zero
            alive[lane] = True
        for i in range(width):
            slow = 0
            for lane in range(lanes):
                dx = lx[lane] - rows[2, i, lane]
                dy = ly[lane] - rows[3, i, lane]
                d2 = dx * dx
                d2 += dy * dy
                d2 += rows[4, i, lane]
                terms[0, i, lane], terms[1, i, lane], terms[2, i, lane] = dx, dy, d2
                hx = _f32_bits(d2)
                flag[lane] = (hx < 0x00800000) | (hx > 0x7F7FFFFF)
                lg[lane] = _log10f_normal(hx)
            for lane in range(lanes):
                slow += flag[lane]
            if slow:  # zero, subnormal, inf or NaN distances: the library's logarithm
                for lane in range(lanes):
                    if flag[lane]:
                        lg[lane] = np.float32(np.log10(terms[2, i, lane]))
            if has_wall:  # a gather (not vectorized), apart so the loop below is
                for lane in range(lanes):
                    at[lane] = cell_at[lane] + col_rows[i, lane]
                for lane in range(lanes):
                    lossv[lane] = loss_flat[at[lane]]
            for lane in range(lanes):
                res = lg[lane] * five_n
                res += rows[0, i, lane] - lpj[lane]
                if has_wall:
                    res += lossv[lane]
                res *= rows[1, i, lane]
                terms[3, i, lane] = res
                # The scalar loop stops adding once the sum passes the bar: so does a lane.
                total = cost[lane] + res * res
                ok = alive[lane]
                cost[lane] = total if ok else cost[lane]
                alive[lane] = ok and not (cost[lane] > bar[lane])
        st[10:] = zero
        for i in range(width):
            for lane in range(lanes):
                dx, dy, d2, res = terms[0, i, lane], terms[1, i, lane], terms[2, i, lane], terms[3, i, lane]
                inv = rows[1, i, lane] / d2
                jx = dx * inv
                jy = dy * inv
                a11[lane] += jx * jx
                a22[lane] += jy * jy
                a12[lane] += jx * jy
                g1s[lane] += jx * res
                g2s[lane] += jy * res
                q = res * inv
                s0[lane] += q
                q /= d2
                qx = q * dx
                hxx[lane] += qx * dx
                hxy[lane] += qx * dy
                hyy[lane] += (q * dy) * dy
        for lane in range(lanes):
            # newton_rows's step from a better point, for every lane; a worse point's lane
            # halves back instead (its step is computed and not taken).
            x, y = lx[lane], ly[lane]
            worse = not alive[lane]
            g1 = -g1s[lane] / k_slope
            g2 = -g2s[lane] / k_slope
            h11 = (s0[lane] - two * hxx[lane]) / k_slope
            h12 = -two * hxy[lane] / k_slope
            h22 = (s0[lane] - two * hyy[lane]) / k_slope
            b11, b22, b12 = a11[lane], a22[lane], a12[lane]
            n11, n22, n12 = b11 + h11, b22 + h22, b12 + h12
            gdet = b11 * b22 - b12 * b12 + tiny_det
            gn_len = hypotf(b22 * g1 - b12 * g2, b11 * g2 - b12 * g1) / gdet
            near = gn_len < newton_radius
            pd = near and (n11 > 0) and (n11 * n22 - n12 * n12 > pd_eps * b11 * b22)
            c11 = n11 if pd else b11
            c22 = n22 if pd else b22
            c12 = n12 if pd else b12
            det = c11 * c22 - c12 * c12 + tiny_det
            sx = (c22 * g1 - c12 * g2) / det
            sy = (c11 * g2 - c12 * g1) / det
            pin_x = ((x <= minx) and (sx < 0)) or ((x >= maxx) and (sx > 0))
            pin_y = ((y <= miny) and (sy < 0)) or ((y >= maxy) and (sy > 0))
            sx = zero if pin_x else (g1 / b11 if pin_y else sx)
            sy = zero if pin_y else (g2 / b22 if pin_x else sy)
            scale = min(one, max_step / max(hypotf(sx, sy), tiny_len))
            nxx = min(max(x + sx * scale, minx), maxx)
            nyy = min(max(y + sy * scale, miny), maxy)
            moved = abs(nxx - x) + abs(nyy - y)
            settled = (gn_len < settle_len) or pin_x or pin_y
            it = iters[lane] + 1
            iters[lane] = it
            # Loaded before the stores, so each store is a select (vectorizable).
            opx, opy, opc, new_cost = lpx[lane], lpy[lane], lpc[lane], cost[lane]
            lx[lane] = half * (opx + x) if worse else nxx
            ly[lane] = half * (opy + y) if worse else nyy
            lpx[lane] = opx if worse else x
            lpy[lane] = opy if worse else y
            lpc[lane] = opc if worse else new_cost
            flag[lane] = (it >= iterations) | ((not worse) & settled & (not (moved >= move_eps)))
        done = 0
        for lane in range(lanes):
            done += flag[lane]
        if done == 0:
            continue
        for lane in range(lanes):
            if not flag[lane] or row[lane] < 0:
                continue
            x_out[row[lane]], y_out[row[lane]] = lpx[lane], lpy[lane]
            if nxt < n:  # the lane takes the next row
                _lane_take_row(nxt, lane, r, w, gx, gy, dz2, cols, p0, x_start, y_start, rows, col_rows, st, row,
                               iters)
                nxt += 1
            else:
                row[lane] = -1
                active -= 1
    return x_out, y_out


def newton_solve(
    r: NDArray[np.float32], w: NDArray[np.float32], p0: NDArray[np.float32],
    gx: NDArray[np.float32], gy: NDArray[np.float32], dz2: NDArray[np.float32],
    cols: NDArray[np.intp], loss: NDArray[np.float32], grid: NDArray[np.float64],
    x_start: NDArray[np.float32], y_start: NDArray[np.float32],
    five_n: np.float32, k_slope: np.float32, bounds: NDArray[np.float64],
    iterations: int, max_step: np.float32, newton_radius: np.float32, cell_edges: bool = False,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """:func:`newton_rows`, in SIMD lanes (:func:`newton_rows_lanes`) where there are rows
    enough to fill them: the same bits either way."""
    args = (r, w, p0, gx, gy, dz2, cols, loss, grid, x_start, y_start, five_n, k_slope, bounds, iterations,
            max_step, newton_radius)
    if cell_edges or len(x_start) < LANES:
        return newton_rows(*args, cell_edges)
    return newton_rows_lanes(*args)


# -- the float64 cost and polish around the loop ------------------------------------------
# engine.localize evaluates each start's end point and polishes the winner in float64. Its
# logarithms stay numpy's (np.log10 has its own SIMD code, whose last bits differ from the
# C library's that numba calls), so these kernels do the arithmetic around them, operation
# for operation as the numpy expressions did, in one pass instead of a dozen: the squared
# distances before the logarithm, and the cost or the Newton step after it. Sums over a
# row's gateways are added in gateway order, on purpose: numpy's own reductions (einsum,
# sum) block the additions differently depending on the array's length, so a row's sum,
# and through the iterations its position, would depend on which other rows share its
# chunk; added in order it never does, so any split of the rows gives the same bytes.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def squared_distances(
    gx: NDArray[np.floating], gy: NDArray[np.floating], dz2: NDArray[np.floating],
    x: NDArray[np.float64], y: NDArray[np.float64],
) -> NDArray[np.float64]:
    """(x - gx)^2 + (y - gy)^2 + dz2 for (width, rows) gateway arrays and (rows,) points."""
    width, n = gx.shape
    out = np.empty((width, n))
    for i in range(width):
        for j in range(n):
            dx = x[j] - gx[i, j]
            dy = y[j] - gy[i, j]
            out[i, j] = dx * dx + dy * dy + dz2[i, j]
    return out


@numba.njit(cache=True, nogil=True)
def _clamped_index(f: float, n: np.intp) -> np.intp:
    """np.clip(f.astype(np.intp), 0, n - 1) for one value, including numpy's x86 answer
    for NaN, infinities and values beyond int64 (the smallest int64, so 0)."""
    if f >= 0.0 and f < 9.2e18:
        return min(np.intp(f), n - 1)
    return np.intp(0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def cost_from_log(
    r: NDArray[np.floating], w: NDArray[np.floating], p0: NDArray[np.floating], log_d2: NDArray[np.float64],
    five_n: float, x: NDArray[np.float64], y: NDArray[np.float64], cols: NDArray[np.intp],
    loss: NDArray[np.float32], grid: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Sum of squared residuals of each row given log10 of its squared distances; inf where
    it is not finite. ``loss`` (cells, gateways) is the obstacle loss or empty, ``grid`` its
    (x0, y0, cell, nx, ny), cells found as radio_models.environment.Grid.cell_index does."""
    width, n = r.shape
    has_wall = loss.shape[0] > 0
    x0, y0, cell = grid[0], grid[1], grid[2]
    nx, ny = np.intp(grid[3]), np.intp(grid[4])
    out = np.empty(n)
    for j in range(n):
        c = np.intp(0)
        if has_wall:
            c = _clamped_index((y[j] - y0) / cell, ny) * nx + _clamped_index((x[j] - x0) / cell, nx)
        total = 0.0
        for i in range(width):
            pred = p0[j] - five_n * log_d2[i, j]
            if has_wall:
                pred = pred - loss[c, cols[i, j]]
            res = (r[i, j] - pred) * w[i, j]
            if i == 0:
                total = res * res
            else:
                total += res * res
        out[j] = total if np.isfinite(total) else np.inf
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def polish_step(
    r: NDArray[np.float64], w: NDArray[np.float64], p0: NDArray[np.float64], log_d2: NDArray[np.float64],
    d2: NDArray[np.float64], gx: NDArray[np.float64], gy: NDArray[np.float64], five_n: float,
    k_slope: float, x: NDArray[np.float64], y: NDArray[np.float64], bounds: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    """engine.localize._polish after its logarithm: each row's Newton step (sx, sy),
    whether it may be taken (curved, not pinned on both axes; the caller adds the length
    test), and the Gauss-Newton sums (a11, a22, a12)."""
    width, n = r.shape
    minx, miny, maxx, maxy = bounds[0], bounds[1], bounds[2], bounds[3]
    sx_out = np.empty(n)
    sy_out = np.empty(n)
    ok = np.empty(n, np.bool_)
    fisher = np.empty((n, 3))
    for j in range(n):
        a11 = a22 = a12 = ds1 = ds2 = s0 = hxx = hyy = hxy = 0.0
        for i in range(width):
            dx = x[j] - gx[i, j]
            dy = y[j] - gy[i, j]
            res = (r[i, j] - p0[j] + five_n * log_d2[i, j]) * w[i, j]
            inv = w[i, j] / d2[i, j]
            jx = dx * inv
            jy = dy * inv
            q = res * inv
            q2 = q / d2[i, j]
            if i == 0:
                a11, a22, a12 = jx * jx, jy * jy, jx * jy
                ds1, ds2, s0 = jx * res, jy * res, q
                hxx, hyy, hxy = (q2 * dx) * dx, (q2 * dy) * dy, (q2 * dx) * dy
            else:
                a11 += jx * jx
                a22 += jy * jy
                a12 += jx * jy
                ds1 += jx * res
                ds2 += jy * res
                s0 += q
                hxx += (q2 * dx) * dx
                hyy += (q2 * dy) * dy
                hxy += (q2 * dx) * dy
        g1 = -ds1 / k_slope
        g2 = -ds2 / k_slope
        h11 = a11 + (s0 - 2.0 * hxx) / k_slope
        h22 = a22 + (s0 - 2.0 * hyy) / k_slope
        h12 = a12 - 2.0 * hxy / k_slope
        det = h11 * h22 - h12 * h12
        sx = (h22 * g1 - h12 * g2) / det
        sy = (h11 * g2 - h12 * g1) / det
        pin_x = ((x[j] <= minx) and (sx < 0)) or ((x[j] >= maxx) and (sx > 0))
        pin_y = ((y[j] <= miny) and (sy < 0)) or ((y[j] >= maxy) and (sy > 0))
        free = not pin_x and not pin_y
        if not free:
            sx = 0.0 if pin_x else g1 / h11
            sy = 0.0 if pin_y else g2 / h22
        curved = ((h11 > 0) and (det > 0)) if free else ((h22 > 0) if pin_x else (h11 > 0))
        sx_out[j], sy_out[j] = sx, sy
        ok[j] = curved and not (pin_x and pin_y)
        fisher[j, 0], fisher[j, 1], fisher[j, 2] = a11, a22, a12
    return sx_out, sy_out, ok, fisher


@numba.njit(cache=True, nogil=True)
def compact_rows(
    start: NDArray[np.intp], counts: NDArray[np.intp], col: NDArray[np.intp], rssi: NDArray[np.float64],
    rows: NDArray[np.intp], width: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """engine.localize.HeardRows.from_heard: the heard cells of ``rows`` as (width, rows)
    RSSI, weight (1 heard, 0 padding) and gateway arrays, zero-padded."""
    n = len(rows)
    values = np.zeros((width, n))
    weight = np.zeros((width, n))
    cols = np.zeros((width, n), np.intp)
    for j in range(n):
        lo = start[rows[j]]
        if counts[rows[j]] > width:
            raise ValueError("a row is heard by more gateways than the width")
        for i in range(counts[rows[j]]):
            values[i, j] = rssi[lo + i]
            weight[i, j] = 1.0
            cols[i, j] = col[lo + i]
    return values, weight, cols


@numba.njit(cache=True, nogil=True)
def gather_rows(
    cols: NDArray[np.intp], r: NDArray[np.float64], w: NDArray[np.float64], gw_xyz: NDArray[np.float64],
    tag_z: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
           NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32],
           NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32],
           NDArray[np.intp]]:
    """engine.localize._wls_rows's per-chunk arrays in one pass over (width, rows) compact
    rows: each cell's gateway x, y and (z - tag_z)^2, the gateways' (rows, width, 2) plane
    positions, and the float32 copies the Newton loop reads, (width, rows) and row-major
    (r, w, x, y, dz2, then the gateway columns row-major). The same values as the numpy
    gathers and ``astype`` they replace."""
    width, n = cols.shape
    gx = np.empty((width, n))
    gy = np.empty((width, n))
    dz2 = np.empty((width, n))
    gxy = np.empty((n, width, 2))
    f32 = np.empty((5, width, n), np.float32)
    major = np.empty((5, n, width), np.float32)
    cols_major = np.empty((n, width), np.intp)
    for i in range(width):
        for j in range(n):
            c = cols[i, j]
            x = gw_xyz[c, 0]
            y = gw_xyz[c, 1]
            dz = gw_xyz[c, 2] - tag_z
            d = dz * dz
            gx[i, j], gy[i, j], dz2[i, j] = x, y, d
            gxy[j, i, 0], gxy[j, i, 1] = x, y
            f32[0, i, j] = np.float32(r[i, j])
            f32[1, i, j] = np.float32(w[i, j])
            f32[2, i, j] = np.float32(x)
            f32[3, i, j] = np.float32(y)
            f32[4, i, j] = np.float32(d)
            for k in range(5):
                major[k, j, i] = f32[k, i, j]
            cols_major[j, i] = c
    return (gx, gy, dz2, gxy, f32[0], f32[1], f32[2], f32[3], f32[4], major[0], major[1], major[2], major[3],
            major[4], cols_major)



@numba.njit(cache=True, nogil=True)
def first_equal_rows(
    start: NDArray[np.intp], counts: NDArray[np.intp], col: NDArray[np.intp], rssi_bits: NDArray[np.int64],
    p0_bits: NDArray[np.int64], use: NDArray[np.bool_],
) -> NDArray[np.intp]:
    """For each row of heard cells (``start``, ``counts`` into ``col`` and the bits of its
    RSSI means) with ``use``: the first row with the same gateways, the same RSSI bits and
    the same bits of P0 (itself if none); other rows map to themselves. An
    open-addressing table of row hashes; rows are compared whole where hashes are equal."""
    n = len(counts)
    out = np.arange(n)
    used = 0
    for r in range(n):
        used += use[r]
    size = 16
    while size < 2 * used:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, np.int64)
    hashes = np.zeros(size, np.int64)
    for r in range(n):
        if not use[r]:
            continue
        # splitmix64-style mixing; the constants written as signed int64 so plain numpy takes them
        h = p0_bits[r] * np.int64(-0x61C8864680B583EB) + counts[r]
        for i in range(start[r], start[r] + counts[r]):
            h = (h ^ (h >> 29)) * np.int64(-0x40A7B892E31B1A47) + col[i]
            h = (h ^ (h >> 31)) * np.int64(-0x6B2FB644ECCEEE15) + rssi_bits[i]
        j = (h ^ (h >> 32)) & mask
        while table[j] >= 0:
            if hashes[j] == h:
                o = table[j]
                same = counts[o] == counts[r] and p0_bits[o] == p0_bits[r]
                for i in range(counts[r] if same else 0):
                    if col[start[o] + i] != col[start[r] + i] or rssi_bits[start[o] + i] != rssi_bits[start[r] + i]:
                        same = False
                        break
                if same:
                    out[r] = o
                    break
            j = (j + 1) & mask
        if out[r] == r:
            table[j] = r
            hashes[j] = h
    return out
