"""Load files read into windows `[num_windows, num_layers, num_logical]`: vLLM/ADRS
load-history JSON (streamed), SGLang expert-distribution dumps and .npz, with their checks.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from eplb_bench.core.record import CROSS_WORKLOAD, NEXT_WINDOW
from eplb_bench.data.dataset import DEFAULT_WINDOW_STEPS, DatasetError

# Names of datasets and workloads: file names that tables, plots, paths and --pair
# PLAN:SERVE show as written.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Windows a dataset needs: a load history plans on one and scores on the next.
MIN_WINDOWS = {NEXT_WINDOW: 2, CROSS_WORKLOAD: 1}


def check_windows(windows: np.ndarray, where: str, protocol: str = NEXT_WINDOW) -> np.ndarray:
    """Raise DatasetError unless `windows` is a usable [W, L, E] array of loads with the
    windows `protocol` needs (MIN_WINDOWS)."""
    min_windows = MIN_WINDOWS.get(protocol, MIN_WINDOWS[NEXT_WINDOW])
    if windows.ndim != 3:
        raise DatasetError(f"{where}: loads have shape {windows.shape}, expected [windows, layers, experts]")
    if min(windows.shape) < 1:
        raise DatasetError(f"{where}: loads have an empty dimension, shape {windows.shape}")
    check_values(windows, f"{where}: loads")
    if windows.shape[0] < min_windows:
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
            except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
                raise DatasetError(f"{self.path}: unusable JSON ({where}: {one_line_reason(exc)})") from None
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
    if counts.layout == torch.strided:
        refuse_expanded(counts, path, "logical_count")
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


# ---------------------------------------------------------------- SGLang expert locations

# The keys of the files SGLang's --init-expert-location reads (JSON or torch.save):
# a placement `physical_to_logical_map` [layers, physical slots], or loads
# `logical_count` [layers, experts] (or [steps, layers, experts]) for SGLang to balance.
PLACEMENT_KEY, COUNT_KEY = "physical_to_logical_map", "logical_count"
SGLANG_LOCATION = "sglang-location"
# Location files hold one aggregate per layer: megabytes, not the gigabytes of a history.
MAX_LOCATION_BYTES = 1 << 26


def json_format(path: Path) -> str:
    """SGLANG_LOCATION when a .json load file's first top-level key of either format is
    logical_count or physical_to_logical_map, else "vllm-json" (whose reader reports
    what is wrong with a file of neither). Read as a stream: a long history costs nothing."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError:
        return "vllm-json"
    with handle:
        stream = _JsonStream(handle, path)
        try:
            stream.take("{", "the document")
            while stream.peek() not in ("}", ""):
                key = stream.value("a key")
                if key == "load_history":
                    return "vllm-json"
                if key in (PLACEMENT_KEY, COUNT_KEY):
                    return SGLANG_LOCATION
                stream.take(":", f"after key {key!r}")
                stream.value(f"the value of {key!r}")
                if stream.take(",}", "in the document") == "}":
                    break
        except DatasetError:
            pass  # malformed: the vLLM reader says how
    return "vllm-json"


def read_sglang_location(path: Path) -> dict:
    """The document of an SGLang expert-location file (.json, or .pt loaded with
    weights_only=True: no code runs): a dict with `logical_count` and/or
    `physical_to_logical_map`. DatasetError when unreadable or neither is there."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror})") from None
    if size > MAX_LOCATION_BYTES:
        raise DatasetError(f"{path}: {size} bytes is too large for an expert-location file")
    if path.suffix in (".pt", ".pth"):
        try:
            document = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise DatasetError(f"{path}: not a readable torch file ({type(exc).__name__})") from None
    else:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, RecursionError):
            raise DatasetError(f"{path}: not valid JSON") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
            raise DatasetError(f"{path}: unusable JSON ({one_line_reason(exc)})") from None
    if not isinstance(document, dict) or not ({PLACEMENT_KEY, COUNT_KEY} & set(document)):
        raise DatasetError(f'{path}: expected an object with "{COUNT_KEY}" or "{PLACEMENT_KEY}" (SGLang expert location)')
    return document


# Values a location file may hold: far more than any model's layers x experts (x steps).
MAX_LOCATION_VALUES = 1 << 25


def _numbers(value, path: Path, key: str, ndims: tuple[int, ...]) -> np.ndarray:
    """A document's array `key` as float64 with one of `ndims` dimensions, every value a
    finite real number (no booleans, strings or complex numbers), at most
    MAX_LOCATION_VALUES of them (checked before anything is converted)."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_complex or value.dtype == torch.bool or value.layout != torch.strided:
            raise DatasetError(f"{path}: {key} is a {value.dtype} {value.layout} tensor, expected real numbers")
        refuse_expanded(value, path, key)
        if value.numel() > MAX_LOCATION_VALUES:
            raise DatasetError(f"{path}: {key} has {value.numel()} values, more than {MAX_LOCATION_VALUES}")
        try:
            array = value.detach().double().numpy()
        except (RuntimeError, TypeError, NotImplementedError):
            raise DatasetError(f"{path}: {key} cannot be read as numbers") from None
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError, OverflowError):
            raise DatasetError(f"{path}: {key} is not a rectangular array of numbers") from None
        # Booleans (true/false mixed with numbers become numbers), strings, ragged lists,
        # integers past int64: none is a count.
        if array.dtype.kind not in "iuf" or _holds_booleans(value):
            raise DatasetError(f"{path}: {key} is not a rectangular array of numbers")
        array = array.astype(np.float64)
    if array.ndim not in ndims or array.size == 0:
        raise DatasetError(f"{path}: {key} has shape {array.shape}, expected {' or '.join(f'{n}-D' for n in ndims)}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{path}: {key} contains NaN or infinite values")
    return array


