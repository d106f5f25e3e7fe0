"""Score one contributed program, isolated in its own sandbox, on the standard suite.

Each (dataset, scenario) gets a fresh child (eplb_bench.evaluation.sandbox, inside the isolation
of eplb_bench.evaluation.isolation), so a program that hangs, crashes or exhausts its memory on
one dataset ends that dataset with its status and leaves the others untouched.
Scoring, validation and records are the runner's, exactly as for an in-process
balancer, with the previous placement and a report handed to programs that take
them; only the runtime's origin differs: the parent's clock, less the transfer.

Two splits: `public`, the shipped datasets; `heldout`, fresh draws of every synthetic
suite dataset (eplb_bench.data.suite.heldout_dataset) with seeds drawn at run time, which a
program that memorized the public windows cannot know.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from eplb_bench.reports.standings import balancer_summary
from eplb_bench.core.record import Record
from eplb_bench.core.registry import AlgorithmInfo, file_sha256, program_name
from eplb_bench.evaluation.runner import BalancerFailure, Job, job_records, one_line, run_records
from eplb_bench.evaluation.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, IsolatedProgram
from eplb_bench.data.suite import SUITE, heldout_datasets, heldout_seed

SPLITS = ("public", "heldout")


def program_info(path: str | Path, program: IsolatedProgram | None = None) -> AlgorithmInfo:
    """The balancer entry of a program file: named by its file name (`fast.py`, never a
    registered balancer's name), calling the child, with the keywords it takes."""
    return AlgorithmInfo(name=program_name(path), function=program, description=f"{path}, isolated",
                         devices=("cpu",), source=str(path), accepts=program.accepts if program else frozenset(),
                         source_hash=file_sha256(path))


def evaluate_one(path: str | Path, dataset, scenario, timeout: float, memory_mb: float, isolation: str) -> list[Record]:
    """The records of one (dataset, scenario) (one per scored pair under the
    cross-workload protocol): the runner's, with the child's timing parts."""
    program = IsolatedProgram(path, timeout=timeout, memory_mb=memory_mb, isolation=isolation)
    job = Job(program_info(path), dataset, scenario)
    try:
        program.start(dataset.num_layers, dataset.num_logical, scenario.num_replicas, calls=dataset.num_windows)
        # Only a started child knows which keywords the program takes.
        records = run_records(Job(program_info(path, program), dataset, scenario))
    except BalancerFailure as failure:  # at the start: the runner records the calls' failures itself
        records = failed_records(job, failure.status, f"start: {failure}")
    except Exception as exc:  # a hole in the protocol's checks must cost one scenario, not the run
        records = failed_records(job, "invalid", f"unreadable child: {type(exc).__name__}: {exc}")
    finally:
        program.close()
    summary = program.summary()
    for record in records:
        record.isolation = isolation
        record.isolated = summary
    return records


def failed_records(job: Job, status: str, reason: str) -> list[Record]:
    return [dataclasses.replace(record, status=status, error=one_line(reason)) for record in job_records(job)]


def evaluate_program(path: str | Path, targets: Iterable[tuple], timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB, isolation: str = "namespaces") -> Iterator[Record]:
    """The records of every (dataset, scenario) in `targets` (the public split), yielded as each finishes."""
    for dataset, scenario in targets:
        for record in evaluate_one(path, dataset, scenario, timeout, memory_mb, isolation):
            record.split = "public"
            yield record


def heldout_targets(names: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """(suite dataset, fresh seed) for each synthetic suite dataset named (default: all)."""
    return [(name, heldout_seed()) for name in (list(SUITE) if names is None else names)]


def evaluate_heldout(path: str | Path, draws: list[tuple[str, int]], scenarios_of, timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB, isolation: str = "namespaces",
                     progress=None) -> list[Record]:
    """Records of the held-out split, all returned at the end, each with its
    `heldout_seed` only then. `scenarios_of(dataset)` gives the scenarios to score;
    `progress(record)` sees each record as it finishes, without its seed."""
    records, seeds = [], []
    for (_, seed), dataset in zip(draws, heldout_datasets(draws)):
        for scenario in scenarios_of(dataset):
            for record in evaluate_one(path, dataset, scenario, timeout, memory_mb, isolation):
                record.split = "heldout"
                if progress is not None:
                    progress(record)
                records.append(record)
                seeds.append(seed)
    for record, seed in zip(records, seeds):
        record.heldout_seed = seed
    return records


def summary(records: list[Record]) -> dict:
    """The overall result: the leaderboard's summary of one balancer (means over the
    scored scenarios), with the program's name and the count of each status."""
    overall = balancer_summary(records, scenarios_total=len(records))
    return {"program": overall["algorithm"], "split": records[0].split if records else None,
            "isolation": records[0].isolation if records else None, "scenarios": len(records),
            "scored": overall["scenarios_ok"], "statuses": dict(Counter(r.status for r in records)),
            **{key: overall[key] for key in ("balancedness_gpu", "runtime_ms", "scores")}}


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
