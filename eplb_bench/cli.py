"""The eplb-bench command line: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .contract import Scenario, ScenarioError
from .datasets import DatasetError, load_dataset, shipped_names
from .registry import RegistryError, algorithm_info, broken_algorithms, file_algorithm_info, list_algorithms
from .report import format_table
from .runner import Job, run_jobs
from .scoring import DEFAULT_SCORER, SCORERS


class UsageError(Exception):
    """A bad argument; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eplb-bench", description="Benchmark expert-parallel load balancers (EPLB).")
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    commands.add_parser("list", help="list registered balancers")
    run = commands.add_parser("run", help="run balancers over datasets (the default command)")
    run.add_argument("--algorithms", help="comma-separated balancer names or .py files (default: all but slow ones)")
    run.add_argument("--datasets", help="comma-separated dataset names or files (default: every shipped dataset)")
    run.add_argument("--replicas", type=int, help="physical slots (overrides the datasets' scenarios)")
    run.add_argument("--groups", type=int, help="expert groups (default: the dataset's)")
    run.add_argument("--nodes", type=int, help="nodes (default 1)")
    run.add_argument("--gpus", type=int, help="GPUs")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    run.add_argument("--repeat", type=int, default=1, help="timed calls per window (default 1)")
    run.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS), help="ranking score")
    run.add_argument("--json", action="store_true", help="print one JSON record per line instead of tables")
    run.add_argument("--out", help="append JSON records to this file as they finish")
    return parser


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_algorithms(text: str | None):
    if not text:
        for reason in broken_algorithms().values():
            print(f"eplb-bench: warning: {' '.join(reason.split())}", file=sys.stderr)
        return [algorithm_info(name) for name in list_algorithms(include_slow=False)]
    infos = []
    for item in _split(text):
        infos.append(file_algorithm_info(item) if item.endswith(".py") else algorithm_info(item))
    return infos


def resolve_device(text: str) -> str:
    if text == "cpu":
        return text
    if text.split(":")[0] != "cuda":
        raise UsageError(f"--device must be cpu or cuda[:N], got {text!r}")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    try:
        torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device: invalid device {text!r}") from None
    return text


def scenario_override(args) -> dict | None:
    given = {k: getattr(args, k) for k in ("replicas", "groups", "nodes", "gpus") if getattr(args, k) is not None}
    if not given:
        return None
    if args.replicas is None or args.gpus is None:
        raise UsageError("--replicas and --gpus must be given together (with optional --nodes and --groups)")
    return {"num_replicas": args.replicas, "num_groups": args.groups, "num_nodes": args.nodes or 1,
            "num_gpus": args.gpus}


def scenarios_for(dataset, override: dict | None) -> list[Scenario]:
    if override is None:
        if not dataset.scenarios:
            raise UsageError(f"dataset {dataset.name} has no default scenario: give --replicas and --gpus")
        scenarios = dataset.scenarios
    else:
        groups = override["num_groups"] or dataset.num_groups
        scenarios = [Scenario(override["num_replicas"], groups, override["num_nodes"], override["num_gpus"])]
    for scenario in scenarios:
        try:
            scenario.check(dataset.num_logical)
        except ScenarioError as exc:
            raise UsageError(f"dataset {dataset.name}, scenario {scenario.label()}: {exc}") from None
    return scenarios


def command_list(args) -> int:
    for name in list_algorithms():
        info = algorithm_info(name)
        flags = ", ".join(info.devices) + (", slow" if info.slow else "")
        print(f"{name:24s} [{flags}] {info.description}")
    return 0


def command_run(args) -> int:
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    device = resolve_device(args.device)
    algorithms = resolve_algorithms(args.algorithms)
    datasets = [load_dataset(name) for name in (_split(args.datasets) if args.datasets else shipped_names())]
    if not datasets:
        raise UsageError("no datasets: none shipped and none given with --datasets")
    override = scenario_override(args)
    jobs = [
        Job(info, dataset, scenario, device)
        for dataset in datasets
        for scenario in scenarios_for(dataset, override)
        for info in algorithms
    ]
    out = open(args.out, "a") if args.out else None
    records = []
    try:
        for record in run_jobs(jobs, repeat=args.repeat):
            records.append(record)
            line = json.dumps(record)
            if out:
                out.write(line + "\n")
                out.flush()
            if args.json:
                print(line, flush=True)
            else:
                print(f"  {record['dataset']} {record['algorithm']} R={record['num_replicas']}: "
                      f"{record['status']}", file=sys.stderr, flush=True)
    finally:
        if out:
            out.close()
    if not args.json:
        print(format_table(records, args.scorer))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv or ["run"])
        if args.command is None:
            args = build_parser().parse_args(["run", *argv])
        handler = {"list": command_list, "run": command_run}[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 2
    except (DatasetError, RegistryError, ScenarioError, OSError) as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eplb-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
