"""The benchmark's goals as data: each names the figures it reads, the bounds they must keep and how the docs show
them; `evaluate` says which hold for a results.json.

`figures` is the one place that turns results.json into named figures (the poll/floor ratio at 1000 sessions, the
worst /metrics ratio, the fleet's p99 gap, ...): the goals read them by name, and so does the report's prose. A goal
applies when every figure it names is there (its part was measured); a figure that is there but None (a leader never
seen again, say) fails its goal.
"""

from __future__ import annotations

import operator
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Figures = dict[str, Any]

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">=": operator.ge, "==": operator.eq,
}


@dataclass(frozen=True)
class Check:
    """`figure` `op` `bound`, the bound a number or the name of another figure (a limit that follows the interval)."""

    figure: str
    op: str
    bound: float | str

    def names(self) -> set[str]:
        return {self.figure} | ({self.bound} if isinstance(self.bound, str) else set())

    def limit(self, figures: Figures) -> Any:
        return figures[self.bound] if isinstance(self.bound, str) else self.bound

    def holds(self, figures: Figures) -> bool:
        value, limit = figures[self.figure], self.limit(figures)
        return value is not None and limit is not None and OPERATORS[self.op](value, limit)


@dataclass(frozen=True)
class Goal:
    """One goal. `text` and `shown` are str.format templates over the figures (`{x:s}` shows seconds, or "never"
    for None). `unit` says how far a miss went, in "points", "MB" or "s"; without one a miss is just "not met"."""

    key: str
    text: str
    checks: tuple[Check, ...]
    shown: str
    unit: str = ""

    def applies(self, figures: Figures) -> bool:
        return all(name in figures for check in self.checks for name in check.names())


