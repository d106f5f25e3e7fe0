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
import re
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
    source_tree = Path(__file__).resolve().parents[1]
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "datasets").is_dir():
        return source_tree / "datasets"
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
    if np.issubdtype(windows.dtype, np.integer) and windows.size and windows.max() > np.iinfo(np.int64).max // 2:
        raise DatasetError(f"{where}: loads are too large (over 2**62)")
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


def default_groups(num_logical: int) -> int:
    """Groups for a file that names none: the public evaluators' 8 when they divide the experts, else 1."""
    return PUBLIC_SCENARIO.num_groups if num_logical % PUBLIC_SCENARIO.num_groups == 0 else 1


def _default_scenarios(num_logical: int, num_groups: int) -> list[Scenario]:
    """The public evaluators' scenario with `num_groups` groups, when it fits the shape."""
    candidate = Scenario(PUBLIC_SCENARIO.num_replicas, num_groups, PUBLIC_SCENARIO.num_nodes,
                         PUBLIC_SCENARIO.num_gpus, name="public evaluators")
    try:
        candidate.check(num_logical)
    except ScenarioError:
        return []
    return [candidate]


VLLM_STEP_KEY = '"logical_expert_load"'
_WHITESPACE = re.compile(r"\s*")
READ_CHARS = 1 << 22
# One step of the largest model (94 layers x 384 experts) is well under this.
MAX_STEP_CHARS = 1 << 26


def iter_vllm_steps(path: Path):
    """Yield each step's load [num_layers, num_logical] of a vLLM/ADRS load history.

    Streams the file: only a buffer of a few MB and the current step are in memory,
    never the whole document. Raises DatasetError for a malformed or truncated file.
    """
    decoder = json.JSONDecoder()
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror})") from None
    with handle:
        buffer = ""
        try:
            while VLLM_STEP_KEY not in buffer and len(buffer) < MAX_STEP_CHARS:
                more = handle.read(READ_CHARS)
                if not more:
                    break
                buffer += more
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
        if not buffer.lstrip().startswith("{"):
            raise DatasetError(f"{path}: not valid JSON (expected an object)")
        first = buffer.find(VLLM_STEP_KEY)
        if buffer.find('"load_history"', 0, first if first >= 0 else None) < 0:
            raise DatasetError(f'{path}: expected an object with a non-empty "load_history" list')
        position, at_end, index = 0, False, 0

        def refill(keep_from: int) -> None:
            nonlocal buffer, position, at_end
            try:
                more = handle.read(READ_CHARS)
            except UnicodeDecodeError:
                raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
            at_end = not more
            buffer, position = buffer[keep_from:] + more, 0

        while True:
            found = buffer.find(VLLM_STEP_KEY, position)
            if found < 0:
                if at_end:
                    break
                refill(max(position, len(buffer) - len(VLLM_STEP_KEY)))
                continue
            colon = buffer.find(":", found + len(VLLM_STEP_KEY))
            if colon >= 0 and buffer[found + len(VLLM_STEP_KEY):colon].strip():
                raise DatasetError(f"{path}: step {index}: malformed logical_expert_load")
            try:
                if colon < 0:
                    raise json.JSONDecodeError("no value", buffer, len(buffer))
                value, end = decoder.raw_decode(buffer, _WHITESPACE.match(buffer, colon + 1).end())
            except json.JSONDecodeError as exc:
                if not at_end and len(buffer) - found < MAX_STEP_CHARS:
                    refill(found)
                    continue
                reason = "the file ends inside it" if at_end and exc.pos >= len(buffer) - 1 else exc.msg
                raise DatasetError(f"{path}: step {index}: malformed logical_expert_load ({reason})") from None
            yield _step_array(value, path, index)
            index += 1
            position = end
        if index == 0:
            raise DatasetError(f'{path}: no "logical_expert_load" entries in "load_history"')
        # After the last step, the step object, the history list and the document must close.
        closers = re.sub(r'"(?:[^"\\]|\\.)*"|[^\[\]{}]', "", buffer[position:])
        if not closers.endswith("}]}"):
            raise DatasetError(f"{path}: not valid JSON (the document is truncated)")


