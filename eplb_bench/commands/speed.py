"""The speed command(s)."""


from __future__ import annotations

import sys

from eplb_bench.commands.common import (
    UsageError,
    resolve_algorithms,
    resolve_datasets,
    resolve_device,
    scenarios_for,
)
from eplb_bench.evaluation.speed import format_speed, time_scenario


def command_bench_speed(args) -> int:
    if args.calls < 1:
        raise UsageError("--calls must be at least 1")
    device = resolve_device(args.device)
    algorithms = resolve_algorithms(args.algorithms)
    names = [info.name for info in algorithms]
    if args.reference not in names:
        raise UsageError(f"--reference {args.reference!r} is not among --algorithms ({', '.join(names)})")
    datasets = resolve_datasets(args.datasets)
    rows = []
    for dataset in datasets:
        for scenario in scenarios_for(dataset, None):
            rows.append(time_scenario(algorithms, dataset, scenario, device, args.calls, args.previous))
            print(f"  {dataset.name} {scenario.name or scenario.label()}: done", file=sys.stderr, flush=True)
    handed = "; previous placement handed over" if args.previous else ""
    print(f"median ms of {args.calls} calls on {device}{handed}; ratios = balancer / {args.reference}")
    print(format_speed(rows, names, args.reference))
    return 0
