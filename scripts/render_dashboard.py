"""Draw docs/dashboard.png: the Grafana dashboard rendered from live data, without Grafana.

Starts the live stack of tests/deliverables/stack.py (a throwaway PostgreSQL with tagged sessions, `pgparent run`,
Prometheus scraping it every second), adds some churn for a while so the graphs have shape (a hash aggregate that
grows its group's private memory among them), queries every panel target over the run with the stack's group and core
count chosen, and draws the panels with matplotlib where the dashboard's 24-column grid puts them, in Grafana's dark
theme: titles, axes in each panel's unit, stacks with their reference lines apart, table legends (Last *, Max) sorted
as configured, stat tiles coloured by their value mappings and thresholds.

Usage: .venv/bin/python scripts/render_dashboard.py [--seconds 75] [--output docs/dashboard.png]
(--help for the rest).
Needs matplotlib (the bench extra, which scripts/bench installs: .venv/bin/python -m pip install -e '.[bench]') and
`prometheus` (Debian package). Everything temporary lives in a fresh directory under $TMPDIR.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FixedLocator, FuncFormatter
    from matplotlib.transforms import IdentityTransform
except ModuleNotFoundError:
    raise SystemExit("matplotlib is missing: .venv/bin/python -m pip install -e '.[bench]'") from None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.core.settings import DEFAULT_TARGET  # noqa: E402
from tests.deliverables.grafana import load_dashboard, panels, substitute  # noqa: E402 - needs ROOT on sys.path
from tests.deliverables.stack import CORES, JOB, LOCK_KEY, LONG_QUERY, PARENT, LiveStack, live_stack  # noqa: E402
from tests.support.servers import make_server  # noqa: E402

WIDTH = 1600
DPI = 100
"""The figure's pixels per inch: the layout below is in pixels, and the PNG is WIDTH pixels wide."""
PAD = 12
HEADER = 86
ROW = 34
GAP = 8
STEP = 1.0
RATE_INTERVAL = "15s"

HASH_AGGREGATE = "SELECT count(*) FROM (SELECT g, count(*) FROM generate_series(1, 4000000) g GROUP BY g) s"
"""analytics:5's statement: a hash aggregate that holds a few hundred MB of private memory for a few seconds."""

BG, PANEL_BG, BORDER, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9a", "#25282d"
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0", "#37872D",
           "#FADE2A", "#447EBC", "#C15C17", "#FF9830", "#96D98D", "#CA95E5", "#FFB357"]
NAMED_COLORS = {"green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "blue": "#5794F2"}


@dataclass
class Series:
    name: str
    ref: str
    points: dict[float, float]
    color: str = ""
    dash: bool = False
    fill: float = 0.0
    stacked: bool = False


@dataclass
class PanelData:
    panel: dict[str, Any]
    series: list[Series] = field(default_factory=list)


# -- scenario --------------------------------------------------------------------------------------------------------

def churn(stack: LiveStack, seconds: float) -> None:
    """Give the graphs shape: groups come and go, runaway-1001 kills in bursts, the etl group grows and queues, a
    hash aggregate grows its group's memory and uses a core."""
    clients, app = stack.clients, stack.app_dsn
    lock = "SELECT pg_advisory_xact_lock({}, {})".format(*LOCK_KEY)
    events: list[tuple[float, str, int]] = [
        (5, "report", 4), (8, "kill", 2), (18, "etl", 1), (21, "kill", 4), (27, "kill", 1), (28, "batch", 3),
        (34, "waiter", 1), (38, "hash", 1), (40, "etl", 1), (46, "kill", 3), (48, "untagged", 1), (55, "web", 1),
        (58, "hash", 2), (63, "kill", 2),
    ]
    t0 = time.monotonic()
    for at, what, n in events:
        if at >= seconds:
            continue
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        if what == "kill":
            clients.start("FakeParent:1001", LONG_QUERY, n=n, dsn=app)
        elif what == "report":
            clients.start("report:9", "SELECT pg_sleep(36)", n=n, dsn=app)  # a group that finishes on its own
        elif what == "etl":
            clients.start("etl:42:worker", LONG_QUERY, n=n, dsn=app)
        elif what == "waiter":
            clients.start("etl:42:waiter", lock, n=n, dsn=app)
        elif what == "batch":
            clients.start("batch:7", LONG_QUERY, n=n, dsn=app)
        elif what == "hash":
            clients.start("analytics:5", HASH_AGGREGATE, n=n, dsn=app, setup="SET work_mem = '1GB'")
        elif what == "untagged":
            stack.held.open(app, "psql")
        elif what == "web":
            stack.held.open(app, "app:web")
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))


