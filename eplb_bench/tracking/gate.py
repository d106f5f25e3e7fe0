"""The review gate over asv: does HEAD worsen any tracked balance, time or memory of BASE?

`eplb-bench gate BASE HEAD` records both commits with `asv run` (each in asv's own
virtualenv, built from that commit) unless their results are already there, then
compares every benchmark and parameter the two commits share:

- a `track_` value (all lower-is-better) worsens when it grows by more than
  `track_threshold` of itself, or of 1 for values below 1 (shares and gaps, where a
  relative change of a number near zero says nothing);
- a `time_` value worsens when it grows by more than `time_factor`, a `peakmem_`
  value by more than `memory_factor`;
- a value that BASE measured and HEAD failed to measure is a regression too.

Skipped benchmarks (asv stores NaN) and benchmarks that only one commit has are
listed, never gated on. asv's own result files are read through `asv.results`.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TRACK_THRESHOLD = 0.01
TIME_FACTOR = 1.5
MEMORY_FACTOR = 1.5


class GateError(Exception):
    """asv is missing, a commit is unknown or a run could not be recorded."""


@dataclass(frozen=True)
class Change:
    """One benchmark value that got worse from BASE to HEAD."""

    benchmark: str
    params: tuple
    base: float | None
    head: float | None
    limit: float | None

    def line(self) -> str:
        params = ", ".join(str(p) for p in self.params)
        label = f"{self.benchmark}({params})" if params else self.benchmark
        if self.head is None:
            return f"{label}: {self.base:.6g} at BASE, failed at HEAD"
        return f"{label}: {self.base:.6g} -> {self.head:.6g} (allowed up to {self.limit:.6g})"


def allowed_value(benchmark: str, base: float, track_threshold: float, time_factor: float,
                  memory_factor: float) -> float | None:
    """The largest HEAD value that does not count as worse than `base`; None: not gated."""
    kind = benchmark.rsplit(".", 1)[-1].split("_", 1)[0]
    if kind == "track":
        return base + track_threshold * max(abs(base), 1.0)
    if kind == "time":
        return base * time_factor
    if kind == "peakmem":
        return base * memory_factor
    return None


def _measured(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def worsened(base: dict, head: dict, track_threshold: float = TRACK_THRESHOLD, time_factor: float = TIME_FACTOR,
             memory_factor: float = MEMORY_FACTOR) -> list[Change]:
    """Regressions from `base` to `head`.

    Args:
        base, head: {(benchmark name, params tuple): value}; a value is a number,
            None (the benchmark failed) or NaN (it was skipped).
    Returns:
        the values of HEAD beyond what BASE allows, in benchmark order.
    """
    changes = []
    for key in sorted(base.keys() & head.keys(), key=str):
        before, after = base[key], head[key]
        if not _measured(before):
            continue
        limit = allowed_value(key[0], before, track_threshold, time_factor, memory_factor)
        if limit is None:
            continue
        if after is None:
            changes.append(Change(key[0], key[1], before, None, None))
        elif _measured(after) and after > limit:
            changes.append(Change(key[0], key[1], before, after, limit))
    return changes


def flatten_results(results) -> dict:
    """An asv Results object -> {(benchmark name, params tuple): value}."""
    values = {}
    for name in results.get_all_result_keys():
        params = results.get_result_params(name)
        combos = list(itertools.product(*params)) if params else [()]
        for combo, value in zip(combos, results.get_result_value(name, params)):
            values[(name, tuple(_unquoted(p) for p in combo))] = value
    return values


def _unquoted(param: str) -> str:
    """asv stores string parameters as their repr; show them bare."""
    return param[1:-1] if len(param) >= 2 and param[0] == param[-1] and param[0] in "'\"" else param


def commit_values(results_dir: Path, machine: str, commit: str) -> dict:
    """Every value asv recorded for one commit on one machine (all environments merged)."""
    from asv.results import Results

    values = {}
    for path in sorted((results_dir / machine).glob(f"{commit[:8]}-*.json")):
        values.update(flatten_results(Results.load(str(path), machine_name=machine)))
    return values


def asv_config(config: str) -> dict:
    """The parts of asv.conf.json the gate needs (asv allows // comments in it)."""
    from asv.util import UserError, load_json

    path = Path(config).resolve()
    try:
        data = load_json(str(path), js_comments=True)
    except UserError as exc:
        raise GateError(str(exc)) from None
    results_dir = Path(data.get("results_dir", "results"))
    return {"path": path, "repo": (path.parent / data.get("repo", ".")).resolve(),
            "results_dir": results_dir if results_dir.is_absolute() else path.parent / results_dir}


def full_hash(repo: Path, name: str) -> str:
    """A commit name (branch, tag, hash prefix, HEAD~1) -> its full hash."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise GateError(f"unknown commit {name!r} in {repo}")
    return done.stdout.strip()


def default_machine() -> str:
    from asv.machine import Machine

    return Machine.get_unique_machine_name()


def ensure_machine(machine: str) -> None:
    """Create asv's machine entry with detected defaults when it is missing."""
    from asv.machine import MachineCollection

    path = Path(MachineCollection.get_machine_file_path())
    known = json.loads(path.read_text()) if path.exists() else {}
    if machine not in known:
        subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--machine", machine], check=True,
                       stdout=subprocess.DEVNULL)