def _step_array(value, path: Path, index: int) -> np.ndarray:
    try:
        step = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: step {index} has a malformed logical_expert_load") from None
    if step.ndim != 2 or step.size == 0:
        raise DatasetError(f"{path}: step {index} has shape {step.shape}, expected [layers, experts]")
    if not np.isfinite(step).all() or (step < 0).any():
        raise DatasetError(f"{path}: step {index} has NaN, infinite or negative loads")
    return step


def sum_into_windows(steps, window_steps: int, where: str) -> np.ndarray:
    """Sum an iterable of [L, E] steps into windows [W, L, E]; a partial last window is dropped."""
    windows, current, count, total = [], None, 0, 0
    for step in steps:
        if current is None:
            current = np.zeros_like(step)
        elif step.shape != current.shape:
            raise DatasetError(f"{where}: step {total} has shape {step.shape}, the first step {current.shape}")
        current += step
        count += 1
        total += 1
        if count == window_steps:
            windows.append(current)
            current, count = np.zeros_like(current), 0
    if len(windows) < 2:
        raise DatasetError(
            f"{where}: {total} steps make {len(windows)} window(s) of {window_steps}; at least 2 are needed"
        )
    stacked = np.stack(windows)
    if (stacked == np.round(stacked)).all():
        stacked = stacked.astype(np.int64)
    return stacked


