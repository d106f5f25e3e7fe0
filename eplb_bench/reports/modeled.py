"""Standings and a plot by modeled speedup: the records of `run --cost-model`.

Modeled figures come from the loads, the placements and a hardware profile, never
from a clock, so they are ranked across machines; they are ranked per profile (name
and hash) and per rebalance interval, since a speedup means nothing without either.
A balancer's modeled speedup over several scenarios is their geometric mean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from eplb_bench.core.record import CROSS_WORKLOAD, Record
from eplb_bench.reports.standings import (
    HASH_DIGITS,
    INCOMPLETE_RULE,
    PROGRAM_SUFFIX,
    display_name,
    entry_labels,
    finite,
    is_isolated,
    scenario_of,
    scenario_title,
)
from eplb_bench.reports.tables import MISSING, Table, number, plot_text

STATIC_MARK = "‡"
STATIC_LEGEND = (f"{STATIC_MARK} replayed static workloads as a program file: the run has planned on every workload "
                 "before the replays, so a program that keeps state between calls could recognize the served one "
                 "(docs/costmodel.md); registered balancers keep none.")
MODELED_RULE = ("Modeled speedup: the static contiguous placement's modeled step time over the balancer's, its "
                "weight migrations paid at every rebalance (blocking; overlapped hides the profile's share). "
                "Geometric means over scenarios; oracle: plans on each window it serves and migrates for free. "
                "From loads, placements and the profile alone, so not tied to a machine (docs/costmodel.md).")


ORACLE_LABEL = "oracle (free migration, per balancer: best)"


def profile_label(record: Record) -> str:
    return f"{record.cost_model}@{str(record.cost_model_sha256)[:HASH_DIGITS]}"


def replay_entry(record: Record, interval: int) -> dict | None:
    """The record's replay entry for `interval`, or None."""
    return next((entry for entry in record.replay or () if entry["interval"] == interval), None)


def modeled_groups(records: list[Record]) -> dict[tuple[str, int], list[Record]]:
    """(profile label, interval) -> the records replayed under them (failed ones too,
    under every interval their profile's other records have)."""
    replayed = [r for r in records if r.cost_model is not None]
    intervals = defaultdict(set)
    for record in replayed:
        intervals[profile_label(record)].update(record.intervals or ())
        intervals[profile_label(record)].update(entry["interval"] for entry in record.replay or ())
    groups = defaultdict(list)
    for record in replayed:
        for interval in intervals[profile_label(record)]:
            groups[(profile_label(record), interval)].append(record)
    return dict(sorted(groups.items()))


