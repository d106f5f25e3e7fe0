"""Run balancers over datasets: plan on window i, score on window i+1 (next-window);
or, for collections of static workloads, plan on workload A, score on workload B
for the pairs the manifest names and each workload in-sample (cross-workload).

For every (balancer, dataset, scenario, device) the runner calls the balancer once
per window pair (more with `repeat`), after one untimed warm-up call; validates
every placement; checks that the balancer left its input alone; scores the
placement on the next window and in-sample; and returns one flat record.
A balancer that raises gets status `error`, one that returns a bad placement or
changes its input `invalid`; neither stops the run.
"""

from __future__ import annotations

import dataclasses
import datetime as _datetime
import math
import secrets
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from eplb_bench import __version__
from eplb_bench.core.contract import (
    PREVIOUS_PLACEMENT_KEYWORD,
    REPORT_KEYWORD,
    Placement,
    PlacementError,
    Scenario,
    as_placement,
    validate_placement,
)
from eplb_bench.data.dataset import Dataset
from eplb_bench.data.predictors import Predictor, predicted_windows
from eplb_bench.data.manifests import stored_lower_bounds
from eplb_bench.core.machine import harness_commit, machine_identity
from eplb_bench.core.record import CROSS_WORKLOAD, Record
from eplb_bench.core.registry import AlgorithmInfo, algorithm_info, file_algorithm_info, list_algorithms
from eplb_bench.core.scoring import all_scores
from eplb_bench.core.simulate import bound_metrics, internode_share, placement_metrics
from eplb_bench.data.models import dataset_expert_shape
from eplb_bench.data.steps import synthetic_steps, workload_replay, workload_steps
from eplb_bench.evaluation.replay import (
    Chain,
    CostSettings,
    Deployment,
    Planner,
    Trace,
    accounted,
    advance,
    chains,
    contiguous_ms,
    history_load,
    oracle_ms,
    placement_key,
)


class BalancerFailure(Exception):
    """A balancer raised or misbehaved; `status` is 'error' or 'invalid' (and, for a
    program in a separate process, 'timeout', 'crash' or 'memory')."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Job:
    """One unit of work: a balancer on one scenario of one dataset, on one device."""

    algorithm: AlgorithmInfo
    dataset: Dataset
    scenario: Scenario
    device: str = "cpu"
    predictor: Predictor = Predictor()
    # Hand the previous window's placement to balancers that accept `prev_phy2log`.
    migration: bool = True
    # Jobs that ran at once on this machine (or cluster): recorded with the host.
    concurrent_jobs: int = 1
    # Replay under the cost model (run --cost-model): None leaves it out.
    cost: CostSettings | None = None


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line of at most `limit` characters, control characters (terminal
    escapes included) turned into spaces."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(info: AlgorithmInfo, weight: torch.Tensor, scenario: Scenario, prev_phy2log: torch.Tensor | None = None,
               report: dict | None = None):
    """Call the balancer once on `weight`; return (output, seconds).

    `prev_phy2log` and `report` (a dict the balancer may fill) are passed as
    keywords when given. Timing synchronizes CUDA before and after the call.
    Raises BalancerFailure('error') when the balancer raises.
    """
    extra = {} if prev_phy2log is None else {PREVIOUS_PLACEMENT_KEYWORD: prev_phy2log}
    if report is not None:
        extra[REPORT_KEYWORD] = report
    _synchronize(weight.device)
    start = time.perf_counter()
    try:
        output = info.function(
            weight, scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus, **extra
        )
        _synchronize(weight.device)
    except (KeyboardInterrupt, BalancerFailure):
        raise
    except BaseException as exc:  # untrusted code, SystemExit included: record, never crash
        raise BalancerFailure("error", f"{type(exc).__name__}: {exc}") from None
    elapsed = time.perf_counter() - start
    # A program in a sandbox (eplb_bench.evaluation.sandbox) is timed by the parent, less the transfer.
    measured = getattr(info.function, "last_call_seconds", None)
    seconds = elapsed if measured is None else measured
    if not (isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0):
        raise BalancerFailure("invalid", f"the call's runtime {seconds!r} is not a finite, non-negative time")
    return output, seconds


def checked_placement(output, weight: torch.Tensor, scenario: Scenario):
    """The balancer's output as a validated Placement of its own copies; BalancerFailure otherwise."""
    try:
        placement = as_placement(output)
        validate_placement(
            *placement,
            num_logical=weight.shape[1],
            num_replicas=scenario.num_replicas,
            num_gpus=scenario.num_gpus,
            num_layers=weight.shape[0],
        )
    except PlacementError as exc:
        raise BalancerFailure("invalid", str(exc)) from None
    except Exception as exc:  # e.g. tensors on a device that cannot be read
        raise BalancerFailure("invalid", f"unusable output: {type(exc).__name__}: {exc}") from None
    return placement


