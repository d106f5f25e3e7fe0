"""Compute lower bounds for whole datasets and store them in their manifests.

The work fans out per (dataset, scenario, policy, window, layer) over a
concurrent.futures executor: local processes by default, or an existing Dask
cluster (dask.distributed's executor). Finished bounds are written back to the
manifest every few seconds and when the run stops for any reason, so an
interrupted run keeps what it finished and the next run skips it.

A manifest's "bounds" maps a scenario key (replicas/groups/nodes/gpus, see
datasets.scenario_key) to one entry per policy:

    {"solver": ..., "time_limit_s": ..., "max_variables": ..., "data_sha256": ...,
     "lower_bound": [[float | None] * layers] * windows,
     "source": [[piece]...], "status": [[solver status]...], "seconds": [[...]...]}

Each bound comes from the piece named in "source" (mean, replica, groups or milp,
see bounds.lower_bound); "status" is the MILP's outcome for that layer.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from eplb_bench.core.simulate import peak_gpu_load
from eplb_bench.bounds.solver import MAX_VARIABLES, SOLVER, hierarchical_applies, layer_lower_bound
from eplb_bench.data.dataset import Dataset, DatasetError
from eplb_bench.data.manifests import read_manifest, scenario_key
from eplb_bench.core.registry import RegistryError, get_algorithm
from eplb_bench.evaluation.parallel import close_executor, open_executor

FIELDS = ("lower_bound", "source", "status", "seconds")
SAVE_EVERY_S = 2.0


@dataclass(frozen=True)
class BoundTask:
    """One layer of one window: everything a worker needs, and nothing else."""

    manifest: str
    key: str
    policy: str
    window: int
    layer: int
    weight: np.ndarray
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    time_limit: float
    max_variables: int
    upper: float | None


def solve_task(task: BoundTask) -> dict:
    """A worker's job: the layer's bound (see bounds.layer_lower_bound)."""
    result = layer_lower_bound(task.weight, task.num_replicas, task.num_groups, task.num_nodes, task.num_gpus,
                               task.time_limit, task.policy, task.upper, task.max_variables)
    return {"manifest": task.manifest, "key": task.key, "policy": task.policy, "window": task.window,
            "layer": task.layer, **result}


def policies_of(scenario) -> list[str]:
    return ["global", "hierarchical"] if hierarchical_applies(scenario.num_groups, scenario.num_nodes) else ["global"]


def placement_peaks(dataset: Dataset, scenario, policy: str) -> np.ndarray | None:
    """[windows, layers] peak GPU loads of `fast`'s placements (groups kept on nodes
    under the hierarchical policy): upper bounds that shrink the MILP. None without fast."""
    try:
        fast = get_algorithm("fast")
    except RegistryError:
        return None
    keep_groups = {"locality_tolerance": 1e30} if policy == "hierarchical" else {}
    peaks = []
    for window in dataset.windows.double():
        phy2log, _, logcnt = fast(window.float(), scenario.num_replicas, scenario.num_groups, scenario.num_nodes,
                                  scenario.num_gpus, **keep_groups)
        peaks.append(peak_gpu_load(window, phy2log, logcnt, scenario.num_gpus))
    return torch.stack(peaks).numpy()


def prepared_entry(old: dict | None, dataset: Dataset, time_limit: float, max_variables: int,
                   force: bool) -> tuple[dict, bool]:
    """The manifest entry to fill, and whether every layer is to be solved again.

    Without `force`, an entry for the same data is kept: made the same way, only its
    missing layers are solved; made another way, every layer is solved again but a
    stored bound is only ever replaced by a stronger one. With `force`, or for other
    data, the entry starts empty.
    """
    same_data = (isinstance(old, dict) and old.get("data_sha256") == dataset.meta.get("sha256")
                 and all(np.shape(old.get(name)) == (dataset.num_windows, dataset.num_layers) for name in FIELDS))
    if same_data and not force:
        same_way = old.get("time_limit_s") == time_limit and old.get("max_variables") == max_variables
        return old, not same_way
    empty = [[None] * dataset.num_layers for _ in range(dataset.num_windows)]
    fresh = {"solver": SOLVER, "time_limit_s": time_limit, "max_variables": max_variables,
             "data_sha256": dataset.meta.get("sha256"), **{name: [row[:] for row in empty] for name in FIELDS}}
    return fresh, True


def stronger(result: dict, stored) -> bool:
    """Whether a new bound may replace the stored one: none stored, or a higher bound."""
    return stored is None or (result["bound"] is not None and result["bound"] > stored)


FLAT_LIST = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")


def write_manifest(path: Path, manifest: dict) -> None:
    """Write through a temporary file; lists of plain values stay on one line."""
    text = FLAT_LIST.sub(lambda match: "[" + " ".join(match.group(1).split()) + "]", json.dumps(manifest, indent=2))
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text + "\n")
    partial.replace(path)


def compute_bounds(datasets: list[Dataset], time_limit: float, jobs: int = 1, executor: str | None = None,
                   max_variables: int = MAX_VARIABLES, force: bool = False,
                   progress: Callable[[dict, int, int], None] | None = None) -> dict:
    """Bounds for every scenario, policy, window and layer of `datasets`, stored in
    their manifests; returns {"done": n, "total": n, "skipped": n already stored, "kept": n
    solved again but weaker than the stored bound (which stays), "seconds": s}.

    `progress(result, done, total)` is called after each finished layer. On any
    interruption (KeyboardInterrupt included) the finished bounds are written first.
    """
    started = time.perf_counter()
    manifests, tasks, skipped = {}, [], 0
    for dataset in datasets:
        path = Path(dataset.source)
        if path.suffix != ".json":
            raise DatasetError(f"{dataset.name}: bounds are stored in manifests; import {path.name} first "
                               "(eplb-bench datasets import)")
        manifest = read_manifest(path)
        manifests[str(path)] = manifest
        stored = manifest.setdefault("bounds", {})
        windows = dataset.windows.double().numpy()
        for scenario in dataset.scenarios:
            key = scenario_key(scenario)
            slot = stored.setdefault(key, {"scenario": scenario.name})
            for policy in policies_of(scenario):
                entry, solve_all = prepared_entry(slot.get(policy), dataset, time_limit, max_variables, force)
                slot[policy] = entry
                missing = [(w, l) for w in range(dataset.num_windows) for l in range(dataset.num_layers)
                           if solve_all or entry["lower_bound"][w][l] is None]
                skipped += dataset.num_windows * dataset.num_layers - len(missing)
                peaks = placement_peaks(dataset, scenario, policy) if missing and time_limit > 0 else None
                tasks += [BoundTask(str(path), key, policy, w, l, windows[w, l], scenario.num_replicas,
                                    scenario.num_groups, scenario.num_nodes, scenario.num_gpus, time_limit,
                                    max_variables, None if peaks is None else float(peaks[w, l]))
                          for w, l in missing]
    done, kept, last_save = 0, 0, time.perf_counter()
    pool, client, _ = open_executor(jobs, executor) if tasks else (None, None, None)
    pending = []
    try:
        pending = [pool.submit(solve_task, task) for task in tasks]
        for future in futures.as_completed(pending):
            result = future.result()
            entry = manifests[result["manifest"]]["bounds"][result["key"]][result["policy"]]
            done += 1
            if not stronger(result, entry["lower_bound"][result["window"]][result["layer"]]):
                kept += 1   # the stored bound is at least as strong: it stays
                if progress:
                    progress(result, done, len(tasks))
                continue
            for name, value in (("lower_bound", result["bound"]), ("source", result["source"]),
                                ("status", result["solver"]), ("seconds", round(result["seconds"], 3))):
                entry[name][result["window"]][result["layer"]] = value
            if progress:
                progress(result, done, len(tasks))
            if time.perf_counter() - last_save > SAVE_EVERY_S:
                for path, manifest in manifests.items():
                    write_manifest(Path(path), manifest)
                last_save = time.perf_counter()
    finally:
        for future in pending:
            future.cancel()
        for path, manifest in manifests.items():
            write_manifest(Path(path), manifest)
        close_executor(pool, client, wait=False)
    return {"done": done, "total": len(tasks), "skipped": skipped, "kept": kept,
            "seconds": time.perf_counter() - started}


def bound_summary(dataset: Dataset) -> list[dict]:
    """Per scenario and policy of a dataset's stored bounds: how many are known, the
    ceiling (sum of mean GPU loads / sum of bounds, mean over windows) and where the
    bounds came from."""
    rows = []
    stored = dataset.meta.get("bounds") or {}
    for scenario in dataset.scenarios:
        for policy, entry in (stored.get(scenario_key(scenario)) or {}).items():
            if not isinstance(entry, dict) or "lower_bound" not in entry:
                continue
            bound = np.array([[np.nan if v is None else v for v in row] for row in entry["lower_bound"]], dtype=float)
            mean = dataset.windows.double().sum(-1).numpy() / scenario.num_gpus
            known = ~np.isnan(bound)
            complete = known.all(-1)
            ceilings = mean[complete].sum(-1) / bound[complete].sum(-1)
            sources = [s for row in entry["source"] for s in row if s is not None]
            statuses = [s for row in entry["status"] for s in row if s is not None]
            rows.append({
                "dataset": dataset.name, "scenario": scenario.name, "key": scenario_key(scenario), "policy": policy,
                "known": int(known.sum()), "total": int(known.size),
                "ceiling": float(ceilings.mean()) if len(ceilings) else None,
                "sources": {s: sources.count(s) for s in sorted(set(sources))},
                "solver": {s: statuses.count(s) for s in sorted(set(statuses))},
                "seconds": float(sum(v for row in entry["seconds"] for v in row if v is not None)),
                "time_limit_s": entry.get("time_limit_s"),
            })
    return rows
