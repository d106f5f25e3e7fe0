"""The datasets command(s)."""


from __future__ import annotations

from eplb_bench.commands.common import UsageError
from eplb_bench.core.contract import Scenario
from eplb_bench.core.record import CROSS_WORKLOAD
from eplb_bench.data.catalog import (
    find_dataset,
    import_dataset,
    imported_names,
    shipped_names,
    user_datasets_dir,
)
from eplb_bench.data.manifests import read_manifest, verify_manifest


def parse_scenario(text: str) -> Scenario:
    try:
        replicas, groups, nodes, gpus = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--scenario expects R,G,N,P (four integers), got {text!r}") from None
    return Scenario(replicas, groups, nodes, gpus)


def _manifest(name: str) -> dict:
    path = find_dataset(name)
    if path is None:
        known = ", ".join(shipped_names() + imported_names()) or "none"
        raise UsageError(f"no dataset named {name!r} (shipped or imported: {known})")
    return read_manifest(path)


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
    for name in shipped_names() + [n for n in imported_names() if n not in shipped_names()]:
        m = _manifest(name)
        scenarios = "; ".join(_scenario_text(entry) for entry in m.get("scenarios", []))
        shape = f"{m.get('num_layers', '?')} x {m.get('num_logical', '?')}"
        print(f"{name:18s} {str(m.get('model', '-')):18s} {shape:>16s} {str(m.get('top_k', '-')):>5s} "
              f"{m.get('num_groups', 1):>6} {m.get('num_windows', '?'):>7}  {scenarios}")
    return 0


def datasets_show(args) -> int:
    m = _manifest(args.name)
    stats = m.get("statistics", {})
    static = m.get("protocol") == CROSS_WORKLOAD
    extent = (f"{m.get('num_windows')} static workloads (cross-workload protocol)" if static
              else f"{m.get('num_windows')} windows of {m.get('window_steps')} steps")
    print(f"{m.get('name', args.name)}: {m.get('model', '')} {m.get('num_layers')} layers x {m.get('num_logical')} "
          f"experts, top-{m.get('top_k', '?')}, {m.get('num_groups', 1)} groups, {extent}")
    print(f"file: {m['file']}  sha256: {m.get('sha256', '-')}")
    print(f"provenance: {m.get('provenance', '-')}")
    for phase in m.get("phases", []):
        first, last = phase["windows"]
        print(f"windows {first}-{last}: domain {phase.get('domain', '?')}, {phase.get('stage', '?')}")
    for workload in m.get("workloads", []):
        print(f"workload {workload.get('name')}: {workload.get('description', workload.get('source_file', ''))}")
    correlations = stats.get("rank_correlation_pairs")
    correlations = correlations if isinstance(correlations, dict) else {}
    for plan, serve in m.get("pairs", []):
        value = correlations.get(f"{plan} -> {serve}")
        shown = f" (rank correlation {value:.2f})" if isinstance(value, (int, float)) else ""
        print(f"pair: plan {plan} -> serve {serve}{shown}")
    dropped = (m.get("source_layers") or {}).get("dropped")
    if dropped:
        print(f"layers dropped from the source's {m['source_layers'].get('count')}: {dropped} "
              f"({m['source_layers'].get('why', '')})")
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
    for name in shipped_names() + imported_names():
        path = find_dataset(name)
        problem = verify_manifest(path)
        status = "ok"
        if problem is None and args.regenerate:
            from eplb_bench.data.suite import regenerates_identically

            if "generator" in read_manifest(path):
                problem = regenerates_identically(path)
            else:
                status = "ok (not synthetic: sha256 only)"
        failures += problem is not None
        print(f"{name:18s} {status if problem is None else 'FAILED: ' + problem}")
    return 1 if failures else 0


def parse_pair(text: str) -> tuple[str, str]:
    plan, colon, serve = text.partition(":")
    if not colon or not plan or not serve:
        raise UsageError(f"--pair expects PLAN:SERVE (two workload names), got {text!r}")
    return plan, serve


def datasets_import(args) -> int:
    scenarios = [parse_scenario(text) for text in args.scenario]
    pairs = None if args.pair is None else [parse_pair(text) for text in args.pair]
    manifest = import_dataset(args.path, args.name, num_groups=args.groups, scenarios=scenarios,
                              window_steps=args.window_steps, force=args.force, pairs=pairs)
    what = (f"{len(manifest['workloads'])} static workload(s), {len(manifest['pairs'])} pair(s) and each in-sample"
            if "workloads" in manifest else f"{manifest['num_windows']} windows")
    dropped = (manifest.get("source_layers") or {}).get("dropped")
    print(f"imported {manifest['name']}: {what} of {manifest['num_layers']} x {manifest['num_logical']}"
          f"{f' (layers without load dropped: {dropped})' if dropped else ''} into "
          f"{user_datasets_dir() / manifest['file']} (a run uses it when named with --datasets, or with --imported)")
    return 0


DATASETS_COMMANDS = {"list": datasets_list, "show": datasets_show, "verify": datasets_verify, "import": datasets_import}


def command_datasets(args) -> int:
    return DATASETS_COMMANDS[args.datasets_command or "list"](args)
