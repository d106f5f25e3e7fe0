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

    @property
    def routing(self) -> "Routing":
        """How tokens choose experts, from the manifest (top-k 8, no group limit if unknown)."""
        generator = self.meta.get("generator") if isinstance(self.meta.get("generator"), dict) else {}
        top_k = self.meta.get("top_k") or generator.get("top_k") or DEFAULT_TOP_K
        groups = generator.get("routing_groups") or 1
        chosen = generator.get("topk_groups") or 0
        if chosen <= 0 or groups <= 1 or self.num_logical % groups:
            groups, chosen = 1, 1
        return Routing(int(top_k), int(groups), int(chosen))


@dataclass(frozen=True)
class Routing:
    """Token routing of a model: top_k experts per token, from topk_groups of
    num_groups contiguous expert groups (1 of 1 when routing is not group-limited)."""

    top_k: int = 8
    num_groups: int = 1
    topk_groups: int = 1


DEFAULT_TOP_K = 8


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
    check_values(windows, f"{where}: loads")
    if windows.shape[0] < 2:
        raise DatasetError(
            f"{where}: only {windows.shape[0]} window; at least 2 are needed (plan on one, score on the next)"
        )
    return windows


def check_values(loads: np.ndarray, where: str, limit: int = np.iinfo(np.int64).max // 2) -> None:
    """Raise DatasetError unless `loads` are finite, non-negative numbers not above `limit`."""
    if not (np.issubdtype(loads.dtype, np.integer) or np.issubdtype(loads.dtype, np.floating)):
        raise DatasetError(f"{where} have dtype {loads.dtype}, expected numbers")
    if np.issubdtype(loads.dtype, np.floating) and not np.isfinite(loads).all():
        raise DatasetError(f"{where} contain NaN or infinite values")
    if (loads < 0).any():
        raise DatasetError(f"{where} contain negative values")
    if loads.size and loads.max() > limit:
        raise DatasetError(f"{where} are too large (over {limit})")


def _too_few_windows(num_steps: int, num_windows: int, window_steps: int, where: str) -> DatasetError:
    return DatasetError(
        f"{where}: {num_steps} steps make {num_windows} window(s) of {window_steps}; at least 2 are needed"
    )


def _counts_as_integers(windows: np.ndarray) -> np.ndarray:
    """Float windows that hold whole numbers become int64; others stay as they are."""
    if np.issubdtype(windows.dtype, np.floating) and (windows == np.round(windows)).all():
        return windows.astype(np.int64)
    return windows


def steps_to_windows(steps: np.ndarray, window_steps: int, where: str) -> np.ndarray:
    """steps: [num_steps, L, E] -> [num_steps // window_steps, L, E]; a partial last window is dropped."""
    num_windows = steps.shape[0] // window_steps
    if num_windows < 2:
        raise _too_few_windows(steps.shape[0], num_windows, window_steps, where)
    usable = steps[: num_windows * window_steps]
    return _counts_as_integers(usable.reshape(num_windows, window_steps, *steps.shape[1:]).sum(1))


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


READ_CHARS = 1 << 22
# One step of the largest model (94 layers x 384 experts) is well under this.
MAX_VALUE_CHARS = 1 << 26
_WHITESPACE = re.compile(r"\s*")


class _JsonStream:
    """A JSON text read in chunks: whitespace, single characters and whole values.

    Only the unread part of the current chunk and one value are held at a time.
    """

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path
        self.buffer, self.position, self.at_end = "", 0, False

    def _refill(self) -> bool:
        if self.at_end:
            return False
        try:
            more = self.handle.read(READ_CHARS)
        except UnicodeDecodeError:
            raise DatasetError(f"{self.path}: not valid JSON (not UTF-8 text)") from None
        self.at_end = not more
        self.buffer, self.position = self.buffer[self.position:] + more, 0
        return bool(more)

    def peek(self) -> str:
        """The next non-whitespace character, '' at the end of the file."""
        while True:
            self.position = _WHITESPACE.match(self.buffer, self.position).end()
            if self.position < len(self.buffer) or not self._refill():
                return self.buffer[self.position:self.position + 1]

    def take(self, allowed: str, where: str) -> str:
        char = self.peek()
        if not char or char not in allowed:
            found = repr(char) if char else "the end of the file"
            raise DatasetError(f"{self.path}: not valid JSON ({where}: expected {' or '.join(allowed)}, found {found})")
        self.position += 1
        return char

    def value(self, where: str):
        """Decode the next whole JSON value, reading on while it is incomplete."""
        self.peek()
        decoder = json.JSONDecoder()
        while True:
            try:
                value, end = decoder.raw_decode(self.buffer, self.position)
            except json.JSONDecodeError as exc:
                # An error at the buffer's end (or an unterminated string) may just mean "read on".
                unfinished = exc.pos >= len(self.buffer) or exc.msg.startswith("Unterminated string")
                at_tail = unfinished or exc.pos >= len(self.buffer) - 6
                if len(self.buffer) - self.position >= MAX_VALUE_CHARS:
                    raise DatasetError(f"{self.path}: {where} is larger than {MAX_VALUE_CHARS} characters") from None
                if at_tail and self._refill():
                    continue
                reason = "the file ends inside it" if unfinished else exc.msg
                raise DatasetError(f"{self.path}: not valid JSON ({where}: {reason})") from None
            except RecursionError:
                raise DatasetError(f"{self.path}: not valid JSON ({where} is nested too deeply)") from None
            self.position = end
            return value


def iter_vllm_steps(path: Path):
    """Yield each step's load [num_layers, num_logical] of a vLLM/ADRS load history.

    The document is an object whose top-level "load_history" is a list of step
    objects, each with a "logical_expert_load" [[...], ...]; other keys are skipped.
    It is parsed as a stream: one step at a time, never the whole document. Raises
    DatasetError for a malformed or truncated file.
    """
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror})") from None
    with handle:
        stream = _JsonStream(handle, path)
        stream.take("{", "the document")
        found = False
        if stream.peek() == "}":
            stream.take("}", "the document")
        else:
            while True:
                key = stream.value("a key")
                if not isinstance(key, str):
                    raise DatasetError(f"{path}: not valid JSON (a key must be a string)")
                stream.take(":", f"after key {key!r}")
                if key == "load_history":
                    found = True
                    yield from _history_steps(stream, path)
                else:
                    stream.value(f"the value of {key!r}")
                if stream.take(",}", "in the document") == "}":
                    break
        if stream.peek():
            raise DatasetError(f"{path}: not valid JSON (data after the document)")
        if not found:
            raise DatasetError(f'{path}: expected an object with a non-empty "load_history" list')


