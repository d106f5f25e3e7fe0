"""Plots of result records (never of a live run), one panel per machine identity.

Every label goes through `plot_text`, so a name holding "$" is drawn as written and
never parsed as mathtext.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterable

from eplb_bench.core.record import Record
from eplb_bench.reports.standings import (
    MIN_RUNTIME_MS,
    display_name,
    entry_labels,
    finite,
    is_isolated,
    machine_of,
    pareto_front,
    scenario_of,
)
from eplb_bench.reports.tables import plot_text

MACHINE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
FRONT_LINES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
# A ceiling below this is drawn; at 1.0 the bound is the mean load, which every
# scenario has and which says nothing about the scenario.
CEILING_BELOW = 1.0 - 1e-6
CEILING_LABEL = "proven ceiling (ILP bound above the mean load)"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def saved_figure(path: Path, rows: int, columns: int, figsize: tuple[float, float]):
    """(figure, axes [rows, columns]) to draw on; written to `path` when the drawing
    succeeds, closed either way."""
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=figsize, squeeze=False)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _colours(names: Iterable[str]) -> dict[str, tuple]:
    """A fixed colour per entry label, the same in every plot."""
    plt = _pyplot()
    names = sorted(set(names))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _no_results(ax, text: str = "no scored results") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_balance_vs_runtime(rows: list[dict], path: Path) -> Path:
    """Mean GPU balancedness (next window) against mean runtime (log x), one point per
    standings row, with each machine's Pareto front among complete entries; incomplete
    entries hollow and off the front."""
    plotted = [row for row in rows if finite(row["balancedness_gpu"]) is not None
               and finite(row["runtime_ms"]) is not None]
    colours = _colours(row["entry"] for row in plotted)
    several = len({row["machine"] for row in plotted}) > 1
    with saved_figure(path, 1, 1, (9, 6)) as (_, axes):
        ax = axes[0][0]
        if not plotted:
            _no_results(ax)
        for index, (machine, group) in enumerate(groupby(plotted, key=lambda row: row["machine"])):
            group = list(group)
            marker = MACHINE_MARKERS[index % len(MACHINE_MARKERS)]
            points = [(max(row["runtime_ms"], MIN_RUNTIME_MS), row["balancedness_gpu"]) for row in group]
            for row, (x, y) in zip(group, points):
                colour = colours[row["entry"]]
                ax.scatter([x], [y], s=70, marker=marker, zorder=3, edgecolors=colour, linewidths=1.5,
                           facecolors=colour if row["complete"] else "none")
                label = display_name(row["entry"], row["isolated"]) + (
                    "" if row["complete"] else f" ({row['scenarios_ok']}/{row['scenarios_total']})")
                ax.annotate(plot_text(label), (x, y), xytext=(7, 5), textcoords="offset points", fontsize=9)
            ax.scatter([], [], marker=marker, color="grey", label=plot_text(machine))
            complete = [(point, row) for point, row in zip(points, group) if row["complete"]]
            front = sorted(point for (point, _), on in zip(complete, pareto_front([p for p, _ in complete])) if on)
            if front:
                ax.plot([x for x, _ in front], [y for _, y in front], color="black", lw=1, zorder=2,
                        linestyle=FRONT_LINES[index % len(FRONT_LINES)], marker="o", markersize=15,
                        markerfacecolor="none", label="Pareto front" + (plot_text(f" ({machine})") if several else ""))
        if plotted:
            ax.set_xscale("log")
            ax.margins(x=0.15, y=0.12)
            ax.grid(True, which="both", alpha=0.3)
            if any(not row["complete"] for row in plotted):
                ax.scatter([], [], facecolors="none", edgecolors="grey", label="incomplete (hollow, off the front)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("mean runtime per call (ms, log scale)")
        ax.set_ylabel("mean GPU balancedness, next window")
        ax.set_title("Balance against runtime (up and left is better)")
    return path


def _panels(records: list[Record]) -> list[tuple[str, list[Record]]]:
    ordered = sorted(records, key=machine_of)
    return [(machine, list(group)) for machine, group in groupby(ordered, key=machine_of)]


def _scenarios(records: list[Record]) -> list[list[Record]]:
    def key(record):
        return tuple(map(str, scenario_of(record)))
    return [list(group) for _, group in groupby(sorted(records, key=key), key=key)]


def tick_label(record: Record) -> str:
    """A scenario's tick: dataset, scenario name, and the workload pair when there is one."""
    lines = [str(record.dataset), str(record.scenario)]
    if record.plan_workload is not None:
        lines.append(f"{record.plan_workload}" if record.plan_workload == record.serve_workload
                     else f"{record.plan_workload}\n→ {record.serve_workload}")
    return "\n".join(line for line in lines if line).strip()


