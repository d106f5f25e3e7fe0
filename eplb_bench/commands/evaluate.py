"""The evaluate command(s)."""


from __future__ import annotations

import json
import os
import sys

from eplb_bench.commands.common import (
    UsageError,
    progress_bar,
    resolve_datasets,
    scenario_override,
    scenarios_for,
    split_list,
)
from eplb_bench.data.suite import SUITE
from eplb_bench.evaluation.evaluate import (
    program_info,
    evaluate_heldout,
    evaluate_program,
    format_summary,
    heldout_targets,
    summary,
)
from eplb_bench.evaluation.isolation import namespaces_unavailable
from eplb_bench.evaluation.runner import Job, job_records
from eplb_bench.reports.text import format_table


def command_evaluate(args) -> int:
    if not args.program.endswith(".py"):
        raise UsageError(f"the program must be a .py file, got {args.program!r}")
    if not os.path.isfile(args.program):
        raise UsageError(f"no such program file: {args.program}")
    if not args.timeout > 0 or not args.memory > 0:
        raise UsageError("--timeout and --memory must be positive")
    if args.isolation == "namespaces":
        reason = namespaces_unavailable()
        if reason:
            raise UsageError(f"no isolation by namespaces here: {reason}; --isolation process runs the program "
                             "in a confined child instead, and its result is marked as not isolated")
    else:
        print("eplb-bench: warning: --isolation process: the program is NOT isolated (a Python audit hook is no "
              "sandbox); its result is marked as such", file=sys.stderr)
    override = scenario_override(args)
    limits = {"timeout": args.timeout, "memory_mb": args.memory, "isolation": args.isolation}

    if args.heldout:
        names = split_list(args.datasets) if args.datasets else list(SUITE)
        unknown = [name for name in names if name not in SUITE]
        if unknown:
            raise UsageError(f"--heldout draws only the synthetic suite datasets ({', '.join(SUITE)}), "
                             f"not {', '.join(unknown)}")
        draws = heldout_targets(names)
        with progress_bar(None, "evaluate (held-out)", args.quiet) as bar:
            def progress(record):
                bar.set_postfix_str(f"{record.dataset} {record.scenario}: {record.status}", refresh=False)
                bar.update()
            records = evaluate_heldout(args.program, draws, lambda dataset: scenarios_for(dataset, override),
                                       progress=progress, **limits)
        if args.json:
            for record in records:
                print(record.to_json(), flush=True)
    else:
        datasets = resolve_datasets(args.datasets)
        targets = [(dataset, scenario) for dataset in datasets for scenario in scenarios_for(dataset, override)]
        records = []
        expected = sum(len(job_records(Job(program_info(args.program), *target))) for target in targets)
        with progress_bar(expected, "evaluate", args.quiet) as bar:
            for record in evaluate_program(args.program, targets, **limits):
                records.append(record)
                if args.json:
                    bar.write(record.to_json(), file=sys.stdout)
                bar.set_postfix_str(f"{record.dataset} {record.scenario}: {record.status}", refresh=False)
                bar.update()
    result = summary(records)
    if args.json:
        print(json.dumps({"summary": result}))
    else:
        print(format_table(records, args.scorer))
        print()
        print(format_summary(result))
    if not result["scored"]:
        print("eplb-bench: error: no scenario was scored", file=sys.stderr)
        return 1
    return 0
