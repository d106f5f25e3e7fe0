"""Score contributed programs, each isolated in its own sandbox, on the standard suite.

A program's child (eplb_bench.evaluation.sandbox, inside the isolation of
eplb_bench.evaluation.isolation) serves several (dataset, scenario) targets, so that
starting Python and importing torch is paid once per child, not once per scenario:

- **A child never serves one dataset twice** (`child_groups`). Under next-window a
  second scenario of a dataset would replay windows the child has already seen, so it
  could plan window i knowing window i + 1; one dataset's scenarios go to different
  children. Nothing else is shared: each target's windows arrive one per call, as before.
- **A failure costs one target.** A child that timed out, crashed or broke the protocol
  is replaced by a fresh one for the next target; a program that cannot even be
  started (it fails to load) records that failure on every target of its child.

Scoring, validation and records are the runner's, exactly as for an in-process
balancer, with the previous placement and a report handed to programs that take
them; only the runtime's origin differs: the parent's clock, less the transfer.

Targets and programs fan out over an executor (eplb_bench.evaluation.parallel): a unit
of work is one child's targets of one program; records come back in the serial order.

Two splits: `public`, the shipped datasets; `heldout`, fresh draws of every synthetic
suite dataset (eplb_bench.data.suite.heldout_dataset) with seeds drawn at run time, which a
program that memorized the public windows cannot know.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from eplb_bench.reports.standings import balancer_summary
from eplb_bench.core.record import Record
from eplb_bench.core.registry import AlgorithmInfo, file_sha256, program_name
from eplb_bench.evaluation.parallel import map_units
from eplb_bench.evaluation.runner import BalancerFailure, Job, job_records, one_line, run_records
from eplb_bench.evaluation.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, IsolatedProgram
from eplb_bench.data.suite import SUITE, heldout_datasets, heldout_seed

SPLITS = ("public", "heldout")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What every child of an evaluation gets: seconds per call, memory, isolation."""

    timeout: float = DEFAULT_TIMEOUT
    memory_mb: float = DEFAULT_MEMORY_MB
    isolation: str = "namespaces"


def program_info(path: str | Path, program: IsolatedProgram | None = None) -> AlgorithmInfo:
    """The balancer entry of a program file: named by its file name (`fast.py`, never a
    registered balancer's name), calling the child, with the keywords it takes."""
    return AlgorithmInfo(name=program_name(path), function=program, description=f"{path}, isolated",
                         devices=("cpu",), source=str(path), accepts=program.accepts if program else frozenset(),
                         source_hash=file_sha256(path))


def target_work(target: tuple) -> int:
    """A target's (dataset, scenario) work, roughly: calls times the size of a window."""
    dataset, scenario = target
    return dataset.num_windows * dataset.num_layers * max(dataset.num_logical, scenario.num_replicas)


def child_groups(targets: list[tuple], least: int = 1) -> list[list[int]]:
    """The indices of `targets` [(dataset, scenario)] each child serves, in order.

    No group holds one dataset (by the hash of its windows) twice; there are as many
    groups as the dataset with the most targets needs, or `least` (as many as there
    are targets at most), and the work is spread evenly: heaviest target first, each
    to the lightest group that may take it.
    """
    if not targets:
        return []
    per_dataset = Counter(dataset.sha256 for dataset, _ in targets)
    count = max(max(per_dataset.values()), min(least, len(targets)))
    groups: list[list[int]] = [[] for _ in range(count)]
    loads, held = [0] * count, [set() for _ in range(count)]
    for index in sorted(range(len(targets)), key=lambda i: (-target_work(targets[i]), i)):
        key = targets[index][0].sha256
        group = min((g for g in range(count) if key not in held[g]), key=lambda g: (loads[g], g))
        groups[group].append(index)
        loads[group] += target_work(targets[index])
        held[group].add(key)
    return [sorted(group) for group in groups if group]


def failed_records(job: Job, status: str, reason: str) -> list[Record]:
    return [dataclasses.replace(record, status=status, error=one_line(reason)) for record in job_records(job)]