# Log-sd of the factor each expert's load is scaled by in an untimed warm-up or a timed
# repeat: the loads keep their size and skew, but no entry is any window's.
DISGUISE_SIGMA = 0.25


def disguised(weight: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for `weight` [L, E] that no cache of earlier inputs can answer: each
    layer's experts in a fresh random order, each load scaled by its own lognormal
    factor (rounded for counts). Returns (stand-in [L, E], order [L, E]): expert j of
    the stand-in is expert order[l, j] of the window.

    A rotation or a reversal (what a repeat used to get) can be undone by the program
    and answered from a cache; a permutation with scaled loads cannot be matched back.
    """
    layers, experts = weight.shape
    order = torch.argsort(torch.rand(layers, experts, generator=generator), dim=1).to(weight.device)
    factor = torch.exp(DISGUISE_SIGMA * torch.randn(layers, experts, generator=generator, dtype=torch.float64))
    scaled = weight.gather(1, order).double() * factor.to(weight.device)
    return (scaled.round() if not weight.is_floating_point() else scaled).to(weight.dtype).contiguous(), order


def renumbered(prev_phy2log: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """prev_phy2log [L, R] in the window's expert ids -> the same placement in the ids
    of a stand-in made with `order` [L, E] (see disguised)."""
    inverse = torch.argsort(order, dim=1)
    return inverse.gather(1, prev_phy2log.to(order.device))


def fresh_generator() -> torch.Generator:
    """A generator seeded from the operating system, so that no program can predict the
    stand-ins of a run."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def plan(info: AlgorithmInfo, weight: torch.Tensor, scenario: Scenario, repeat: int,
         prev_phy2log: torch.Tensor | None = None, report: dict | None = None):
    """Plan on one window, timed `repeat` times; return (placement, list of seconds).

    Args:
        weight: [num_layers, num_logical], on the run's device; never handed out itself.
        prev_phy2log: [num_layers, num_replicas], the placement in service, or None.
    The first call gets the window itself; its placement is the one scored. Repeat k
    gets a stand-in (see disguised, the previous placement renumbered to match):
    loads of the same size and skew, the same kind of work, but an input no cache of
    earlier answers can serve. Every call gets copies of its inputs, checked for changes
    afterwards, and every output is validated. `report`, when given, goes to the first
    call (see timed_call).
    """
    placement, seconds = None, []
    generator = fresh_generator()
    for attempt in range(repeat):
        source, previous = weight, prev_phy2log
        if attempt:
            source, order = disguised(weight, generator)
            previous = None if prev_phy2log is None else renumbered(prev_phy2log, order)
        given = source.clone()
        handed = None if previous is None else previous.clone()
        output, elapsed = timed_call(info, given, scenario, handed, report if attempt == 0 else None)
        seconds.append(elapsed)
        if not torch.equal(given, source):
            raise BalancerFailure("invalid", "balancer modified its input weight")
        if handed is not None and not torch.equal(handed, previous):
            raise BalancerFailure("invalid", "balancer modified its prev_phy2log")
        checked = checked_placement(output, weight, scenario)
        if placement is None:
            placement = checked
    return placement, seconds