def load_vllm_json(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> np.ndarray:
    """vLLM/ADRS load history -> windows [W, L, E].

    Format: {"load_history": [{"logical_expert_load": [[...], ...]}, ...]}, one entry
    per step of [num_layers, num_logical] loads, read as a stream (see iter_vllm_steps).
    """
    return sum_into_windows(iter_vllm_steps(path), window_steps, str(path))


def load_sglang_dump(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> np.ndarray:
    """SGLang expert-distribution dump (torch.save of a dict with `logical_count`) -> windows.

    `logical_count` is [num_steps, num_layers, num_logical] per-step counts (a 2-D
    [num_layers, num_logical] count is one step). Loaded with weights_only=True: no code runs.
    """
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DatasetError(f"{path}: not a readable torch file ({type(exc).__name__})") from None
    counts = document.get("logical_count") if isinstance(document, dict) else None
    if not isinstance(counts, torch.Tensor):
        raise DatasetError(f"{path}: expected a dict with a 'logical_count' tensor (SGLang expert distribution dump)")
    counts = counts.double().numpy()
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise DatasetError(f"{path}: logical_count has shape {counts.shape}, expected [steps, layers, experts]")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise DatasetError(f"{path}: logical_count has NaN, infinite or negative counts")
    return sum_into_windows(iter(counts), window_steps, str(path))


def load_npz(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> tuple[np.ndarray, dict]:
    """An .npz with `windows` [W, L, E] or `steps` [S, L, E], and optional metadata.

    Optional arrays: `num_groups` (scalar), `window_steps` (scalar, for `steps`).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    meta = {"format": "npz"}
    if "num_groups" in contents:
        meta["num_groups"] = _positive_scalar(contents["num_groups"], "num_groups", path)
    if "windows" in contents:
        return contents["windows"], meta
    if "steps" in contents:
        steps_per_window = window_steps
        if "window_steps" in contents:
            steps_per_window = _positive_scalar(contents["window_steps"], "window_steps", path)
        steps = contents["steps"]
        if steps.ndim != 3:
            raise DatasetError(f"{path}: steps have shape {steps.shape}, expected [steps, layers, experts]")
        meta["window_steps"] = steps_per_window
        return steps_to_windows(steps, steps_per_window), meta
    raise DatasetError(f"{path}: expected an array named 'windows' or 'steps', found {sorted(contents) or 'none'}")


def _positive_scalar(value, key: str, where) -> int:
    """A metadata value that must be one positive integer; DatasetError otherwise."""
    array = np.asarray(value)
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or array != np.round(array) or array < 1:
        raise DatasetError(f"{where}: {key} must be one positive integer, got {value!r}")
    return int(array)


def _scenarios_from(entries, where: str, num_logical: int) -> list[Scenario]:
    scenarios = []
    for entry in entries:
        try:
            scenario = Scenario(**entry)
        except TypeError:  # not a mapping, or unknown or missing keys
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
    if not isinstance(manifest, dict) or not isinstance(manifest.get("file"), str):
        raise DatasetError(f'{path}: malformed manifest (expected an object with a "file" name)')
    data_path = path.parent / manifest["file"]
    name = str(manifest.get("name", path.stem))
    num_groups = _positive_scalar(manifest.get("num_groups", 1), "num_groups", path)
    window_steps = _positive_scalar(manifest.get("window_steps", DEFAULT_WINDOW_STEPS), "window_steps", path)
    scenario_entries = manifest.get("scenarios", [])
    if not isinstance(scenario_entries, list):
        raise DatasetError(f"{path}: malformed manifest (scenarios must be a list)")
    if not data_path.is_file():
        raise DatasetError(f"{path}: data file {data_path.name} is missing")
    if "sha256" in manifest and sha256_of(data_path) != manifest["sha256"]:
        raise DatasetError(f"{path}: {data_path.name} does not match the manifest's sha256 (see eplb-bench datasets verify)")
    windows, _ = load_npz(data_path)
    windows = check_windows(windows, str(data_path))
    if windows.shape[2] % num_groups:
        raise DatasetError(f"{path}: {windows.shape[2]} experts do not divide into {num_groups} groups")
    return Dataset(
        name=name,
        windows=_as_tensor(windows),
        num_groups=num_groups,
        scenarios=_scenarios_from(scenario_entries, str(path), windows.shape[2]),
        window_steps=window_steps,
        source=str(path),
        meta=manifest,
    )


def read_loads(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> tuple[np.ndarray, dict]:
    """Windows [W, L, E] and metadata of a load file, by its extension.

    .json: vLLM/ADRS load history; .pt/.pth: SGLang expert-distribution dump; .npz.
    """
    if path.suffix == ".npz":
        return load_npz(path, window_steps)
    if path.suffix == ".json":
        return load_vllm_json(path, window_steps), {"window_steps": window_steps, "format": "vllm-json"}
    if path.suffix in (".pt", ".pth"):
        return load_sglang_dump(path, window_steps), {"window_steps": window_steps, "format": "sglang-dump"}
    raise DatasetError(f"{path}: unknown dataset format {path.suffix!r} (expected .json, .npz, .pt or .pth)")


def load_dataset(name_or_path: str | Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> Dataset:
    """A shipped dataset by name, or a file: a manifest (.json with "file"), a
    vLLM/ADRS load history (.json with "load_history"), an SGLang dump (.pt) or an .npz.

    Files that name no groups get the public evaluators' 8 when they divide the experts
    (else 1), and files get the public evaluators' scenario (288 slots, 4 nodes, 32 GPUs)
    with those groups when it fits their shape.
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
    if path.suffix == ".json" and _looks_like_manifest(path):
        return load_manifest(path)
    windows, meta = read_loads(path, window_steps)
    steps_per_window = meta.get("window_steps")
    windows = check_windows(windows, str(path))
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and "file" in document and "load_history" not in document


# ---------------------------------------------------------------- predictors


@dataclass(frozen=True)
class Predictor:
    """What the balancer is given to plan for window i + 1.

    `last`: window i itself (the public evaluators' protocol). `ema:ALPHA`: the
    exponential moving average e_i = ALPHA * w_i + (1 - ALPHA) * e_(i-1), e_0 = w_0.
    """

    kind: str = "last"
    alpha: float = 1.0

    def label(self) -> str:
        return "last" if self.kind == "last" else f"ema:{self.alpha:g}"


def parse_predictor(text: str) -> Predictor:
    """`last` or `ema:ALPHA` with 0 < ALPHA <= 1; ValueError otherwise."""
    if text == "last":
        return Predictor()
    kind, _, value = text.partition(":")
    if kind == "ema":
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if 0 < alpha <= 1:
            return Predictor("ema", alpha)
    raise ValueError(f"unknown predictor {text!r} (expected last or ema:ALPHA with 0 < ALPHA <= 1)")


def predicted_windows(windows: torch.Tensor, predictor: Predictor) -> torch.Tensor:
    """windows: [W, L, E] -> [W, L, E], entry i being what the balancer plans on at window i."""
    if predictor.kind == "last":
        return windows
    smoothed = torch.empty(windows.shape, dtype=torch.float64, device=windows.device)
    smoothed[0] = windows[0]
    for i in range(1, windows.shape[0]):
        smoothed[i] = predictor.alpha * windows[i] + (1 - predictor.alpha) * smoothed[i - 1]
    return smoothed


# ---------------------------------------------------------------- writing and checking


def write_dataset_files(directory: Path, name: str, windows: np.ndarray, manifest: dict) -> dict:
    """Write `<name>.npz` (windows as int32 when they are counts) and its manifest.

    Both go to temporary files first; the data file is renamed into place, then the
    manifest, so an interrupted write never leaves a manifest without its data. The
    manifest gets `name`, `file` and `sha256` added. Returns it.
    """
    directory = Path(directory)
    data_path, manifest_path = directory / f"{name}.npz", directory / f"{name}.json"
    partial_data = directory / f".{name}.npz.partial"
    partial_manifest = directory / f".{name}.json.partial"
    stored = windows.astype(np.int32) if np.issubdtype(windows.dtype, np.integer) and windows.max() < 2**31 else windows
    try:
        with open(partial_data, "wb") as handle:
            np.savez_compressed(handle, windows=stored)
        manifest = {"name": name, "file": data_path.name, "sha256": sha256_of(partial_data), **manifest}
        partial_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        partial_data.replace(data_path)
        partial_manifest.replace(manifest_path)
    finally:
        partial_data.unlink(missing_ok=True)
        partial_manifest.unlink(missing_ok=True)
    return manifest


def verify_manifest(path: Path) -> str | None:
    """None when the manifest's data file exists and matches its sha256, else the problem."""
    try:
        manifest = json.loads(path.read_text())
        data_path = path.parent / manifest["file"]
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    if not data_path.is_file():
        return f"data file {data_path.name} is missing"
    actual = sha256_of(data_path)
    if actual != expected:
        return f"sha256 {actual[:12]}... differs from the manifest's {expected[:12]}..."
    return None


DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_dataset(
    path: str | Path,
    name: str,
    *,
    num_groups: int = 1,
    scenarios: list[Scenario] | None = None,
    window_steps: int = DEFAULT_WINDOW_STEPS,
    directory: Path | None = None,
    force: bool = False,
) -> dict:
    """Read a load file and write it as a manifest-backed dataset `name`.

    Without `scenarios`, the public evaluators' scenario is used when it fits. Any
    error raises DatasetError before anything is written. Returns the manifest.
    """
    directory = Path(directory) if directory is not None else datasets_dir()
    if not DATASET_NAME.match(name):
        raise DatasetError(f"invalid dataset name {name!r} (letters, digits, '.', '_' and '-')")
    if (directory / f"{name}.json").exists() and not force:
        raise DatasetError(f"dataset {name!r} already exists in {directory} (use --force to replace it)")
    if window_steps < 1:
        raise DatasetError(f"window steps must be at least 1, got {window_steps}")
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"no such file: {source}")
    windows, meta = read_loads(source, window_steps)
    windows = check_windows(windows, str(source))
    num_logical = windows.shape[2]
    if num_groups < 1 or num_logical % num_groups:
        raise DatasetError(f"{source}: {num_logical} experts do not divide into {num_groups} groups")
    if scenarios is None or not scenarios:
        scenarios = _default_scenarios(num_logical, num_groups)
    for scenario in scenarios:
        try:
            scenario.check(num_logical)
        except ScenarioError as exc:
            raise DatasetError(f"scenario {scenario.label()}: {exc}") from None
    from .loadstats import dataset_statistics

    manifest = {
        "num_layers": windows.shape[1],
        "num_logical": num_logical,
        "num_groups": num_groups,
        "num_windows": windows.shape[0],
        "window_steps": meta.get("window_steps", window_steps),
        "scenarios": [{"name": s.name, **s.as_dict()} for s in scenarios],
        "provenance": f"imported from {source.name} ({meta.get('format', source.suffix)}) "
        f"with eplb-bench datasets import",
        "source_sha256": sha256_of(source),
        "statistics": dataset_statistics(windows, scenarios[0].num_gpus if scenarios else None),
    }
    directory.mkdir(parents=True, exist_ok=True)
    return write_dataset_files(directory, name, windows, manifest)