def evaluate_group(path: str | Path, targets: list[tuple], limits: Limits = Limits(),
                   concurrent_jobs: int = 1) -> list[list[Record]]:
    """The records of each target (one list per target, one record per scored pair
    under the cross-workload protocol), all served by one child (see the module
    docstring); each record keeps the child's timing parts of its own calls."""
    program = IsolatedProgram(path, timeout=limits.timeout, memory_mb=limits.memory_mb, isolation=limits.isolation)
    shapes = [(dataset.num_layers, dataset.num_logical, scenario.num_replicas) for dataset, scenario in targets]
    calls = sum(dataset.num_windows + 2 for dataset, _ in targets)
    results, unstartable = [], None
    try:
        for (dataset, scenario), shape in zip(targets, shapes):
            job = Job(program_info(path), dataset, scenario, concurrent_jobs=concurrent_jobs)
            mark = program.calls_so_far()
            if unstartable is not None:
                records = failed_records(job, unstartable.status, f"start: {unstartable}")
            else:
                try:
                    if not program.alive():
                        program.restart() if program.shapes else program.start(shapes, calls=calls)
                    mark = program.calls_so_far()
                    # Only a started child knows which keywords the program takes.
                    records = run_records(dataclasses.replace(job, algorithm=program_info(path, program)))
                except BalancerFailure as failure:  # at the start: the runner records the calls' failures itself
                    unstartable = failure
                    records = failed_records(job, failure.status, f"start: {failure}")
                except Exception as exc:  # a hole in the protocol's checks must cost one target, not the run
                    program.kill()
                    records = failed_records(job, "invalid", f"unreadable child: {type(exc).__name__}: {exc}")
            summary = program.summary(shape, mark)
            for record in records:
                record.isolation = limits.isolation
                record.isolated = summary
            results.append(records)
    finally:
        program.close()
    return results


def evaluate_unit(name: str, source: bytes, targets: list[tuple], limits: Limits, split: str,
                  concurrent_jobs: int = 1) -> list[list[Record]]:
    """evaluate_group on a copy of the program (`source` under its file `name`) written
    here: a worker need not see the submitter's files. Records get their `split`."""
    with tempfile.TemporaryDirectory(prefix="eplb-program-") as folder:
        path = Path(folder) / name
        path.write_bytes(source)
        results = evaluate_group(path, targets, limits, concurrent_jobs)
    for records in results:
        for record in records:
            record.split = split
    return results


