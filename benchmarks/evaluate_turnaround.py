"""Wall times of evaluation at the scale of search, from one run (not an asv benchmark):

    python benchmarks/evaluate_turnaround.py [--programs 20] [--datasets a,b] [--skip-main-job]

1. `evaluate` of one honest program over the suite: a child per target (as before children
   were reused) against children reused across datasets, alternated, medians of `--repeats`;
2. a batch of `--programs` honest programs: serially, with `--jobs 2`, on a Dask LocalCluster
   of two one-thread workers;
3. the main job (`eplb-bench run`), serially and with `--jobs 2`.
Prints seconds and the ratios. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def honest_programs(folder: Path, count: int) -> list[Path]:
    """`count` honest program files: copies of the greedy test program under their own names."""
    source = (TESTS / "programs" / "greedy.py").read_text()
    paths = []
    for index in range(count):
        path = folder / f"honest_{index:02d}.py"
        path.write_text(source + f"\n# variant {index}\n")
        paths.append(path)
    return paths


def seconds_of(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=20)
    parser.add_argument("--datasets", help="comma-separated names (default: the standard suite)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args()

    from eplb_bench.core.machine import fix_threads
    from eplb_bench.evaluation import evaluate as evaluation
    from eplb_bench.evaluation.evaluate import Limits, evaluate_programs
    from eplb_bench.evaluation.search import suite_targets

    fix_threads(1)
    targets = suite_targets(args.datasets.split(",") if args.datasets else None)
    folder = Path(tempfile.mkdtemp(prefix="eplb-turnaround-"))
    try:
        [single] = honest_programs(folder, 1)
        grouped = evaluation.child_groups
        one_each = lambda targets, least=1: [[i] for i in range(len(targets))]  # noqa: E731
        times = {"a child per target": [], "children reused": []}
        for _ in range(args.repeats):
            for label, rule in (("a child per target", one_each), ("children reused", grouped)):
                evaluation.child_groups = rule
                times[label].append(seconds_of(lambda: evaluate_programs([single], targets, Limits())))
        evaluation.child_groups = grouped
        before, after = (statistics.median(times[label]) for label in times)
        print(f"evaluate, one program, {len(targets)} targets: a child per target {before:.2f} s, "
              f"children reused {after:.2f} s (median of {args.repeats}); {before / after:.2f}x")

        batch = honest_programs(folder, args.programs)
        serial = seconds_of(lambda: evaluate_programs(batch, targets, Limits()))
        two_jobs = seconds_of(lambda: evaluate_programs(batch, targets, Limits(), jobs=2, threads=1))
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
            on_dask = seconds_of(lambda: evaluate_programs(batch, targets, Limits(), executor=address))
        print(f"batch of {args.programs} programs: serial {serial:.1f} s, --jobs 2 {two_jobs:.1f} s "
              f"({serial / two_jobs:.2f}x the throughput), Dask LocalCluster of 2 {on_dask:.1f} s "
              f"({serial / on_dask:.2f}x)")

        if not args.skip_main_job:
            command = [shutil.which("eplb-bench") or "eplb-bench", "run", "--quiet"]
            serial = seconds_of(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
            two_jobs = seconds_of(lambda: subprocess.run(command + ["--jobs", "2"], check=True,
                                                         stdout=subprocess.DEVNULL))
            print(f"main job (eplb-bench run): serial {serial:.1f} s, --jobs 2 {two_jobs:.1f} s "
                  f"({serial / two_jobs:.2f}x)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
