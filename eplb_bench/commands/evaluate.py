"""The evaluate command: score program files, each in its own sandbox."""


from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from eplb_bench.commands.common import (
    UsageError,
    check_parallel_arguments,
    progress_bar,
    resolve_datasets,
    scenario_override,
    scenarios_for,
    split_list,
)
from eplb_bench.data.suite import SUITE
from eplb_bench.evaluation.evaluate import (
    Limits,
    evaluate_programs,
    format_summary,
    heldout_records,
    heldout_targets,
    program_info,
    summary,
)
from eplb_bench.evaluation.isolation import namespaces_unavailable
from eplb_bench.evaluation.parallel import ExecutorError
from eplb_bench.evaluation.runner import Job, job_records
from eplb_bench.evaluation.search import search_result
from eplb_bench.reports.text import format_table


def program_paths(given: list[str]) -> list[str]:
    """The .py files named, a folder standing for the .py files directly inside it (sorted);
    a usage error for anything else, or for one program named twice."""
    paths = []
    for item in given:
        if os.path.isdir(item):
            found = sorted(str(path) for path in Path(item).glob("*.py") if path.is_file())
            if not found:
                raise UsageError(f"no .py program in the folder {item}")
            paths += found
        elif not item.endswith(".py"):
            raise UsageError(f"a program must be a .py file or a folder of them, got {item!r}")
        elif not os.path.isfile(item):
            raise UsageError(f"no such program file: {item}")
        else:
            paths.append(item)
    names = [Path(path).name for path in paths]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"programs are named by their file names, and {', '.join(twice)} is given twice")
    return paths


def check_isolation(isolation: str) -> None:
    if isolation == "namespaces":
        reason = namespaces_unavailable()
        if reason:
            raise UsageError(f"no isolation by namespaces here: {reason}; --isolation process runs the program "
                             "in a confined child instead, and its result is marked as not isolated")
    else:
        print("eplb-bench: warning: --isolation process: the program is NOT isolated (a Python audit hook is no "
              "sandbox); its result is marked as such", file=sys.stderr)


def command_evaluate(args) -> int:
    paths = program_paths(args.programs)
    if not args.timeout > 0 or not args.memory > 0:
        raise UsageError("--timeout and --memory must be positive")
    check_parallel_arguments(args.jobs, args.executor)
    check_isolation(args.isolation)
    override = scenario_override(args)
    limits = Limits(args.timeout, args.memory, args.isolation)
    parallel = {"jobs": args.jobs, "executor": args.executor, "threads": args.threads}

    try:
        if args.heldout:
            names = split_list(args.datasets) if args.datasets else list(SUITE)
            unknown = [name for name in names if name not in SUITE]
            if unknown:
                raise UsageError(f"--heldout draws only the synthetic suite datasets ({', '.join(SUITE)}), "
                                 f"not {', '.join(unknown)}")
            with progress_bar(None, "evaluate (held-out)", args.quiet) as bar:
                def progress(record):
                    bar.set_postfix_str(f"{record.algorithm} {record.dataset} {record.scenario}: {record.status}",
                                        refresh=False)
                    bar.update()
                results = heldout_records(paths, heldout_targets(names),
                                          lambda dataset: scenarios_for(dataset, override), limits,
                                          progress=progress, **parallel)
            if args.json:
                for records in results:
                    for record in records:
                        print(record.to_json(), flush=True)
        else:
            datasets = resolve_datasets(args.datasets)
            targets = [(dataset, scenario) for dataset in datasets for scenario in scenarios_for(dataset, override)]
            expected = len(paths) * sum(len(job_records(Job(program_info(paths[0]), *target))) for target in targets)
            with progress_bar(expected, "evaluate", args.quiet) as bar:
                def progress(record):
                    if args.json:
                        bar.write(record.to_json(), file=sys.stdout)
                    bar.set_postfix_str(f"{record.algorithm} {record.dataset} {record.scenario}: {record.status}",
                                        refresh=False)
                    bar.update()
                results = evaluate_programs(paths, targets, limits, "public", progress=progress, **parallel)
    except ExecutorError as exc:
        raise UsageError(str(exc)) from None
    overall = [summary(records) for records in results]
    if args.json:
        for result, records in zip(overall, results):
            result["combined_score"] = search_result(records, args.scorer)["combined_score"]
            print(json.dumps({"summary": result}))
    else:
        if len(paths) == 1:
            print(format_table(results[0], args.scorer))
            print()
        for result in overall:
            print(format_summary(result))
        if len(paths) > 1:
            print()
            print(format_ranking(results, args.scorer))
    if not any(result["scored"] for result in overall):
        print("eplb-bench: error: no scenario was scored", file=sys.stderr)
        return 1
    return 0


def format_ranking(results: list[list], scorer: str) -> str:
    """The programs of a batch by combined score (search_result: a failed record counts 0)."""
    rows = sorted((search_result(records, scorer) for records in results), key=lambda row: -row["combined_score"])
    lines = [f"programs by combined score ({scorer}; a failed scenario counts 0):"]
    for rank, row in enumerate(rows, 1):
        balance = row["metrics"]["balancedness_gpu"]
        lines.append(f"{rank:3d}  {row['program']:32s} {row['combined_score']:10.4f}  "
                     f"{row['scored']}/{row['scenarios']} scored"
                     + (f", gpu balancedness {balance:.4f}" if balance is not None else ""))
    return "\n".join(lines)