def warm_up(info: AlgorithmInfo, weight: torch.Tensor, scenario: Scenario) -> None:
    """One untimed call on a stand-in of `weight` (see disguised): no answer to a real
    window can be prepared from it."""
    timed_call(info, disguised(weight, fresh_generator())[0], scenario)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def base_record(job: Job, repeat: int) -> Record:
    """The record of `job` before anything is measured: what, how, where and when."""
    scenario, dataset = job.scenario, job.dataset
    return Record(
        algorithm=job.algorithm.name,
        source_hash=job.algorithm.source_hash,
        dataset=dataset.name,
        data_sha256=dataset.sha256,
        scenario=scenario.name,
        num_layers=dataset.num_layers,
        num_logical=dataset.num_logical,
        **scenario.as_dict(),
        policy=scenario.policy,
        protocol=dataset.protocol,
        device=job.device,
        predictor=job.predictor.label(),
        window_steps=dataset.window_steps,
        repeat=repeat,
        migration=job.migration,
        prev_placement=previous_placement(job),
        computed_on=computed_on(job),
        eplb_bench_version=__version__,
        commit=harness_commit(),
        host={**machine_identity(job.device), "concurrent_jobs": job.concurrent_jobs},
        **({} if job.cost is None else job.cost.record_fields()),
        timestamp=_datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def previous_placement(job: Job) -> str:
    """What the balancer was told of the placement in service (the record's prev_placement)."""
    if job.dataset.protocol == CROSS_WORKLOAD:
        replayed = "; passed in the replay" if job.cost is not None and passes_previous(job) else ""
        return "none (static workloads have no order)" + replayed
    return "passed" if passes_previous(job) else ("off" if not job.migration else "not accepted")


def job_records(job: Job, repeat: int = 1) -> list[Record]:
    """The records `job` yields, before anything is measured: one under next-window;
    one per scored (plan, serve) pair under cross-workload (Dataset.scored_pairs)."""
    record = base_record(job, repeat)
    if job.dataset.protocol != CROSS_WORKLOAD:
        return [record]
    names = job.dataset.workload_names
    return [dataclasses.replace(record, plan_workload=names[plan], serve_workload=names[serve])
            for plan, serve in job.dataset.scored_pairs()]


def runtime_spread(seconds: list[float]) -> dict:
    """seconds: the timed calls -> runtime_ms (median), runtime_ms_min, _iqr and _max."""
    ms = sorted(value * 1e3 for value in seconds)
    quartiles = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"runtime_ms": statistics.median(ms), "runtime_ms_min": ms[0], "runtime_ms_max": ms[-1],
            "runtime_ms_iqr": quartiles[2] - quartiles[0]}


def accepts_previous(info: AlgorithmInfo) -> bool:
    """Whether the balancer's signature names the optional prev_phy2log keyword."""
    return PREVIOUS_PLACEMENT_KEYWORD in info.accepts


def accepts_report(info: AlgorithmInfo) -> bool:
    """Whether the balancer's signature names the optional `report` keyword."""
    return REPORT_KEYWORD in info.accepts


def passes_previous(job: Job) -> bool:
    return job.migration and accepts_previous(job.algorithm)


def computed_on(job: Job) -> str:
    """Where the balancer computes: the run's device, or the CPU for balancers that
    move a CUDA input there and back (their time includes both copies)."""
    kind = torch.device(job.device).type
    if not job.algorithm.devices:
        return f"{job.device} input (where it computes is not declared)"
    return job.device if kind in job.algorithm.devices else f"cpu (input moved from {job.device} and back)"


def migrated_slots(phy2log: torch.Tensor, prev_phy2log: torch.Tensor) -> int:
    """Slots, over all layers, whose expert differs between two placements [L, R]."""
    return int((phy2log != prev_phy2log).sum())


