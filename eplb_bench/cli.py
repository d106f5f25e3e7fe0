"""The eplb-bench command line: argument parsing and dispatch; the commands live in
eplb_bench.commands."""

from __future__ import annotations

import argparse
import os
import sys

from eplb_bench import __version__
from eplb_bench.bounds.solver import MAX_VARIABLES
from eplb_bench.commands.bounds import command_bounds
from eplb_bench.commands.common import UsageError, warn
from eplb_bench.commands.datasets import command_datasets, parse_scenario  # noqa: F401  (parse_scenario: API)
from eplb_bench.commands.evaluate import command_evaluate
from eplb_bench.commands.export import FORMATS, command_export
from eplb_bench.commands.gate import command_gate
from eplb_bench.commands.leaderboard import command_leaderboard
from eplb_bench.commands.run import command_list, command_run
from eplb_bench.commands.speed import command_bench_speed
from eplb_bench.core.contract import ScenarioError
from eplb_bench.core.costmodel import CostModelError, profile_names
from eplb_bench.core.machine import DEFAULT_THREADS, fix_threads
from eplb_bench.core.record import RecordError
from eplb_bench.core.registry import RegistryError
from eplb_bench.core.results import ResultsError
from eplb_bench.core.scoring import DEFAULT_SCORER, SCORERS
from eplb_bench.data.dataset import DEFAULT_WINDOW_STEPS, DatasetError
from eplb_bench.evaluation.isolation import ISOLATIONS
from eplb_bench.evaluation.replay import DEFAULT_INTERVAL
from eplb_bench.evaluation.sandbox import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT,
    STARTUP_SECONDS,
)
from eplb_bench.evaluation.speed import DEFAULT_SPEED_ALGORITHMS
from eplb_bench.tracking.gate import MEMORY_FACTOR, TIME_FACTOR, TRACK_THRESHOLD

# The one rule for exit statuses, shown by --help and in the README.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = ("exit status: 0 done; 1 a failure (nothing scored, bad or unreadable data, a check that failed); "
              "2 a usage error (a bad argument); 130 interrupted")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def add_thread_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"threads of torch's and NumPy's pools, recorded with the results (default "
                             f"{DEFAULT_THREADS}: timings that hold on a busy machine)")