GOALS: tuple[Goal, ...] = (
    Goal("poll", "poll cycle <= 1.15x the floor at 1000 sessions", (Check("poll_over_floor", "<=", 1.15),),
         "{poll_over_floor}x (N={poll_n})"),
    Goal("metrics", "/metrics at least 10x faster than postgres_exporter's scrape at every N",
         (Check("metrics_ratio_worst", ">=", 10),), "postgres_exporter {metrics_ratio_worst}x slower at worst"),
    Goal("reaction", "reaction p95 <= interval + 0.2 s", (Check("reaction_p95_s", "<=", "reaction_bound_s"),),
         "p95 {reaction_p95_s} s at {reaction_interval_s:g} s"),
    Goal("memory", "resident memory <= 60 MB at 2000 sessions", (Check("rss_mb", "<=", 60),),
         "{rss_mb} MB (N={rss_n})"),
    Goal("synthetic", "100k synthetic sessions grouped and evaluated <= 100 ms, per-session cost flat from 10k",
         (Check("synthetic_ms", "<=", 100), Check("synthetic_growth", "<=", 1.5)),
         "{synthetic_ms} ms; per-session cost 100k/10k = {synthetic_growth:.2f}"),
    Goal("locks", "poll cycle with 100 sessions waiting in chains <= 1.5x the cycle with none",
         (Check("locks_over_none", "<=", 1.5),), "{locks_over_none}x"),
    Goal("deadlines", "time limit crossed to session gone, p95 <= 100 ms at a 5 s interval (stretch 50 ms)",
         (Check("deadline_p95_ms", "<=", 100),), "p95 {deadline_p95_ms} ms over {deadline_trials} trials"),
    Goal("deadlines_short", "a {deadline_short_limit_s:g} s limit at a 5 s interval (queries begun after a poll): "
         "crossed to session gone p95 < 100 ms", (Check("deadline_short_p95_ms", "<", 100),),
         "p95 {deadline_short_p95_ms} ms over {deadline_short_trials} trials"),
    Goal("fleet_cpu", "one process, {fleet_view}: CPU < 30% of one core", (Check("fleet_cpu_pct", "<", 30),),
         "{fleet_cpu_pct}%", "points"),
    Goal("fleet_rss", "one process, {fleet_view}: RSS < 150 MB", (Check("fleet_rss_peak_mb", "<", 150),),
         "{fleet_rss_peak_mb} MB at its peak", "MB"),
    Goal("fleet_gap", "one process, {fleet_view}: p99 gap between polls of a target <= interval + 100 ms",
         (Check("fleet_gap_p99_s", "<=", "fleet_gap_bound_s"),), "{fleet_gap_p99_s} s at {fleet_interval_s:g} s",
         "s"),
    Goal("shard_fair", "{shard_replicas} shard-mode replicas, {fleet_view}: every target led by exactly one, none "
         "above its fair share, no changes once settled",
         (Check("shard_settled_s", ">=", 0), Check("shard_spread_max", "<=", "shard_share"),
          Check("shard_spread_total", "==", "fleet_targets"), Check("shard_changes", "==", 0)),
         "{shard_spread} (share {shard_share}), {shard_changes} changes"),
    Goal("shard_locks", "{shard_replicas} shard-mode replicas, {fleet_view}: after one is killed, no survivor ever "
         "holds more leader locks than its fair share (pg_locks)",
         (Check("shard_most_locks_after_kill", "<=", "shard_share_after_kill"),),
         "up to {shard_most_locks_after_kill} (share {shard_share_after_kill})"),
    Goal("shard_led_again", "{shard_replicas} shard-mode replicas, {fleet_view}: every target led again within 2 "
         "intervals of a SIGKILL", (Check("shard_led_again_s", "<=", "fleet_two_intervals_s"),),
         "{shard_led_by_logs_s:s} (logs), {shard_locks_again_s:s} (pg_locks)", "s"),
    Goal("blackhole", "one target black-holed: the others' p99 gap between polls <= interval + 100 ms",
         (Check("blackhole_gap_p99_s", "<=", "fleet_gap_bound_s"),), "{blackhole_gap_p99_s} s", "s"),
    Goal("handover_join", "a replica joining: no target without a leader for more than 2 intervals",
         (Check("handover_unled_s", "<=", "handover_two_intervals_s"),), "{handover_unled_s:g} s"),
    Goal("handover_kill", "a replica killed: its targets led again within 2 intervals (idle targets)",
         (Check("handover_led_again_s", "<=", "handover_two_intervals_s"),), "{handover_led_again_s:s}"),
    Goal("cost_proc", "OS figures (/proc) add at most 25% to the poll cycle at {cost_n} sessions",
         (Check("cost_proc_added_pct", "<=", 25),),
         "{cost_proc_added_pct:+g}% ({cost_off_ms} ms off, {cost_on_ms} ms on)", "points"),
    Goal("cost_load", "load counter within 5% of N x T and of pg_stat_database.active_time at a 1 s interval",
         (Check("cost_load_off_statements_pct", "<=", 5), Check("cost_load_off_active_time_pct", "<=", 5)),
         "{cost_load_vs_statements_pct:+g}% / {cost_load_vs_active_time_pct:+g}%", "points"),
    Goal("top_cpu", "`pgparent top` at {top_n} sessions and a {top_interval_s:g} s refresh: CPU <= 10% of one core",
         (Check("top_cpu_pct", "<=", 10),), "{top_cpu_pct}% ({top_refreshes} refreshes in {top_window_s:g} s)",
         "points"),
    Goal("guard_time", "memory runaway at ~100 MB/s: crossing {guard_limit_mb:g} MB to cancel p95 < 250 ms at a "
         "{guard_interval_s:g} s interval", (Check("guard_p95_ms", "<", 250),), "p95 {guard_p95_ms} ms"),
    Goal("guard_memory", "memory at cancel < limit + 50 MB", (Check("guard_memory_mb", "<", "guard_memory_bound_mb"),),
         "p95 {guard_memory_mb} MB, max {guard_memory_max_mb} MB", "MB"),
    Goal("guard_sampler", "the sampler with {guard_sessions} sessions under watch < 2% of a core",
         (Check("guard_sampler_pct", "<", 2),), "{guard_sampler_pct:+g} points", "points"),
)