def run_job(job: Job, repeat: int = 1) -> Record:
    """Plan on each window but the last, score on the next one; one record.

    The balancer plans on the predictor's view of window i (window i itself by
    default); scoring is on the real windows i + 1 (next) and i (in-sample).
    Metrics are means over window pairs; runtime_ms is the median of all timed calls;
    migrated_replicas is the mean, over rebalances after the first, of the slots
    (all layers together) whose expert changed.
    """
    if job.dataset.protocol == CROSS_WORKLOAD:
        raise ValueError(f"{job.dataset.name} holds static workloads: run it with run_records")
    record = base_record(job, repeat)
    scenario = job.scenario
    windows = job.dataset.windows.to(job.device)
    planned = predicted_windows(windows, job.predictor)
    next_window, in_sample, shares, seconds, migrated, reports, bounded = [], [], [], [], [], [], []
    lower = stored_lower_bounds(job.dataset, scenario)
    if lower is not None and bool(lower[:-1].isnan().any()):
        lower = None  # bounds for some in-sample window are missing
    window, previous, placements = None, None, []
    routing = (job.dataset.routing.top_k, job.dataset.routing.num_groups, job.dataset.routing.topk_groups)
    replaying = None if job.cost is None else HistoryReplay(job)
    try:
        warm_up(job.algorithm, planned[0], scenario)
        for window in range(windows.shape[0] - 1):
            handed = previous if passes_previous(job) else None
            report = {} if accepts_report(job.algorithm) else None
            placement, elapsed = plan(job.algorithm, planned[window], scenario, repeat, handed, report)
            if report is not None:
                reports.append(report)
            seconds.extend(elapsed)
            placements.append(placement)
            if replaying is not None:
                replaying.planned(window, placement)
            phy2log, logcnt = placement.phy2log.to(job.device), placement.logcnt.to(job.device)
            if previous is not None:
                migrated.append(migrated_slots(phy2log, previous))
            previous = phy2log
            next_window.append(placement_metrics(windows[window + 1], phy2log, logcnt, scenario.num_gpus, scenario.num_nodes))
            in_sample.append(placement_metrics(windows[window], phy2log, logcnt, scenario.num_gpus, scenario.num_nodes))
            if lower is not None:
                bounded.append(bound_metrics(windows[window], phy2log, logcnt, scenario.num_gpus,
                                             lower[window].to(windows.device)))
            shares.append(internode_share(windows[window + 1], phy2log, logcnt, scenario.num_nodes, *routing))
    except BalancerFailure as failure:
        where = f"window {window}: " if window is not None else "warm-up: "
        return dataclasses.replace(record, status=failure.status, error=one_line(where + str(failure)))
    record = dataclasses.replace(
        record,
        **runtime_spread(seconds),
        windows_scored=len(next_window),
        balancedness_gpu=_mean([m["balancedness_gpu"] for m in next_window]),
        balancedness_gpu_insample=_mean([m["balancedness_gpu"] for m in in_sample]),
        balancedness_slot=_mean([m["balancedness_slot"] for m in next_window]),
        balancedness_slot_insample=_mean([m["balancedness_slot"] for m in in_sample]),
        balancedness_node=_mean([m["balancedness_node"] for m in next_window]),
        internode_share=_mean(shares),
        migrated_replicas=_mean(migrated) if migrated else None,
        balancedness_ceiling=_mean([m["balancedness_ceiling"] for m in bounded]) if bounded else None,
        optimality_gap=_mean([m["optimality_gap"] for m in bounded]) if bounded else None,
        bound_policy="global" if bounded else None,
        balancer_report=reports or None,
    )
    record.scores = all_scores(record, record.runtime_ms / 1e3)
    if replaying is not None:
        record = with_replay(record, replaying.finished)
    return record


def run_records(job: Job, repeat: int = 1) -> list[Record]:
    """Every record of `job` (see job_records), under either protocol."""
    if job.dataset.protocol == CROSS_WORKLOAD:
        return run_cross_workload(job, repeat)
    return [run_job(job, repeat)]