def add_run_control(parser: argparse.ArgumentParser) -> None:
    """--threads, --jobs, --executor and --quiet, shared by run and evaluate."""
    add_thread_argument(parser)
    parser.add_argument("--jobs", type=int, default=1,
                        help="local worker processes, one core each, recorded with the results (default 1)")
    parser.add_argument("--executor", metavar="dask://HOST:PORT",
                        help="run on an existing Dask cluster instead (start its workers one thread each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """--datasets and the scenario flags, shared by run and evaluate."""
    parser.add_argument("--datasets", help="comma-separated dataset names or files (default: every shipped dataset)")
    add_shape_arguments(parser)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The scenario flags, shared by run, evaluate and export."""
    parser.add_argument("--replicas", type=int, help="physical slots (overrides the datasets' scenarios)")
    parser.add_argument("--groups", type=int, help="expert groups (default: the dataset's)")
    parser.add_argument("--nodes", type=int, help="nodes (default 1)")
    parser.add_argument("--gpus", type=int, help="GPUs")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eplb-bench", description="Benchmark expert-parallel load balancers (EPLB).",
                    epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"eplb-bench {__version__}")
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
    run.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS),
                     help=f"ranking score (default {DEFAULT_SCORER}; balance: next-window balance alone)")
    run.add_argument("--json", action="store_true", help="print one JSON record per line instead of tables")
    run.add_argument("--out", help="append JSON records to this file as they finish")
    run.add_argument("--no-migration", action="store_true",
                     help="do not pass the previous placement (prev_phy2log=) to balancers that accept it")
    run.add_argument("--cost-model", metavar="PROFILE",
                     help="replay every dataset step by step under the cost model with this hardware profile (a "
                          f"shipped name: {', '.join(profile_names())}; or a profile .json file), adding modeled step "
                          "time, migration and speedup to the records (docs/costmodel.md)")
    run.add_argument("--interval", default=str(DEFAULT_INTERVAL), metavar="K[,K...]",
                     help=f"with --cost-model: rebalance every K steps; several intervals comma-separated, the "
                          f"first leading the record (default {DEFAULT_INTERVAL})")
    run.add_argument("--resume", action="store_true",
                     help="skip the measurements the --out file already holds (its records join the tables)")
    run.add_argument("--imported", action="store_true",
                     help="with no --datasets: the imported datasets too (see datasets import)")
    add_run_control(run)
    evaluate = commands.add_parser("evaluate", help="score program files, each in a separate, confined process")
    evaluate.add_argument("programs", nargs="+", metavar="PROGRAM",
                          help=".py files that define rebalance_experts (the OpenEvolve/ADRS form), or folders of them")
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
    add_run_control(evaluate)
    speed = commands.add_parser("bench-speed", help="median runtimes and ratios of balancers, in one process")
    speed.add_argument("--algorithms", default=",".join(DEFAULT_SPEED_ALGORITHMS),
                       help="comma-separated balancer names or .py files (default: deepseek,seed,fast)")
    speed.add_argument("--datasets", help="comma-separated dataset names or files (default: every shipped dataset)")
    speed.add_argument("--reference", default="fast", help="the balancer the ratios divide by (default fast)")
    speed.add_argument("--calls", type=int, default=7, help="timed calls per balancer and scenario (default 7)")
    speed.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    speed.add_argument("--previous", action="store_true",
                       help="hand balancers that accept prev_phy2log their previous placement, as run does")
    add_thread_argument(speed)
    bounds = commands.add_parser("bounds", help="compute proven lower bounds and store them in the dataset manifests")
    bounds.add_argument("--datasets", help="comma-separated dataset names or manifests (default: every shipped dataset)")
    bounds.add_argument("--time-limit", type=float, default=1.0,
                        help="MILP seconds per layer; 0 keeps the closed-form bounds only (default 1)")
    bounds.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="local worker processes (default: CPUs)")
    bounds.add_argument("--executor", metavar="dask://HOST:PORT", help="run on an existing Dask cluster instead")
    bounds.add_argument("--max-variables", type=int, default=MAX_VARIABLES,
                        help=f"largest MILP handed to the solver, in integer variables (default {MAX_VARIABLES})")
    bounds.add_argument("--force", action="store_true",
                        help="recompute bounds already stored, and store the new ones even where weaker")
    bounds.add_argument("--quiet", action="store_true", help="no progress bar")
    board = commands.add_parser("leaderboard", help="Markdown, HTML and PNG plots from result files")
    board.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="files written by run --out")
    board.add_argument("--out", default="leaderboard", help="output folder (default ./leaderboard)")
    board.add_argument("--scorer", default=DEFAULT_SCORER, choices=sorted(SCORERS),
                       help=f"the ranking score (default {DEFAULT_SCORER}; balance: next-window balance alone); "
                            "every scorer is shown")
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
    data_commands.add_parser("list", help="every shipped and imported dataset (the default)")
    show = data_commands.add_parser("show", help="a dataset's manifest statistics")
    show.add_argument("name")
    verify = data_commands.add_parser("verify", help="check every data file against its manifest's sha256")
    verify.add_argument("--regenerate", action="store_true",
                        help="also regenerate synthetic datasets from their manifests and compare")
    load = data_commands.add_parser("import", help="turn a load file into a manifest-backed dataset in the user "
                                                   "data folder ($EPLB_BENCH_DATA)")
    load.add_argument("path", nargs="+",
                      help="a vLLM/ADRS .json load history, an SGLang .pt dump or an .npz; or SGLang "
                           "expert-location .json files (logical_count), one static workload each")
    load.add_argument("--pair", action="append", default=None, metavar="PLAN:SERVE",
                      help="score a placement planned on workload PLAN on workload SERVE (names: the files' "
                           "stems; repeatable; default: every ordered pair)")
    load.add_argument("--name", required=True, help="the new dataset's name")
    load.add_argument("--groups", type=int, help="expert groups (default: the file's, else 8 when they divide the experts, else 1)")
    load.add_argument("--window-steps", type=int, default=DEFAULT_WINDOW_STEPS, help="steps per window (default 100)")
    load.add_argument("--scenario", action="append", default=[], metavar="R,G,N,P",
                      help="a default scenario: replicas,groups,nodes,gpus (repeatable)")
    load.add_argument("--force", action="store_true", help="replace a dataset of the same name")
    export = commands.add_parser("export", help="write one balancer's placement as an SGLang expert-location file")
    export.add_argument("--algorithm", required=True, help="a balancer name or .py file")
    export.add_argument("--dataset", required=True, help="a dataset name or file")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--workload", help="the workload to plan on (datasets of static workloads)")
    which.add_argument("--window", type=int, help="the window to plan on (default: the last)")
    add_shape_arguments(export)
    export.add_argument("--format", choices=FORMATS, default="sglang", help="sglang: --init-expert-location's JSON")
    export.add_argument("--out", required=True,
                        help="the placement file (physical_to_logical_map); its loads go beside it, in "
                             "STEM.logical_count.json")
    add_thread_argument(export)
    return parser


HANDLERS = {"list": command_list, "run": command_run, "datasets": command_datasets,
            "bench-speed": command_bench_speed, "bounds": command_bounds, "gate": command_gate,
            "evaluate": command_evaluate, "leaderboard": command_leaderboard, "export": command_export}


def main(argv: list[str] | None = None) -> int:
    """Parse, fix the thread pools, dispatch; every error becomes one line and an exit
    status by the rule of EXIT_CODES."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv or ["run"])
        if args.command is None:
            args = build_parser().parse_args(["run", *argv])
        threads = getattr(args, "threads", None)
        if threads is not None:
            if threads < 1:
                raise UsageError("--threads must be at least 1")
            fix_threads(threads)
        return HANDLERS[args.command](args)
    except (UsageError, ScenarioError) as exc:
        warn(exc, "error")
        return EXIT_USAGE
    except (DatasetError, RegistryError, ResultsError, RecordError, CostModelError, OSError) as exc:
        warn(exc, "error")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        warn("interrupted", "note")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
