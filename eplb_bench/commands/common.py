"""What the commands share: the usage error, warnings, progress bars, and turning
arguments into balancers, datasets, devices and scenarios."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from eplb_bench.core.contract import Scenario, ScenarioError
from eplb_bench.core.registry import (
    algorithm_info,
    broken_algorithms,
    file_algorithm_info,
    list_algorithms,
)
from eplb_bench.data.catalog import (
    datasets_dir,
    imported_names,
    load_dataset,
    shipped_names,
)
from eplb_bench.data.dataset import DEFAULT_WINDOW_STEPS


class UsageError(Exception):
    """A bad argument; printed as one line, exit status 2."""


def check_parallel_arguments(jobs: int, executor: str | None) -> None:
    """--jobs and --executor as every command takes them; a UsageError otherwise."""
    from eplb_bench.evaluation.parallel import ExecutorError, check_executor

    try:
        check_executor(jobs, executor)
    except ExecutorError as exc:
        raise UsageError(str(exc)) from None


def warn(message: str, kind: str = "warning") -> None:
    """One line on stderr: "eplb-bench: KIND: message"."""
    print(f"eplb-bench: {kind}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def progress_bar(total: int, what: str, quiet: bool) -> tqdm:
    """A progress bar on stderr (done/total, elapsed, ETA, the current job), shown only
    on a terminal and never with --quiet."""
    return tqdm(total=total, desc=what, unit="job", file=sys.stderr, dynamic_ncols=True,
                disable=True if quiet else None, leave=False)


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_algorithms(text: str | None):
    """The balancers named in --algorithms (names or .py files), or every one not slow.
    An empty --algorithms names nothing: a usage error, never "all"."""
    if text is None:
        for reason in broken_algorithms().values():
            warn(reason)
        return [algorithm_info(name) for name in list_algorithms(include_slow=False)]
    names = split_list(text)
    if not names:
        raise UsageError(f"--algorithms names no balancer: {text!r}")
    return [file_algorithm_info(item) if item.endswith(".py") else algorithm_info(item) for item in names]


def resolve_datasets(text: str | None, window_steps: int = DEFAULT_WINDOW_STEPS, imported: bool = False):
    """The datasets named in --datasets, or every shipped one (and, with `imported`,
    every imported one)."""
    if text is not None and not split_list(text):
        raise UsageError(f"--datasets names no dataset: {text!r}")
    names = split_list(text) if text else shipped_names() + (imported_names() if imported else [])
    datasets = [load_dataset(name, window_steps=window_steps) for name in names]
    if not datasets:
        raise UsageError(f"no datasets: none shipped in {datasets_dir()} and none given with --datasets")
    return datasets


def resolve_device(text: str) -> str:
    if text == "cpu":
        return text
    if text.split(":")[0] != "cuda":
        raise UsageError(f"--device must be cpu or cuda[:N], got {text!r}")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    try:
        index = torch.device(text).index
    except RuntimeError:
        raise UsageError(f"--device: invalid device {text!r}") from None
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def scenario_override(args) -> dict | None:
    given = {k: getattr(args, k) for k in ("replicas", "groups", "nodes", "gpus") if getattr(args, k) is not None}
    if not given:
        return None
    if args.replicas is None or args.gpus is None:
        raise UsageError("--replicas and --gpus must be given together (with optional --nodes and --groups)")
    return {"num_replicas": args.replicas, "num_groups": args.groups,
            "num_nodes": 1 if args.nodes is None else args.nodes, "num_gpus": args.gpus}


def scenarios_for(dataset, override: dict | None) -> list[Scenario]:
    if override is None:
        if not dataset.scenarios:
            raise UsageError(f"dataset {dataset.name} has no default scenario: give --replicas and --gpus")
        scenarios = dataset.scenarios
    else:
        groups = dataset.num_groups if override["num_groups"] is None else override["num_groups"]
        scenarios = [Scenario(override["num_replicas"], groups, override["num_nodes"], override["num_gpus"])]
    for scenario in scenarios:
        try:
            scenario.check(dataset.num_logical)
        except ScenarioError as exc:
            raise UsageError(f"dataset {dataset.name}, scenario {scenario.label()}: {exc}") from None
    return scenarios