def _draw_bars(ax, records: list[Record], labels: dict, colours: dict, value: Callable[[Record], float | None],
               hatched: Callable[[Record], float | None] | None = None) -> list[float]:
    """Grouped bars: one group per scenario, one bar per entry (two, side by side, when
    `hatched` gives a second value). A failed entry gets an "x" at the axis. Returns the
    values drawn."""
    scenarios = _scenarios(records)
    names = sorted({labels[r.balancer_key()] for r in records})
    per_entry = 2 if hatched else 1
    width = 0.8 / (len(names) * per_entry)
    drawn, failed = [], []
    for position, group in enumerate(scenarios):
        by_name = {labels[r.balancer_key()]: r for r in group}
        for slot, name in enumerate(names):
            record = by_name.get(name)
            if record is None:
                continue  # not run on this scenario: no bar, no mark
            x = position - 0.4 + width * (slot * per_entry + 0.5)
            shown = display_name(name, is_isolated(record))
            first = finite(value(record)) if record.status == "ok" else None
            if first is None:
                failed.append((x, colours[name]))
                continue
            ax.bar(x, first, width, color=colours[name], label=plot_text(shown))
            drawn.append(first)
            second = finite(hatched(record)) if hatched else None
            if second is not None:
                ax.bar(x + width, second, width, color=colours[name], alpha=0.45, hatch="//", edgecolor="white")
                drawn.append(second)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([plot_text(tick_label(g[0])) for g in scenarios], fontsize=8)
    ax.set_xlim(-0.6, len(scenarios) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    ax._failed_marks = failed  # drawn once the axis range is known
    return drawn


def _mark_failures(ax, bottom: float) -> None:
    for x, colour in getattr(ax, "_failed_marks", []):
        ax.text(x, bottom, "x", ha="center", va="bottom", color=colour, fontsize=10, fontweight="bold")


def _legend(ax, extra_first: tuple[str, ...] = ()) -> None:
    """Each label once, the named extras first, then entries by name."""
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for handle, label in zip(handles, labels):
        seen.setdefault(label, handle)
    if not seen:
        return
    ordered = sorted(seen, key=lambda label: (label not in extra_first, label))
    ax.legend([seen[label] for label in ordered], ordered, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def axis_floor(lowest: float) -> float:
    """Where the balancedness axis starts: a round tenth below the lowest bar, so small
    differences near 1 stay visible (0 when bars go that low)."""
    return max(0.0, math.floor(lowest * 10 - 0.5) / 10)


def _figure(records: list[Record], draw, path: Path, empty: str) -> Path:
    """One panel per machine identity, each drawn by `draw(ax, records, machine)`."""
    panels = _panels(records)
    count = max((len(_scenarios(group)) for _, group in panels), default=1)
    figsize = (max(9.0, 2.5 + 1.4 * count), 4.8 * max(len(panels), 1))
    with saved_figure(path, max(len(panels), 1), 1, figsize) as (_, axes):
        if not panels:
            _no_results(axes[0][0], empty)
        for ax, (machine, group) in zip(axes[:, 0], panels):
            draw(ax, group, machine)
    return path


def plot_balance_by_scenario(records: list[Record], path: Path) -> Path:
    """Per scenario, each entry's GPU balancedness on the next window (solid, the one
    ranked) beside in-sample (hatched), and the proven ceiling where a bound beats the
    mean load."""
    labels = entry_labels(records)
    colours = _colours(labels.values())
    scored = [r for r in records if r.status == "ok" and r.balancedness_gpu is not None]

    def draw(ax, group, machine):
        drawn = _draw_bars(ax, group, labels, colours, lambda r: r.balancedness_gpu,
                           lambda r: r.balancedness_gpu_insample)
        for position, scenario in enumerate(_scenarios(group)):
            ceilings = [c for c in (finite(r.balancedness_ceiling) for r in scenario) if c is not None]
            if ceilings and max(ceilings) < CEILING_BELOW:
                ax.hlines(max(ceilings), position - 0.45, position + 0.45, colors="black", linewidth=2.5, zorder=4,
                          label=CEILING_LABEL)
                drawn.append(max(ceilings))
        bottom = axis_floor(min(drawn, default=1.0))
        ax.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.06)
        _mark_failures(ax, bottom)
        ax.set_ylabel("GPU balancedness" + (f" (axis from {bottom:g})" if bottom > 0 else ""))
        ax.set_title(plot_text(f"GPU balancedness per scenario: next window or workload served (solid), in-sample (hatched); "
                               f"x: failed\n{machine}"), fontsize=9)
        _legend(ax, (CEILING_LABEL,))

    return _figure(records if scored else [], draw, path, "no scored results")


def plot_runtime_by_scenario(records: list[Record], path: Path) -> Path:
    """Per scenario, each entry's median runtime per call (log axis), whiskers from the
    fastest to the slowest call."""
    labels = entry_labels(records)
    colours = _colours(labels.values())
    timed = [r for r in records if r.status == "ok" and finite(r.runtime_ms) is not None]

    def draw(ax, group, machine):
        _draw_bars(ax, group, labels, colours, lambda r: max(r.runtime_ms, MIN_RUNTIME_MS))
        positions = _scenarios(group)
        names = sorted({labels[r.balancer_key()] for r in group})
        width = 0.8 / len(names)
        for position, scenario in enumerate(positions):
            for record in scenario:
                if record.status != "ok" or None in (record.runtime_ms_min, record.runtime_ms_max):
                    continue
                x = position - 0.4 + width * (names.index(labels[record.balancer_key()]) + 0.5)
                ax.vlines(x, max(record.runtime_ms_min, MIN_RUNTIME_MS), max(record.runtime_ms_max, MIN_RUNTIME_MS),
                          colors="black", linewidth=1)
        ax.set_yscale("log")
        _mark_failures(ax, ax.get_ylim()[0])
        ax.set_ylabel("runtime per call, ms (log scale)")
        ax.set_title(plot_text(f"Median runtime per scenario, whiskers min to max; x: failed\n{machine}"), fontsize=9)
        _legend(ax)

    return _figure(records if timed else [], draw, path, "no timed results")


def plot_migrations_by_scenario(records: list[Record], path: Path) -> Path:
    """Per scenario, each entry's mean slots changed per rebalance (all layers)."""
    labels = entry_labels(records)
    colours = _colours(labels.values())
    moved = [r for r in records if r.status == "ok" and r.migrated_replicas is not None]

    def draw(ax, group, machine):
        _draw_bars(ax, group, labels, colours, lambda r: r.migrated_replicas)
        ax.set_ylim(bottom=0)
        _mark_failures(ax, 0)
        ax.set_ylabel("slots whose expert changed, per rebalance")
        ax.set_title(plot_text(f"Migrations per rebalance (fewer is cheaper); x: failed or not measured\n{machine}"),
                     fontsize=9)
        _legend(ax)

    return _figure(records if moved else [], draw, path,
                   "no migrations measured (one window pair, or --no-migration)")