def _core(results: dict[str, Any]) -> Figures:
    out: Figures = {}
    if results.get("sizes"):
        sizes = {r["n"]: r for r in results["sizes"]}
        at, big = sizes.get(1000) or sizes[max(sizes)], sizes.get(2000) or sizes[max(sizes)]
        polls = [r["poll_over_floor"] for r in results["sizes"]]
        out |= {"poll_n": at["n"], "poll_over_floor": at["poll_over_floor"], "poll_min": min(polls),
                "poll_max": max(polls), "rss_n": big["n"], "rss_mb": big["pgparent_rss_mb"],
                "sizes_n": [r["n"] for r in results["sizes"]]}
        if results.get("postgres_exporter"):
            ratios = [r["postgres_exporter_over_pgparent_metrics"] for r in results["sizes"]]
            out |= {"metrics_ratios": ratios, "metrics_ratio_worst": min(ratios)}
    if rx := results.get("reaction"):
        out |= {"reaction_p95_s": rx["p95_s"], "reaction_interval_s": rx["interval_s"],
                "reaction_bound_s": rx["interval_s"] + 0.2}
    syn = {s["sessions"]: s for s in results.get("synthetic", [])}
    if 100_000 in syn and 10_000 in syn:
        out |= {"synthetic_ms": syn[100_000]["median_ms"],
                "synthetic_growth": syn[100_000]["per_session_us"] / syn[10_000]["per_session_us"]}
    locks = {r["waiters"]: r for r in results.get("locks", [])}
    if 100 in locks:
        out["locks_over_none"] = locks[100]["over_no_waiters"]
    rows = results.get("deadlines", [])
    precise = {(r["interval_s"], r["deadlines"]): r for r in rows if r["limit_s"] > r["interval_s"]}
    if (5.0, True) in precise:
        out |= {"deadline_p95_ms": precise[(5.0, True)]["p95_ms"], "deadline_trials": precise[(5.0, True)]["trials"]}
    short = [r for r in rows if r["deadlines"] and r["interval_s"] == 5.0 and r["limit_s"] < r["interval_s"]]
    if short:
        out |= {"deadline_short_limit_s": short[0]["limit_s"], "deadline_short_p95_ms": short[0]["p95_ms"],
                "deadline_short_trials": short[0]["trials"]}
    return out


def later_of(*times: float | None) -> float | None:
    """The latest of these moments, or None if any is missing."""
    return None if None in times else max(t for t in times if t is not None)


def fleet_figures(fleet: dict[str, Any]) -> Figures:
    """The fleet part's named figures (also read for an earlier fleet run, by the report)."""
    one, sh, bh = fleet["single"], fleet["shard"], fleet["blackhole"]
    interval = fleet["interval_s"]
    return {
        "fleet_view": f"{fleet['targets']} targets, {fleet['sessions_in_view']} sessions in each target's view",
        "fleet_targets": fleet["targets"], "fleet_interval_s": interval, "fleet_gap_bound_s": interval + 0.1,
        "fleet_two_intervals_s": 2 * interval, "fleet_cpu_pct": one["cpu_pct_of_core"],
        "fleet_rss_peak_mb": one["rss_peak_mb"], "fleet_gap_p99_s": one["gap_p99_s"],
        "shard_replicas": sh["replicas"], "shard_spread": " / ".join(map(str, sh["spread"])),
        "shard_spread_max": max(sh["spread"]), "shard_spread_total": sum(sh["spread"]),
        "shard_share": sh["fair_share"], "shard_changes": sh["changes_while_settled"],
        "shard_settled_s": sh["settled_s"], "shard_most_locks_after_kill": sh.get("most_locks_after_kill"),
        "shard_share_after_kill": sh["fair_share_after_kill"], "shard_led_by_logs_s": sh["led_again_by_logs_s"],
        "shard_locks_again_s": sh["locks_held_again_after_kill_s"],
        # Every target led again: by the later of the logs and pg_locks.
        "shard_led_again_s": later_of(sh["led_again_by_logs_s"], sh["locks_held_again_after_kill_s"]),
        "blackhole_gap_p99_s": bh["others_during"]["gap_p99_s"],
    }


