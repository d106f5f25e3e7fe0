"""The bounds command(s)."""


from __future__ import annotations

from pathlib import Path

from eplb_bench.bounds.store import bound_summary, compute_bounds
from eplb_bench.commands.common import UsageError, check_parallel_arguments, progress_bar, resolve_datasets, warn
from eplb_bench.data.catalog import load_dataset


def command_bounds(args) -> int:
    if args.time_limit < 0 or args.jobs < 1 or args.max_variables < 0:
        raise UsageError("--time-limit and --max-variables must be >= 0 and --jobs >= 1")
    check_parallel_arguments(args.jobs, args.executor)
    datasets = resolve_datasets(args.datasets)

    bars = []   # the bar starts once compute_bounds knows how many layers it solves

    def progress(result, done, total):
        if not bars:
            bars.append(progress_bar(total, "bounds", args.quiet))
        bars[0].set_postfix_str(f"{Path(result['manifest']).stem} {result['key']} {result['policy']}", refresh=False)
        bars[0].update()

    try:
        outcome = compute_bounds(datasets, args.time_limit, args.jobs, args.executor, args.max_variables,
                                 args.force, progress)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        warn("interrupted; the bounds finished so far are stored")
        return 130
    finally:
        for bar in bars:
            bar.close()
    print(f"{outcome['done']} layer bounds computed in {outcome['seconds']:.1f} s "
          f"({outcome['skipped']} already stored; {outcome['kept']} stored bounds were stronger and stay"
          f"{'' if args.force else ', --force replaces them'})")
    print(format_bound_summary([row for name in [d.source for d in datasets]
                                for row in bound_summary(load_dataset(name))]))
    return 0


def format_bound_summary(rows: list[dict]) -> str:
    header = f"{'dataset':18s} {'scenario':20s} {'policy':13s} {'known':>11s} {'ceiling':>8s} {'solver s':>9s}  sources; MILP"
    lines = [header, "-" * len(header)]
    for row in rows:
        ceiling = "-" if row["ceiling"] is None else f"{row['ceiling']:.4f}"
        sources = ", ".join(f"{name} {count}" for name, count in row["sources"].items())
        solver = ", ".join(f"{name} {count}" for name, count in row["solver"].items())
        lines.append(f"{row['dataset']:18s} {row['scenario']:20s} {row['policy']:13s} "
                     f"{row['known']:>5d}/{row['total']:<5d} {ceiling:>8s} {row['seconds']:9.1f}  {sources}; {solver}")
    return "\n".join(lines)
