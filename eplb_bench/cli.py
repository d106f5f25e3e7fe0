"""The eplb-bench command line: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .contract import Scenario, ScenarioError
from .datasets import (
    DEFAULT_WINDOW_STEPS,
    DatasetError,
    datasets_dir,
    import_dataset,
    load_dataset,
    parse_predictor,
    read_manifest,
    shipped_names,
    verify_manifest,
)
from .bound_store import bound_summary, compute_bounds
from .bounds import MAX_VARIABLES
from .regression_gate import MEMORY_FACTOR, TIME_FACTOR, TRACK_THRESHOLD, GateError, format_gate, gate
from .leaderboard import ResultsError, load_records, write_leaderboard
from .evaluate import evaluate_heldout, evaluate_program, format_summary, heldout_targets, summary
from .isolation import ISOLATIONS, namespaces_unavailable
from .suite import SUITE
from .sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, STARTUP_SECONDS
from .registry import RegistryError, algorithm_info, broken_algorithms, file_algorithm_info, list_algorithms
from .report import format_table
from .runner import Job, base_record, run_jobs
from .scoring import DEFAULT_SCORER, SCORERS
from .speed import DEFAULT_SPEED_ALGORITHMS, format_speed, time_scenario


class UsageError(Exception):
    """A bad argument; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """--datasets and the scenario flags, shared by run and evaluate."""
    parser.add_argument("--datasets", help="comma-separated dataset names or files (default: every shipped dataset)")
    parser.add_argument("--replicas", type=int, help="physical slots (overrides the datasets' scenarios)")
    parser.add_argument("--groups", type=int, help="expert groups (default: the dataset's)")
    parser.add_argument("--nodes", type=int, help="nodes (default 1)")
    parser.add_argument("--gpus", type=int, help="GPUs")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eplb-bench", description="Benchmark expert-parallel load balancers (EPLB).")
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    commands.add_parser("list", help="list registered balancers")
    run = commands.add_parser("run", help="run balancers over datasets (the default command)")
    run.add_argument("--algorithms", help="comma-separated balancer names or .py files (default: all but slow ones)")
    add_scenario_arguments(run)
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    run.add_argument("--repeat", type=int, default=1, help="timed calls per window (default 1)")
    run.add_argument("--predictor", default="last",
                     help="what the balancer plans on: last (window i, default) or ema:ALPHA")
    run.add_argument("--window-steps", type=int, default=DEFAULT_WINDOW_STEPS,
                     help="steps per window when reading per-step files (default 100)")
    run.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS), help="ranking score")
    run.add_argument("--json", action="store_true", help="print one JSON record per line instead of tables")
    run.add_argument("--out", help="append JSON records to this file as they finish")
    run.add_argument("--no-migration", action="store_true",
                     help="do not pass the previous placement (prev_phy2log=) to balancers that accept it")
    run.add_argument("--resume", action="store_true",
                     help="skip what the --out file already holds (its records join the tables)")
    evaluate = commands.add_parser("evaluate", help="score a program file in a separate, confined process")
    evaluate.add_argument("program", help="a .py file that defines rebalance_experts (the OpenEvolve/ADRS form)")
    add_scenario_arguments(evaluate)
    evaluate.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                          help=f"seconds per call, and for loading the program at least {STARTUP_SECONDS:g} "
                               f"(default {DEFAULT_TIMEOUT:g})")
    evaluate.add_argument("--memory", type=float, default=DEFAULT_MEMORY_MB,
                          help=f"MiB the program may allocate beyond torch's own (default {DEFAULT_MEMORY_MB})")
    evaluate.add_argument("--isolation", default="namespaces", choices=ISOLATIONS,
                          help="namespaces (default: Linux namespaces through bubblewrap) or process (a confined "
                               "child only; its result is marked as not isolated)")
    evaluate.add_argument("--heldout", action="store_true",
                          help="score on fresh draws of the synthetic suite datasets (seeds drawn now, "
                               "written into the records after the run) instead of the public files")
    evaluate.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS), help="ranking score")
    evaluate.add_argument("--json", action="store_true", help="one JSON record per line, then a summary record")
    speed = commands.add_parser("bench-speed", help="median runtimes and ratios of balancers, in one process")
    speed.add_argument("--algorithms", default=",".join(DEFAULT_SPEED_ALGORITHMS),
                       help="comma-separated balancer names or .py files (default: deepseek,seed,fast)")
    speed.add_argument("--datasets", help="comma-separated dataset names or files (default: every shipped dataset)")
    speed.add_argument("--reference", default="fast", help="the balancer the ratios divide by (default fast)")
    speed.add_argument("--calls", type=int, default=7, help="timed calls per balancer and scenario (default 7)")
    speed.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    speed.add_argument("--previous", action="store_true",
                       help="hand balancers that accept prev_phy2log their previous placement, as run does")
    bounds = commands.add_parser("bounds", help="compute proven lower bounds and store them in the dataset manifests")
    bounds.add_argument("--datasets", help="comma-separated dataset names or manifests (default: every shipped dataset)")
    bounds.add_argument("--time-limit", type=float, default=1.0,
                        help="MILP seconds per layer; 0 keeps the closed-form bounds only (default 1)")
    bounds.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="local worker processes (default: CPUs)")
    bounds.add_argument("--executor", metavar="dask://HOST:PORT", help="run on an existing Dask cluster instead")
    bounds.add_argument("--max-variables", type=int, default=MAX_VARIABLES,
                        help=f"largest MILP handed to the solver, in integer variables (default {MAX_VARIABLES})")
    bounds.add_argument("--force", action="store_true", help="recompute bounds already stored")
    board = commands.add_parser("leaderboard", help="Markdown, HTML and PNG plots from result files")
    board.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="files written by run --out")
    board.add_argument("--out", default="leaderboard", help="output folder (default ./leaderboard)")
    board.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS),
                       help=f"the ranking score (default {DEFAULT_SCORER}); every scorer is shown")
    gate = commands.add_parser("gate", help="compare two commits' asv results; exit 1 when HEAD is worse")
    gate.add_argument("base", help="the commit to compare against (branch, tag or hash)")
    gate.add_argument("head", nargs="?", default="HEAD", help="the commit under review (default HEAD)")
    gate.add_argument("--track-threshold", type=float, default=TRACK_THRESHOLD,
                      help=f"allowed growth of a quality track, relative (absolute below 1) (default {TRACK_THRESHOLD})")
    gate.add_argument("--time-factor", type=float, default=TIME_FACTOR,
                      help=f"allowed factor on a time (default {TIME_FACTOR})")
    gate.add_argument("--memory-factor", type=float, default=MEMORY_FACTOR,
                      help=f"allowed factor on a peak memory (default {MEMORY_FACTOR})")
    gate.add_argument("--bench", action="append", default=[], metavar="REGEX",
                      help="only the benchmarks matching this (repeatable), as in asv run --bench")
    gate.add_argument("--quick", action="store_true", help="asv run --quick: one sample per time")
    gate.add_argument("--machine", help="asv machine name (default: asv's, the host name)")
    gate.add_argument("--config", default="asv.conf.json", help="asv configuration (default asv.conf.json)")
    gate.add_argument("--rerun", action="store_true", help="record both commits again even if results exist")
    gate.add_argument("--compare-only", action="store_true", help="never run asv; compare the stored results")
    data = commands.add_parser("datasets", help="list, show, verify and import datasets")
    data_commands = data.add_subparsers(dest="datasets_command", parser_class=Parser)
    data_commands.add_parser("list", help="every shipped dataset (the default)")
    show = data_commands.add_parser("show", help="a dataset's manifest statistics")
    show.add_argument("name")
    verify = data_commands.add_parser("verify", help="check every data file against its manifest's sha256")
    verify.add_argument("--regenerate", action="store_true",
                        help="also regenerate synthetic datasets from their manifests and compare")
    load = data_commands.add_parser("import", help="turn a load file into a manifest-backed dataset")
    load.add_argument("path", help="a vLLM/ADRS .json load history, an SGLang .pt dump or an .npz")
    load.add_argument("--name", required=True, help="the new dataset's name")
    load.add_argument("--groups", type=int, help="expert groups (default: the file's, else 8 when they divide the experts, else 1)")
    load.add_argument("--window-steps", type=int, default=DEFAULT_WINDOW_STEPS, help="steps per window (default 100)")
    load.add_argument("--scenario", action="append", default=[], metavar="R,G,N,P",
                      help="a default scenario: replicas,groups,nodes,gpus (repeatable)")
    load.add_argument("--force", action="store_true", help="replace a dataset of the same name")
    return parser


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_algorithms(text: str | None):
    if not text:
        for reason in broken_algorithms().values():
            print(f"eplb-bench: warning: {' '.join(reason.split())}", file=sys.stderr)
        return [algorithm_info(name) for name in list_algorithms(include_slow=False)]
    infos = [file_algorithm_info(item) if item.endswith(".py") else algorithm_info(item) for item in _split(text)]
    if not infos:
        raise UsageError(f"--algorithms names no balancer: {text!r}")
    return infos