def figures(results: dict[str, Any]) -> Figures:
    """Every named figure the results hold."""
    out = _core(results)
    if results.get("fleet"):
        out |= fleet_figures(results["fleet"])
    if h := results.get("handover"):
        out |= {"handover_unled_s": h["join"]["longest_without_leader_s"],
                "handover_led_again_s": h["kill"]["all_led_again_s"], "handover_two_intervals_s": 2 * h["interval_s"]}
    if c := results.get("cost"):
        proc, load = c["proc"], c["load"]
        out |= {"cost_n": proc["sessions"], "cost_proc_added_pct": proc["on"]["added_pct"],
                "cost_off_ms": proc["off"]["cycle_ms"], "cost_on_ms": proc["on"]["cycle_ms"],
                "cost_load_vs_statements_pct": load["vs_statements_pct"] + 0.0,  # + 0.0: never "-0"
                "cost_load_vs_active_time_pct": load["vs_active_time_pct"] + 0.0,
                "cost_load_off_statements_pct": abs(load["vs_statements_pct"]),
                "cost_load_off_active_time_pct": abs(load["vs_active_time_pct"])}
    if t := results.get("top"):
        out |= {"top_n": t["sessions"], "top_interval_s": t["interval_s"], "top_cpu_pct": t["cpu_pct"],
                "top_refreshes": t["refreshes"], "top_window_s": t["window_s"]}
    if gd := results.get("guards"):
        r, sm = gd["runaway"], gd["sampler"]
        out |= {"guard_limit_mb": r["limit_mb"], "guard_interval_s": r["interval_s"],
                "guard_p95_ms": r["cross_to_cancel_p95_ms"], "guard_memory_mb": r["memory_at_cancel_p95_mb"],
                "guard_memory_max_mb": r["memory_at_cancel_max_mb"], "guard_memory_bound_mb": r["limit_mb"] + 50,
                "guard_sessions": sm["sessions"], "guard_sampler_pct": sm["sampler_pct"],
                }
    return out


class FigureFormatter(string.Formatter):
    """str.format with one more spec: `{x:s}` shows seconds as "1.5 s", or "never" for None."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "s":
            return "never" if value is None else f"{value:g} s"
        return str(super().format_field(value, format_spec))


FORMAT = FigureFormatter()


@dataclass(frozen=True)
class Outcome:
    goal: Goal
    text: str
    """The goal as the docs state it."""
    shown: str
    """The figures that decide it, as the docs show them."""
    met: bool
    over: float | None
    """How far past its bound the goal's first figure is, when it is missed and there is a figure."""


def evaluate(results: dict[str, Any], goals: tuple[Goal, ...] = GOALS) -> list[Outcome]:
    """Each goal that applies to these results, in order, with whether it holds."""
    figs = figures(results)
    out = []
    for goal in goals:
        if not goal.applies(figs):
            continue
        met = all(check.holds(figs) for check in goal.checks)
        first = goal.checks[0]
        value, limit = figs[first.figure], first.limit(figs)
        over = None if met or value is None or limit is None else value - limit
        out.append(Outcome(goal, FORMAT.format(goal.text, **figs), FORMAT.format(goal.shown, **figs), met, over))
    return out


def by_key(results: dict[str, Any]) -> dict[str, Outcome]:
    return {o.goal.key: o for o in evaluate(results)}