def geometric_mean(values: list) -> float | None:
    values = [v for v in map(finite, values) if v is not None and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def modeled_standings(records: list[Record], interval: int) -> list[dict]:
    """One ranked row per entry of one (profile, interval) group: complete entries
    first (INCOMPLETE_RULE), then by the geometric mean of modeled speedup."""
    labels = entry_labels(records)
    scenarios_total = len({scenario_of(r) for r in records})
    by_entry = defaultdict(list)
    for record in records:
        by_entry[labels[record.balancer_key()]].append(record)
    rows = []
    for label, group in by_entry.items():
        entries = [(r, replay_entry(r, interval)) for r in group]
        ok = [(r, e) for r, e in entries if r.status == "ok" and e is not None]
        failed = {scenario_of(r) for r, e in entries if r.status != "ok" or e is None}
        stateful_risk = any(r.protocol == CROSS_WORKLOAD and str(r.algorithm).endswith(PROGRAM_SUFFIX) for r in group)
        rows.append({
            "entry": display_name(label, all(is_isolated(r) for r in group)) + (f" {STATIC_MARK}" if stateful_risk else ""),
            "scenarios_ok": len({scenario_of(r) for r, _ in ok} - failed),
            "scenarios_total": scenarios_total,
            "speedup": geometric_mean([e["modeled_speedup"] for _, e in ok]),
            "overlapped": geometric_mean([e["modeled_speedup_overlapped"] for _, e in ok]),
            "oracle": geometric_mean([r.oracle_speedup for r, _ in ok]),
            "step_ms": geometric_mean([e["modeled_step_ms"] for _, e in ok]),
            "migration_ms": geometric_mean([e["migration_ms"] for _, e in ok]),
            "failures": sorted(f"{r.status} ({scenario_title(r)})" for r, _ in entries if r.status != "ok"),
        })
    rows.sort(key=lambda row: (row["scenarios_ok"] != row["scenarios_total"], -row["scenarios_ok"],
                               row["speedup"] is None, -(row["speedup"] or 0.0), row["entry"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def modeled_tables(records: list[Record]) -> list[Table]:
    """The standings by modeled speedup, one table per (profile, interval), then the
    break-even intervals."""
    tables = []
    for (profile, interval), group in modeled_groups(records).items():
        rows = [[str(row["rank"]), row["entry"], f"{row['scenarios_ok']}/{row['scenarios_total']}",
                 number(row["speedup"], "{:.3f}"), number(row["overlapped"], "{:.3f}"),
                 number(row["oracle"], "{:.3f}"), number(row["step_ms"], "{:.2f}"),
                 number(row["migration_ms"], "{:.1f}"), "; ".join(row["failures"]) or MISSING]
                for row in modeled_standings(group, interval)]
        tables.append(Table(
            title=f"Modeled speedup standings: profile {profile}, rebalance every {interval} steps",
            header=["rank", "balancer", "scenarios", "modeled speedup", "overlapped", "oracle speedup",
                    "modeled step ms", "migration ms", "status"],
            rows=rows, note=" ".join(part for part in (
                "" if tables else f"{MODELED_RULE} {INCOMPLETE_RULE}",
                STATIC_LEGEND if any(STATIC_MARK in row[1] for row in rows) else "") if part),
            table_id=f"modeled-{profile}-{interval}"))
    crossing = break_even_table(records)
    return tables + ([crossing] if crossing else [])


def speedup_curves(records: list[Record]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """panel title -> entry label -> [(interval, modeled speedup)], the geometric mean
    over a panel's records (a dataset's scenario; its workload pairs pooled), intervals
    ascending. A panel is one profile and one (dataset, scenario name)."""
    labels = entry_labels(records)
    values = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in records:
        if record.cost_model is None or record.status != "ok":
            continue
        panel = f"{record.dataset} {record.scenario}".strip() + f" ({profile_label(record)})"
        for entry in record.replay or ():
            values[panel][labels[record.balancer_key()]][entry["interval"]].append(entry["modeled_speedup"])
        if record.oracle_speedup is not None:
            values[panel][ORACLE_LABEL][0].append(record.oracle_speedup)
    curves = {}
    for panel, entries in sorted(values.items()):
        curves[panel] = {label: sorted((k, geometric_mean(v)) for k, v in points.items())
                         for label, points in sorted(entries.items())}
    return curves


def break_even(points: list[tuple[int, float]]) -> str:
    """points: [(interval, modeled speedup)], intervals ascending -> the interval below which
    the balancer loses to the contiguous placement, as text: where the curve first rises
    through 1 (log-linear between the two intervals around it), "below K" when it is at
    least 1 from the shortest interval on, "none up to K" when it never reaches 1."""
    points = [(k, v) for k, v in points if v is not None]
    if not points:
        return MISSING
    if points[0][1] >= 1:
        return f"below {points[0][0]}"
    for (k0, v0), (k1, v1) in zip(points, points[1:]):
        if v0 < 1 <= v1:
            share = (1 - v0) / (v1 - v0)
            return f"{math.exp(math.log(k0) + share * (math.log(k1) - math.log(k0))):.1f}"
    return f"none up to {points[-1][0]}"


def break_even_table(records: list[Record]) -> Table | None:
    """Per replayed (dataset, scenario) and entry: the break-even interval (break_even)
    from its speedups at the intervals replayed; None without a panel of several intervals."""
    rows = []
    for panel, entries in speedup_curves(records).items():
        for label, points in entries.items():
            if label != ORACLE_LABEL and len(points) > 1:
                best = max(((v, k) for k, v in points if v is not None), default=None)
                rows.append([panel, label, break_even(points),
                             MISSING if best is None else f"{best[0]:.3f} at {best[1]}"])
    if not rows:
        return None
    return Table(title="Break-even rebalance interval",
                 header=["scenario", "balancer", "break-even interval (steps)", "best modeled speedup"], rows=rows,
                 note="Below the break-even interval, rebalancing that often costs more in weight migrations than the "
                      "balance gains: the modeled speedup over the contiguous placement falls under 1. Read off the "
                      "intervals replayed (geometric means over a scenario's workload pairs), log-linear between two.",
                 table_id="modeled-break-even")


def plot_speedup_vs_interval(records: list[Record], path: Path) -> Path:
    """One panel per replayed (dataset, scenario): each entry's modeled speedup against
    the rebalance interval (log x), the break-even line at 1, and the best oracle."""
    from eplb_bench.reports.plots import _colours, _no_results, saved_figure

    curves = speedup_curves(records)
    panels = max(len(curves), 1)
    columns = min(2, panels)
    rows = math.ceil(panels / columns)
    with saved_figure(path, rows, columns, (7.5 * columns, 4.6 * rows)) as (_, axes):
        colours = _colours({label for entries in curves.values() for label in entries if label != ORACLE_LABEL})
        if not curves:
            _no_results(axes[0][0], "no modeled results (run --cost-model PROFILE --interval K,...)")
        for ax, (panel, entries) in zip(axes.flat, curves.items()):
            oracle = max((value for _, value in entries.pop(ORACLE_LABEL, []) if value is not None), default=None)
            for label, points in entries.items():
                points = [(k, v) for k, v in points if v is not None]
                ax.plot([k for k, _ in points], [v for _, v in points], marker="o", color=colours[label],
                        label=plot_text(label))
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="contiguous, no redundancy")
            if oracle is not None:
                ax.axhline(oracle, color="grey", linewidth=0.8, linestyle="--",
                           label=plot_text(f"best oracle ({oracle:.3f})"))
            ax.set_xscale("log")
            ax.set_xlabel("rebalance interval (steps)")
            ax.set_ylabel("modeled speedup")
            ax.set_title(plot_text(panel), fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        for ax in list(axes.flat)[len(curves):] if curves else []:
            ax.axis("off")
    return path
