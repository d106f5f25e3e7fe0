"""The asv suite: balance and speed of every registered balancer on every standard dataset.

Each dataset is benchmarked on its default scenario (the first of its manifest).
Quality tracks do not depend on the machine and asv reads lower as better, so
they are imbalances (max / mean >= 1), shares and gaps, never balancedness.
Quality is computed once per run, in setup_cache; a balancer that raises or
returns an invalid placement fails the benchmarks of its own parameters only.

EPLB_BENCH_ASV_BALANCERS (comma-separated registered names or .py files) replaces
the default list of balancers: every registered one but the slow ones (`ilp`).
EPLB_BENCH_ASV_DATASETS (comma-separated names or manifests) replaces the default
list of datasets: every shipped one.
"""

from __future__ import annotations

import os

import torch

from eplb_bench import list_algorithms, load_dataset
from eplb_bench.data.catalog import shipped_names
from eplb_bench.core.registry import algorithm_info, file_algorithm_info
from eplb_bench.core.costmodel import CostModelError, load_profile
from eplb_bench.data.models import dataset_expert_shape
from eplb_bench.data.steps import steps_available
from eplb_bench.evaluation.replay import CostSettings
from eplb_bench.evaluation.runner import BalancerFailure, Job, checked_placement, run_records

try:  # asv >= 0.6 skips a benchmark that raises this after its setup
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # outside asv
    SkipNotImplemented = NotImplementedError

QUALITY_VERSION = "1"
MODELED_PROFILE = "h200-nvlink-ib400"
MODELED_INTERVAL = 100
# How the runner's error of a failure in the replay begins (eplb_bench.evaluation.runner.with_replay).
REPLAY_FAILURE = "replay: "
SPEED_VERSION = "1"


def chosen(variable: str) -> list[str]:
    return [name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()]


def balancer_info(name: str):
    return file_algorithm_info(name) if name.endswith(".py") else algorithm_info(name)


BALANCERS = chosen("EPLB_BENCH_ASV_BALANCERS") or list_algorithms(include_slow=False)
DATASETS = chosen("EPLB_BENCH_ASV_DATASETS") or shipped_names()


def quality_of(balancer: str, dataset_name: str) -> dict:
    """The quality numbers of one balancer on a dataset's default scenario, or its failure.

    Under the cross-workload protocol "next" is the mean over the named pairs (each
    workload served by a placement planned on another) and in-sample the mean over the
    workloads; under next-window, the one record's."""
    dataset = load_dataset(dataset_name)
    try:
        records = run_records(Job(balancer_info(balancer), dataset, dataset.scenarios[0], cost=tracked_cost(dataset)))
    except Exception as exc:  # an unloadable balancer fails its own parameters only
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    # A balancer failing only in the replay keeps its balance figures; its modeled track fails alone.
    replay_failed = [r for r in records if r.status != "ok" and (r.error or "").startswith(REPLAY_FAILURE)]
    failed = [record for record in records if record.status != "ok" and record not in replay_failed]
    if failed:
        return {"status": failed[0].status, "error": failed[0].error}
    served = [r for r in records if r.plan_workload is None or r.plan_workload != r.serve_workload] or records

    def mean(values):
        values = list(values)
        return None if any(v is None for v in values) else sum(values) / len(values)

    return {
        "status": "ok",
        "gpu_imbalance_next": mean(1 / r.balancedness_gpu for r in served),
        "gpu_imbalance_insample": mean(1 / r.balancedness_gpu_insample for r in records),
        "slot_imbalance_next": mean(1 / r.balancedness_slot for r in served),
        "internode_share": mean(r.internode_share for r in served),
        "optimality_gap": mean(r.optimality_gap for r in records),
        # Modeled step time over the contiguous placement's (1 / modeled_speedup), migrations paid.
        "modeled_step_ratio": mean(1 / r.modeled_speedup if r.modeled_speedup else None for r in served),
        "failed": {"modeled_step_ratio": f"{replay_failed[0].status}: {replay_failed[0].error}"} if replay_failed else {},
    }