def record(commit: str, config: Path, machine: str, bench: list[str], quick: bool) -> None:
    """Run asv on one commit, in the virtualenv asv builds for it; failed benchmarks are kept."""
    command = [sys.executable, "-m", "asv", "run", "--config", str(config), "--machine", machine,
               "--show-stderr", f"{commit}^!"]
    command += [f"--bench={pattern}" for pattern in bench] + (["--quick"] if quick else [])
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command)
    if done.returncode not in (0, 2):  # 2: some benchmark failed, which the comparison reports
        raise GateError(f"asv run failed on {commit[:8]} (exit status {done.returncode})")


def gate(base: str, head: str = "HEAD", *, config: str = "asv.conf.json", machine: str | None = None,
         bench: list[str] = (), quick: bool = False, rerun: bool = False, compare_only: bool = False,
         track_threshold: float = TRACK_THRESHOLD, time_factor: float = TIME_FACTOR,
         memory_factor: float = MEMORY_FACTOR) -> tuple[list[Change], dict]:
    """Record BASE and HEAD where needed and compare them (module docstring).

    Returns:
        (regressions, summary) where summary counts the compared, skipped and unmatched values.
    """
    if importlib.util.find_spec("asv") is None:
        raise GateError("asv is not installed: pip install 'eplb-bench[bench]'")
    conf = asv_config(config)
    machine = machine or default_machine()
    commits = {label: full_hash(conf["repo"], name) for label, name in (("BASE", base), ("HEAD", head))}
    values = {}
    for label, commit in commits.items():
        values[label] = commit_values(conf["results_dir"], machine, commit)
        if compare_only:
            if not values[label]:
                raise GateError(f"no asv results for {label} {commit[:8]} on machine {machine!r}")
            continue
        if rerun or not values[label]:
            ensure_machine(machine)
            record(commit, conf["path"], machine, list(bench), quick)
            values[label] = commit_values(conf["results_dir"], machine, commit)
        if not values[label]:
            raise GateError(f"asv recorded nothing for {label} {commit[:8]}")
    shared = values["BASE"].keys() & values["HEAD"].keys()
    summary = {
        "base": commits["BASE"], "head": commits["HEAD"], "machine": machine, "compared": len(shared),
        "skipped": sum(not _measured(values["BASE"][k]) and values["BASE"][k] is not None for k in shared),
        "only_base": len(values["BASE"].keys() - shared), "only_head": len(values["HEAD"].keys() - shared),
    }
    return worsened(values["BASE"], values["HEAD"], track_threshold, time_factor, memory_factor), summary


def format_gate(changes: list[Change], summary: dict, track_threshold: float, time_factor: float,
                memory_factor: float) -> str:
    lines = [f"BASE {summary['base'][:8]} vs HEAD {summary['head'][:8]} on {summary['machine']}: "
             f"{summary['compared']} values compared ({summary['skipped']} skipped at BASE), "
             f"{summary['only_base']} only at BASE, {summary['only_head']} only at HEAD; "
             f"limits: tracks +{track_threshold:.1%}, times x{time_factor:g}, peak memory x{memory_factor:g}"]
    if changes:
        lines.append(f"WORSE: {len(changes)} value(s)")
        lines += [f"  {change.line()}" for change in changes]
    else:
        lines.append("no regression")
    return "\n".join(lines)