def resolve_datasets(text: str | None, window_steps: int = DEFAULT_WINDOW_STEPS):
    """The datasets named in --datasets, or every shipped one."""
    names = _split(text) if text else shipped_names()
    datasets = [load_dataset(name, window_steps=window_steps) for name in names]
    if not datasets:
        raise UsageError(f"no datasets: none shipped in {datasets_dir()} and none given with --datasets")
    return datasets


def resolve_device(text: str) -> str:
    if text == "cpu":
        return text
    if text.split(":")[0] != "cuda":
        raise UsageError(f"--device must be cpu or cuda[:N], got {text!r}")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    try:
        index = torch.device(text).index
    except RuntimeError:
        raise UsageError(f"--device: invalid device {text!r}") from None
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def scenario_override(args) -> dict | None:
    given = {k: getattr(args, k) for k in ("replicas", "groups", "nodes", "gpus") if getattr(args, k) is not None}
    if not given:
        return None
    if args.replicas is None or args.gpus is None:
        raise UsageError("--replicas and --gpus must be given together (with optional --nodes and --groups)")
    return {"num_replicas": args.replicas, "num_groups": args.groups,
            "num_nodes": 1 if args.nodes is None else args.nodes, "num_gpus": args.gpus}


def scenarios_for(dataset, override: dict | None) -> list[Scenario]:
    if override is None:
        if not dataset.scenarios:
            raise UsageError(f"dataset {dataset.name} has no default scenario: give --replicas and --gpus")
        scenarios = dataset.scenarios
    else:
        groups = dataset.num_groups if override["num_groups"] is None else override["num_groups"]
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


