"""Readable money tables and a layout's exportable report (one self-contained HTML file).

Money is shown with the planner's currency and thousands separators; a payback that does
not come within the horizon reads "never", never None, 37 or Infinity. The report carries
what a decision needs: the plan, the map against the requirement and the share per zone,
the bill of materials with mounting heights, accuracy, alerts and ROI with their 95 %
intervals. It embeds everything (inline SVG and CSS), so it can be mailed or archived.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from planner.layouts import GatewayRow
    from planner.replicates import LayoutResult
    from planner.requirements import Requirement


def money(v: float | None, currency: str) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{currency} {v:,.0f}" if v >= 0 else f"{currency} −{-v:,.0f}"


def payback_text(months: float | None, horizon: int) -> str:
    """Months to payback, or "never" when it does not come within the horizon."""
    if months is None or not math.isfinite(months) or months > horizon:
        return f"never (within {horizon} months)"
    return f"{months:.1f} months"


def cases_rows(roi: Mapping[str, Any], currency: str, horizon: int) -> list[dict[str, str]]:
    cases = roi["cases"]
    return [
        {
            "case": name,
            "capex": money(cases[name]["capex"], currency),
            "opex / month": money(cases[name]["opex_per_month"], currency),
            "benefit / month": money(cases[name]["benefit_per_month"], currency),
            "payback": payback_text(cases[name]["payback_months_exact"], horizon),
            "NPV": money(cases[name]["npv"], currency),
            "TCO": money(cases[name]["tco"], currency),
        }
        for name in ("worst", "base", "best")
    ]


def npv_interval_rows(roi: Mapping[str, Any], currency: str) -> list[dict[str, str]]:
    """NPV at the low end (worse for the site: least theft recall, most alarms and reviews),
    the point and the high end of the measured rates' 95 % intervals, with the rates used
    (engine.roi.roi_report's ``npv_interval``); prices stay as typed, only what was measured
    moves."""
    iv = roi["npv_interval"]
    rates = iv["rates"]
    ends = (("low end of the 95 % intervals", 0), ("point value", 1), ("high end", 2))

    recall_measured = any(v is not None for v in rates["theft_recall"][::2])

    def share(v: float | None) -> str:  # no thefts injected: no interval, the point earns 0
        return f"{v:.3f}" if v is not None and recall_measured else "not measured"

    def rate(v: float | None) -> str:
        return "not measured" if v is None else f"{v:,.2f}"

    # ``rates`` lists each interval as [low, point, high]; the NPV's low end takes the
    # low recall but the *high* alarm and review rates.
    return [
        {
            "at": label,
            "NPV": money(iv[("low", "point", "high")[i]], currency),
            "theft recall": share(rates["theft_recall"][i]),
            "false alarms / day / 1,000 tags": rate(
                rates["false_alarms_per_day_per_1000_tags"][2 - i]
            ),
            "reviews / day / 1,000 tags": rate(rates["reviews_per_day_per_1000_tags"][2 - i]),
        }
        for label, i in ends
    ]


def sensitivity_rows(roi: Mapping[str, Any], currency: str, horizon: int) -> list[dict[str, str]]:
    """The tornado table: each input moved down and up, payback and NPV at each end."""
    return [
        {
            "input": str(r["input"]).replace("_", " "),
            "kind": str(r["kind"]),
            "payback, input down": payback_text(float(r["payback_low"]), horizon),
            "payback, input up": payback_text(float(r["payback_high"]), horizon),
            "NPV, input down": money(float(r["npv_low"]), currency),
            "NPV, input up": money(float(r["npv_high"]), currency),
        }
        for r in roi["sensitivity"]
    ]


def monthly_rows(roi: Mapping[str, Any], currency: str) -> list[dict[str, str]]:
    base = roi["cases"]["base"]
    gains = [
        {"item": f"benefit: {k.replace('_', ' ')}", "per month": money(v, currency)}
        for k, v in base["benefits"].items()
    ]
    costs = [
        {"item": f"cost: {k.replace('_', ' ')}", "per month": money(-v, currency)}
        for k, v in base["costs"].items()
    ]
    return gains + costs


# -- the HTML report -----------------------------------------------------------------------


def plan_svg(
    site: Mapping[str, Any],
    rows: Sequence[GatewayRow],
    layer: Mapping[str, Any] | None = None,
    width_px: int = 900,
) -> str:
    """The plan as inline SVG: the map layer (runs of equal cells per row), zone outlines
    and names, racks, walls and the gateways with their ids."""
    minx, miny, maxx, maxy = site["bounds"]
    pad = 1.0
    w, h = maxx - minx + 2 * pad, maxy - miny + 2 * pad

    def sx(x: float) -> float:
        return x - minx + pad

    def sy(y: float) -> float:
        return maxy - y + pad

    def path(coords: Sequence[Sequence[float]], close: bool = True) -> str:
        d = " ".join(f"{'L' if i else 'M'}{sx(x):.2f} {sy(y):.2f}" for i, (x, y) in enumerate(coords))
        return d + (" Z" if close else "")

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.2f} {h:.2f}" width="{width_px}" '
        f'height="{width_px * h / w:.0f}" font-family="sans-serif">',
        f'<path d="{path(site["outline"])}" fill="#fbfbf8"/>',
    ]
    if layer is not None:
        nx, ny, cell = layer["nx"], layer["ny"], layer["cell"]
        idx, palette = layer["index"], layer["palette"]
        for j in range(ny):
            i = 0
            while i < nx:
                k = idx[j * nx + i]
                run = i
                while run + 1 < nx and idx[j * nx + run + 1] == k:
                    run += 1
                if k >= 0:
                    x0 = layer["x0"] + i * cell
                    y1 = layer["y0"] + (j + 1) * cell
                    out.append(
                        f'<rect x="{sx(x0):.2f}" y="{sy(y1):.2f}" width="{(run - i + 1) * cell + 0.02:.2f}" '
                        f'height="{cell + 0.02:.2f}" fill="{palette[k]}"/>'
                    )
                i = run + 1
    for z in site["zones"]:
        fill = "none" if layer is not None else z["colour"]
        out.append(
            f'<path d="{path(z["coords"])}" fill="{fill}" stroke="#444" stroke-width="0.12" '
            'stroke-dasharray="0.6 0.4"/>'
        )
    out += [f'<path d="{path(r)}" fill="#8c6d46"/>' for r in site["racks"]]
    out += [
        f'<path d="{path(wall, close=False)}" fill="none" stroke="black" stroke-width="0.25"/>'
        for wall in site["walls"]
    ]
    out.append(f'<path d="{path(site["outline"])}" fill="none" stroke="black" stroke-width="0.25"/>')
    for z in site["zones"]:
        lx, ly = z["labels"][0]
        out.append(
            f'<text x="{sx(lx):.2f}" y="{sy(ly):.2f}" font-size="0.9" text-anchor="middle" '
            f'font-style="italic" fill="#333">{html.escape(z["name"])}</text>'
        )
    for g in rows:
        x, y = sx(float(g["x"])), sy(float(g["y"]))
        out.append(
            f'<polygon points="{x:.2f},{y - 0.6:.2f} {x - 0.55:.2f},{y + 0.4:.2f} {x + 0.55:.2f},{y + 0.4:.2f}" '
            'fill="#264653" stroke="white" stroke-width="0.1"/>'
            f'<text x="{x + 0.7:.2f}" y="{y - 0.3:.2f}" font-size="0.8" font-weight="bold" fill="#1d3557">'
            f"{html.escape(str(g['id']))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "never" if v > 0 else "n/a"
        return f"{v:.1%}" if 0 <= v <= 1 else f"{v:,.2f}"
    return str(v)


def layout_report_html(
    *,
    scenario_name: str,
    layout: str,
    rows: Sequence[GatewayRow],
    site: Mapping[str, Any],
    requirement: Requirement,
    areas: Sequence[Mapping[str, Any]],
    requirement_layer: Mapping[str, Any],
    result: LayoutResult | None,
    roi: Mapping[str, Any] | None,
    currency: str,
    horizon: int,
    seeds: Sequence[int],
    duration_s: float,
    tool_version: str,
) -> str:
    """One self-contained HTML page about one layout."""
    from planner.replicates import ACCURACY, MONEY, fmt_interval

    e = html.escape
    bom = [
        {"gateway": g["id"], "x (m)": f"{g['x']:.2f}", "y (m)": f"{g['y']:.2f}", "mounting height (m)": f"{g['z']:.2f}"}
        for g in rows
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>TagTwin layout report: {e(scenario_name)} / {e(layout)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:14px}th{background:#f2f2f2}.legend i{display:inline-block;width:12px;"
        "height:12px;margin:0 4px 0 12px;border:1px solid #999}</style></head><body>",
        f"<h1>Layout “{e(layout)}” of {e(scenario_name)}</h1>",
        f"<p>{len(rows)} gateways. Requirement: {e(requirement.text())}. TagTwin {e(tool_version)}.</p>",
        "<h2>Plan</h2>",
        plan_svg(site, rows),
        "<h2>Against the requirement</h2>",
        plan_svg(site, rows, requirement_layer),
        "<p class='legend'>"
        + "".join(f"<i style='background:{c}'></i>{e(n)}" for c, n in requirement_layer["legend"])
        + "</p>",
        _table(areas),
        "<h2>Bill of materials</h2>",
        _table(bom),
    ]
    if result is not None and roi is not None:
        acc = [
            {"metric": label, "mean (95 % interval)": fmt_interval(result.interval(key), unit)}
            for key, label, _lower, unit in (*ACCURACY, *MONEY)
        ]
        parts += [
            f"<h2>Accuracy, alerts and money ({len(seeds)} seeds of {duration_s:g} s simulated)</h2>",
            _table(acc),
            f"<p>False alarms per day per 1,000 tags: {e(result.money['false_alarms'].text())}"
            + (
                "; money figures use the rules' design rate instead."
                if result.money["false_alarms_from_design"]
                else "."
            )
            + f" Money in {e(currency)}.</p>",
            "<h3>NPV at the measured rates' 95 % intervals</h3>",
            _table(npv_interval_rows(roi, currency)),
            "<h3>Cases</h3>",
            _table(cases_rows(roi, currency, horizon)),
            "<h3>Sensitivity</h3>",
            _table(sensitivity_rows(roi, currency, horizon)),
        ]
    else:
        parts.append("<p>Not simulated yet: accuracy, alerts and money need a run.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
