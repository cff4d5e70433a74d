"""The Fleets section of docs/BENCHMARKS.md: which of the template's `fleet.*` blocks the fleet's figures call for
(met or missed, settled or not, a shared machine or not), filled. The figures are results.json's `fleet`; an
earlier run of another layout, kept under `fleet.previous`, adds a note comparing the two.
"""

from __future__ import annotations

from typing import Any

from bench.goals import GOALS, Outcome, evaluate, fleet_figures, later_of
from bench.template import ABSENT, Blocks, amount, g, joined, seconds, verdict

SHARED = 5.0
"""Other processes' CPU, in % of one core, from which the run is said to have shared the machine."""
TIMEOUT_S = 180
"""How long shard mode is given to settle and to have every target led again (bench/shard.py's timeout)."""


def _reasons(b: Blocks, part: dict[str, Any], top: int = 4) -> str:
    """The `top` most frequent failures logged, and how many more."""
    reasons = list((part.get("failure_reasons") or {}).items())
    shown = "; ".join(b("fleet.reason", n=n, what=what) for what, n in reasons[:top]) or b("none")
    rest = sum(n for _, n in reasons[top:])
    return shown + (b("fleet.reasons_rest", rest=rest, kinds=len(reasons) - top) if rest else "")


def _machine_share(b: Blocks, fleet: dict[str, Any]) -> str:
    """Whether the run had the machine to itself: the CPU other processes used during each part."""
    bh = fleet["blackhole"]
    parts = [fleet["single"]["others_cpu_pct_of_core"], fleet["shard"]["others_cpu_pct_of_core"],
             bh["others_cpu_pct_before"], bh["others_cpu_pct_during"]]
    others = b("fleet.others", single=parts[0], shard=parts[1], before=parts[2], during=parts[3])
    if max(parts) < SHARED:
        return b("fleet.alone", others=others)
    return b("fleet.shared", cores=fleet["cores"], others=others)


def _read_ms(fleet: dict[str, Any]) -> tuple[tuple[int, float], tuple[int, float]]:
    """One target's read at the fewest and at the most backends per server measured: ((backends, ms), ...)."""
    reads = sorted((int(n), ms) for n, ms in fleet["read_ms_by_backends_per_server"].items())
    return reads[0], reads[-1]


