"""Speed benchmark: median runtimes of balancers on the same inputs, in one process.

Every balancer gets the same windows of each dataset's default scenarios (as the
runner hands them over), after an untimed warm-up; calls alternate between balancers
so that a slow phase of a shared machine hits them alike. With `previous`, balancers
that accept `prev_phy2log` get their own placement of the window before, as in a
run. Ratios are balancer median / reference median.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from eplb_bench.data.dataset import Dataset
from eplb_bench.core.registry import AlgorithmInfo
from eplb_bench.evaluation.runner import (
    BalancerFailure,
    accepts_previous,
    checked_placement,
    one_line,
    timed_call,
)

DEFAULT_SPEED_ALGORITHMS = ("deepseek", "seed", "fast")


@dataclass
class SpeedRow:
    dataset: str
    scenario: str
    median_ms: dict[str, float | None]
    errors: dict[str, str]


def time_scenario(algorithms: list[AlgorithmInfo], dataset: Dataset, scenario, device: str, calls: int,
                  previous: bool = False) -> SpeedRow:
    """Median wall time of each balancer over `calls` calls, windows taken in turn.

    A balancer that raises or returns an invalid placement gets no time and an error.
    """
    windows = dataset.windows.to(device)
    seconds: dict[str, list[float]] = {info.name: [] for info in algorithms}
    placed: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    for call in range(calls + 1):
        weight = windows[call % windows.shape[0]]
        for info in algorithms:
            if info.name in errors:
                continue
            handed = placed.get(info.name) if previous and accepts_previous(info) else None
            try:
                output, elapsed = timed_call(info, weight.clone(), scenario, handed)
                placed[info.name] = checked_placement(output, weight, scenario).phy2log.to(device)
            except BalancerFailure as failure:
                errors[info.name] = one_line(f"{failure.status}: {failure}")
                continue
            if call:  # call 0 is the warm-up
                seconds[info.name].append(elapsed)
    medians = {name: (statistics.median(values) * 1e3 if values else None) for name, values in seconds.items()}
    return SpeedRow(dataset.name, scenario.name or scenario.label(), medians, errors)


def format_speed(rows: list[SpeedRow], names: list[str], target: str) -> str:
    """A text table: one column of median ms per balancer, then ratios name / target."""
    others = [name for name in names if name != target]
    header = f"{'dataset':18s} {'scenario':28s}" + "".join(f"{name + ' ms':>16s}" for name in names)
    header += "".join(f"{name + '/' + target:>18s}" for name in others)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [f"{row.median_ms[name]:16.2f}" if row.median_ms[name] is not None else f"{'failed':>16s}" for name in names]
        for name in others:
            mine, theirs = row.median_ms[target], row.median_ms[name]
            cells.append(f"{theirs / mine:17.1f}x" if mine and theirs else f"{'-':>18s}")
        lines.append(f"{row.dataset:18s} {row.scenario:28s}" + "".join(cells))
        for name, error in row.errors.items():
            lines.append(f"  {name}: {error}")
    return "\n".join(lines)
