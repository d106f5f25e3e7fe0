"""The gate command(s)."""


from __future__ import annotations

import sys

from eplb_bench.commands.common import UsageError
from eplb_bench.tracking.gate import (
    GateError,
    format_gate,
    gate,
)


def command_gate(args) -> int:
    for name in ("track_threshold", "time_factor", "memory_factor"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    try:
        changes, summary = gate(args.base, args.head, config=args.config, machine=args.machine, bench=args.bench,
                                quick=args.quick, rerun=args.rerun, compare_only=args.compare_only,
                                track_threshold=args.track_threshold, time_factor=args.time_factor,
                                memory_factor=args.memory_factor)
    except GateError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 1
    print(format_gate(changes, summary, args.track_threshold, args.time_factor, args.memory_factor))
    return 1 if changes else 0
