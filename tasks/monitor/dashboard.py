"""The page a person opens: ``LMOPS_HOME/monitor/dashboard/index.html``, regenerated on every monitor run. One
self-contained file (inline SVG and CSS, no scripts, no network), so it opens from disk, from a shared folder or
as a CI artifact. Sentiment over time per company with spikes marked, top movers, drift status, and the model
version behind every number (hover a point: its bucket, volume and the versions that scored it). The same series
as a PNG (``sentiment.png``) for the Prefect UI."""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmops.tasks.monitor.store import ALL

OVER = '<span class="status bad">over</span>'
TOP = 8  # companies charted (by volume); the rest are in the tables


def _when(ts: float, bucket_s: int) -> str:
    fmt = "%Y-%m-%d" if bucket_s >= 86400 else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(ts, timezone.utc).strftime(fmt)


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _chart(entity: str, buckets: list, spikes: list, bucket_s: int, min_volume: int, span: tuple[float, float], width: int = 560,
           height: int = 170) -> str:
    pad_l, pad_r, pad_t, pad_b = 38, 10, 10, 22
    pts = sorted(buckets, key=lambda b: b.start)
    t0, t1 = span[0], max(span[1], span[0] + bucket_s)  # one time axis for every company

    def x(t: float) -> float:
        return pad_l + (t - t0) / (t1 - t0) * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - (v + 1) / 2) * (height - pad_t - pad_b)

    spike_at = {s.bucket: s for s in spikes}
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="sentiment of {_esc(entity)} over time">']
    for v in (-1, 0, 1):
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid{" zero" if v == 0 else ""}"/>'
                     f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:+d}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 4}" class="axis">{_when(t0, bucket_s)}</text>'
                 f'<text x="{width - pad_r}" y="{height - 4}" class="axis" text-anchor="end">{_when(t1, bucket_s)}</text>')
    line = " ".join(f"{x(b.start):.1f},{y(b.mean):.1f}" for b in pts if b.volume >= min_volume)
    if line:
        parts.append(f'<polyline points="{line}" class="series"/>')
    for b in pts:
        s = spike_at.get(b.start)
        cls = "spike" if s else ("pt" if b.volume >= min_volume else "pt low")
        tip = (f"{_when(b.start, bucket_s)}: mean {b.mean:+.3f} over {b.volume} document(s), {b.neg_share:.0%} negative, "
               f"{b.pos_share:.0%} positive; scored by v{b.versions}" + (f"; SPIKE z = {s.z:+.1f} against {s.baseline:+.3f}" if s else "")
               + ("" if b.volume >= min_volume else f" (under monitor.spikes.min_volume = {min_volume})"))
        r = 6 if s else 3
        parts.append(f'<circle cx="{x(b.start):.1f}" cy="{y(b.mean):.1f}" r="{r}" class="{cls}" data-bucket="{_esc(_when(b.start, bucket_s))}">'
                     f"<title>{_esc(tip)}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#14213d;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;opacity:.85}
main{padding:16px 24px;display:grid;gap:16px;grid-template-columns:repeat(auto-fill,minmax(600px,1fr))}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px}section.wide{grid-column:1/-1}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:4px 0}table{border-collapse:collapse;width:100%}
td,th{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600}.ok{background:#d9f2e3;color:#146c3b}
.bad{background:#fde0dc;color:#a4161a}.unknown{background:#e5e7eb;color:#374151}.muted{color:#6b7280}.neg{color:#a4161a}.posv{color:#146c3b}
svg.chart{max-width:100%;height:auto}.grid{stroke:#e5e7eb}.grid.zero{stroke:#9ca3af;stroke-dasharray:3 3}
.axis{font-size:10px;fill:#6b7280}.series{fill:none;stroke:#2563eb;stroke-width:2}.pt{fill:#2563eb}.pt.low{fill:#cbd5e1}
.spike{fill:#dc2626;stroke:#fff;stroke-width:2}
"""


def render(p, a: dict[str, Any], alerts: list[dict[str, Any]], scorer, out_dir: Path) -> dict[str, Path]:
    """Write ``index.html`` and ``sentiment.png`` into ``out_dir`` (atomically: a reader never sees half a page)."""
    m = p.monitor
    bucket_s = m.bucket_s
    series, spikes, drift, totals = a["series"], a["spikes"], a["drift"], a["totals"]
    by_entity: dict[str, list] = {}
    for s in spikes:
        by_entity.setdefault(s.entity, []).append(s)
    ranked = sorted((e for e in series if e != ALL), key=lambda e: -sum(b.volume for b in series[e]))
    charted = ([ALL] if ALL in series else []) + ranked[:TOP]
    versions = ", ".join(f"{_esc(v['model'])} v{_esc(v['version'])} ({v['n']} docs)" for v in totals["versions"]) or "none yet"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    state = ("bad", "DRIFT") if drift.drifted else (("ok", "no drift") if drift.checks else ("unknown", "no verdict"))
    status = f'<span class="status {state[0]}" id="drift-status">{state[1]}</span>'
    span = (min(b.start for e in charted for b in series[e]), max(b.start for e in charted for b in series[e])) if charted else None
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>lmops monitor: {_esc(scorer.name)}</title>"
           f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>",
           f"<header><h1>Finance sentiment monitor — {_esc(scorer.name)}</h1><p>Scoring now: <b id=champion>{_esc(scorer.name)} "
           f"v{_esc(scorer.version)}</b> (alias <code>{_esc(m.alias)}</code>) · documents by model version: {versions} · "
           f"{totals['documents']} documents, {totals['mentions']} company mentions of {totals['entities']} companies · "
           f"buckets of {_esc(m.bucket)} · score = P({_esc(m.positive_label)}) − P({_esc(m.negative_label)}) · generated {generated}</p></header><main>"]
    out.append(f'<section class=wide id=drift><h2>Drift {status}</h2><p>{_esc(drift.verdict)}</p><table><tr><th>check</th>'
               '<th class=num>value</th><th class=num>threshold</th><th>param</th><th></th></tr>')
    for c in drift.checks:
        v, t = (" · ".join(f"{k} {x:.2f}" for k, x in y.items()) if isinstance(y, dict) else y for y in (c["value"], c["threshold"]))
        out.append(f"<tr><td>{_esc(c['check'])}</td><td class=num>{_esc(v)}</td><td class=num>{_esc(t)}</td><td><code>{_esc(c['param'])}</code></td>"
                   f"<td>{OVER if c['drifted'] else ''}</td></tr>")
    out.append("</table></section>")
    out.append('<section id=alerts><h2>Spikes</h2>' + ("<table><tr><th>company</th><th>bucket</th><th class=num>z</th><th class=num>mean</th>"
               "<th class=num>baseline</th><th class=num>docs</th><th>model</th></tr>" + "".join(
                   f"<tr class=alert><td>{_esc(r['entity'])}</td><td>{_esc(_when(r['bucket'], bucket_s))}</td>"
                   f"<td class='num {'neg' if r['z'] < 0 else 'posv'}'>{r['z']:+.1f}</td><td class=num>{r['mean']:+.3f}</td>"
                   f"<td class=num>{r['baseline']:+.3f}</td><td class=num>{r['volume']}</td><td>v{_esc(r['versions'])}</td></tr>"
                   for r in alerts[:30]) + "</table>" if alerts else "<p class=muted>No spikes so far.</p>") + "</section>")
    out.append('<section id=movers><h2>Top movers (latest bucket against its baseline)</h2>' + (
        "<table><tr><th>company</th><th>bucket</th><th class=num>mean</th><th class=num>change</th><th class=num>z</th><th class=num>docs</th>"
        "<th>model</th></tr>" + "".join(
            f"<tr class=mover><td>{_esc(r['entity'])}</td><td>{_esc(_when(r['bucket'], bucket_s))}</td><td class=num>{r['mean']:+.3f}</td>"
            f"<td class='num {'neg' if r['change'] < 0 else 'posv'}'>{r['change']:+.3f}</td><td class=num>{r['z']:+.1f}</td>"
            f"<td class=num>{r['volume']}</td><td>v{_esc(r['versions'])}</td></tr>" for r in a["movers"]) + "</table>"
        if a["movers"] else "<p class=muted>Not enough history yet.</p>") + "</section>")
    for e in charted:
        vol = sum(b.volume for b in series[e])
        out.append(f'<section class=company data-entity="{_esc(e)}"><h3>{_esc(e)} <span class=muted>· {vol} documents · '
                   f'{len(by_entity.get(e, []))} spike(s)</span></h3>{_chart(e, series[e], by_entity.get(e, []), bucket_s, m.spikes.min_volume, span)}</section>')
    if not charted:
        out.append("<section class=wide><p class=muted>Nothing scored yet: <code>lmops monitor score --input FILE</code>.</p></section>")
    out.append("</main></body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    tmp = out_dir / f".index.{os.getpid()}.html"
    tmp.write_text("".join(out), encoding="utf-8")
    os.replace(tmp, page)
    png = plot(series, by_entity, charted, bucket_s, m.spikes.min_volume, out_dir / "sentiment.png", f"{scorer.name}: sentiment per company")
    return {"html": page, "png": png}


def plot(series: dict, spikes: dict, entities: list[str], bucket_s: int, min_volume: int, path: Path, title: str) -> Path:
    from lmops.tasks.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for e in entities[:6]:
        pts = sorted((b for b in series[e] if b.volume >= min_volume), key=lambda b: b.start)
        if not pts:
            continue
        xs = [datetime.fromtimestamp(b.start, timezone.utc) for b in pts]
        line = ax.plot(xs, [b.mean for b in pts], marker="o", markersize=3, label=e)[0]
        sp = [s for s in spikes.get(e, [])]
        if sp:
            ax.scatter([datetime.fromtimestamp(s.bucket, timezone.utc) for s in sp], [s.mean for s in sp], s=90, facecolors="none",
                       edgecolors="red", linewidths=2, zorder=5)
            line.set_label(f"{e} ({len(sp)} spike{'s' if len(sp) > 1 else ''}, circled)")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("mean sentiment score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    fig.autofmt_xdate()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


