"""The HTML page of a load test: plots over time (rates, latency percentiles, lag, CPU and
memory per process), the SLO table and the bottleneck, in one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(timeline: list[dict[str, Any]], key: str, sub: str | None = None) -> list[float]:
    out = []
    for row in timeline:
        v = row.get(key)
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        out.append(float("nan") if v is None else float(v))
    return out


def figure_png(report: dict[str, Any]) -> bytes:
    tl = report.get("timeline", [])
    t = _series(tl, "t")
    fig, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
    ax = axes[0]
    for key, label in (("offered_per_s", "offered"), ("achieved_per_s", "acknowledged by broker"),
                       ("processed_per_s", "processed by worker(s)")):
        ax.plot(t, _series(tl, key), label=label)
    ax.set_ylabel("sightings/s")
    ax.set_title("Rates")
    ax.legend()
    ax = axes[1]
    for kind, style in (("advert_to_position_ms", "-"), ("close_to_position_ms", "--")):
        for p in ("p50", "p90", "p99"):
            ax.plot(t, _series(tl, kind, p), style, label=f"{kind.removesuffix('_ms').replace('_', ' ')} {p}")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles (per second of receipt)")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(t, _series(tl, "lag_batches"), label="unacked + pending batches")
    ax.set_ylabel("batches")
    ax2 = ax.twinx()
    ax2.plot(t, _series(tl, "lag_s"), color="tab:red", label="wall - watermark (s)")
    ax2.set_ylabel("s")
    ax.set_title("Lag")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    names = sorted({n for row in tl for n in row.get("cpu_pct", {})})
    for key, axis, unit in (("cpu_pct", axes[3], "% of one core"), ("rss_mb", axes[4], "MiB resident")):
        for n in names:
            axis.plot(t, [row.get(key, {}).get(n, float("nan")) for row in tl], label=n)
        axis.set_ylabel(unit)
        axis.legend(fontsize=7)
    load_axis = axes[3].twinx()
    load_axis.plot(t, _series(tl, "load_avg_1m"), "k:", label="machine load average (1 min)")
    load_axis.set_ylabel("load average")
    load_axis.legend(loc="upper right", fontsize=7)
    axes[3].set_title("CPU per process")
    axes[4].set_title("Memory per process")
    axes[4].set_xlabel("run time, s")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_html(report: dict[str, Any], out_dir: Path) -> Path:
    png = base64.b64encode(figure_png(report)).decode()
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v.get('bound')}</td><td>{v.get('value')}</td>"
        f"<td class={'pass' if v.get('pass') else 'fail'}>{'PASS' if v.get('pass') else 'FAIL'}</td>"
        f"<td>{html.escape(str(v.get('note', '')))}</td></tr>"
        for k, v in report.get("slo", {}).items()
    )
    keys = ("offered_per_s", "achieved_per_s", "generated", "published", "processed", "dead_lettered", "unprocessed",
            "lost", "latency_ms", "close_to_position_ms", "publish_ack_ms", "latency_floor", "publishers", "workers",
            "backbone", "machine")
    facts = "".join(f"<tr><td>{k}</td><td>{html.escape(str(report.get(k)))}</td></tr>" for k in keys if k in report)
    ramp = report.get("ramp")
    ramp_html = ""
    if ramp:
        ramp_html = "<h2>Ramp</h2><table><tr><th>step</th><th>offered/s</th><th>p99 advert&rarr;pos</th>" \
                    "<th>p99 close&rarr;pos</th><th>load</th><th>verdict</th></tr>" + "".join(
                        f"<tr><td>{s['step']}</td><td>{s['offered_per_s']:,}</td>"
                        f"<td>{s['advert_to_position_ms']['p99']}</td><td>{s['close_to_position_ms']['p99']}</td>"
                        f"<td>{s['load_avg_1m']}</td><td>{'PASS' if s['pass'] else html.escape(s['failed'])}</td></tr>"
                        for s in ramp["steps"]) + \
                    f"</table><p>Highest passing rate: <b>{ramp.get('max_passing_per_s')}</b> sightings/s</p>"
    name = html.escape(str(report.get("scenario")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tagtwin loadtest: {name}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:2px 6px}}
table{{border-collapse:collapse}}.pass{{color:#070}}.fail{{color:#a00;font-weight:bold}}</style></head><body>
<h1>Load test: {html.escape(str(report.get('scenario')))} &mdash; {'PASS' if report.get('pass') else 'FAIL'}</h1>
<p><b>Bottleneck:</b> {html.escape(str(report.get('bottleneck', {}).get('verdict')))}</p>
<h2>SLOs</h2><table><tr><th>SLO</th><th>bound</th><th>value</th><th>result</th><th>note</th></tr>{rows}</table>
<h2>Figures</h2><table>{facts}</table>{ramp_html}
<h2>Over time</h2><img alt="rates, latency, lag, CPU and memory over time" src="data:image/png;base64,{png}">
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
