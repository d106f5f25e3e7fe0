"""Load datasets: shipped manifests, vLLM/ADRS load-history JSON and .npz files.

A dataset is a stack of load windows `[num_windows, num_layers, num_logical]`
(token counts per logical expert, each window the sum of `window_steps` steps)
with the model's number of expert groups and its default scenarios. A shipped
dataset is a manifest `datasets/<name>.json` next to its data file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .contract import Scenario, ScenarioError

DEFAULT_WINDOW_STEPS = 100
# The public evaluators' deployment, used for data files that name no scenario.
PUBLIC_SCENARIO = Scenario(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)


class DatasetError(ValueError):
    """A dataset that is missing, malformed or unusable; the message is one line."""


@dataclass
class Dataset:
    """Load windows of one model with its metadata.

    windows: [num_windows, num_layers, num_logical] int64 or float64, non-negative.
    """

    name: str
    windows: torch.Tensor
    num_groups: int = 1
    scenarios: list[Scenario] = field(default_factory=list)
    window_steps: int | None = DEFAULT_WINDOW_STEPS
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_windows(self) -> int:
        return self.windows.shape[0]

    @property
    def num_layers(self) -> int:
        return self.windows.shape[1]

    @property
    def num_logical(self) -> int:
        return self.windows.shape[2]


def datasets_dir() -> Path:
    """Where shipped datasets live: $EPLB_BENCH_DATASETS, the source tree, or the install prefix."""
    override = os.environ.get("EPLB_BENCH_DATASETS")
    if override:
        return Path(override)
    source_tree = Path(__file__).resolve().parents[1] / "datasets"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "eplb-bench" / "datasets"


def shipped_names() -> list[str]:
    """Names of the datasets shipped in datasets_dir(), sorted."""
    folder = datasets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_windows(windows: np.ndarray, where: str) -> np.ndarray:
    """Raise DatasetError unless `windows` is a usable [W, L, E] array of loads."""
    if windows.ndim != 3:
        raise DatasetError(f"{where}: loads have shape {windows.shape}, expected [windows, layers, experts]")
    if min(windows.shape) < 1:
        raise DatasetError(f"{where}: loads have an empty dimension, shape {windows.shape}")
    if not (np.issubdtype(windows.dtype, np.integer) or np.issubdtype(windows.dtype, np.floating)):
        raise DatasetError(f"{where}: loads have dtype {windows.dtype}, expected numbers")
    if np.issubdtype(windows.dtype, np.floating) and not np.isfinite(windows).all():
        raise DatasetError(f"{where}: loads contain NaN or infinite values")
    if (windows < 0).any():
        raise DatasetError(f"{where}: loads contain negative values")
    if windows.shape[0] < 2:
        raise DatasetError(
            f"{where}: only {windows.shape[0]} window; at least 2 are needed (plan on one, score on the next)"
        )
    return windows


def steps_to_windows(steps: np.ndarray, window_steps: int) -> np.ndarray:
    """steps: [num_steps, L, E] -> [num_steps // window_steps, L, E]; a partial last window is dropped."""
    num_windows = steps.shape[0] // window_steps
    usable = steps[: num_windows * window_steps]
    return usable.reshape(num_windows, window_steps, *steps.shape[1:]).sum(1)


def _as_tensor(windows: np.ndarray) -> torch.Tensor:
    dtype = np.int64 if np.issubdtype(windows.dtype, np.integer) else np.float64
    return torch.from_numpy(np.ascontiguousarray(windows, dtype=dtype))


def _default_scenarios(num_logical: int, num_groups: int | None) -> list[Scenario]:
    """The public evaluators' scenario, with the file's own groups when it names them."""
    if num_groups is None:
        num_groups = PUBLIC_SCENARIO.num_groups if num_logical % PUBLIC_SCENARIO.num_groups == 0 else 1
    candidate = Scenario(PUBLIC_SCENARIO.num_replicas, num_groups, PUBLIC_SCENARIO.num_nodes, PUBLIC_SCENARIO.num_gpus)
    try:
        candidate.check(num_logical)
    except ScenarioError:
        return []
    return [candidate]


def load_vllm_json(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> np.ndarray:
    """vLLM/ADRS load history -> windows [W, L, E].

    Format: {"load_history": [{"logical_expert_load": [[...], ...]}, ...]}, one entry
    per step of [num_layers, num_logical] loads. Steps are summed into windows as they
    are read, so only the parsed JSON and the windows are held.
    """
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
    history = document.get("load_history") if isinstance(document, dict) else None
    if not isinstance(history, list) or not history:
        raise DatasetError(f'{path}: expected an object with a non-empty "load_history" list')
    num_windows = len(history) // window_steps
    if num_windows < 2:
        raise DatasetError(
            f"{path}: {len(history)} steps make {num_windows} window(s) of {window_steps}; at least 2 are needed"
        )
    windows = None
    for index, entry in enumerate(history[: num_windows * window_steps]):
        load = entry.get("logical_expert_load") if isinstance(entry, dict) else None
        try:
            step = np.asarray(load, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: step {index} has a malformed logical_expert_load") from None
        if windows is None:
            if step.ndim != 2 or step.size == 0:
                raise DatasetError(f"{path}: step {index} has shape {step.shape}, expected [layers, experts]")
            windows = np.zeros((num_windows, *step.shape), dtype=np.float64)
        if step.shape != windows.shape[1:]:
            raise DatasetError(f"{path}: step {index} has shape {step.shape}, the first step {windows.shape[1:]}")
        windows[index // window_steps] += step
        history[index] = None  # let the parsed step go as soon as it is summed
    if np.isfinite(windows).all() and (windows == np.round(windows)).all():
        windows = windows.astype(np.int64)
    return windows


def load_npz(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> tuple[np.ndarray, dict]:
    """An .npz with `windows` [W, L, E] or `steps` [S, L, E], and optional metadata.

    Optional arrays: `num_groups` (scalar), `window_steps` (scalar, for `steps`).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    meta = {}
    if "num_groups" in contents:
        meta["num_groups"] = int(contents["num_groups"])
    if "windows" in contents:
        return contents["windows"], meta
    if "steps" in contents:
        steps_per_window = int(contents.get("window_steps", window_steps))
        steps = contents["steps"]
        if steps.ndim != 3:
            raise DatasetError(f"{path}: steps have shape {steps.shape}, expected [steps, layers, experts]")
        meta["window_steps"] = steps_per_window
        return steps_to_windows(steps, steps_per_window), meta
    raise DatasetError(f"{path}: expected an array named 'windows' or 'steps', found {sorted(contents) or 'none'}")


def _scenarios_from(entries, where: str, num_logical: int) -> list[Scenario]:
    scenarios = []
    for entry in entries:
        try:
            scenario = Scenario(**entry)
        except TypeError:
            raise DatasetError(f"{where}: malformed scenario {entry!r}") from None
        try:
            scenario.check(num_logical)
        except ScenarioError as exc:
            raise DatasetError(f"{where}: scenario {scenario.label()}: {exc}") from None
        scenarios.append(scenario)
    return scenarios


def load_manifest(path: Path) -> Dataset:
    """A shipped dataset: a manifest JSON naming its data file, groups and scenarios."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc})") from None
    try:
        data_path = path.parent / manifest["file"]
        name = manifest.get("name", path.stem)
        num_groups = int(manifest.get("num_groups", 1))
        scenario_entries = manifest.get("scenarios", [])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed manifest ({exc})") from None
    if not data_path.is_file():
        raise DatasetError(f"{path}: data file {data_path.name} is missing")
    windows, _ = load_npz(data_path)
    windows = check_windows(windows, str(data_path))
    if windows.shape[2] % num_groups:
        raise DatasetError(f"{path}: {windows.shape[2]} experts do not divide into {num_groups} groups")
    return Dataset(
        name=name,
        windows=_as_tensor(windows),
        num_groups=num_groups,
        scenarios=_scenarios_from(scenario_entries, str(path), windows.shape[2]),
        window_steps=manifest.get("window_steps", DEFAULT_WINDOW_STEPS),
        source=str(path),
        meta=manifest,
    )


def load_dataset(name_or_path: str | Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> Dataset:
    """A shipped dataset by name, or a file: a manifest (.json with "file"), a
    vLLM/ADRS load history (.json with "load_history") or an .npz.

    Files without metadata get one expert group and, when it fits their shape, the
    public evaluators' scenario (288 slots, 8 groups, 4 nodes, 32 GPUs).
    """
    text = str(name_or_path)
    shipped = datasets_dir() / f"{text}.json"
    if text in shipped_names():
        return load_manifest(shipped)
    path = Path(text)
    if not path.exists():
        known = ", ".join(shipped_names()) or "none"
        raise DatasetError(f"no dataset named {text!r} and no such file (shipped: {known})")
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, expected a dataset file")
    if path.suffix == ".npz":
        windows, meta = load_npz(path, window_steps)
        steps_per_window = meta.get("window_steps")
    elif path.suffix == ".json":
        if _looks_like_manifest(path):
            return load_manifest(path)
        windows, meta = load_vllm_json(path, window_steps), {}
        steps_per_window = window_steps
    else:
        raise DatasetError(f"{path}: unknown dataset format {path.suffix!r} (expected .json or .npz)")
    windows = check_windows(windows, str(path))
    num_groups = meta.get("num_groups")
    if num_groups is not None and (num_groups < 1 or windows.shape[2] % num_groups):
        raise DatasetError(f"{path}: {windows.shape[2]} experts do not divide into {num_groups} groups")
    return Dataset(
        name=path.stem,
        windows=_as_tensor(windows),
        num_groups=num_groups or 1,
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and "file" in document and "load_history" not in document