def fetch(stack: LiveStack, start: float, end: float) -> list[PanelData]:
    out: list[PanelData] = []
    for panel in panels(load_dashboard()):
        data = PanelData(panel)
        for target in panel.get("targets", []):
            # The daemon's one target selected, as LiveStack.expr does: left at its ".+" default, `literal` would
            # escape it into a selector that matches nothing.
            expr = substitute(target["expr"], job=JOB, instance=stack.instance, rate_interval=RATE_INTERVAL,
                              target=DEFAULT_TARGET, parent=PARENT, cores=CORES, literal=True)
            result = stack.prometheus.query_range(expr, start, end, STEP)
            for r in result:
                data.series.append(Series(
                    _legend(target.get("legendFormat", ""), r["metric"], expr), target["refId"],
                    {float(ts): float(v) for ts, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")},
                ))
            print(f"panel {panel['id']:2} {target['refId']} {len(result):2} series  {panel['title']}")
        out.append(data)
    return out


def _legend(fmt: str, labels: dict[str, str], expr: str) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else expr
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


# -- formatting ------------------------------------------------------------------------------------------------------

def fmt_value(v: float, unit: str, decimals: int | None = None) -> str:
    if unit in ("bool_yes_no", "bool"):
        return "yes" if v else "no"
    if unit == "bytes":  # Grafana's "bytes (IEC)"
        for power, suffix in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
            if abs(v) >= 1024**power:
                return f"{_num(v / 1024**power, decimals)} {suffix}"
        return f"{_num(v, decimals)} B"
    if unit == "s":
        if v == 0:
            return "0 s"
        for limit, div, suffix in ((1e-3, 1e-6, "µs"), (1, 1e-3, "ms"), (60, 1, "s"), (3600, 60, "min"),
                                   (86400, 3600, "hour")):
            if abs(v) < limit:
                return f"{_num(v / div, decimals)} {suffix}"
        return f"{_num(v / 86400, decimals)} day"
    text = _num(v, decimals)
    return f"{text} ops/s" if unit == "ops" else text


def _num(v: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{v:.{decimals}f}"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    if abs(v) >= 1000:
        return f"{v / 1000:.3g}K"
    return f"{v:.3g}"


def nice_ticks(top: float, unit: str, count: int = 4) -> list[float]:
    """0 and round steps up to at least `top`; durations above a minute step in whole quarter minutes and up."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    if unit == "s" and raw >= 10:
        step = next((s for s in (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200) if s >= raw), 3600 * 6)
    elif unit == "bytes" and raw >= 1024:  # steps round in the IEC unit the axis shows (256 MiB, 1 GiB, ...)
        scale = 1024 ** min(4, int(math.log(raw, 1024)))
        mag = 10 ** math.floor(math.log10(raw / scale))
        step = scale * next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw / scale)
    else:
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


# -- drawing ---------------------------------------------------------------------------------------------------------

def pt(px: float) -> float:
    """A size in pixels (fonts, line widths, as the layout is measured) in matplotlib's points."""
    return px * 72 / DPI


class Page:
    """A matplotlib figure addressed in pixels from its top-left corner, as the dashboard's grid is laid out."""

    def __init__(self, width: int, height: int) -> None:
        self.fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=BG)
        self.width, self.height = width, height

    def _frac(self, x: float, y: float) -> tuple[float, float]:
        return x / self.width, 1 - y / self.height

    def text(self, x: float, y: float, text: str, size: float, color: str = TEXT, *, anchor: str = "left",
             bold: bool = False) -> None:
        """Text whose baseline starts (or, by `anchor`, is centred or ends) at (x, y)."""
        self.fig.text(*self._frac(x, y), text, color=color, fontsize=pt(size), ha=anchor, va="baseline",
                      fontweight="bold" if bold else "normal")

    def rect(self, x: float, y: float, w: float, h: float, fill: str, *, edge: str | None = None,
             radius: float = 3.0) -> None:
        # Drawn in display pixels (the figure's dpi is the output's), so rounded corners stay round; beneath the
        # charts' axes (zorder 0), which a panel's background would otherwise cover.
        box = FancyBboxPatch((x, self.height - y - h), w, h, boxstyle=f"round,pad=0,rounding_size={radius}",
                             transform=IdentityTransform(), facecolor=fill, edgecolor=edge or "none",
                             linewidth=pt(1), zorder=-1)
        self.fig.patches.append(box)

    def axes(self, x: float, y: float, w: float, h: float) -> Axes:
        left, top = self._frac(x, y)
        ax = self.fig.add_axes((left, top - h / self.height, w / self.width, h / self.height))
        ax.set_facecolor("none")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(length=0, labelcolor=MUTED, labelsize=pt(11), pad=pt(6))
        ax.grid(color=GRID, linewidth=pt(1))
        ax.set_axisbelow(True)
        return ax

    def no_data(self, x: float, y: float, w: float, h: float) -> None:
        self.text(x + w / 2, y + h / 2, "No data", 14, MUTED, anchor="center")


def _override(panel: dict[str, Any], ref: str, prop: str) -> Any:
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        if o["matcher"]["id"] == "byFrameRefID" and o["matcher"]["options"] == ref:
            for p in o["properties"]:
                if p["id"] == prop:
                    return p["value"]
    return None


def _style(data: PanelData) -> None:
    defaults = data.panel["fieldConfig"]["defaults"]
    fill = defaults.get("custom", {}).get("fillOpacity", 0)
    data.series.sort(key=lambda s: (s.ref, s.name))
    for i, s in enumerate(data.series):
        s.color = PALETTE[i % len(PALETTE)]
        color = _override(data.panel, s.ref, "color")
        if color and color.get("mode") == "fixed":
            s.color = NAMED_COLORS.get(color["fixedColor"], color["fixedColor"])
        s.dash = bool(_override(data.panel, s.ref, "custom.lineStyle"))
        own_fill = _override(data.panel, s.ref, "custom.fillOpacity")
        s.fill = (own_fill if own_fill is not None else fill) / 100
        # A reference line (the cores, host memory available) overrides the panel's stacking: drawn on its own.
        stacking = _override(data.panel, s.ref, "custom.stacking") or defaults.get("custom", {}).get("stacking", {})
        s.stacked = stacking.get("mode") == "normal"


def draw_timeseries(page: Page, data: PanelData, x: float, y: float, w: float, h: float, t0: float,
                    t1: float) -> None:
    panel = data.panel
    defaults = panel["fieldConfig"]["defaults"]
    unit, decimals = defaults.get("unit", "short"), defaults.get("decimals")
    legend = panel.get("options", {}).get("legend", {})
    _style(data)
    if not data.series:
        page.no_data(x, y, w, h)
        return

    # The stack's steps: those of the stacked series (a reference line apart may be sampled elsewhere).
    times = sorted({t for s in data.series if s.stacked for t in s.points})
    lower: dict[int, dict[float, float]] = {}
    upper: dict[int, dict[float, float]] = {}
    base = dict.fromkeys(times, 0.0)
    for i, s in enumerate(data.series):
        lower[i], upper[i] = {}, {}
        # Stacked, a missing point counts as 0 (as Grafana stacks nulls), so the areas above stay closed.
        for t in times if s.stacked else sorted(s.points):
            v = s.points.get(t, 0.0)
            lo = base[t] if s.stacked else 0.0
            lower[i][t], upper[i][t] = lo, lo + v
            if s.stacked:
                base[t] = lo + v
    top = max((v for u in upper.values() for v in u.values()), default=1.0)
    ticks = nice_ticks(top * 1.05 if top > 0 else 1.0, unit)

    # Legend: a table at the bottom, or on the right.
    right = legend.get("placement") == "right"
    line_h = 16
    calcs = legend.get("calcs", [])
    if right:
        lw = min(340.0, w * 0.36)
        plot_x, plot_y, plot_w, plot_h = x + 58, y + 6, w - lw - 70, h - 30
        lx, ly, max_rows = x + w - lw, y + 4, int((h - 24) // line_h)
    else:
        max_rows = max(1, min(len(data.series), int((h * 0.42) // line_h) - 1))
        legend_h = (max_rows + 1) * line_h + 6
        plot_x, plot_y, plot_w, plot_h = x + 58, y + 6, w - 70, h - legend_h - 26
        lx, ly, lw = x + 8, y + h - legend_h + 4, w - 16

    ax = page.axes(plot_x, plot_y, plot_w, plot_h)
    ax.set_xlim(t0, t1)
    ax.set_ylim(0, ticks[-1])
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: fmt_value(v, unit, decimals if decimals is not None and v == int(v) else None)))
    ax.xaxis.set_major_locator(FixedLocator(range(math.ceil(t0 / 15) * 15, int(t1) + 1, 15)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: datetime.fromtimestamp(t).strftime("%H:%M:%S")))

    for i, s in enumerate(data.series):
        if s.fill > 0:
            for seg in _segments(sorted(upper[i]), STEP):
                ax.fill_between(seg, [lower[i][t] for t in seg], [upper[i][t] for t in seg], color=s.color,
                                alpha=s.fill, linewidth=0)
        for seg in _segments(sorted(s.points), STEP):
            values = [upper[i][t] for t in seg]
            if len(seg) == 1:
                ax.plot(seg, values, "o", color=s.color, markersize=pt(3), markeredgewidth=0)
            else:
                # Dashes of 7 and gaps of 5 pixels, as Grafana's dashed line style (in units of the line's width).
                style: str | tuple[float, tuple[float, float]] = (0, (7 / 1.5, 5 / 1.5)) if s.dash else "-"
                ax.plot(seg, values, color=s.color, linewidth=pt(1.5), linestyle=style, solid_joinstyle="round")

    # The legend table: name, then Last * and Max as Grafana's table legend shows them, sorted as configured.
    cols = [("Last *" if c == "lastNotNull" else c.title()) for c in calcs]
    legend_rows = list(data.series)
    if legend.get("sortBy") in cols:
        calc = calcs[cols.index(legend["sortBy"])]
        legend_rows.sort(key=lambda s: _calc(s, calc), reverse=bool(legend.get("sortDesc")))
    col_w = 78.0
    name_w = lw - col_w * len(cols) - 20
    for j, c in enumerate(cols):
        page.text(lx + 20 + name_w + col_w * (j + 1) - 4, ly + 11, c, 11, MUTED, anchor="right")
    shown = legend_rows if len(legend_rows) <= max_rows else legend_rows[: max_rows - 1]
    for k, s in enumerate(shown):
        yy = ly + (k + 1) * line_h + 11
        page.rect(lx, yy - 7, 14, 4, s.color, radius=1)
        page.text(lx + 20, yy, _clip(s.name, name_w), 12)
        for j, c in enumerate(calcs):
            page.text(lx + 20 + name_w + col_w * (j + 1) - 4, yy, fmt_value(_calc(s, c), unit, decimals), 12,
                      anchor="right")
    if len(shown) < len(data.series):
        page.text(lx + 20, ly + (len(shown) + 1) * line_h + 11, f"… and {len(data.series) - len(shown)} more", 12,
                  MUTED)


def _calc(s: Series, calc: str) -> float:
    values = [v for _, v in sorted(s.points.items())]
    return values[-1] if calc == "lastNotNull" else max(values)


def _clip(text: str, width: float, char_w: float = 6.6) -> str:
    n = max(4, int(width // char_w))
    return text if len(text) <= n else text[: n - 1] + "…"


def _segments(ts: list[float], step: float) -> list[list[float]]:
    """Runs of consecutive steps: a missing point breaks the line, as Grafana draws nulls."""
    segs: list[list[float]] = []
    for t in ts:
        if segs and t - segs[-1][-1] <= step * 1.5:
            segs[-1].append(t)
        else:
            segs.append([t])
    return segs


def draw_stat(page: Page, data: PanelData, x: float, y: float, w: float, h: float) -> None:
    panel = data.panel
    defaults = panel["fieldConfig"]["defaults"]
    data.series.sort(key=lambda s: (s.ref, s.name))
    if not data.series:
        page.no_data(x, y, w, h)
        return
    n = len(data.series)
    horizontal = panel.get("options", {}).get("orientation") == "horizontal"
    for i, s in enumerate(data.series):
        value = list(s.points.values())[-1] if s.points else float("nan")
        mappings = _override(panel, s.ref, "mappings") or defaults.get("mappings", [])
        thresholds = _override(panel, s.ref, "thresholds") or defaults.get("thresholds", {})
        text, color = fmt_value(value, defaults.get("unit", "none")), None
        for m in mappings:
            hit = m.get("options", {}).get(str(int(value))) if value == value else None
            if m.get("type") == "value" and hit:
                text, color = hit.get("text", text), hit.get("color")
        if color is None:
            for st in thresholds.get("steps", []):
                if st["value"] is None or value >= st["value"]:
                    color = st["color"]
        fill = NAMED_COLORS.get(color or "green", color or "#73BF69")
        if horizontal:  # one row per value: the name on the left, the value on the right
            row_h = (h - 8 - 6 * (n - 1)) / n
            ty = y + 2 + i * (row_h + 6)
            page.rect(x + 8, ty, w - 16, row_h, fill)
            size = min(30.0, row_h * 0.62)
            page.text(x + 20, ty + row_h / 2 + 5, _clip(s.name, w - 120, 7.8), 14, "#ffffff")
            page.text(x + w - 22, ty + row_h / 2 + size * 0.36, text, size, "#ffffff", anchor="right", bold=True)
            continue
        tile_w = (w - 8 * (n + 1)) / n
        tx = x + 8 + i * (tile_w + 8)
        page.rect(tx, y + 4, tile_w, h - 12, fill)
        page.text(tx + tile_w / 2, y + 4 + (h - 12) * 0.36, _clip(s.name, tile_w - 8, 6.8), 12, "#ffffff",
                  anchor="center")
        page.text(tx + tile_w / 2, y + 4 + (h - 12) * 0.72, text, min(40, tile_w / 3.2), "#ffffff", anchor="center",
                  bold=True)


def render(datas: list[PanelData], t0: float, t1: float, instance: str) -> Page:
    """The dashboard as Grafana lays it out: a header with the variables, then each panel on the 24-column grid."""
    col = (WIDTH - 2 * PAD) / 24
    bottom = max(d.panel["gridPos"]["y"] + d.panel["gridPos"]["h"] for d in datas)
    page = Page(WIDTH, int(HEADER + bottom * ROW + PAD))
    page.text(PAD + 4, 30, "pgparent", 20, bold=True)
    page.text(WIDTH - PAD - 4, 30, f"Last {round(t1 - t0)} s · refresh 30s · "
              f"UTC{datetime.now().astimezone().strftime('%z')}", 13, MUTED, anchor="right")
    cx = PAD + 4.0
    chips = (("Data source", "Prometheus"), ("Job", JOB), ("Instance", instance), ("Target", DEFAULT_TARGET),
             ("Group", PARENT), ("Server CPU cores", CORES))
    for label, value in chips:
        wl, wv = 8 + 7.2 * len(label), 14 + 7.2 * len(value)
        page.rect(cx, 46, wl + wv, 26, PANEL_BG, edge=BORDER, radius=2)
        page.rect(cx, 46, wl, 26, "#22252b", radius=2)
        page.text(cx + 6, 63, label, 12)
        page.text(cx + wl + 7, 63, value, 12)
        cx += wl + wv + 10
    page.text(WIDTH - PAD - 4, 63, "drawn from live Prometheus data by scripts/render_dashboard.py", 12, MUTED,
              anchor="right")
    for d in datas:
        g = d.panel["gridPos"]
        x, y = PAD + g["x"] * col + GAP / 2, HEADER + g["y"] * ROW + GAP / 2
        w, h = g["w"] * col - GAP, g["h"] * ROW - GAP
        page.rect(x, y, w, h, PANEL_BG, edge=BORDER)
        page.text(x + 10, y + 20, d.panel["title"].replace("$parent", PARENT), 14, bold=True)
        body_y, body_h = y + 28, h - 32
        if d.panel["type"] == "stat":
            draw_stat(page, d, x, body_y, w, body_h)
        else:
            draw_timeseries(page, d, x, body_y, w, body_h, t0, t1)
    return page


def html_page(page: Page) -> str:
    """The picture as an HTML page of one inline SVG (--keep-html)."""
    svg = io.StringIO()
    page.fig.savefig(svg, format="svg", dpi=DPI, facecolor=BG)
    text = svg.getvalue()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>pgparent dashboard</title>"
            f"<style>html,body{{margin:0;padding:0;background:{BG}}}</style></head><body>"
            + text[text.index("<svg"):] + "</body></html>")


def _save(path: Path, datas: list[PanelData], start: float, end: float, instance: str) -> None:
    series = {d.panel["id"]: [{"name": s.name, "ref": s.ref, "points": sorted(s.points.items())} for s in d.series]
              for d in datas}
    doc = {"start": start, "end": end, "instance": instance,
           "panels": [{"id": pid, "series": s} for pid, s in series.items()]}
    path.write_text(json.dumps(doc))


def _load(path: Path) -> tuple[list[PanelData], float, float, str]:
    """Data saved by --save-data, drawn on the current dashboard JSON (panels matched by id)."""
    doc = json.loads(path.read_text())
    saved = {p["id"]: p["series"] for p in doc["panels"]}
    datas = [PanelData(panel, [Series(s["name"], s["ref"], dict(s["points"])) for s in saved.get(panel["id"], [])])
             for panel in panels(load_dashboard())]
    return datas, doc["start"], doc["end"], doc["instance"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=75.0, help="how long the stack runs before the picture")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--keep-html", type=Path, metavar="FILE",
                        help="also write the picture here as an HTML page (inline SVG)")
    parser.add_argument("--save-data", type=Path, metavar="FILE", help="also write the queried data here (JSON)")
    parser.add_argument("--from-data", type=Path, metavar="FILE",
                        help="draw data saved by --save-data instead of running the stack (to work on the drawing)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pgparent-render-"))
    try:
        if args.from_data:
            datas, start, end, instance = _load(args.from_data)
        else:
            server = make_server()
            try:
                with live_stack(server, tmp) as stack:
                    start = time.time()
                    churn(stack, args.seconds)
                    end = time.time()
                    datas, instance = fetch(stack, start, end), stack.instance
            finally:
                server.destroy()
            if args.save_data:
                _save(args.save_data, datas, start, end, instance)
        page = render(datas, start, end, instance)
        if args.keep_html:
            args.keep_html.write_text(html_page(page), encoding="utf-8")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.fig.savefig(args.output, dpi=DPI, facecolor=BG)
        print(f"wrote {args.output} ({page.width}x{page.height})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