def records_by_target(paths: list[str | Path], targets: list[tuple], limits: Limits = Limits(), split: str = "public",
                      jobs: int = 1, executor: str | None = None, threads: int | None = None,
                      progress: Callable[[Record], None] | None = None) -> list[list[list[Record]]]:
    """The records of every program in `paths` on every (dataset, scenario) of
    `targets`: [program][target] lists of records, as a serial run gives them.

    `jobs` local processes, one core each (eplb_bench.evaluation.parallel), or the Dask
    cluster at `executor`; `progress(record)` sees each record as its unit finishes.
    With one program the targets are split over the jobs; with several, each program's
    children are the units.
    """
    sources = [(Path(path).name, Path(path).read_bytes()) for path in paths]
    least = -(-jobs // len(paths)) if paths and (jobs > 1 or executor) else 1
    groups = child_groups(targets, least)
    units = [(program, group) for program in range(len(paths)) for group in groups]

    def finished(index, results):
        for records in results:
            for record in records:
                progress(record)

    results = map_units(evaluate_unit, [(*sources[program], [targets[i] for i in group], limits, split)
                                        for program, group in units],
                        jobs, executor, threads, finished if progress is not None else None)
    by_target = [[[] for _ in targets] for _ in paths]
    for (program, group), unit_results in zip(units, results):
        for index, records in zip(group, unit_results):
            by_target[program][index] = records
    return by_target


def evaluate_programs(paths: list[str | Path], targets: list[tuple], limits: Limits = Limits(), split: str = "public",
                      jobs: int = 1, executor: str | None = None, threads: int | None = None,
                      progress: Callable[[Record], None] | None = None) -> list[list[Record]]:
    """records_by_target with each program's records in one list, in the order of `targets`."""
    return [[record for records in per_target for record in records]
            for per_target in records_by_target(paths, targets, limits, split, jobs, executor, threads, progress)]


def evaluate_program(path: str | Path, targets: Iterable[tuple], timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB, isolation: str = "namespaces", jobs: int = 1,
                     executor: str | None = None, progress: Callable[[Record], None] | None = None) -> list[Record]:
    """The records of one program on every (dataset, scenario) in `targets` (the public split)."""
    [records] = evaluate_programs([path], list(targets), Limits(timeout, memory_mb, isolation), "public", jobs,
                                  executor, progress=progress)
    return records


def heldout_targets(names: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """(suite dataset, fresh seed) for each synthetic suite dataset named (default: all)."""
    return [(name, heldout_seed()) for name in (list(SUITE) if names is None else names)]


def heldout_records(paths: list[str | Path], draws: list[tuple[str, int]], scenarios_of, limits: Limits = Limits(),
                    jobs: int = 1, executor: str | None = None, threads: int | None = None,
                    progress: Callable[[Record], None] | None = None) -> list[list[Record]]:
    """Records of the held-out split for each program, all on the same draws, returned
    at the end, each with its `heldout_seed` only then. `scenarios_of(dataset)` gives the
    scenarios to score; `progress(record)` sees each record as it finishes, without its seed."""
    targets, seeds = [], []
    for (_, seed), dataset in zip(draws, heldout_datasets(draws)):
        for scenario in scenarios_of(dataset):
            targets.append((dataset, scenario))
            seeds.append(seed)
    results = records_by_target(paths, targets, limits, "heldout", jobs, executor, threads, progress)
    for per_target in results:
        for records, seed in zip(per_target, seeds):
            for record in records:
                record.heldout_seed = seed
    return [[record for records in per_target for record in records] for per_target in results]


def evaluate_heldout(path: str | Path, draws: list[tuple[str, int]], scenarios_of, timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB, isolation: str = "namespaces",
                     progress=None, jobs: int = 1, executor: str | None = None) -> list[Record]:
    """heldout_records of one program."""
    [records] = heldout_records([path], draws, scenarios_of, Limits(timeout, memory_mb, isolation), jobs, executor,
                                progress=progress)
    return records


def summary(records: list[Record]) -> dict:
    """The overall result: the leaderboard's summary of one balancer (means over the
    scored scenarios), with the program's name and the count of each status."""
    overall = balancer_summary(records, scenarios_total=len(records))
    return {**program_header(records), "scored": overall["scenarios_ok"],
            **{key: overall[key] for key in ("balancedness_gpu", "runtime_ms", "scores")}}


def program_header(records: list[Record]) -> dict:
    """What every result of one program's records names: program, split, isolation, the
    records and the count of each status."""
    first = records[0] if records else None
    return {"program": first.algorithm if first else None, "split": first.split if first else None,
            "isolation": first.isolation if first else None, "scenarios": len(records),
            "statuses": dict(Counter(r.status for r in records))}


def format_summary(result: dict) -> str:
    statuses = ", ".join(f"{status} {count}" for status, count in sorted(result["statuses"].items()))
    line = (f"overall ({result['split']} split): {result['program']}: {result['scored']} of {result['scenarios']} "
            f"scenarios scored ({statuses})")
    if result["scored"]:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in result["scores"].items())
        line += (f"; means over the scored ones: gpu balancedness {result['balancedness_gpu']:.4f}, "
                 f"{result['runtime_ms']:.2f} ms, {scores}")
    if result["scored"] < result["scenarios"]:
        line += "; failed scenarios score nothing, so compare only complete results"
    if result["isolation"] != "namespaces":
        line += "; NOT ISOLATED (--isolation process): a hostile program could have forged this result"
    return line
