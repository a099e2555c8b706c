"""Figures for docs/radio-models.md, made from the project's own models. Writes PNGs to
docs/img/ and prints the numbers quoted in the docs as JSON.

    .venv/bin/python benchmarks/radio_figures.py [--shared PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from engine.datasets import KOLAKOWSKI_IN_REPO, fit_kolakowski
from radio_models.crb import crlb_map
from radio_models.pathloss import ItuP1238, LogDistance, PathLossModel, Tr38901, three_d_distance
from twin.scenario import load_scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
P1M = -59.0


def rssi_vs_distance() -> None:
    d = np.logspace(0, np.log10(120), 200)
    families: list[tuple[str, PathLossModel, str]] = [
        ("log-distance n=2.0", LogDistance(2.0), "k-"),
        ("log-distance n=2.2", LogDistance(2.2), "k--"),
        ("P.1238 industrial LoS", ItuP1238("industrial", True), "C0-"),
        ("P.1238 industrial NLoS", ItuP1238("industrial", False), "C0--"),
        ("P.1238 office NLoS", ItuP1238("office", False), "C0:"),
        ("38.901 InF LoS", Tr38901("inf-sl", "los"), "C1-"),
        ("38.901 InF-SL NLoS", Tr38901("inf-sl", "nlos"), "C1--"),
        ("38.901 InF-DL NLoS", Tr38901("inf-dl", "nlos"), "C1:"),
        ("38.901 InF-DH NLoS", Tr38901("inf-dh", "nlos"), "C2-."),
        ("38.901 InH-Office NLoS", Tr38901("inh-office", "nlos"), "C3--"),
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, model, style in families:
        ax.semilogx(d, P1M - model.excess_loss_db(d), style, label=label)
    ax.axhline(-95, color="grey", lw=0.8)
    ax.text(1.05, -94, "gateway sensitivity -95 dBm", color="grey", fontsize=8)
    ax.set_xlabel("distance (m)")
    ax.set_ylabel("mean RSSI (dBm), P at 1 m = -59 dBm")
    ax.set_title("Path-loss families (no walls, no shadowing)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(IMG / "rssi-vs-distance.png", dpi=110)
    plt.close(fig)


def coverage_and_crb() -> dict[str, float]:
    sc = load_scenario(ROOT / "scenarios" / "large.toml")
    twin = WarehouseTwin(sc)
    env = twin.radio
    mean = env.mean_rssi_cells(P1M)
    best = mean.max(axis=1).reshape(env.grid.ny, env.grid.nx)
    heard = (mean >= twin.sensitivity_dbm[None, :]).sum(axis=1).reshape(env.grid.ny, env.grid.nx)
    crb = crlb_map(env, P1M, twin.sensitivity_dbm)
    extent = (
        env.grid.x0,
        env.grid.x0 + env.grid.nx * env.grid.cell_m,
        env.grid.y0,
        env.grid.y0 + env.grid.ny * env.grid.cell_m,
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = [
        (best, "strongest mean RSSI (dBm)", "viridis", None),
        (heard, "gateways above sensitivity", "magma", None),
        (np.minimum(crb, 10.0), "Cramér-Rao bound on RMSE (m), capped at 10", "cividis_r", None),
    ]
    for ax, (img, title, cmap, _) in zip(axes, panels, strict=True):
        im = ax.imshow(img, origin="lower", extent=extent, cmap=cmap, aspect="equal")
        for poly in twin.site.racks:
            ax.plot(*poly.exterior.xy, color="white", lw=0.4)
        for wall in twin.site.walls:
            ax.plot(*wall.xy, color="red", lw=1.5)
        ax.plot(twin.gateways.xyz[:, 0], twin.gateways.xyz[:, 1], "w^", ms=4)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(
        "scenarios/large.toml: log-distance n=2.2, racks 15 dB, firewall 15 dB, shadowing 5 dB"
    )
    fig.tight_layout()
    fig.savefig(IMG / "coverage-large.png", dpi=100)
    plt.close(fig)
    finite = crb[np.isfinite(crb)]
    return {
        "crb_median_m": round(float(np.median(finite)), 2),
        "crb_p90_m": round(float(np.percentile(finite, 90)), 2),
        "cells_heard_by_3_or_more": round(float(np.mean(heard >= 3)), 3),
        "median_gateways_heard": float(np.median(heard)),
    }


def calibration_figure(folder: Path) -> dict[str, object]:
    from engine.datasets import load_kolakowski

    cal = fit_kolakowski(folder)
    data = load_kolakowski(folder)
    xyz = np.column_stack([data.calibration.xy, np.full(len(data.calibration.xy), 0.3)])
    d = three_d_distance(xyz, data.anchor_xyz)
    rssi = data.calibration.rssi - cal.gateway_offset_db[None, :]
    ok = np.isfinite(rssi)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(d[ok], rssi[ok], s=2, alpha=0.15, label="calibration walk, offsets removed")
    dd = np.linspace(0.5, 10, 100)
    fit = cal.p0_dbm - 10 * cal.exponent * np.log10(dd)
    ax.plot(
        dd,
        fit,
        "r-",
        label=f"fit: P0 {cal.p0_dbm:.1f}±{cal.p0_se:.1f} dBm, "
        f"n {cal.exponent:.2f}±{cal.exponent_se:.2f}",
    )
    ax.fill_between(
        dd,
        fit - cal.sigma_db,
        fit + cal.sigma_db,
        color="r",
        alpha=0.15,
        label=f"±sigma {cal.sigma_db:.1f} dB",
    )
    ax.set_xscale("log")
    ax.set_xlabel("3-D distance to anchor (m)")
    ax.set_ylabel("RSSI (dBm)")
    ax.set_title("Kolakowski 2021 flat (Sensors 21(18):6270, CC BY 4.0)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMG / "calibration-kolakowski.png", dpi=110)
    plt.close(fig)
    return {"kolakowski": cal.as_dict()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path, default=KOLAKOWSKI_IN_REPO, help="Kolakowski 2021 folder")
    dataset = ap.parse_args().dataset
    IMG.mkdir(parents=True, exist_ok=True)
    rssi_vs_distance()
    out: dict[str, object] = {"coverage_large": coverage_and_crb()}
    out |= calibration_figure(dataset)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
