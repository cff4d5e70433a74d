"""docs/BENCHMARKS.md from results.json: the prose is bench/BENCHMARKS.md.tmpl, the figures come from the results
(and, where a figure is compared with an earlier one, from the earlier run the results keep under `previous`), the
goals' verdicts from bench/goals.py. This module only chooses which of the template's blocks the figures call for
and fills them (the fleet's section: bench/report_fleet.py). Also the plot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.goals import Outcome, by_key, evaluate, figures
from bench.report_fleet import fleet_section
from bench.template import ABSENT, Blocks, g, joined, seconds, verdict


def _rows(b: Blocks, name: str, rows: list[dict[str, Any]]) -> str:
    return "\n".join(b(name, **row) for row in rows)


def _sizes_row(r: dict[str, Any]) -> dict[str, Any]:
    peer = ("postgres_exporter_scrape_ms", "postgres_exporter_cpu_ms_per_scrape",
            "postgres_exporter_over_pgparent_metrics", "postgres_exporter_rss_mb")
    return dict.fromkeys(peer, "-") | r


def _comparisons(b: Blocks, results: dict[str, Any]) -> dict[str, str]:
    """The "it was" clauses against the earlier run kept under `previous`, where it measured the same thing."""
    out = dict.fromkeys(("was_poll", "was_metrics", "was_rss", "was_synthetic"), "")
    out["compared"] = ABSENT
    earlier = results.get("previous")
    if not earlier:
        return out
    now, then = figures(results), figures(earlier)
    out["compared"] = b("compared", date=earlier["date"])
    if then.get("poll_n") == now.get("poll_n") and "poll_over_floor" in then:
        out["was_poll"] = b("was_ratio", was=then["poll_over_floor"])
    if then.get("sizes_n") == now.get("sizes_n") and "metrics_ratios" in then:
        out["was_metrics"] = b("was", was=joined(then["metrics_ratios"], "x"))
    if then.get("rss_n") == now.get("rss_n") and "rss_mb" in then:
        out["was_rss"] = b("was_mb", was=then["rss_mb"])
    if "synthetic_ms" in then:
        out["was_synthetic"] = b("was_synthetic", ms=f"{then['synthetic_ms']:.1f}",
                                 growth=f"{then['synthetic_growth']:.2f}")
    return out


def core_notes(b: Blocks, results: dict[str, Any], goals: dict[str, Outcome]) -> dict[str, Any]:
    """The placeholders of "Reading the figures"."""
    figs = figures(results)
    out: dict[str, Any] = {"goal_poll": verdict(b, goals["poll"]), "goal_memory": verdict(b, goals["memory"]),
                           **{k: figs[k] for k in ("poll_over_floor", "poll_min", "poll_max", "rss_mb", "rss_n")},
                           **_comparisons(b, results)}
    out["metrics_note"] = ABSENT
    if "metrics" in goals:
        out["metrics_note"] = b("metrics_note", goal_metrics=verdict(b, goals["metrics"]),
                                ratios=joined(figs["metrics_ratios"], "x"),
                                sizes=", ".join(map(str, figs["sizes_n"])), was_metrics=out["was_metrics"])
    out["memory_above"] = ABSENT if goals["memory"].met else b("memory_above")
    out["synthetic_note"] = ABSENT
    if "synthetic" in goals:
        growth = figs["synthetic_growth"]
        out["synthetic_note"] = b("synthetic_note", goal_synthetic=verdict(b, goals["synthetic"]),
                                  ms=figs["synthetic_ms"], growth=f"{growth:.2f}", was_synthetic=out["was_synthetic"],
                                  caches=b("synthetic_caches") if growth > 1.05 else "")
    return out


def deadlines_section(b: Blocks, rows: list[dict[str, Any]]) -> str:
    return b("deadlines", rows=_rows(b, "deadlines.row", [
        r | {"interval": g(r["interval_s"]), "limit": g(r["limit_s"]),
             "deadlines": b("deadlines.on" if r["deadlines"] else "deadlines.off")} for r in rows]))


def locks_section(b: Blocks, rows: list[dict[str, Any]]) -> str:
    return b("locks", sessions=rows[0]["sessions"], rows=_rows(b, "locks.row", rows))


def handover_section(b: Blocks, h: dict[str, Any]) -> str:
    join, kill = h["join"], h["kill"]
    return b("handover", replicas=h["replicas"], targets=h["targets"], interval=g(h["interval_s"]),
             spread_after_join=seconds(b, join["spread_after_join_s"]), join_spread=joined(join["spread"]),
             longest_unled=g(join["longest_without_leader_s"]), orphaned=kill["orphaned"],
             led_again=seconds(b, kill["all_led_again_s"]), kill_spread=joined(kill["spread"]))


def _pct(value: float) -> str:
    return f"{value + 0.0:+g}"  # + 0.0: never "-0"


def cost_section(b: Blocks, c: dict[str, Any]) -> str:
    proc, load, stats = c["proc"], c["load"], c.get("backend_stats")
    backend = ABSENT
    if stats:
        backend = b("cost.backend_stats", postgresql=stats["postgresql"], sessions=stats["sessions"],
                    off_ms=stats["off"]["cycle_ms"], on_ms=stats["on"]["cycle_ms"],
                    on_pct=_pct(stats["on"]["added_pct"]), every_ms=stats["on_every"]["cycle_ms"],
                    every_pct=_pct(stats["on_every"]["added_pct"]),
                    read_on=stats["on"]["read_per_poll"], read_every=stats["on_every"]["read_per_poll"])
    return b("cost", postgresql=proc["postgresql"], sessions=proc["sessions"], rounds=proc["rounds"],
             none_ms=proc["none"]["cycle_ms"], none_pct=_pct(proc["none"]["added_pct"]), off_ms=proc["off"]["cycle_ms"],
             on_ms=proc["on"]["cycle_ms"], on_pct=_pct(proc["on"]["added_pct"]), every_ms=proc["on_every"]["cycle_ms"],
             every_pct=_pct(proc["on_every"]["added_pct"]), read_on=proc["on"]["read_per_poll"],
             read_every=proc["on_every"]["read_per_poll"], backend_stats=backend, n=load["sessions"],
             seconds=g(load["seconds"]), interval=g(load["interval_s"]), load_postgresql=load["postgresql"],
             counter=load["counter_s"], statements=load["statements_s"], active=load["active_time_s"],
             vs_statements=_pct(load["vs_statements_pct"]), vs_active=_pct(load["vs_active_time_pct"]))


def top_section(b: Blocks, t: dict[str, Any]) -> str:
    return b("top", sessions=t["sessions"], groups=t["tagged_groups"], postgresql=t["postgresql"],
             interval=g(t["interval_s"]), terminal=t["terminal"], window=g(t["window_s"]), cpu=t["cpu_pct"],
             refreshes=t["refreshes"], rss=t["rss_mb"])


def guards_section(b: Blocks, gd: dict[str, Any], postgresql: Any) -> str:
    r, sm, sh = gd["runaway"], gd["sampler"], gd["short_limit"]
    return b("guards", postgresql=postgresql, growth=g(r["growth_mb_s"]), limit=g(r["limit_mb"]),
             interval=g(r["interval_s"]), sample_ms=r["sample_interval_ms"], trials=r["trials"],
             p50=r["cross_to_cancel_p50_ms"], p95=r["cross_to_cancel_p95_ms"], max=r["cross_to_cancel_max_ms"],
             mem_p95=r["memory_at_cancel_p95_mb"], mem_max=r["memory_at_cancel_max_mb"], window=g(sm["window_s"]),
             sessions=sm["sessions"], samples=g(sm["samples"]), with_pct=sm["cpu_pct_with"],
             without_pct=sm["cpu_pct_without"], sampler_pct=_pct(sm["sampler_pct"]), short_limit=g(sh["limit_s"]),
             short_interval=g(sh["interval_s"]), cadence=g(sh["limit_s"] / 2), short_trials=sh["trials"],
             short_p50=sh["p50_ms"], short_p95=sh["p95_ms"], short_max=sh["max_ms"],
             fast_cpu=sh["server_cpu_ms_per_min"], slow_cpu=sh["server_cpu_ms_per_min_at_interval"],
             idle=sh["idle_sessions"], polls=g(sh["polls"]))


def goal_rows(b: Blocks, results: dict[str, Any]) -> str:
    return "\n".join(b("goals.row", goal=o.text, measured=o.shown, holds=b("yes" if o.met else "no"))
                     for o in evaluate(results))


def render(results: dict[str, Any], plot: Path | None, blocks: Blocks | None = None) -> str:
    """The page for these results, linking `plot` (by its name, beside the page) when given."""
    b = blocks or Blocks()
    m, rx = results["machine"], results["reaction"]
    goals = by_key(results)
    page = b(
        "doc",
        date=results["date"], cores=m["cores"], cpu=m["cpu"], memory_gib=m["memory_gib"], python=m["python"],
        postgresql=results["postgresql"],
        sizes_rows=_rows(b, "sizes.row", [_sizes_row(r) for r in results["sizes"]]),
        reaction_interval=g(rx["interval_s"]), reaction_trials=rx["trials"], reaction_p50=rx["p50_s"],
        reaction_p95=rx["p95_s"], reaction_max=rx["max_s"],
        synthetic_rows=_rows(b, "synthetic.row", [{"gc_on_median_ms": "-"} | s for s in results["synthetic"]]),
        plot=ABSENT if plot is None else b("plot", plot=plot.name),
        deadlines=deadlines_section(b, results["deadlines"]) if results.get("deadlines") else ABSENT,
        locks=locks_section(b, results["locks"]) if results.get("locks") else ABSENT,
        fleet=fleet_section(b, results["fleet"], goals) if results.get("fleet") else ABSENT,
        handover=handover_section(b, results["handover"]) if results.get("handover") else ABSENT,
        cost=cost_section(b, results["cost"]) if results.get("cost") else ABSENT,
        top=top_section(b, results["top"]) if results.get("top") else ABSENT,
        guards=guards_section(b, results["guards"], results["postgresql"]) if results.get("guards") else ABSENT,
        goal_rows=goal_rows(b, results),
        **core_notes(b, results, goals),
    )
    lines = [line for line in page.splitlines() if line != ABSENT]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines).replace(ABSENT, "")).strip("\n") + "\n"


def write_docs(results: dict[str, Any], path: Path, plot: Path | None) -> None:
    path.write_text(render(results, plot))


def write_plot(results: dict[str, Any], path: Path) -> None:
    """The floor, the poll cycle and both scrapes against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(ns, [r["floor_ms"] for r in results["sizes"]], "o-", label="floor: SELECT * FROM pg_stat_activity")
    ax.plot(ns, [r["poll_ms"] for r in results["sizes"]], "o-", label="pgparent poll cycle")
    if results["postgres_exporter"]:
        ax.plot(ns, [r["postgres_exporter_scrape_ms"] for r in results["sizes"]], "o--",
                label="postgres_exporter scrape")
    ax.plot(ns, [r["pgparent_metrics_ms"] for r in results["sizes"]], "o:", label="pgparent /metrics")
    ax.set_xlabel("client sessions (N)")
    ax.set_ylabel("milliseconds (median)")
    ax.set_title("pgparent: cost against N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
