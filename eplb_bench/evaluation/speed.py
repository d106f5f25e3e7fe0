"""Speed benchmark: median runtimes of balancers on the same inputs, in one process.

Every balancer gets the same windows of each dataset's default scenarios (as the
runner hands them over), after an untimed warm-up; calls alternate between balancers
so that a slow phase of a shared machine hits them alike, in a fresh order at every
window (shuffled, seeded by the window's index), so that no balancer always runs right
after the same one: a call that follows the same code (`fast_spread` after `fast`)
finds its caches warm and ran twice as fast as one that follows another balancer's. With `previous`, balancers
that accept `prev_phy2log` get their own placement of the window before, as in a
run. Ratios are balancer median / reference median.
"""

from __future__ import annotations

import math
import random
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
        order = list(algorithms)
        random.Random(call).shuffle(order)
        for info in order:
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


def format_ratio(ratio: float) -> str:
    """A ratio with three significant digits whatever its size (speed ratios span 1e-4 to 1e4)."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def format_speed(rows: list[SpeedRow], names: list[str], target: str) -> str:
    """A text table: one column of median ms per balancer, then ratios name / target,
    and a last line with each ratio's geometric mean over the rows that timed both."""
    others = [name for name in names if name != target]
    width = max([16] + [len(name) + 4 for name in names])
    ratio_width = max([12] + [len(name) + len(target) + 3 for name in others])
    header = f"{'dataset':18s} {'scenario':28s}" + "".join(f"{name + ' ms':>{width}s}" for name in names)
    header += "".join(f"{name + '/' + target:>{ratio_width}s}" for name in others)
    lines = [header, "-" * len(header)]
    logs: dict[str, list[float]] = {name: [] for name in others}
    for row in rows:
        cells = [f"{row.median_ms[name]:{width}.2f}" if row.median_ms[name] is not None else f"{'failed':>{width}s}"
                 for name in names]
        for name in others:
            mine, theirs = row.median_ms[target], row.median_ms[name]
            if mine and theirs:
                logs[name].append(math.log(theirs / mine))
            cells.append(f"{format_ratio(theirs / mine):>{ratio_width}s}" if mine and theirs else f"{'-':>{ratio_width}s}")
        lines.append(f"{row.dataset:18s} {row.scenario:28s}" + "".join(cells))
        for name, error in row.errors.items():
            lines.append(f"  {name}: {error}")
    means = [format_ratio(math.exp(sum(values) / len(values))) if values else "-" for values in logs.values()]
    lines.append(f"{'geometric mean':47s}" + " " * (width * len(names)) + "".join(f"{m:>{ratio_width}s}" for m in means))
    return "\n".join(lines)
