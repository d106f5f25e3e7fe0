"""Per-step loads of a dataset, for replaying it step by step under the cost model
(eplb_bench.evaluation.replay). Nothing here is shipped: the steps are regenerated.

- A synthetic dataset's steps come from its manifest's generator parameters
  (eplb_bench.data.synthetic.iterate_steps); they must sum, window by window, to the
  shipped windows, so a replay is always of the very data the records are keyed on.
- A collection of static workloads (the cross-workload protocol) has no steps: each
  workload is one aggregate. Its steps are drawn around the workload's expert shares
  with the manifest's "replay" settings: a step's shares from a Dirichlet of
  concentration `concentration` around the workload's, then `tokens_per_step[stage]`
  x top_k routed pairs from a multinomial of them, the synthetic generator's step model.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from eplb_bench.core.record import CROSS_WORKLOAD
from eplb_bench.data.dataset import Dataset, DatasetError
from eplb_bench.data.synthetic import SyntheticSpec, all_steps, step_loads

# Storage type of regenerated steps: a step's count of one expert stays far below 2**31.
STEP_DTYPE = np.int32
REPLAY_KEYS = {"steps": int, "history_steps": int, "tokens_per_step": dict, "concentration": float, "seed": int,
               "why": str}
# Bounds on a manifest's replay settings: steps kept in memory, and a step's count in STEP_DTYPE.
MAX_REPLAY_STEPS = 100_000
MAX_ROUTED_PER_STEP = 2**31 - 1


@dataclass(frozen=True)
class WorkloadReplay:
    """How steps are drawn around a static workload (the manifest's "replay")."""

    steps: int               # steps served after the switch to a workload
    history_steps: int       # steps a plan is made on
    tokens_per_step: dict    # stage -> tokens of one step
    concentration: float
    seed: int


def steps_available(dataset: Dataset) -> str | None:
    """None when `dataset` can be replayed step by step, else why not (one line)."""
    if dataset.protocol == CROSS_WORKLOAD:
        try:
            workload_replay(dataset)
        except DatasetError as exc:
            return str(exc)
        return None
    if not isinstance(dataset.meta.get("generator"), dict):
        return (f"{dataset.name} has no per-step loads: a replay needs a synthetic dataset (its generator "
                "regenerates the steps) or static workloads with replay settings")
    return None


def synthetic_steps(dataset: Dataset) -> torch.Tensor:
    """[num_windows * window_steps, L, E] int32: every step of a synthetic dataset,
    regenerated and checked against its windows; DatasetError when they differ."""
    reason = steps_available(dataset)
    if reason or dataset.protocol == CROSS_WORKLOAD:
        raise DatasetError(reason or f"{dataset.name} holds static workloads: use workload_steps")
    spec = SyntheticSpec.from_dict(dataset.meta["generator"])
    steps = torch.from_numpy(_regenerated(json.dumps(spec.as_dict(), sort_keys=True)))
    windows = dataset.windows
    summed = steps.view(spec.num_windows, spec.window_steps, *steps.shape[1:]).sum(1, dtype=torch.int64)
    if summed.shape != windows.shape or not torch.equal(summed.to(windows.dtype), windows.cpu()):
        raise DatasetError(f"{dataset.name}: the generator's steps do not sum to the stored windows "
                           "(the data is not its generator's)")
    return steps


@functools.lru_cache(maxsize=1)
def _regenerated(spec_json: str) -> np.ndarray:
    """The steps of one generator spec (as sorted JSON), kept for the next job of the same data."""
    return all_steps(SyntheticSpec.from_dict(json.loads(spec_json)), STEP_DTYPE)


def workload_replay(dataset: Dataset) -> WorkloadReplay:
    """The manifest's replay settings of a static-workload dataset; DatasetError when absent or malformed."""
    settings = dataset.meta.get("replay")
    if not isinstance(settings, dict):
        raise DatasetError(f"{dataset.name} holds static workloads without replay settings (the manifest's "
                           '"replay": steps, history_steps, tokens_per_step, concentration, seed)')
    unknown = sorted(set(settings) - set(REPLAY_KEYS))
    if unknown:
        raise DatasetError(f"{dataset.name}: unknown replay setting(s) {', '.join(unknown)}")
    for key, kind in REPLAY_KEYS.items():
        value = settings.get(key)
        if key == "why" and value is None:
            continue
        number = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) or not number:
            raise DatasetError(f"{dataset.name}: replay.{key} must be a {kind.__name__}")
    stages = {entry.get("stage", "prefill") for entry in dataset.meta.get("workloads", [])}
    tokens = settings["tokens_per_step"]
    if not all(isinstance(tokens.get(stage), int) and not isinstance(tokens[stage], bool)
               and 0 < tokens[stage] * dataset.routing.top_k <= MAX_ROUTED_PER_STEP for stage in stages):
        raise DatasetError(f"{dataset.name}: replay.tokens_per_step needs, for {', '.join(sorted(stages))}, a "
                           f"positive count of tokens whose pairs (x top-k) stay within {MAX_ROUTED_PER_STEP}")
    if not (1 <= settings["steps"] <= MAX_REPLAY_STEPS and 1 <= settings["history_steps"] <= MAX_REPLAY_STEPS) \
            or settings["seed"] < 0 or not (math.isfinite(settings["concentration"]) and settings["concentration"] > 0):
        raise DatasetError(f"{dataset.name}: replay steps and history_steps must be 1 to {MAX_REPLAY_STEPS}, "
                           "seed non-negative and concentration positive")
    return WorkloadReplay(settings["steps"], settings["history_steps"], dict(tokens),
                          float(settings["concentration"]), settings["seed"])


def workload_steps(dataset: Dataset, workload: int) -> torch.Tensor:
    """[replay.steps + replay.history_steps, L, E] int32: steps drawn around static
    workload `workload` (module docstring), the same for every balancer and run."""
    settings = workload_replay(dataset)
    entry = dataset.meta["workloads"][workload]
    tokens = settings.tokens_per_step[entry.get("stage", "prefill")] * dataset.routing.top_k
    aggregate = dataset.windows[workload].double().numpy()
    return torch.from_numpy(_drawn(aggregate.tobytes(), aggregate.shape, tokens, settings.concentration,
                                   settings.seed + workload, settings.steps + settings.history_steps))


@functools.lru_cache(maxsize=16)
def _drawn(aggregate: bytes, shape: tuple, routed: int, concentration: float, seed: int, count: int) -> np.ndarray:
    """`count` steps [count, L, E] drawn around the aggregate loads (bytes of [L, E] float64)."""
    load = np.frombuffer(aggregate, dtype=np.float64).reshape(shape)
    totals = load.sum(-1, keepdims=True)
    shares = np.divide(load, totals, out=np.full(shape, 1.0 / shape[1]), where=totals > 0)
    rng = np.random.default_rng(seed)
    steps = np.empty((count, *shape), dtype=STEP_DTYPE)
    for index in range(count):
        steps[index] = step_loads(rng, shares, routed, concentration)
    return steps