def run_cross_workload(job: Job, repeat: int = 1) -> list[Record]:
    """Plan once on every workload, score each placement on the workloads it is paired
    with and in-sample; one record per pair.

    A record's balancedness_gpu is on the workload served, its _insample on the one
    planned on; its runtime is the plan's; its ceiling and gap are the plan's
    in-sample, as under next-window. No placement is handed on (the workloads have
    no order), so nothing migrates. A balancer that fails on one workload fails that
    workload's records only.
    """
    records, pairs = job_records(job, repeat), job.dataset.scored_pairs()
    scenario, names = job.scenario, job.dataset.workload_names
    windows = job.dataset.windows.to(job.device)
    lower = stored_lower_bounds(job.dataset, scenario)
    routing = (job.dataset.routing.top_k, job.dataset.routing.num_groups, job.dataset.routing.topk_groups)
    try:
        warm_up(job.algorithm, windows[0], scenario)
    except BalancerFailure as failure:
        return [dataclasses.replace(r, status=failure.status, error=one_line(f"warm-up: {failure}")) for r in records]
    planned: dict[int, tuple | BalancerFailure] = {}
    broken = None   # why no workload can be planned any more
    for workload in dict.fromkeys(plan_index for plan_index, _ in pairs):
        if broken is not None:
            planned[workload] = broken
            continue
        report = {} if accepts_report(job.algorithm) else None
        try:
            planned[workload] = plan(job.algorithm, windows[workload], scenario, repeat, None, report) + (report,)
        except BalancerFailure as failure:
            planned[workload] = failure
            broken = restarted(job, windows[workload], failure, names[workload])
    scored, memo = [], {}
    for record, (plan_index, serve_index) in zip(records, pairs):
        outcome = planned[plan_index]
        if isinstance(outcome, BalancerFailure):
            scored.append(dataclasses.replace(record, status=outcome.status,
                                              error=one_line(f"workload {names[plan_index]}: {outcome}")))
            continue
        placement, seconds, report = outcome
        phy2log, logcnt = placement.phy2log.to(job.device), placement.logcnt.to(job.device)
        served = placement_metrics(windows[serve_index], phy2log, logcnt, scenario.num_gpus, scenario.num_nodes)
        in_sample = placement_metrics(windows[plan_index], phy2log, logcnt, scenario.num_gpus, scenario.num_nodes)
        bound = lower[plan_index] if lower is not None and not bool(lower[plan_index].isnan().any()) else None
        bounded = None if bound is None else bound_metrics(windows[plan_index], phy2log, logcnt, scenario.num_gpus,
                                                           bound.to(windows.device))
        record = dataclasses.replace(
            record,
            **runtime_spread(seconds),
            windows_scored=1,
            balancedness_gpu=served["balancedness_gpu"],
            balancedness_gpu_insample=in_sample["balancedness_gpu"],
            balancedness_slot=served["balancedness_slot"],
            balancedness_slot_insample=in_sample["balancedness_slot"],
            balancedness_node=served["balancedness_node"],
            internode_share=internode_share(windows[serve_index], phy2log, logcnt, scenario.num_nodes, *routing),
            balancedness_ceiling=None if bounded is None else bounded["balancedness_ceiling"],
            optimality_gap=None if bounded is None else bounded["optimality_gap"],
            bound_policy=None if bounded is None else "global",
            balancer_report=None if report is None else [report],
        )
        record.scores = all_scores(record, record.runtime_ms / 1e3)
        if job.cost is not None:
            oracle = planned[serve_index]
            record = with_replay(record, lambda: workload_modeled(
                job, plan_index, serve_index, placement, None if isinstance(oracle, BalancerFailure) else oracle[0],
                memo))
        scored.append(record)
    return scored


# ---------------------------------------------------------------- replay under the cost model


def with_replay(record: Record, modeled: Callable[[], dict]) -> Record:
    """`record` with the replay's fields (`modeled()`); a balancer failing in a replay's
    plan fails the record, its measured balance kept."""
    try:
        return dataclasses.replace(record, **modeled())
    except BalancerFailure as failure:
        return dataclasses.replace(record, status=failure.status, error=one_line(f"replay: {failure}"))