def record_key(record: dict) -> tuple:
    """What makes two records the same measurement, for --resume."""
    return (record["algorithm"], record["dataset"], record["num_replicas"], record["num_groups"], record["num_nodes"],
            record["num_gpus"], record["device"], record.get("predictor", "last"), record.get("prev_placement") == "off")


def job_key(job: Job) -> tuple:
    """record_key of the record the job will write."""
    return record_key(base_record(job, repeat=1))


def ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def finished_records(path: str) -> list[dict]:
    """The records an earlier run appended to `path`; a line cut short by a kill is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record_key(record)
            except (ValueError, KeyError, TypeError):
                print(f"eplb-bench: warning: {path}:{number}: not a complete record, run again", file=sys.stderr)
                continue
            records.append(record)
    return records


def command_leaderboard(args) -> int:
    try:
        records = load_records(args.results)
    except ResultsError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 1
    written = write_leaderboard(records, args.out, scorer=args.scorer)
    print(f"{len(records)} record(s) from {len(args.results)} file(s), ranked by {args.scorer}:")
    for path in written.values():
        print(f"  {path}")
    return 0


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

    def progress(record):
        reason = "" if record["status"] == "ok" else f": {record['error']}"
        print(f"  {record['dataset']} {record.get('scenario') or ''}: {record['status']}{reason}",
              file=sys.stderr, flush=True)

    if args.heldout:
        names = _split(args.datasets) if args.datasets else list(SUITE)
        unknown = [name for name in names if name not in SUITE]
        if unknown:
            raise UsageError(f"--heldout draws only the synthetic suite datasets ({', '.join(SUITE)}), "
                             f"not {', '.join(unknown)}")
        draws = heldout_targets(names)
        records = evaluate_heldout(args.program, draws, lambda dataset: scenarios_for(dataset, override),
                                   progress=None if args.json else progress, **limits)
        if args.json:
            for record in records:
                print(json.dumps(record), flush=True)
    else:
        datasets = resolve_datasets(args.datasets)
        targets = [(dataset, scenario) for dataset in datasets for scenario in scenarios_for(dataset, override)]
        records = []
        for record in evaluate_program(args.program, targets, **limits):
            records.append(record)
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                progress(record)
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


def command_run(args) -> int:
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if args.window_steps < 1:
        raise UsageError("--window-steps must be at least 1")
    try:
        predictor = parse_predictor(args.predictor)
    except ValueError as exc:
        raise UsageError(f"--predictor: {exc}") from None
    device = resolve_device(args.device)
    algorithms = resolve_algorithms(args.algorithms)
    datasets = resolve_datasets(args.datasets, args.window_steps)
    override = scenario_override(args)
    jobs = [
        Job(info, dataset, scenario, device, predictor, migration=not args.no_migration)
        for dataset in datasets
        for scenario in scenarios_for(dataset, override)
        for info in algorithms
    ]
    records = []
    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out FILE")
        records = finished_records(args.out)
        done = {record_key(record) for record in records}
        jobs = [job for job in jobs if job_key(job) not in done]
        print(f"eplb-bench: resuming: {len(records)} record(s) in {args.out}, {len(jobs)} job(s) to run",
              file=sys.stderr)
    out = open(args.out, "a") if args.out else None
    if out and out.tell() > 0 and not ends_with_newline(args.out):
        out.write("\n")  # after a line cut short by a kill
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
        left_out = [name for name in list_algorithms() if algorithm_info(name).slow] if not args.algorithms else []
        if left_out:
            print(f"\nleft out (slow; name them with --algorithms): {', '.join(left_out)}")
    return 0


def command_bench_speed(args) -> int:
    if args.calls < 1:
        raise UsageError("--calls must be at least 1")
    device = resolve_device(args.device)
    algorithms = resolve_algorithms(args.algorithms)
    names = [info.name for info in algorithms]
    if args.reference not in names:
        raise UsageError(f"--reference {args.reference!r} is not among --algorithms ({', '.join(names)})")
    datasets = resolve_datasets(args.datasets)
    rows = []
    for dataset in datasets:
        for scenario in scenarios_for(dataset, None):
            rows.append(time_scenario(algorithms, dataset, scenario, device, args.calls, args.previous))
            print(f"  {dataset.name} {scenario.name or scenario.label()}: done", file=sys.stderr, flush=True)
    handed = "; previous placement handed over" if args.previous else ""
    print(f"median ms of {args.calls} calls on {device}{handed}; ratios = balancer / {args.reference}")
    print(format_speed(rows, names, args.reference))
    return 0


def command_bounds(args) -> int:
    if args.time_limit < 0 or args.jobs < 1 or args.max_variables < 0:
        raise UsageError("--time-limit and --max-variables must be >= 0 and --jobs >= 1")
    if args.executor is not None and not args.executor.startswith("dask://"):
        raise UsageError(f"--executor expects dask://HOST:PORT, got {args.executor!r}")
    datasets = resolve_datasets(args.datasets)

    def progress(result, done, total):
        if done == total or done % 200 == 0:
            print(f"  {done}/{total} layers bounded", file=sys.stderr, flush=True)

    try:
        outcome = compute_bounds(datasets, args.time_limit, args.jobs, args.executor, args.max_variables,
                                 args.force, progress)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        print("eplb-bench: interrupted; the bounds finished so far are stored", file=sys.stderr)
        return 130
    print(f"{outcome['done']} layer bounds computed in {outcome['seconds']:.1f} s "
          f"({outcome['skipped']} already stored)")
    print(format_bound_summary([row for name in [d.source for d in datasets]
                                for row in bound_summary(load_dataset(name))]))
    return 0


def format_bound_summary(rows: list[dict]) -> str:
    header = f"{'dataset':18s} {'scenario':20s} {'policy':13s} {'known':>11s} {'ceiling':>8s} {'solver s':>9s}  sources; MILP"
    lines = [header, "-" * len(header)]
    for row in rows:
        ceiling = "-" if row["ceiling"] is None else f"{row['ceiling']:.4f}"
        sources = ", ".join(f"{name} {count}" for name, count in row["sources"].items())
        solver = ", ".join(f"{name} {count}" for name, count in row["solver"].items())
        lines.append(f"{row['dataset']:18s} {row['scenario']:20s} {row['policy']:13s} "
                     f"{row['known']:>5d}/{row['total']:<5d} {ceiling:>8s} {row['seconds']:9.1f}  {sources}; {solver}")
    return "\n".join(lines)


def parse_scenario(text: str) -> Scenario:
    try:
        replicas, groups, nodes, gpus = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--scenario expects R,G,N,P (four integers), got {text!r}") from None
    return Scenario(replicas, groups, nodes, gpus)


def _manifest(name: str) -> dict:
    if name not in shipped_names():
        raise UsageError(f"no shipped dataset named {name!r} (shipped: {', '.join(shipped_names()) or 'none'})")
    return read_manifest(datasets_dir() / f"{name}.json")


def _range(summary, digits: int = 2) -> str:
    try:
        return f"{summary['median']:.{digits}f} [{summary['min']:.{digits}f}, {summary['max']:.{digits}f}]"
    except (KeyError, TypeError, ValueError):
        return "-"


def _scenario_text(entry) -> str:
    try:
        return (f"{entry.get('name') or 'default'}: {entry['num_replicas']}/{entry['num_groups']}/"
                f"{entry['num_nodes']}/{entry['num_gpus']}")
    except (AttributeError, KeyError, TypeError):
        return "malformed scenario"


def _correlations(values) -> str:
    try:
        return " ".join(f"{value:.2f}" for value in values) or "-"
    except (TypeError, ValueError):
        return "-"


def datasets_list(args) -> int:
    print(f"{'name':18s} {'model':18s} {'layers x experts':>16s} {'top-k':>5s} {'groups':>6s} {'windows':>7s}  "
          "scenarios (R/G/N/P)")
    for name in shipped_names():
        m = _manifest(name)
        scenarios = "; ".join(_scenario_text(entry) for entry in m.get("scenarios", []))
        shape = f"{m.get('num_layers', '?')} x {m.get('num_logical', '?')}"
        print(f"{name:18s} {str(m.get('model', '-')):18s} {shape:>16s} {str(m.get('top_k', '-')):>5s} "
              f"{m.get('num_groups', 1):>6} {m.get('num_windows', '?'):>7}  {scenarios}")
    return 0


def datasets_show(args) -> int:
    m = _manifest(args.name)
    stats = m.get("statistics", {})
    print(f"{m.get('name', args.name)}: {m.get('model', '')} {m.get('num_layers')} layers x {m.get('num_logical')} "
          f"experts, top-{m.get('top_k', '?')}, {m.get('num_groups', 1)} groups, {m.get('num_windows')} windows "
          f"of {m.get('window_steps')} steps")
    print(f"file: {m['file']}  sha256: {m.get('sha256', '-')}")
    print(f"provenance: {m.get('provenance', '-')}")
    for phase in m.get("phases", []):
        first, last = phase["windows"]
        print(f"windows {first}-{last}: domain {phase.get('domain', '?')}, {phase.get('stage', '?')}")
    print("statistics (median [min, max] over layers and windows):")
    rows = [
        ("expert max/mean", _range(stats.get("expert_max_over_mean"))),
        ("Gini", _range(stats.get("gini"))),
        ("top-10% share", _range(stats.get("top10_share"))),
        ("experts under 1% of mean", _range(stats.get("idle_experts_per_layer"), 0)),
        (f"GPU max/mean, contiguous on {stats.get('contiguous_gpus', '?')} GPUs, window",
         _range(stats.get("gpu_max_over_mean_window"))),
        ("  the same, one step", _range(stats.get("gpu_max_over_mean_step"))),
        ("rank correlation of consecutive windows", _correlations(stats.get("rank_correlation_consecutive"))),
    ]
    for label, value in rows:
        print(f"  {label:52s} {value}")
    return 0


def datasets_verify(args) -> int:
    failures = 0
    for name in shipped_names():
        path = datasets_dir() / f"{name}.json"
        problem = verify_manifest(path)
        status = "ok"
        if problem is None and args.regenerate:
            from .suite import regenerates_identically

            if "generator" in read_manifest(path):
                problem = regenerates_identically(path)
            else:
                status = "ok (not synthetic: sha256 only)"
        failures += problem is not None
        print(f"{name:18s} {status if problem is None else 'FAILED: ' + problem}")
    return 1 if failures else 0


def datasets_import(args) -> int:
    scenarios = [parse_scenario(text) for text in args.scenario]
    manifest = import_dataset(args.path, args.name, num_groups=args.groups, scenarios=scenarios,
                              window_steps=args.window_steps, force=args.force)
    print(f"imported {manifest['name']}: {manifest['num_windows']} windows of {manifest['num_layers']} x "
          f"{manifest['num_logical']} into {datasets_dir() / manifest['file']}")
    return 0


def command_gate(args) -> int:
    for name in ("track_threshold", "time_factor", "memory_factor"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    try:
        changes, summary = gate(args.base, args.head, config=args.config, machine=args.machine, bench=args.bench,
                                quick=args.quick, rerun=args.rerun, compare_only=args.compare_only,
                                track_threshold=args.track_threshold, time_factor=args.time_factor,
                                memory_factor=args.memory_factor)
    except GateError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_gate(changes, summary, args.track_threshold, args.time_factor, args.memory_factor))
    return 1 if changes else 0


DATASETS_COMMANDS = {"list": datasets_list, "show": datasets_show, "verify": datasets_verify, "import": datasets_import}


def command_datasets(args) -> int:
    return DATASETS_COMMANDS[args.datasets_command or "list"](args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv or ["run"])
        if args.command is None:
            args = build_parser().parse_args(["run", *argv])
        handler = {"list": command_list, "run": command_run, "datasets": command_datasets,
                   "bench-speed": command_bench_speed, "bounds": command_bounds, "gate": command_gate,
                   "evaluate": command_evaluate, "leaderboard": command_leaderboard}[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 2
    except (DatasetError, RegistryError, OSError) as exc:
        print(f"eplb-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eplb-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
