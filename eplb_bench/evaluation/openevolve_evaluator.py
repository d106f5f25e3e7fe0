"""An evaluator file for OpenEvolve, as it is: point OpenEvolve at this file.

    openevolve-run.py initial_program.py "$(python -m eplb_bench.evaluation.openevolve_evaluator)" \\
        --config config.yaml

OpenEvolve loads the file by its path and calls `evaluate(program_path)`, or with
`cascade_evaluation: true` the stages in turn, each gated by `cascade_thresholds` on
`combined_score`:

- `evaluate_stage1`: one small dataset (`mixtral-8x7b`) with a short call timeout, so a
  program that raises, hangs or answers garbage is stopped in seconds (it scores 0);
- `evaluate_stage2`: the whole evaluation, as `evaluate`.

Every stage answers OpenEvolve's EvaluationResult when OpenEvolve is importable (numbers
as metrics; statuses, errors and the per-scenario table as artifacts), a plain dict of
numbers otherwise. Settings come from keyword arguments (OpenEvolve's `evaluator_args`,
passed to `evaluate` only) or the environment, so that one file serves every search:

    EPLB_BENCH_EVAL_SCORER    adrs_leaderboard     the scorer of combined_score
    EPLB_BENCH_EVAL_SPLIT     public               or heldout (fresh draws at every call)
    EPLB_BENCH_EVAL_DATASETS  the standard suite   comma-separated names
    EPLB_BENCH_EVAL_JOBS      1                    local processes, one core each
    EPLB_BENCH_EVAL_EXECUTOR                       dask://HOST:PORT
    EPLB_BENCH_EVAL_TIMEOUT   60                   seconds per call (stage 1: at most 10)
    EPLB_BENCH_EVAL_ISOLATION namespaces           or process (marked as not isolated)
"""

from __future__ import annotations

import json
import os

from eplb_bench.core.scoring import DEFAULT_SCORER
from eplb_bench.evaluation.search import evaluate_program, search_result

STAGE1_DATASET = "mixtral-8x7b"
STAGE1_TIMEOUT = 10.0
# The numbers OpenEvolve keeps as metrics (it drops anything that is not a number).
METRIC_NAMES = ("balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
                "runtime_ms")


def settings(**given) -> dict:
    """The evaluation's settings: keyword arguments first, then the environment (module docstring)."""
    environment = os.environ.get
    datasets = given.get("datasets", environment("EPLB_BENCH_EVAL_DATASETS"))
    if isinstance(datasets, str):
        datasets = [name.strip() for name in datasets.split(",") if name.strip()] or None
    return {"scorer": given.get("scorer", environment("EPLB_BENCH_EVAL_SCORER", DEFAULT_SCORER)),
            "split": given.get("split", environment("EPLB_BENCH_EVAL_SPLIT", "public")),
            "datasets": datasets,
            "jobs": int(given.get("jobs", environment("EPLB_BENCH_EVAL_JOBS", "1"))),
            "executor": given.get("executor", environment("EPLB_BENCH_EVAL_EXECUTOR")) or None,
            "timeout": float(given.get("timeout", environment("EPLB_BENCH_EVAL_TIMEOUT", "60"))),
            "isolation": given.get("isolation", environment("EPLB_BENCH_EVAL_ISOLATION", "namespaces"))}


def answer(result: dict):
    """An evaluate_program result as OpenEvolve takes it: metrics (numbers only) and artifacts."""
    metrics = {"combined_score": float(result["combined_score"]),
               "scored_share": result["scored"] / result["scenarios"] if result["scenarios"] else 0.0}
    metrics.update({name: float(value) for name, value in result["metrics"].items()
                    if name in METRIC_NAMES and value is not None})
    artifacts = {"summary": (f"{result['program']}: {result['scored']} of {result['scenarios']} scenarios scored "
                             f"({', '.join(f'{k} {v}' for k, v in sorted(result['statuses'].items()))}); "
                             f"combined_score {result['combined_score']:.4f} under {result['scorer']}, "
                             f"{result['split']} split, isolation {result['isolation']}"),
                 "errors": "\n".join(f"{target}: {error}" for target, error in result["errors"].items()) or "none",
                 "per_scenario": json.dumps(result["per_scenario"])}
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:
        return metrics
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


def failed(program_path: str, exc: Exception):
    """A program the evaluation could not even take (no such file, a bad setting): 0."""
    return answer({**search_result([], "-"), "program": str(program_path),
                   "errors": {"evaluation": f"{type(exc).__name__}: {exc}"}})


def evaluate(program_path: str, **given):
    """The whole evaluation of the program file at `program_path` (module docstring)."""
    try:
        return answer(evaluate_program(program_path, **settings(**given)))
    except ValueError as exc:
        return failed(program_path, exc)


def evaluate_stage1(program_path: str):
    """The cheap first stage: one small dataset, calls cut at STAGE1_TIMEOUT seconds."""
    chosen = settings()
    chosen.update(datasets=[STAGE1_DATASET], split="public", jobs=1, executor=None,
                  timeout=min(chosen["timeout"], STAGE1_TIMEOUT))
    try:
        return answer(evaluate_program(program_path, **chosen))
    except ValueError as exc:
        return failed(program_path, exc)


def evaluate_stage2(program_path: str):
    """The second stage: the whole evaluation."""
    return evaluate(program_path)


if __name__ == "__main__":
    print(os.path.abspath(__file__))