def deployment_of(job: Job) -> Deployment:
    """The cluster, routing, expert shape and profile a job's replay is modeled on."""
    routing = job.dataset.routing
    shape = dataset_expert_shape(job.dataset.meta, job.dataset.name)
    return Deployment(job.scenario.num_gpus, job.scenario.num_nodes,
                      (routing.top_k, routing.num_groups, routing.topk_groups), shape, job.cost.profile)


def replay_planner(job: Job, trace: Trace, memo: dict, history_id: Callable[[int], object],
                   seconds: list[float]) -> Planner:
    """The balancer as the replay calls it: at a step, on the predictor's view of the
    history, told the placement in service when it takes prev_phy2log; each call's time
    is appended to `seconds`. Plans are kept in `memo` by (history_id(step), step,
    placement replaced): one plan serves every interval (and, for static workloads,
    every pair) that needs it."""
    floating = job.dataset.windows.is_floating_point()

    def plan_at(step: int, current: torch.Tensor | None):
        previous = current if passes_previous(job) else None
        key = (history_id(step),) + placement_key(step, previous)
        if key not in memo:
            weight = history_load(trace, step, job.predictor)
            weight = (weight.double() if floating else weight).to(job.device)
            given = None if previous is None else previous.to(job.device)
            try:
                memo[key], elapsed = plan(job.algorithm, weight, job.scenario, 1, given)
                seconds.extend(elapsed)
            except BalancerFailure as failure:
                raise BalancerFailure(failure.status, f"step {step}: {failure}") from None
        return memo[key]
    return plan_at


def modeled_fields(job: Job, trace: Trace, planned: list[Chain], oracle: list[tuple[int, Placement]] | None,
                   seconds: list[float]) -> dict:
    """The record's cost-model fields: every interval's chain accounted (the first leads),
    the contiguous baseline, the oracle (None when the balancer failed on its plan), and
    the median runtime of the replay's calls (`seconds`; none when every plan was the run's)."""
    deployment = deployment_of(job)
    baseline = contiguous_ms(trace, deployment)
    entries = [accounted(trace, chain, deployment, baseline) for chain in planned]
    best = oracle_ms(trace, oracle, deployment) if oracle else None
    lead = entries[0]
    return {
        "modeled_step_ms": lead["modeled_step_ms"], "migration_ms": lead["migration_ms"],
        "modeled_speedup": lead["modeled_speedup"], "contiguous_step_ms": baseline, "oracle_step_ms": best,
        "oracle_speedup": None if best is None else baseline / best, "replayed_steps": trace.served,
        "replay": entries, "replay_runtime_ms": statistics.median(seconds) * 1e3 if seconds else None,
    }


class HistoryReplay:
    """The replay of a load history (docs/costmodel.md), made alongside the run: its
    steps regenerated; service from the end of window 0 under the plan on window 0;
    plans on windows of window_steps steps. The run hands over each of its plans as it
    makes it (`planned`), and the replay's own plans due before the run's next one are
    made then, so that every call, the run's and the replay's, comes in step order and
    none sees a step it is to serve. The oracle's plans, on the windows they serve,
    come last (`finished`).

    The run's plans are the replay's at window ends where the chain agrees (placements[i],
    made at the end of window i, replacing placements[i - 1]), and the oracle's where it
    plans on the windows themselves (predictor last). A balancer failing in the replay
    stops the replay only: `finished` raises it."""

    def __init__(self, job: Job):
        self.job, self.width = job, job.dataset.window_steps
        self.trace = Trace(synthetic_steps(job.dataset), self.width, self.width)
        self.memo, self.seconds, self.placements = {}, [], []
        self.plan_at = replay_planner(job, self.trace, self.memo, lambda step: None, self.seconds)
        self.chains, self.failure = None, None

    def planned(self, window: int, placement: Placement) -> None:
        """The run's plan on window `window` (in service from the window's end), and every
        replay plan due before the run's next one."""
        previous = self.placements[-1] if self.placements else None
        replaced = previous.phy2log if previous is not None and passes_previous(self.job) else None
        self.memo[(None,) + placement_key((window + 1) * self.width, replaced)] = placement
        self.placements.append(placement)
        if self.chains is None:
            self.chains = chains(self.trace, self.job.cost.intervals, placement)
        self.advance((window + 2) * self.width)

    def advance(self, until: int) -> None:
        if self.failure is None:
            try:
                advance(self.chains, self.plan_at, until)
            except BalancerFailure as failure:
                self.failure = failure

    def finished(self) -> dict:
        """The record's cost-model fields (modeled_fields), the last rebalances and the oracle's plans made."""
        self.advance(self.trace.steps.shape[0])
        if self.failure is not None:
            raise self.failure
        job = self.job
        oracle, current = [], self.placements[0]
        for window in range(1, job.dataset.num_windows):
            if job.predictor.kind == "last" and window < len(self.placements):
                current = self.placements[window]
            else:
                given = current.phy2log.to(job.device) if passes_previous(job) else None
                try:
                    current = plan(job.algorithm, job.dataset.windows[window].to(job.device), job.scenario, 1,
                                   given)[0]
                except BalancerFailure as failure:
                    raise BalancerFailure(failure.status, f"oracle on window {window}: {failure}") from None
            oracle.append((window * self.width, current))
        return modeled_fields(job, self.trace, self.chains, oracle, self.seconds)