_IS_BOOLEAN = np.frompyfunc(lambda item: isinstance(item, (bool, np.bool_)), 1, 1)


def _holds_booleans(value) -> bool:
    """Whether a rectangular nested list holds a boolean anywhere."""
    return bool(_IS_BOOLEAN(np.asarray(value, dtype=object)).any())


def one_line_reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def sglang_logical_count(path: Path) -> np.ndarray:
    """logical_count of an SGLang expert-location file: [L, E] (one aggregate) or
    [S, L, E] (steps), float64, finite and non-negative."""
    document = read_sglang_location(path)
    if COUNT_KEY not in document:
        raise DatasetError(f"{path}: holds a placement ({PLACEMENT_KEY}) but no {COUNT_KEY}: no loads to read")
    counts = _numbers(document[COUNT_KEY], path, COUNT_KEY, (2, 3))
    check_values(counts, f"{path}: {COUNT_KEY}")
    return counts


def sglang_placement(path: Path) -> np.ndarray:
    """physical_to_logical_map of an SGLang expert-location file: [L, R] int64, each
    slot's logical expert (validate it with core.contract before use)."""
    document = read_sglang_location(path)
    if PLACEMENT_KEY not in document:
        raise DatasetError(f"{path}: holds no {PLACEMENT_KEY} (a placement)")
    mapping = _numbers(document[PLACEMENT_KEY], path, PLACEMENT_KEY, (2,))
    if (mapping != np.round(mapping)).any() or (mapping < 0).any() or mapping.max() >= 2**31:
        raise DatasetError(f"{path}: {PLACEMENT_KEY} must hold non-negative integer expert ids")
    return mapping.astype(np.int64)


def empty_layers(windows: np.ndarray) -> list[int]:
    """windows: [W, L, E] -> the layers with no load in any window (dense layers that a
    location file lists with zero counts), in order."""
    return [int(layer) for layer in np.flatnonzero(windows.reshape(-1, *windows.shape[1:]).sum((0, 2)) == 0)]


