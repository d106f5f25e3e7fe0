"""Datasets by name: the shipped ones, the user's imported ones, and plain files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


from eplb_bench.core.contract import Scenario, ScenarioError
from eplb_bench.data.dataset import DEFAULT_WINDOW_STEPS, Dataset, DatasetError, _as_tensor, _default_scenarios, default_groups
from eplb_bench.core.record import CROSS_WORKLOAD, NEXT_WINDOW
from eplb_bench.data.formats import SAFE_NAME, check_windows, holds_one_aggregate, read_loads, read_workloads
from eplb_bench.data.manifests import check_pairs, load_manifest, sha256_of, write_dataset_files


def datasets_dir() -> Path:
    """Where shipped datasets live: $EPLB_BENCH_DATASETS, the source tree, or the install prefix."""
    override = os.environ.get("EPLB_BENCH_DATASETS")
    if override:
        return Path(override)
    source_tree = Path(__file__).resolve().parents[2]   # above eplb_bench/data/
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "datasets").is_dir():
        return source_tree / "datasets"
    return Path(sys.prefix) / "share" / "eplb-bench" / "datasets"


def user_datasets_dir() -> Path:
    """Where `datasets import` writes: $EPLB_BENCH_DATA, else the user's data folder
    (platformdirs: $XDG_DATA_HOME/eplb-bench/datasets on Linux). Never the source tree,
    so an imported trace joins no default suite, test or benchmark unless asked."""
    override = os.environ.get("EPLB_BENCH_DATA")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("eplb-bench", appauthor=False)) / "datasets"


def imported_names() -> list[str]:
    """Names of the datasets imported into user_datasets_dir(), sorted."""
    folder = user_datasets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def find_dataset(name: str) -> Path | None:
    """The manifest of the dataset called `name`: shipped first, then imported; None if neither."""
    for folder, names in ((datasets_dir(), shipped_names), (user_datasets_dir(), imported_names)):
        if name in names():
            return folder / f"{name}.json"
    return None


def shipped_names() -> list[str]:
    """Names of the datasets shipped in datasets_dir(), sorted."""
    folder = datasets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def load_dataset(name_or_path: str | Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> Dataset:
    """A shipped dataset by name, or a file: a manifest (.json with "file"), a
    vLLM/ADRS load history (.json with "load_history"), an SGLang dump (.pt) or an .npz.

    Files that name no groups get the public evaluators' 8 when they divide the experts
    (else 1), and files get the public evaluators' scenario (288 slots, 4 nodes, 32 GPUs)
    with those groups when it fits their shape.
    """
    text = str(name_or_path)
    manifest = find_dataset(text)
    if manifest is not None:
        return load_manifest(manifest)
    path = Path(text)
    if not path.exists():
        known = ", ".join(shipped_names() + imported_names()) or "none"
        raise DatasetError(f"no dataset named {text!r} and no such file (shipped or imported: {known})")
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, expected a dataset file")
    if not path.is_file():
        raise DatasetError(f"{path} is not a regular file")
    if path.suffix == ".json" and _looks_like_manifest(path):
        return load_manifest(path)
    windows, meta = read_loads(path, window_steps)
    steps_per_window = meta.get("window_steps")
    windows = check_windows(windows, str(path), meta.get("protocol", NEXT_WINDOW))
    num_groups = meta.get("num_groups") or default_groups(windows.shape[2])
    if windows.shape[2] % num_groups:
        raise DatasetError(f"{path}: {windows.shape[2]} experts do not divide into {num_groups} groups")
    return Dataset(
        name=path.stem,
        windows=_as_tensor(windows),
        num_groups=num_groups,
        scenarios=_default_scenarios(windows.shape[2], num_groups),
        window_steps=steps_per_window,
        source=str(path),
        meta=meta,
    )


def _looks_like_manifest(path: Path) -> bool:
    """A small JSON object with a "file" key is a manifest; load histories are large."""
    if path.stat().st_size > 1 << 20:
        return False
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):   # JSONDecodeError is a ValueError
        return False
    return isinstance(document, dict) and "file" in document and "load_history" not in document



def import_dataset(
    paths: str | Path | list,
    name: str,
    *,
    num_groups: int | None = None,
    scenarios: list[Scenario] | None = None,
    window_steps: int = DEFAULT_WINDOW_STEPS,
    directory: Path | None = None,
    force: bool = False,
    pairs: list[tuple[str, str]] | None = None,
) -> dict:
    """Read load files and write them as a manifest-backed dataset `name`.

    One load history (vLLM/ADRS JSON, SGLang dump, .npz) becomes a next-window
    dataset. SGLang expert-location files, one aggregate logical_count each, become a
    cross-workload collection (one workload per file, named by its stem) scored on
    `pairs` of (plan, serve) workload names, every ordered pair when None, and each
    workload in-sample. Without `num_groups`, the file's own are used, else
    default_groups(). Without `scenarios`, the public evaluators' scenario is used
    when it fits. Any error raises DatasetError (ScenarioError for a scenario that
    does not fit) before anything is written. Returns the manifest.
    """
    directory = Path(directory) if directory is not None else user_datasets_dir()
    sources = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(path) for path in paths]
    if name in shipped_names() and directory != datasets_dir():
        raise DatasetError(f"{name!r} is the name of a shipped dataset; choose another")
    if not SAFE_NAME.match(name):
        raise DatasetError(f"invalid dataset name {name!r} (letters, digits, '.', '_' and '-')")
    if (directory / f"{name}.json").exists() and not force:
        raise DatasetError(f"dataset {name!r} already exists in {directory} (use --force to replace it)")
    if window_steps < 1:
        raise DatasetError(f"window steps must be at least 1, got {window_steps}")
    if not sources:
        raise DatasetError("no file to import")
    for source in sources:
        if not source.is_file():
            raise DatasetError(f"no such file: {source}")
    if len(sources) > 1 or holds_one_aggregate(sources[0]):
        windows, meta = read_workloads(sources)
        meta["pairs"] = workload_pairs([w["name"] for w in meta["workloads"]], pairs)
        windows = check_windows(windows, ", ".join(map(str, sources)), CROSS_WORKLOAD)
    else:
        if pairs:
            raise DatasetError("pairs belong to collections of static workloads (SGLang logical_count files)")
        windows, meta = read_loads(sources[0], window_steps)
        windows = check_windows(windows, str(sources[0]))
    num_logical = windows.shape[2]
    if num_groups is None:
        num_groups = meta.get("num_groups") or default_groups(num_logical)
    if num_groups < 1 or num_logical % num_groups:
        raise DatasetError(f"{sources[0]}: {num_logical} experts do not divide into {num_groups} groups")
    if scenarios is None or not scenarios:
        scenarios = _default_scenarios(num_logical, num_groups)
    for scenario in scenarios:
        try:
            scenario.check(num_logical)
        except ScenarioError as exc:
            raise ScenarioError(f"scenario {scenario.label()}: {exc}") from None
    from eplb_bench.data.loadstats import dataset_statistics

    described = {key: meta[key] for key in ("protocol", "workloads", "pairs", "source_layers") if key in meta}
    for workload, source in zip(described.get("workloads", []), sources):
        workload["source_sha256"] = sha256_of(source)
    manifest = {
        "num_layers": windows.shape[1],
        "num_logical": num_logical,
        "num_groups": num_groups,
        "num_windows": windows.shape[0],
        "window_steps": meta.get("window_steps"),
        "scenarios": [{"name": s.name, **s.as_dict()} for s in scenarios],
        **described,
        "provenance": f"imported from {', '.join(s.name for s in sources)} ({meta.get('format', sources[0].suffix)}) "
        f"with eplb-bench datasets import",
        "source_sha256": sha256_of(sources[0]),
        "statistics": dataset_statistics(windows, scenarios[0].num_gpus if scenarios else None),
    }
    directory.mkdir(parents=True, exist_ok=True)
    return write_dataset_files(directory, name, windows, manifest)


def workload_pairs(names: list[str], pairs: list[tuple[str, str]] | None) -> list[list[str]]:
    """The (plan, serve) pairs of a collection: `pairs` checked against `names`
    (manifests.check_pairs), or every ordered pair of distinct workloads when None."""
    if pairs is None:
        return [[plan, serve] for plan in names for serve in names if plan != serve]
    check_pairs(pairs, names)
    return [[plan, serve] for plan, serve in pairs]