def tracked_cost(dataset) -> CostSettings | None:
    """The replay the quality tracks include: MODELED_PROFILE, rebalancing every
    MODELED_INTERVAL steps, where the dataset has steps, an expert shape and the
    profile's node size; None (track skipped) elsewhere."""
    profile = load_profile(MODELED_PROFILE)
    scenario = dataset.scenarios[0]
    try:
        dataset_expert_shape(dataset.meta, dataset.name)
    except CostModelError:
        return None
    if steps_available(dataset) or scenario.num_gpus // scenario.num_nodes != profile.gpus_per_node:
        return None
    return CostSettings(profile, (MODELED_INTERVAL,))


def _tracked(key: str, unit: str):
    def track(self, quality, balancer, dataset):
        result = quality[(balancer, dataset)]
        if result["status"] != "ok":
            raise RuntimeError(f"{balancer} on {dataset}: {result['status']}: {result['error']}")
        if key in result["failed"]:
            raise RuntimeError(f"{balancer} on {dataset}: {result['failed'][key]}")
        if result[key] is None:
            raise SkipNotImplemented(f"no {key} for {dataset}")
        return result[key]

    track.unit = unit
    track.version = QUALITY_VERSION
    track.__name__ = f"track_{key}"
    return track


class Quality:
    """Balance on the next window and in-sample, locality and the optimality gap."""

    params = (BALANCERS, DATASETS)
    param_names = ["balancer", "dataset"]
    timeout = 1800

    def setup_cache(self):
        # Dataset by dataset, so that a replay's regenerated steps serve every balancer.
        return {(balancer, dataset): quality_of(balancer, dataset) for dataset in DATASETS for balancer in BALANCERS}

    setup_cache.timeout = 1800

    track_gpu_imbalance_next = _tracked("gpu_imbalance_next", "max/mean")
    track_gpu_imbalance_insample = _tracked("gpu_imbalance_insample", "max/mean")
    track_slot_imbalance_next = _tracked("slot_imbalance_next", "max/mean")
    track_internode_share = _tracked("internode_share", "share of dispatches")
    track_optimality_gap = _tracked("optimality_gap", "peak/bound - 1")
    track_modeled_step_ratio = _tracked("modeled_step_ratio", "modeled step / contiguous step")


def prepared_call(balancer: str, dataset_name: str, device: str):
    """A function that rebalances the dataset's window 0 once; its output is checked
    here, so that a balancer returning garbage fails its benchmark."""
    dataset = load_dataset(dataset_name)
    scenario = dataset.scenarios[0]
    weight = dataset.windows[0].to(device)
    function = balancer_info(balancer).function
    arguments = (scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
    try:
        checked_placement(function(weight.clone(), *arguments), weight, scenario)
    except BalancerFailure as failure:
        raise RuntimeError(f"{balancer} on {dataset_name}: {failure.status}: {failure}") from None

    def call():
        function(weight.clone(), *arguments)
        if weight.device.type == "cuda":
            torch.cuda.synchronize()

    return call


class _OneRebalance:
    """Shared by the speed benchmarks: one call on window 0 of `device`, prepared in setup."""

    params = (BALANCERS, DATASETS)
    param_names = ["balancer", "dataset"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0
    timeout = 600
    version = SPEED_VERSION
    device = "cpu"

    def setup(self, balancer, dataset):
        self.call = prepared_call(balancer, dataset, self.device)


class Rebalance(_OneRebalance):
    """One rebalance of window 0 on the CPU: its time and peak memory."""

    def time_rebalance_cpu(self, balancer, dataset):
        self.call()

    def peakmem_rebalance_cpu(self, balancer, dataset):
        self.call()


class RebalanceCuda(_OneRebalance):
    """One rebalance on CUDA, synchronized; skipped where there is no GPU."""

    device = "cuda"

    def setup(self, balancer, dataset):
        if not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")
        super().setup(balancer, dataset)

    def time_rebalance_cuda(self, balancer, dataset):
        self.call()


__all__ = ["Quality", "Rebalance", "RebalanceCuda"]
