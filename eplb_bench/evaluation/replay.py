"""Replay a dataset step by step under the cost model (docs/costmodel.md, "Replay").

A trace is a run of steps `[T, L, E]` whose service starts at step `start` under a
first placement (installed for free). Every `interval` steps after that the balancer
rebalances: it plans on the predictor's view of the history, windows of
`history_steps` steps ending at the rebalance, and the new placement serves from
that step on, paying its migration from the placement it replaces. Each served step
costs the cost model's step time under the placement in service.

Reported per interval K (all times are means per served step, in milliseconds):

- modeled_step_ms: the step times alone;
- migration_ms: the mean migration of one rebalance (blocking), and received_experts,
  the mean (GPU, expert) copies it makes;
- modeled_speedup: contiguous_step_ms / (modeled_step_ms + rebalances x migration_ms
  / served steps), migrations blocking; modeled_speedup_overlapped, with the
  profile's overlap_share of each migration hidden behind compute;
- break_even_interval: migration_ms / (contiguous_step_ms - modeled_step_ms), the
  interval at which the amortized migration would eat the whole balance gain
  (None when the placement gains nothing).

Two references, the same for every interval: the static contiguous placement without
redundancy (contiguous_step_ms) and an oracle that plans on each window it serves
(the served workload itself for static workloads) and migrates for free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import torch

from eplb_bench.core.contract import Placement
from eplb_bench.core.costmodel import ExpertShape, HardwareProfile, contiguous_layer_seconds, layer_seconds, \
    migration_seconds
from eplb_bench.data.predictors import Predictor

# Rebalance interval in steps when none is given: one window of the shipped datasets.
DEFAULT_INTERVAL = 100
# Steps evaluated at once: a chunk's layers are stacked into one batch of rows.
STEP_CHUNK = 64


@dataclass(frozen=True)
class Deployment:
    """What the cost model needs besides the loads: the cluster's shape, routing,
    expert size and hardware profile."""

    num_gpus: int
    num_nodes: int
    routing: tuple[int, int, int]
    shape: ExpertShape
    profile: HardwareProfile


@dataclass(frozen=True)
class CostSettings:
    """What `run --cost-model PROFILE --interval K[,K...]` asks of every job: the
    profile, and the rebalance intervals replayed (the first one's figures lead the record)."""

    profile: HardwareProfile
    intervals: tuple[int, ...] = (DEFAULT_INTERVAL,)

    def record_fields(self) -> dict:
        """What a record of these settings says before anything is replayed (its identity's part)."""
        return {"cost_model": self.profile.name, "cost_model_sha256": self.profile_sha256,
                "interval": self.intervals[0], "intervals": list(self.intervals)}

    @property
    def profile_sha256(self) -> str:
        """sha256 of the profile's values (sorted JSON): which figures the model ran on."""
        text = json.dumps(self.profile.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Trace:
    """steps: [T, L, E] loads of every step; service from `start` to T; plans are made on
    windows of `history_steps` steps."""

    steps: torch.Tensor
    start: int
    history_steps: int

    @property
    def served(self) -> int:
        return self.steps.shape[0] - self.start


def served_seconds(steps: torch.Tensor, phy2log: torch.Tensor | None, logcnt: torch.Tensor | None,
                   deployment: Deployment) -> torch.Tensor:
    """steps: [n, L, E] -> [n] modeled seconds of each step under the placement
    (phy2log [L, R], logcnt [L, E]), or under the contiguous baseline when phy2log is None."""
    out = []
    layers = steps.shape[1]
    for first in range(0, steps.shape[0], STEP_CHUNK):
        chunk = steps[first:first + STEP_CHUNK]
        count = chunk.shape[0]
        rows = chunk.reshape(count * layers, -1).double()            # every step's layers as rows
        if phy2log is None:
            parts = contiguous_layer_seconds(rows, deployment.num_gpus, deployment.num_nodes, deployment.shape,
                                             deployment.profile, deployment.routing)
        else:
            parts = layer_seconds(rows, phy2log.repeat(count, 1), logcnt.repeat(count, 1), deployment.num_gpus,
                                  deployment.num_nodes, deployment.shape, deployment.profile, deployment.routing)
        out.append(parts["step_s"].view(count, layers).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def rebalance_steps(trace: Trace, interval: int) -> list[int]:
    """The steps at which a new placement goes into service after the first: start + j K."""
    return list(range(trace.start + interval, trace.steps.shape[0], interval))


def history_load(trace: Trace, step: int, predictor: Predictor) -> torch.Tensor:
    """[L, E]: what the balancer plans on at `step`: the sum of the last history_steps
    steps (`last`), or the exponential average of the windows of history_steps steps
    ending at `step`, oldest first, as over the dataset's windows (`ema:ALPHA`)."""
    width = trace.history_steps
    if predictor.kind == "last":
        return trace.steps[max(0, step - width):step].sum(0, dtype=torch.int64)
    ends = list(range(step, 0, -width))[::-1]
    smoothed = None
    for end in ends:
        window = trace.steps[max(0, end - width):end].sum(0, dtype=torch.float64)
        smoothed = window if smoothed is None else predictor.alpha * window + (1 - predictor.alpha) * smoothed
    return smoothed


def placement_key(step: int, previous: torch.Tensor | None) -> tuple:
    """Names one plan: the step it is made at and the placement it replaces (None when
    the balancer is not told), so that one plan serves every interval that needs it."""
    if previous is None:
        return step, None
    return step, hashlib.sha1(previous.contiguous().cpu().numpy().tobytes()).hexdigest()


Planner = Callable[[int, torch.Tensor | None], Placement]


@dataclass
class Chain:
    """The placements one interval puts into service: [(first step served, placement)],
    in step order, and the rebalance steps still to plan."""

    interval: int
    served: list[tuple[int, Placement]]
    pending: list[int]


def chains(trace: Trace, intervals: tuple[int, ...], first: Placement) -> list[Chain]:
    """One chain per interval, each starting with `first` in service at trace.start."""
    return [Chain(interval, [(trace.start, first)], rebalance_steps(trace, interval)) for interval in intervals]


def advance(open_chains: list[Chain], plan_at: Planner, until: int) -> None:
    """Plan every rebalance of the chains at a step before `until`, all chains together
    in step order (ties in the chains' order): a balancer that keeps state between calls
    sees the history in time order and never a step it is to serve."""
    due = sorted((step, index) for index, chain in enumerate(open_chains) for step in chain.pending if step < until)
    for step, index in due:
        chain = open_chains[index]
        chain.served.append((step, plan_at(step, chain.served[-1][1].phy2log)))
        chain.pending.remove(step)


def accounted(trace: Trace, chain: Chain, deployment: Deployment, contiguous_ms: float) -> dict:
    """The interval's entry (module docstring's fields) of a chain planned to the end."""
    if chain.pending:
        raise ValueError(f"interval {chain.interval}: rebalances at {chain.pending} not planned")
    seconds = served_ms(trace, chain.served, deployment)
    migrations, moved = [], []
    for (_, current), (_, following) in zip(chain.served, chain.served[1:]):
        cost = migration_seconds(following.phy2log, current.phy2log, deployment.num_gpus, deployment.num_nodes,
                                 following.logcnt.shape[1], deployment.shape, deployment.profile)
        migrations.append(cost["migration_s"] * 1e3)
        moved.append(cost["received_experts"])
    step_ms = float(seconds.mean())
    hidden = 1 - deployment.profile.overlap_share
    with_migration = step_ms + sum(migrations) / trace.served
    overlapped = step_ms + hidden * sum(migrations) / trace.served
    migration_ms = sum(migrations) / len(migrations) if migrations else 0.0
    gain = contiguous_ms - step_ms
    return {
        "interval": chain.interval,
        "rebalances": len(migrations),
        "modeled_step_ms": step_ms,
        "migration_ms": migration_ms,
        "received_experts": sum(moved) / len(moved) if moved else 0.0,
        "modeled_speedup": contiguous_ms / with_migration,
        "modeled_speedup_overlapped": contiguous_ms / overlapped,
        "break_even_interval": migration_ms / gain if migrations and gain > 0 else None,
    }


def replay(trace: Trace, interval: int, first: Placement, plan_at: Planner, deployment: Deployment,
           contiguous_ms: float) -> dict:
    """Serve the trace rebalancing every `interval` steps (module docstring): one chain,
    planned to the end and accounted.

    Args:
        first: the placement in service at trace.start.
        plan_at: (step, placement in service [L, R]) -> the placement planned at step.
        contiguous_ms: the contiguous baseline's mean step time over the served steps.
    """
    (chain,) = chains(trace, (interval,), first)
    advance([chain], plan_at, trace.steps.shape[0])
    return accounted(trace, chain, deployment, contiguous_ms)


def served_ms(trace: Trace, placements: list[tuple[int, Placement]], deployment: Deployment) -> torch.Tensor:
    """[served steps] modeled milliseconds of each step, placements [(first step served,
    placement)] in step order, each serving until the next one's first step."""
    bounds = [begin for begin, _ in placements[1:]] + [trace.steps.shape[0]]
    seconds = [served_seconds(trace.steps[begin:end], placement.phy2log, placement.logcnt, deployment)
               for (begin, placement), end in zip(placements, bounds)]
    return torch.cat(seconds) * 1e3


def oracle_ms(trace: Trace, placements: list[tuple[int, Placement]], deployment: Deployment) -> float:
    """Mean step time of the oracle: placements [(first step served, placement)] in
    step order (served_ms), migrating for free."""
    return float(served_ms(trace, placements, deployment).mean())


def contiguous_ms(trace: Trace, deployment: Deployment) -> float:
    """Mean step time of the static contiguous placement without redundancy over the served steps."""
    return float(served_seconds(trace.steps[trace.start:], None, None, deployment).mean()) * 1e3