def _previous_layout(b: Blocks, fleet: dict[str, Any]) -> str:
    """The note on the earlier run of another layout, where it had more databases per server and asked its servers
    for more CPU than the machine had, and missed the gap goal for it. (Its results may predate `watch_every_s`,
    `watch_read_ms` and `databases_per_server`: the watch then read every 100 ms.)"""
    prev = fleet.get("previous")
    if not prev:
        return ABSENT
    per_server = prev.get("databases_per_server", prev["targets"] // prev["servers"])
    (few, few_ms), (many, many_ms) = _read_ms(prev)
    every, watch_ms = prev.get("watch_every_s", 0.1), prev.get("watch_read_ms", many_ms)
    asked = round(prev["servers"] * (per_server / prev["interval_s"] * many_ms + watch_ms / every) / 1000, 1)
    goals = {o.goal.key: o for o in evaluate({"fleet": prev}, GOALS)}
    if per_server <= fleet["databases_per_server"] or asked <= prev["cores"] or goals["fleet_gap"].met:
        return ABSENT
    one = prev["single"]
    backends = b("fleet.previous.same_backends" if prev["backends"] == fleet["backends"] else
                 "fleet.previous.backends", backends=f"{prev['backends']:,}")
    own = b("fleet.previous.own_met" if goals["fleet_cpu"].met and goals["fleet_rss"].met else "fleet.previous.own",
            cpu=one["cpu_pct_of_core"], rss=f"{one['rss_peak_mb']:.0f}")
    led_again = fleet_figures(prev)["shard_led_again_s"]
    led = (b("fleet.previous.never_led") if led_again is None else
           b("fleet.previous.led", led=seconds(b, led_again)))
    return b("fleet.previous", per_server=per_server, commit=prev["commit"], servers=prev["servers"],
             backends=backends, few_ms=f"{few_ms:.1f}", few=few, many_ms=f"{many_ms:.1f}", many=many,
             watch_reads=g(1 / every), asked=asked, cores=prev["cores"], own=own,
             gap_p99=f"{one['gap_p99_s']:.1f}", led=led,
             blackhole_p99=f"{prev['blackhole']['others_during']['gap_p99_s']:.1f}")


def _one_process(b: Blocks, fleet: dict[str, Any], goals: dict[str, Outcome]) -> dict[str, Any]:
    one = fleet["single"]
    overloaded = not goals["fleet_gap"].met and goals["fleet_cpu"].met
    if overloaded:
        detail = b("fleet.one.overloaded", load=one["load_average"], cores=fleet["cores"],
                   others=one["others_cpu_pct_of_core"], polls=one["polls"], polls_due=one["polls_due"],
                   failed=one["failed_polls"], overruns=one["overrun_warnings"], reasons=_reasons(b, one))
    else:
        why = b("fleet.one.reasons", reasons=_reasons(b, one)) if one["failed_polls"] else ""
        detail = b("fleet.one.calm", overruns=one["overrun_warnings"], failed=one["failed_polls"], reasons=why)
    return {
        "goal_cpu": verdict(b, goals["fleet_cpu"]), "goal_rss": verdict(b, goals["fleet_rss"]),
        "goal_gap": verdict(b, goals["fleet_gap"]), "one_detail": detail,
        "one_scrape": "" if one["metrics_scrape_ms"] is None else
        b("fleet.one.scrape", ms=one["metrics_scrape_ms"], kb=one["metrics_kb"]),
    }


def _shard(b: Blocks, sh: dict[str, Any], goals: dict[str, Outcome]) -> dict[str, Any]:
    if sh["settled_s"] is not None:
        settled = b("fleet.shard.settled", settled=seconds(b, sh["settled_s"]))
        failures = ""
        if sh["failure_reasons"]:
            total, during = sum(sh["failure_reasons"].values()), sh.get("failures_while_settling")
            when = ("" if during is None else b("fleet.shard.failures_all_settling") if during == total else
                    b("fleet.shard.failures_some_settling", n=during))
            agree = "" if sh["server_lock_holders_ok"] else b("fleet.shard.locks_disagreed", replicas=sh["replicas"])
            failures = b("fleet.shard.failures", total=total, reasons=_reasons(b, sh), when=when, agree=agree)
        settling = b("fleet.shard.settling", failures=failures)
    else:
        settled = b("fleet.shard.unsettled", timeout=TIMEOUT_S)
        settling = b("fleet.shard.unsettling", without=sh["targets_without_leader"], read=sh["metrics_read_s"],
                     reasons=_reasons(b, sh))
    by_share = sh.get("released_after_kill_by_share") or {}
    released = (b("fleet.shard.released", n=sum(by_share.values()), shares=", ".join(
        b("fleet.shard.released_share", n=n, share=share) for share, n in by_share.items()))
        if by_share else b("fleet.shard.none_released"))
    by_logs, by_locks = seconds(b, sh["led_again_by_logs_s"]), seconds(b, sh["locks_held_again_after_kill_s"])
    goal = verdict(b, goals["shard_led_again"])
    later = later_of(sh["led_again_by_logs_s"], sh["locks_held_again_after_kill_s"])
    if later is None:
        led = b("fleet.shard.never_led", timeout=TIMEOUT_S, by_logs=by_logs, by_locks=by_locks, goal=goal)
    else:
        led = b("fleet.shard.led", by_logs=by_logs, by_locks=by_locks, goal=goal)
    by_metrics = sh["led_again_after_kill_s"]
    last = by_metrics is not None and later is not None and by_metrics >= later
    return {
        "settled": settled, "settling": settling, "acquired": sh["acquired_after_kill"], "released_after": released,
        "most_locks": sh["most_locks_after_kill"], "share_after": sh["fair_share_after_kill"], "led_again": led,
        "metrics_last": b("fleet.shard.metrics_last", read=sh["metrics_read_s"]) if last else "",
    }


def _blackhole(b: Blocks, fleet: dict[str, Any], goals: dict[str, Outcome]) -> str:
    bh = fleet["blackhole"]
    before, during = bh["others_before"], bh["others_during"]
    before_missed = before["gap_p99_s"] > fleet["interval_s"] + 0.1
    outcome = goals["blackhole"]
    if outcome.met:
        return b("fleet.blackhole.met", during=during["gap_p99_s"], before=b(
            "fleet.blackhole.met_before_missed", stall=g(bh["stall_s"]), before_p99=before["gap_p99_s"],
            before_max=before["gap_max_s"]) if before_missed else "")
    by = amount(b, outcome.over or 0.0, "s")
    if before_missed:
        return b("fleet.blackhole.missed_loaded", by=by, before_p99=before["gap_p99_s"])
    longest = ("" if bh.get("others_longest_gap_from_s") is None else
               b("fleet.blackhole.longest", began=g(bh["others_longest_gap_from_s"])))
    pressure = ""
    if pr := bh.get("pressure_pct_during"):
        was = bh.get("pressure_pct_before") or {}
        pressure = b("fleet.blackhole.pressure", cpu=pr.get("cpu_some"), io=pr.get("io_some"),
                     memory=pr.get("memory_some"), before=b(
                         "fleet.blackhole.pressure_before", cpu=was.get("cpu_some"), io=was.get("io_some"),
                         memory=was.get("memory_some")) if was else "")
    return b("fleet.blackhole.missed", by=by, before_p99=before["gap_p99_s"], stall=g(bh["stall_s"]),
             failed=bh["others_failed_polls"], longest=longest, pressure=pressure)


def fleet_section(b: Blocks, fleet: dict[str, Any], goals: dict[str, Outcome]) -> str:
    one, sh, bh = fleet["single"], fleet["shard"], fleet["blackhole"]
    per_server = fleet["targets"] // fleet["servers"]
    short = fleet["sessions_per_db"] < fleet["sessions_wanted_per_db"]
    if one["metrics_scrape_ms"] is not None and not one["metrics_scrapes_timed_out"]:
        scrape = b("fleet.scrape", ms=one["metrics_scrape_ms"], kb=one["metrics_kb"])
    else:
        scrape = b("fleet.scrape_timed_out", timed_out=one["metrics_scrapes_timed_out"],
                   scrapes=one["metrics_scrapes"], last=one["metrics_last_scrape_s"], kb=one["metrics_kb"])
    (few, few_ms), (many, many_ms) = _read_ms(fleet)
    every, watch_ms = fleet["watch_every_s"], fleet["watch_read_ms"]
    server_pct = round((per_server / fleet["interval_s"] * many_ms + watch_ms / every) / 10, 1)
    agree = sh["server_lock_holders_ok"] and sh["server_lock_holders_ok_after_kill"]
    return b(
        "fleet",
        commit=fleet["commit"], targets=fleet["targets"], servers=fleet["servers"], per_server=per_server,
        interval=g(fleet["interval_s"]), sessions_per_db=fleet["sessions_per_db"],
        short=b("fleet.short", wanted=fleet["sessions_wanted_per_db"]) if short else "",
        backends=fleet["backends"], sessions_in_view=fleet["sessions_in_view"], window=g(one["window_s"]),
        watch_every_ms=g(every * 1000), machine_share=_machine_share(b, fleet),
        cpu=one["cpu_pct_of_core"], rss=one["rss_mb"], rss_peak=one["rss_peak_mb"], gap_p50=one["gap_p50_s"],
        gap_p99=one["gap_p99_s"], gap_max=one["gap_max_s"], polls=one["polls"], polls_due=one["polls_due"],
        failed=one["failed_polls"], overruns=one["overrun_warnings"], scrape=scrape,
        replicas=sh["replicas"], hold=g(sh["hold_s"]), steady=g(sh["steady_s"]), share=sh["fair_share"],
        spread=joined(sh["spread"]), settled_s=seconds(b, sh["settled_s"]),
        released=sh["leadership_released_while_settling"], changes=sh["changes_while_settled"],
        by_metrics=seconds(b, sh["led_again_after_kill_s"]), by_logs=seconds(b, sh["led_again_by_logs_s"]),
        by_locks=seconds(b, sh["locks_held_again_after_kill_s"]), spread_after=joined(sh["spread_after_kill"]),
        agree=b("yes" if agree else "no"),
        stall=g(bh["stall_s"]), others=fleet["targets"] - 1, before_p99=bh["others_before"]["gap_p99_s"],
        before_max=bh["others_before"]["gap_max_s"], during_p99=bh["others_during"]["gap_p99_s"],
        during_max=bh["others_during"]["gap_max_s"], others_failed=bh["others_failed_polls"],
        down=seconds(b, bh["blackholed_down_after_s"]), back=seconds(b, bh["blackholed_back_after_s"]),
        server_backends=fleet["backends"] // fleet["servers"],
        few_ms=few_ms, few=few, many_ms=many_ms, many=many, watch_read_ms=watch_ms, watch_reads=g(1 / every),
        server_pct=server_pct, servers_cores=round(fleet["servers"] * server_pct / 100, 1), cores=fleet["cores"],
        lock_reads=sh["replicas"] * fleet["targets"],
        previous_layout=_previous_layout(b, fleet),
        **_one_process(b, fleet, goals), **_shard(b, sh, goals), blackhole_verdict=_blackhole(b, fleet, goals),
    )
