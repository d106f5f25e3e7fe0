"""Dataset manifests: a JSON file naming its data file and sha256, groups, scenarios,
statistics and stored bounds; reading, writing and verifying them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from eplb_bench.core.contract import Scenario, ScenarioError
from eplb_bench.core.costmodel import CostModelError, ExpertShape
from eplb_bench.core.record import CROSS_WORKLOAD, NEXT_WINDOW, PROTOCOLS
from eplb_bench.data.dataset import Dataset, DatasetError, _as_tensor
from eplb_bench.data.formats import SAFE_NAME, _positive_scalar, check_windows, load_npz


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
                  "statistics": dict, "generator": dict, "model": str, "provenance": str, "bounds": dict,
                  "protocol": str, "workloads": list, "pairs": list, "routing": dict, "source_layers": dict,
                  "expert_shape": dict, "replay": dict}


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
    for key, value in (manifest.get("routing") or {}).items():
        if key not in ("top_k", "num_groups", "topk_groups"):
            raise DatasetError(f"{path}: malformed manifest (unknown routing key {key!r})")
        _positive_scalar(value, f"routing.{key}", path)
    check_protocol(manifest, path)
    check_source_layers(manifest.get("source_layers"), path)
    return manifest


def check_source_layers(layers, path) -> None:
    """DatasetError unless "source_layers" (when present) gives a positive layer count and
    distinct, sorted layer indices below it (the layers export puts back)."""
    if layers is None:
        return
    count, dropped = layers.get("count"), layers.get("dropped")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DatasetError(f"{path}: malformed manifest (source_layers.count must be a positive integer)")
    if not (isinstance(dropped, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in dropped)
            and dropped == sorted(set(dropped)) and all(0 <= i < count for i in dropped)):
        raise DatasetError(f"{path}: malformed manifest (source_layers.dropped must list distinct layers "
                           f"0..{count - 1} in order)")


def check_routing(routing, num_logical: int, path) -> None:
    """DatasetError unless a manifest's routing is possible: groups that divide the
    experts, no more chosen groups than groups or than top_k, and no more than top_k
    experts than the chosen groups hold (so that an internode share is a share)."""
    top_k = routing.get("top_k", 1)
    groups, chosen = routing.get("num_groups", 1), routing.get("topk_groups", 1)
    if top_k > num_logical or num_logical % groups or chosen > groups or chosen > top_k \
            or top_k > chosen * (num_logical // groups):
        raise DatasetError(f"{path}: impossible routing {routing} for {num_logical} experts")


def check_protocol(manifest: dict, path) -> None:
    """DatasetError unless the manifest's protocol is known and, for CROSS_WORKLOAD,
    every workload has a distinct name and every pair names two of them."""
    protocol = manifest.get("protocol", NEXT_WINDOW)
    if protocol not in PROTOCOLS:
        raise DatasetError(f"{path}: unknown protocol {protocol!r} (expected {' or '.join(PROTOCOLS)})")
    if protocol != CROSS_WORKLOAD:
        if "workloads" in manifest or "pairs" in manifest:
            raise DatasetError(f"{path}: workloads and pairs belong to the {CROSS_WORKLOAD} protocol")
        return
    workloads = manifest.get("workloads")
    if not workloads or not all(isinstance(w, dict) and isinstance(w.get("name"), str) and w["name"]
                                for w in workloads):
        raise DatasetError(f"{path}: a {CROSS_WORKLOAD} manifest needs workloads, each with a name")
    names = [w["name"] for w in workloads]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: workload names repeat")
    for name in names:
        if not SAFE_NAME.match(name):
            raise DatasetError(f"{path}: invalid workload name {name!r} (letters, digits, '.', '_' and '-')")
    check_pairs(manifest.get("pairs", []), names, f"{path}: ")


def check_pairs(pairs: list, names: list[str], where: str = "") -> None:
    """DatasetError (its message led by `where`) unless every pair is [plan, serve]: two
    distinct workloads of `names`, and no pair named twice. In-sample is always scored."""
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)):
            raise DatasetError(f"{where}malformed pair {pair!r} (expected [plan workload, serve workload])")
        plan, serve = pair
        unknown = [n for n in pair if n not in names]
        if unknown:
            raise DatasetError(f"{where}pair {plan}:{serve} names unknown workload {unknown[0]!r} "
                               f"(workloads: {', '.join(names)})")
        if plan == serve:
            raise DatasetError(f"{where}pair {plan}:{serve} plans and serves one workload (in-sample is always scored)")
    if len({tuple(pair) for pair in pairs}) != len(pairs):
        raise DatasetError(f"{where}a pair is named twice")


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
    static = manifest.get("protocol") == CROSS_WORKLOAD
    windows = check_windows(windows, str(data_path), manifest.get("protocol", NEXT_WINDOW))
    if static and windows.shape[0] != len(manifest["workloads"]):
        raise DatasetError(f"{path}: {windows.shape[0]} windows for {len(manifest['workloads'])} workloads")
    layers = manifest.get("source_layers")
    if layers is not None and layers["count"] - len(layers["dropped"]) != windows.shape[1]:
        raise DatasetError(f"{path}: source_layers ({layers['count']} less {len(layers['dropped'])} dropped) "
                           f"do not match the data's {windows.shape[1]} layers")
    if "routing" in manifest:
        check_routing(manifest["routing"], windows.shape[2], path)
    if "expert_shape" in manifest:
        try:
            ExpertShape.from_dict(manifest["expert_shape"], f"{path}: expert_shape")
        except CostModelError as exc:
            raise DatasetError(str(exc)) from None
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
