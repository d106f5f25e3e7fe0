"""Score one contributed program, confined to its own process, on the standard suite.

Each (dataset, scenario) gets a fresh child process (eplb_bench.sandbox), so a
program that hangs, crashes or exhausts its memory on one dataset ends that
dataset with its status and leaves the others untouched. Scoring, validation and
records are the runner's, exactly as for an in-process balancer; only the
runtime differs in origin: the child measures the call itself.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from .registry import AlgorithmInfo
from .runner import Job, run_job
from .sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, IsolatedProgram
from .scoring import SCORERS


def isolated_info(path: str | Path, timeout: float = DEFAULT_TIMEOUT,
                  memory_mb: float = DEFAULT_MEMORY_MB) -> AlgorithmInfo:
    """A balancer entry whose function runs the program in a confined child process."""
    return AlgorithmInfo(name=Path(path).stem, function=IsolatedProgram(path, timeout=timeout, memory_mb=memory_mb),
                         description=f"{path}, in a separate process", devices=("cpu",), source=str(path))


def evaluate_program(path: str | Path, targets: Iterable[tuple], timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB) -> Iterator[dict]:
    """One record per (dataset, scenario) in `targets`, yielded as each finishes."""
    for dataset, scenario in targets:
        info = isolated_info(path, timeout, memory_mb)
        try:
            record = run_job(Job(info, dataset, scenario))
        finally:
            info.function.close()
        trips = info.function.roundtrip_seconds
        record["isolated"] = {"timeout_s": timeout, "memory_mb": memory_mb,
                              "roundtrip_ms": statistics.median(trips) * 1e3 if trips else None}
        yield record


def summary(records: list[dict]) -> dict:
    """The overall result: statuses, and each scorer's and balancedness's mean over scored scenarios."""
    scored = [r for r in records if r["status"] == "ok"]
    result = {
        "program": records[0]["algorithm"] if records else None,
        "scenarios": len(records),
        "scored": len(scored),
        "statuses": dict(Counter(r["status"] for r in records)),
        "balancedness_gpu": statistics.fmean(r["balancedness_gpu"] for r in scored) if scored else None,
        "runtime_ms": statistics.fmean(r["runtime_ms"] for r in scored) if scored else None,
        "scores": {name: statistics.fmean(r["scores"][name] for r in scored) if scored else None for name in SCORERS},
    }
    return result


def format_summary(result: dict) -> str:
    statuses = ", ".join(f"{status} {count}" for status, count in sorted(result["statuses"].items()))
    line = f"overall: {result['program']}: {result['scored']} of {result['scenarios']} scenarios scored ({statuses})"
    if result["scored"]:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in result["scores"].items())
        line += (f"; means over the scored ones: gpu balancedness {result['balancedness_gpu']:.4f}, "
                 f"{result['runtime_ms']:.2f} ms, {scores}")
    if result["scored"] < result["scenarios"]:
        line += "; failed scenarios score nothing, so compare only complete results"
    return line