def workload_modeled(job: Job, plan_index: int, serve_index: int, placement: Placement, in_sample: Placement | None,
                     memo: dict) -> dict:
    """modeled_fields of one (plan, serve) pair of static workloads: history_steps steps
    drawn around the planned workload, then the served workload's steps; service starts
    under the plan on the planned workload; the oracle is the plan on the served one.
    The pair's rebalances are planned in step order, every interval together."""
    settings = workload_replay(job.dataset)
    width = settings.history_steps
    steps = torch.cat([workload_steps(job.dataset, plan_index)[:width], workload_steps(job.dataset, serve_index)[width:]])
    trace = Trace(steps, width, width)

    def history_id(step: int):
        # A history of the served workload alone is the same whoever planned before it.
        return serve_index if step >= 2 * width else (plan_index, serve_index)
    seconds = []
    planned = chains(trace, job.cost.intervals, placement)
    advance(planned, replay_planner(job, trace, memo, history_id, seconds), trace.steps.shape[0])
    return modeled_fields(job, trace, planned, None if in_sample is None else [(width, in_sample)], seconds)


def restarted(job: Job, weight: torch.Tensor, failure: BalancerFailure, workload: str) -> BalancerFailure | None:
    """After a sandboxed program's child ended (timeout, crash, memory) on one workload,
    a fresh child for the next ones, warmed up; None when it runs, else the failure that
    every later workload records. In-process balancers need nothing."""
    restart = getattr(job.algorithm.function, "restart", None)
    if failure.status not in ("timeout", "crash", "memory") or restart is None:
        return None
    try:
        restart()
        warm_up(job.algorithm, weight, job.scenario)
    except BalancerFailure as again:
        return BalancerFailure(again.status, f"not run: no fresh child after {workload} ended ({again})")
    return None


def algorithm_reference(info: AlgorithmInfo) -> str:
    """What names a balancer for another process: its registered name, or its file."""
    registered = info.name in list_algorithms() and algorithm_info(info.name) is info
    return info.name if registered else str(info.source)


def run_unit(reference: str, job: Job, repeat: int = 1, concurrent_jobs: int = 1) -> list[Record]:
    """run_records of `job` in a worker: the balancer is looked up again there by its
    reference (algorithm_reference), since a loaded function does not travel."""
    info = file_algorithm_info(reference) if reference.endswith(".py") else algorithm_info(reference)
    return run_records(dataclasses.replace(job, algorithm=info, concurrent_jobs=concurrent_jobs), repeat)


def run_jobs(jobs: Iterable[Job], repeat: int = 1) -> Iterator[Record]:
    """Records of `jobs`, yielded one by one as each finishes."""
    for job in jobs:
        yield run_job(job, repeat)
