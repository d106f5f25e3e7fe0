"""The export command: one balancer's placement of one window or workload, written as
the expert-location file that SGLang's --init-expert-location reads."""

from __future__ import annotations

import json
from pathlib import Path


from eplb_bench.commands.common import UsageError, scenario_override, scenarios_for, warn
from eplb_bench.core.registry import algorithm_info, file_algorithm_info
from eplb_bench.core.record import CROSS_WORKLOAD
from eplb_bench.data.catalog import load_dataset
from eplb_bench.data.formats import sglang_location_documents
from eplb_bench.evaluation.runner import BalancerFailure, plan

FORMATS = ("sglang",)


def chosen_window(dataset, workload: str | None, window: int | None) -> int:
    """The window to plan on: --workload by name, --window by index, else the last
    window of a load history (a collection of several workloads needs one named)."""
    names = dataset.workload_names
    if workload is not None:
        if dataset.protocol != CROSS_WORKLOAD:
            raise UsageError(f"--workload: {dataset.name} is a load history; choose a window with --window")
        if workload not in names:
            raise UsageError(f"--workload: {dataset.name} has no workload {workload!r} (it has {', '.join(names)})")
        return names.index(workload)
    if window is not None and dataset.protocol != CROSS_WORKLOAD:
        if not 0 <= window < dataset.num_windows:
            raise UsageError(f"--window: {dataset.name} has windows 0..{dataset.num_windows - 1}, not {window}")
        return window
    if dataset.protocol == CROSS_WORKLOAD:
        if window is not None:
            raise UsageError(f"--window: {dataset.name} holds static workloads; name one with --workload "
                             f"({', '.join(names)})")
        if dataset.num_windows == 1:
            return 0
        raise UsageError(f"{dataset.name} holds {dataset.num_windows} workloads: name one with --workload "
                         f"({', '.join(names)})")
    return dataset.num_windows - 1


def counts_path(out: Path) -> Path:
    """Where the loads go beside the placement: STEM.logical_count.json (FILE's name
    without its extension)."""
    return out.with_name(f"{out.stem}.logical_count.json")


def checked_out(text: str) -> Path:
    """--out as a path to a file in an existing folder; UsageError otherwise."""
    out = Path(text)
    if not text or not out.name or out.name in (".", "..") or out.is_dir():
        raise UsageError(f"--out must name a file, got {text!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out: no such directory: {out.parent}")
    if counts_path(out).is_dir():
        raise UsageError(f"--out: {counts_path(out)} (where the loads go) is a directory")
    return out


def write_json_files(documents: dict[Path, dict]) -> None:
    """Write each document through a temporary file, and rename them into place only
    when all are written: a stopped or failed export leaves no half file and no half pair."""
    partials = {path: path.with_name(f".{path.name}.partial") for path in documents}
    try:
        for path, document in documents.items():
            partials[path].write_text(json.dumps(document, separators=(",", ":")) + "\n")
        for path, partial in partials.items():
            partial.replace(path)
    finally:
        for partial in partials.values():
            partial.unlink(missing_ok=True)


def command_export(args) -> int:
    out = checked_out(args.out)
    info = file_algorithm_info(args.algorithm) if args.algorithm.endswith(".py") else algorithm_info(args.algorithm)
    dataset = load_dataset(args.dataset)
    index = chosen_window(dataset, args.workload, args.window)
    scenarios = scenarios_for(dataset, scenario_override(args))
    if len(scenarios) > 1:
        warn(f"{dataset.name} has {len(scenarios)} scenarios; exporting for the first, {scenarios[0].label()} "
             "(choose one with --replicas, --groups, --nodes, --gpus)", "note")
    scenario = scenarios[0]
    weight = dataset.windows[index]
    try:
        placement, _ = plan(info, weight, scenario, repeat=1)
    except BalancerFailure as failure:
        warn(f"{info.name} on {dataset.name} {dataset.workload_names[index]}: {failure.status}: {failure}", "error")
        return 1
    placement_document, counts_document = sglang_location_documents(
        placement.phy2log.numpy(), weight.numpy(), dataset.meta.get("source_layers"), dataset.num_logical)
    write_json_files({out: placement_document, counts_path(out): counts_document})
    layers = len(placement_document["physical_to_logical_map"])
    print(f"wrote {out} (physical_to_logical_map, {layers} layers x {scenario.num_replicas} slots) and "
          f"{counts_path(out)} (logical_count): {info.name} on {dataset.name} {dataset.workload_names[index]}, "
          f"{scenario.label()}; serve with --init-expert-location {out} --ep-num-redundant-experts "
          f"{scenario.num_replicas - dataset.num_logical} on {scenario.num_gpus} GPUs")
    return 0
