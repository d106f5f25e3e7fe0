"""The Python entry point for algorithm search: one call scores one program file.

`evaluate_program(path) -> dict` runs the program isolated (eplb_bench.evaluation.evaluate)
on the standard suite, or on the datasets named, and answers what a search framework
needs: `combined_score` under the named scorer, the means of the metrics, the count of
each status, and every failed target's error. A framework compares programs by
`combined_score` alone, so a failure must never pay: it is the mean of the scorer over
*every* record, a failed one counting 0. For a complete result it is the leaderboard's
mean score of the program.
"""

from __future__ import annotations

from pathlib import Path

from eplb_bench.core.record import CROSS_WORKLOAD, Record
from eplb_bench.core.scoring import DEFAULT_SCORER, SCORERS
from eplb_bench.data.catalog import load_dataset, shipped_names
from eplb_bench.data.suite import SUITE
from eplb_bench.evaluation.evaluate import (
    SPLITS,
    Limits,
    evaluate_programs,
    program_header,
    heldout_records,
    heldout_targets,
)
from eplb_bench.evaluation.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT

# The means a result reports, over the records scored.
MEAN_METRICS = ("balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
                "runtime_ms")
# The standard suite's default: every shipped dataset of the catalog.
STANDARD = None


def target_name(record: Record) -> str:
    """A record's target in one line: dataset, scenario and, for static workloads, the pair."""
    name = f"{record.dataset} {record.scenario}"
    if record.protocol == CROSS_WORKLOAD:
        name += f" ({record.plan_workload} -> {record.serve_workload})"
    return name


def suite_targets(datasets: list[str] | None) -> list[tuple]:
    """(dataset, scenario) of every default scenario of the datasets named (default: every
    shipped one, the standard suite); the catalog's error for an unknown name."""
    loaded = [load_dataset(name) for name in (datasets or shipped_names())]
    return [(dataset, scenario) for dataset in loaded for scenario in dataset.scenarios]


def search_result(records: list[Record], scorer: str) -> dict:
    """The answer of evaluate_program for a program's records (module docstring)."""
    ok = [record for record in records if record.status == "ok"]
    total = len(records)
    combined = sum((record.scores or {}).get(scorer, 0.0) for record in ok) / total if total else 0.0
    metrics = {name: (sum(getattr(record, name) for record in ok) / len(ok) if ok else None)
               for name in MEAN_METRICS}
    return {
        "combined_score": combined,
        "scorer": scorer,
        **program_header(records),
        "scored": len(ok),
        "metrics": metrics,
        "errors": {target_name(record): f"{record.status}: {record.error}" for record in records
                   if record.status != "ok"},
        "per_scenario": [{"target": target_name(record), "status": record.status,
                          "balancedness_gpu": record.balancedness_gpu, "runtime_ms": record.runtime_ms,
                          "score": (record.scores or {}).get(scorer)} for record in records],
    }


def evaluate_program(path: str | Path, scorer: str = DEFAULT_SCORER, split: str = "public",
                     datasets: list[str] | None = STANDARD, timeout: float = DEFAULT_TIMEOUT,
                     memory_mb: float = DEFAULT_MEMORY_MB, isolation: str = "namespaces", jobs: int = 1,
                     executor: str | None = None) -> dict:
    """Score the program file at `path`; a dict (module docstring, search_result).

    scorer: one of eplb_bench.core.scoring.SCORERS. split: "public" (the shipped data)
    or "heldout" (fresh draws of the synthetic suite datasets, seeds drawn now).
    datasets: names (default: every dataset of the standard suite; for the held-out
    split, its synthetic ones). jobs / executor: as `evaluate --jobs / --executor`.
    ValueError for an unknown scorer, split or dataset, or a path that is no .py file.
    """
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise ValueError(f"no program file (.py) at {path}")
    limits = Limits(timeout, memory_mb, isolation)
    if split == "heldout":
        names = list(datasets) if datasets else list(SUITE)
        unknown = [name for name in names if name not in SUITE]
        if unknown:
            raise ValueError(f"the held-out split draws only the synthetic suite datasets, not {', '.join(unknown)}")
        [records] = heldout_records([path], heldout_targets(names), lambda dataset: dataset.scenarios, limits,
                                    jobs=jobs, executor=executor)
    else:
        [records] = evaluate_programs([path], suite_targets(datasets), limits, "public", jobs, executor)
    return search_result(records, scorer)
