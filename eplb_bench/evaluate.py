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

from .leaderboard import balancer_summary
from .registry import AlgorithmInfo
from .runner import Job, run_job
from .sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, IsolatedProgram


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
    """The overall result: the leaderboard's summary of one balancer (means over the
    scored scenarios), with the program's name and the count of each status."""
    overall = balancer_summary(records, scenarios_total=len(records))
    return {"program": overall["algorithm"], "scenarios": len(records), "scored": overall["scenarios_ok"],
            "statuses": dict(Counter(r["status"] for r in records)),
            **{key: overall[key] for key in ("balancedness_gpu", "runtime_ms", "scores")}}


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
