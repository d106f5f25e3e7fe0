"""The list and run commands."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

from eplb_bench.commands.common import (
    UsageError,
    check_parallel_arguments,
    progress_bar,
    resolve_algorithms,
    resolve_datasets,
    resolve_device,
    scenario_override,
    scenarios_for,
    warn,
)
from eplb_bench.core.costmodel import load_profile
from eplb_bench.core.registry import algorithm_info, broken_algorithms, list_algorithms
from eplb_bench.core.results import ResultsWriter, read_results
from eplb_bench.data.predictors import parse_predictor
from eplb_bench.core.record import CROSS_WORKLOAD
from eplb_bench.data.predictors import Predictor
from eplb_bench.data.models import dataset_expert_shape
from eplb_bench.data.steps import steps_available
from eplb_bench.evaluation.replay import DEFAULT_INTERVAL, CostSettings
from eplb_bench.evaluation.parallel import ExecutorError, map_units
from eplb_bench.evaluation.runner import Job, algorithm_reference, job_records, run_unit
from eplb_bench.reports.text import format_table


def command_list(args) -> int:
    for name in list_algorithms():
        info = algorithm_info(name)
        flags = ", ".join(info.devices) + (", slow" if info.slow else "")
        print(f"{name:24s} [{flags}] {info.description}")
    broken = broken_algorithms()
    if broken:
        print("\nnot loaded:")
        for name, reason in sorted(broken.items()):
            print(f"{name:24s} {' '.join(reason.split())}")
    return 0


def job_label(job: Job) -> str:
    """A job as one short line: balancer, dataset and scenario name (or shape)."""
    return f"{job.algorithm.name} on {job.dataset.name} {job.scenario.name or job.scenario.label()}"


def resumed(path: str, jobs: list[Job], repeat: int) -> tuple[list, list[Job]]:
    """The records `path` already holds, and the jobs whose measurement none of them is."""
    if not os.path.exists(path):
        return [], jobs
    read = read_results([path])
    for line in read.skipped:
        warn(f"{line} (skipped)")
    done = {record.identity() for record in read.records}
    return read.records, [job for job in jobs
                          if not all(record.identity() in done for record in job_records(job, repeat))]


DIGITS = re.compile(r"[0-9]+")


def parse_intervals(text: str) -> tuple[int, ...]:
    """`K[,K...]` -> the distinct positive intervals in the order given; UsageError otherwise."""
    parts = [part.strip() for part in text.split(",")]
    intervals = tuple(dict.fromkeys(int(part) for part in parts)) if all(map(DIGITS.fullmatch, parts)) else ()
    if not intervals or min(intervals) < 1:
        raise UsageError(f"--interval: expected positive step counts K[,K...], got {text!r}")
    return intervals


def cost_settings(profile: str | None, intervals: str, datasets: list) -> CostSettings | None:
    """The replay settings of `run --cost-model`, every dataset checked for an expert shape
    and per-step loads first; None without --cost-model."""
    if profile is None:
        if intervals != str(DEFAULT_INTERVAL):
            raise UsageError("--interval needs --cost-model PROFILE")
        return None
    settings = CostSettings(load_profile(profile), parse_intervals(intervals))
    for dataset in datasets:
        dataset_expert_shape(dataset.meta, dataset.name)
        reason = steps_available(dataset)
        if reason:
            raise UsageError(f"--cost-model: {reason}")
    return settings


def check_node_size(cost: CostSettings, jobs: list[Job]) -> None:
    """UsageError unless every scenario has the profile's GPUs per node: the profile's
    rates are those of that node."""
    for job in jobs:
        per_node = job.scenario.num_gpus // job.scenario.num_nodes
        if per_node != cost.profile.gpus_per_node:
            raise UsageError(f"--cost-model {cost.profile.name}: {job.dataset.name} {job.scenario.name or ''} has "
                             f"{per_node} GPUs per node, the profile {cost.profile.gpus_per_node} (copy the profile "
                             "and set gpus_per_node and its rates)")


def command_run(args) -> int:
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if args.window_steps < 1:
        raise UsageError("--window-steps must be at least 1")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out FILE")
    check_parallel_arguments(args.jobs, args.executor)
    try:
        predictor = parse_predictor(args.predictor)
    except ValueError as exc:
        raise UsageError(f"--predictor: {exc}") from None
    device = resolve_device(args.device)
    algorithms = resolve_algorithms(args.algorithms)
    datasets = resolve_datasets(args.datasets, args.window_steps, args.imported)
    override = scenario_override(args)
    static = [dataset.name for dataset in datasets if dataset.protocol == CROSS_WORKLOAD]
    if static and predictor != Predictor():
        # Run with the plain plan, they would make a second standings entry of every balancer.
        warn(f"--predictor {args.predictor} does not apply to {', '.join(static)} (static workloads, "
             f"{CROSS_WORKLOAD} protocol): left out")
        datasets = [dataset for dataset in datasets if dataset.protocol != CROSS_WORKLOAD]
        if not datasets:
            raise UsageError(f"--predictor {args.predictor}: every dataset named holds static workloads")
    cost = cost_settings(args.cost_model, args.interval, datasets)
    jobs = [
        Job(info, dataset, scenario, device, predictor, migration=not args.no_migration, cost=cost)
        for dataset in datasets
        for scenario in scenarios_for(dataset, override)
        for info in algorithms
    ]
    if cost is not None:
        check_node_size(cost, jobs)
    records = []
    if args.resume:
        records, jobs = resumed(args.out, jobs, args.repeat)
        warn(f"resuming: {len(records)} record(s) in {args.out}, {len(jobs)} job(s) to run", "note")
    out = ResultsWriter(args.out) if args.out else None
    try:
        with progress_bar(len(jobs), "run", args.quiet) as bar:
            def finished(index, job_records_done):
                for record in job_records_done:
                    records.append(record)
                    if out:
                        out.append(record)   # as each job ends: an interrupted run keeps what it finished
                    if args.json:
                        bar.write(record.to_json(), file=sys.stdout)
                bar.set_postfix_str(job_label(jobs[index]), refresh=False)
                bar.update()
            # A loaded function does not travel to a worker: its reference does (run_unit).
            units = [(algorithm_reference(job.algorithm), dataclasses.replace(job, algorithm=None), args.repeat)
                     for job in jobs]
            try:
                map_units(run_unit, units, args.jobs, args.executor, args.threads, finished)
            except ExecutorError as exc:
                raise UsageError(str(exc)) from None
    finally:
        if out:
            out.close()
    if not args.json:
        print(format_table(records, args.scorer))
        left_out = [name for name in list_algorithms() if algorithm_info(name).slow] if not args.algorithms else []
        if left_out:
            print(f"\nleft out (slow; name them with --algorithms): {', '.join(left_out)}")
    if not any(record.status == "ok" for record in records):
        warn("no balancer was scored on any scenario", "error")
        return 1
    return 0