def load_sglang_location(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> tuple[np.ndarray, dict]:
    """An SGLang expert-location file's loads -> windows and metadata.

    A 2-D logical_count [L, E] is one static workload (see read_workloads); a 3-D one
    [S, L, E] is steps summed into windows, its layers without load dropped.
    """
    counts = sglang_logical_count(path)
    if counts.ndim == 2:
        return read_workloads([path])
    check_values(counts, f"{path}: {COUNT_KEY}", limit=np.iinfo(np.int64).max // (2 * window_steps))
    windows = steps_to_windows(counts, window_steps, str(path))
    windows, layers = without_empty_layers(windows, str(path))
    return windows, {"format": SGLANG_LOCATION, "window_steps": window_steps, "source_layers": layers}


def without_empty_layers(windows: np.ndarray, where: str) -> tuple[np.ndarray, dict]:
    """windows: [W, L, E] -> [W, L', E] without the layers that carry no load in any
    window (dense layers a location file lists with zero counts), and "source_layers"."""
    dropped = empty_layers(windows)
    if len(dropped) == windows.shape[1]:
        raise DatasetError(f"{where}: every layer's load is zero")
    kept = np.setdiff1d(np.arange(windows.shape[1]), dropped)
    return windows[:, kept], source_layers(windows.shape[1], dropped)


def read_workloads(paths: list[Path]) -> tuple[np.ndarray, dict]:
    """SGLang expert-location files, one aggregate logical_count [L, E] each, as a
    collection of static workloads: windows [N, L', E] (file order) and metadata with
    protocol cross-workload, one workload per file named by its stem, and the layers
    without load in every file dropped ("source_layers")."""
    counts = []
    for path in paths:
        count = sglang_logical_count(Path(path))
        if count.ndim != 2:
            raise DatasetError(f"{path}: {COUNT_KEY} has per-step counts {count.shape}; a workload is one "
                               "[layers, experts] aggregate (import a step history on its own)")
        if not count.any():
            raise DatasetError(f"{path}: every count is zero: a workload needs load to be planned on")
        if counts and count.shape != counts[0].shape:
            raise DatasetError(f"{path}: {COUNT_KEY} has shape {count.shape}, {paths[0]} has {counts[0].shape}")
        counts.append(count)
    names = [Path(path).stem for path in paths]
    for name in names:
        if not SAFE_NAME.match(name):
            raise DatasetError(f"{name!r}: a workload is named by its file's stem, which must be letters, digits, "
                               "'.', '_' and '-' (rename the file)")
    if len(set(names)) != len(names):
        raise DatasetError(f"workload names (file names without extension) repeat: {', '.join(names)}")
    windows, layers = without_empty_layers(_counts_as_integers(np.stack(counts)), ", ".join(map(str, paths)))
    meta = {"format": SGLANG_LOCATION, "protocol": CROSS_WORKLOAD, "window_steps": None,
            "workloads": [{"name": name, "source_file": Path(path).name} for name, path in zip(names, paths)],
            "source_layers": layers}
    return windows, meta


def source_layers(count: int, dropped: list[int]) -> dict:
    """The manifest's "source_layers": how many layers the source had and which were
    dropped for carrying no load (export puts them back)."""
    return {"count": count, "dropped": dropped,
            "why": "no load in any window: dense (non-MoE) layers, which a balancer has nothing to place on"}


def holds_one_aggregate(path: Path) -> bool:
    """Whether a .json or .pt file is an SGLang expert location whose logical_count is one
    [layers, experts] aggregate (a static workload)."""
    if path.suffix == ".json" and json_format(path) != SGLANG_LOCATION:
        return False
    try:
        counts = read_sglang_location(path).get(COUNT_KEY)
        return counts.dim() == 2 if isinstance(counts, torch.Tensor) else counts is not None and np.ndim(counts) == 2
    except (DatasetError, ValueError):
        return False   # the format's own reader says what is wrong


def refuse_expanded(tensor: torch.Tensor, path: Path, key: str) -> None:
    """DatasetError when a tensor holds more values than its storage (a stride-0 or
    overlapping view: a file of a few bytes that would convert to gigabytes)."""
    if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
        raise DatasetError(f"{path}: {key} is an expanded view ({tensor.numel()} values over a smaller "
                           "storage); save it with .contiguous()")


def read_loads(path: Path, window_steps: int = DEFAULT_WINDOW_STEPS) -> tuple[np.ndarray, dict]:
    """Windows [W, L, E] and metadata of a load file, by its extension and contents.

    .json: vLLM/ADRS load history, or SGLang expert location (logical_count);
    .pt/.pth: SGLang expert-distribution dump or expert location; .npz.
    """
    if path.suffix == ".npz":
        return load_npz(path, window_steps)
    if path.suffix == ".json":
        if json_format(path) == SGLANG_LOCATION:
            return load_sglang_location(path, window_steps)
        return load_vllm_json(path, window_steps), {"window_steps": window_steps, "format": "vllm-json"}
    if path.suffix in (".pt", ".pth"):
        if holds_one_aggregate(path):
            return read_workloads([path])
        return load_sglang_dump(path, window_steps), {"window_steps": window_steps, "format": "sglang-dump"}
    raise DatasetError(f"{path}: unknown dataset format {path.suffix!r} (expected .json, .npz, .pt or .pth)")


def sglang_location_documents(phy2log: np.ndarray, counts: np.ndarray, layers: dict | None,
                              num_logical: int) -> tuple[dict, dict]:
    """A placement and its loads as SGLang expert-location documents, the model's
    dropped layers (`layers`, a manifest's "source_layers") put back.

    Args:
        phy2log: [L', R] int, each slot's logical expert, of the layers kept.
        counts: [L', E] the loads planned on.
    Returns:
        ({"physical_to_logical_map": [L][R]}, {"logical_count": [L][E]}): a dropped
        layer gets SGLang's trivial map (slot i holds expert i mod E) and zero counts.
    """
    kept_count = phy2log.shape[0]
    total = layers["count"] if layers else kept_count
    dropped = list(layers["dropped"]) if layers else []
    if total - len(dropped) != kept_count:
        raise DatasetError(f"the placement has {kept_count} layers, the source {total} less {len(dropped)} dropped")
    kept = np.setdiff1d(np.arange(total), dropped)
    mapping = np.tile(np.arange(phy2log.shape[1]) % num_logical, (total, 1))
    mapping[kept] = phy2log
    full_counts = np.zeros((total, counts.shape[1]), dtype=counts.dtype)
    full_counts[kept] = counts
    return {PLACEMENT_KEY: mapping.astype(np.int64).tolist()}, {COUNT_KEY: full_counts.tolist()}