def _history_steps(stream: "_JsonStream", path: Path):
    """The steps of the "load_history" list, the stream standing at its '['."""
    stream.take("[", '"load_history"')
    if stream.peek() == "]":
        raise DatasetError(f'{path}: "load_history" is empty')
    index = 0
    while True:
        entry = stream.value(f"step {index}")
        if not isinstance(entry, dict) or "logical_expert_load" not in entry:
            raise DatasetError(f"{path}: step {index} has no logical_expert_load")
        yield _step_array(entry["logical_expert_load"], path, index)
        index += 1
        if stream.take(",]", '"load_history"') == "]":
            return


def _step_array(value, path: Path, index: int) -> np.ndarray:
    try:
        step = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
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
        raise _too_few_windows(total, len(windows), window_steps, where)
    return _counts_as_integers(np.stack(windows))


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
    try:
        counts = counts.detach().to_dense().double().numpy()
    except (RuntimeError, TypeError) as exc:
        raise DatasetError(f"{path}: logical_count cannot be read as numbers ({type(exc).__name__})") from None
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise DatasetError(f"{path}: logical_count has shape {counts.shape}, expected [steps, layers, experts]")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise DatasetError(f"{path}: logical_count has NaN, infinite or negative counts")
    return steps_to_windows(counts, window_steps, str(path))


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
        if steps.ndim != 3 or min(steps.shape) < 1:
            raise DatasetError(f"{path}: steps have shape {steps.shape}, expected [steps, layers, experts]")
        check_values(steps, f"{path}: steps", limit=np.iinfo(np.int64).max // (2 * steps_per_window))
        meta["window_steps"] = steps_per_window
        return steps_to_windows(steps, steps_per_window, str(path)), meta
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


MANIFEST_TYPES = {"file": str, "sha256": str, "name": str, "scenarios": list, "phases": list,
                  "statistics": dict, "generator": dict, "model": str, "provenance": str, "bounds": dict}


def read_manifest(path: Path) -> dict:
    """A manifest's JSON object, its keys' types checked; DatasetError when unreadable or malformed."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or "file" not in manifest:
        raise DatasetError(f'{path}: malformed manifest (expected an object with a "file" name)')
    for key, kind in MANIFEST_TYPES.items():
        if key in manifest and not isinstance(manifest[key], kind):
            raise DatasetError(f"{path}: malformed manifest ({key} must be a {kind.__name__})")
    for key in ("num_groups", "window_steps", "num_layers", "num_logical", "num_windows", "top_k"):
        if key in manifest and manifest[key] is not None:
            _positive_scalar(manifest[key], key, path)
    for phase in manifest.get("phases", []):
        if not (isinstance(phase, dict) and isinstance(phase.get("windows"), list) and len(phase["windows"]) == 2):
            raise DatasetError(f"{path}: malformed manifest (a phase needs windows [first, last])")
    return manifest


def load_manifest(path: Path) -> Dataset:
    """A shipped dataset: a manifest JSON naming its data file, groups and scenarios."""
    manifest = read_manifest(path)
    data_path = path.parent / manifest["file"]
    name = str(manifest.get("name", path.stem))
    num_groups = _positive_scalar(manifest.get("num_groups", 1), "num_groups", path)
    window_steps = manifest.get("window_steps")
    scenario_entries = manifest.get("scenarios", [])
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
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


def scenario_key(scenario: Scenario) -> str:
    """The key of a scenario's entry in a manifest's "bounds": replicas/groups/nodes/gpus."""
    return f"{scenario.num_replicas}/{scenario.num_groups}/{scenario.num_nodes}/{scenario.num_gpus}"


def stored_lower_bounds(dataset: Dataset, scenario: Scenario, policy: str = "global") -> torch.Tensor | None:
    """[num_windows, num_layers] float64 lower bounds on the peak GPU load stored in
    the dataset's manifest (NaN where not computed), or None when there are none for
    this scenario and policy or they were computed for other data."""
    entry = (dataset.meta.get("bounds") or {}).get(scenario_key(scenario), {}).get(policy)
    if not isinstance(entry, dict) or entry.get("data_sha256") != dataset.meta.get("sha256"):
        return None
    try:
        values = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["lower_bound"]])
    except (KeyError, TypeError, ValueError):
        return None
    if values.shape != (dataset.num_windows, dataset.num_layers):
        return None
    return torch.from_numpy(values)


def write_dataset_files(directory: Path, name: str, windows: np.ndarray, manifest: dict) -> dict:
    """Write `<name>.npz` (uncompressed; windows as int32 when they are counts) and its manifest.

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
            np.savez(handle, windows=stored)  # uncompressed: the bytes do not depend on zlib
        manifest = {"name": name, "file": data_path.name, "sha256": sha256_of(partial_data), **manifest}
        partial_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        partial_data.replace(data_path)
        partial_manifest.replace(manifest_path)
    finally:
        partial_data.unlink(missing_ok=True)
        partial_manifest.unlink(missing_ok=True)
    return manifest


def verify_manifest(path: Path) -> str | None:
    """None when the manifest's data file exists, matches its sha256 and loads, else the problem."""
    try:
        manifest = read_manifest(path)
    except DatasetError as exc:
        return str(exc).removeprefix(f"{path}: ")
    data_path = path.parent / manifest["file"]
    if "sha256" not in manifest:
        return "the manifest has no sha256"
    if not data_path.is_file():
        return f"data file {data_path.name} is missing"
    actual = sha256_of(data_path)
    if actual != manifest["sha256"]:
        return f"sha256 {actual[:12]}... differs from the manifest's {manifest['sha256'][:12]}..."
    try:
        load_manifest(path)
    except DatasetError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return None


DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_dataset(
    path: str | Path,
    name: str,
    *,
    num_groups: int | None = None,
    scenarios: list[Scenario] | None = None,
    window_steps: int = DEFAULT_WINDOW_STEPS,
    directory: Path | None = None,
    force: bool = False,
) -> dict:
    """Read a load file and write it as a manifest-backed dataset `name`.

    Without `num_groups`, the file's own are used, else default_groups(). Without
    `scenarios`, the public evaluators' scenario is used when it fits. Any error
    raises DatasetError (ScenarioError for a scenario that does not fit) before
    anything is written. Returns the manifest.
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
    if num_groups is None:
        num_groups = meta.get("num_groups") or default_groups(num_logical)
    if num_groups < 1 or num_logical % num_groups:
        raise DatasetError(f"{source}: {num_logical} experts do not divide into {num_groups} groups")
    if scenarios is None or not scenarios:
        scenarios = _default_scenarios(num_logical, num_groups)
    for scenario in scenarios:
        try:
            scenario.check(num_logical)
        except ScenarioError as exc:
            raise ScenarioError(f"scenario {scenario.label()}: {exc}") from None
    from .loadstats import dataset_statistics

    manifest = {
        "num_layers": windows.shape[1],
        "num_logical": num_logical,
        "num_groups": num_groups,
        "num_windows": windows.shape[0],
        "window_steps": meta.get("window_steps"),
        "scenarios": [{"name": s.name, **s.as_dict()} for s in scenarios],
        "provenance": f"imported from {source.name} ({meta.get('format', source.suffix)}) "
        f"with eplb-bench datasets import",
        "source_sha256": sha256_of(source),
        "statistics": dataset_statistics(windows, scenarios[0].num_gpus if scenarios else None),
    }
    directory.mkdir(parents=True, exist_ok=True)
    return write_dataset_files(directory, name, windows, manifest)
