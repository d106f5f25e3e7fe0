"""From records to rankings and tables: who is best overall, and on each scenario.

Everything here reads result records, never a live run. Rankings are made per split
and machine identity: the public split (the shipped datasets) and the held-out split
(fresh draws of the synthetic generators) are ranked apart, and so are records of
different machines, thread counts or library versions, since runtimes (and every
score with a speed term) depend on them.

A ranked entry is a balancer as measured: its name, its source's hash and the
settings that change what it is asked (predictor, migration, window length). Entries
that share a name are told apart by what differs, e.g. `program.py@3f2a9c1e`.
"""

from __future__ import annotations

import math
from itertools import groupby
from typing import Iterable

from eplb_bench.core.machine import machine_label
from eplb_bench.core.record import CROSS_WORKLOAD, SPLITS, Record
from eplb_bench.core.scoring import DEFAULT_SCORER, SCORERS
from eplb_bench.reports.tables import MISSING, Table, number

HELDOUT = "heldout"
# An evaluated program is named by its file; the harness's registered balancers never are.
PROGRAM_SUFFIX = ".py"
NOT_ISOLATED_MARK = "†"
# Runtimes are averaged geometrically; a zero clock reading is taken as this many ms.
MIN_RUNTIME_MS = 1e-6
HASH_DIGITS = 8
INCOMPLETE_RULE = ("A balancer that failed, or was not run, on some scenario ranks after every balancer "
                   "that completed them all, whatever its mean over fewer scenarios.")
NOT_ISOLATED_LEGEND = (f"{NOT_ISOLATED_MARK} not isolated: ran with --isolation process (or, as a program file, in "
                       "the harness's own process), a program could have forged it.")


def as_records(records: Iterable) -> list[Record]:
    """Records, whether given as Records or as mappings of the JSON form."""
    return [r if isinstance(r, Record) else Record.from_dict(r) for r in records]


def finite(value) -> float | None:
    """A number usable in a ranking, or None (missing, NaN or infinite: ranks last)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def is_isolated(record: Record) -> bool:
    """Whether a record can be trusted as measured: a program file scored in Linux
    namespaces, or a registered balancer run in the harness's own process (no
    isolation, a name not ending in ".py"). --isolation process is not isolated."""
    if record.isolation is None:
        return not str(record.algorithm).endswith(PROGRAM_SUFFIX)
    return record.isolation == "namespaces"


def machine_of(record: Record) -> str:
    """The machine identity a record was measured on, as one line."""
    return machine_label(record.host or {}, record.device)


def ranking_group(record: Record) -> tuple[int, str, str]:
    """Which ranking a record belongs to: its split (public first) and machine identity."""
    return (SPLITS.index(record.split), record.split, machine_of(record))


def scenario_of(record: Record) -> tuple:
    """The scenario a record counts for in a ranking: public records by their data's
    hash too, held-out draws of one generator pooled over their seeds."""
    shape = (record.dataset, record.scenario, record.num_replicas, record.num_groups, record.num_nodes,
             record.num_gpus, record.plan_workload, record.serve_workload, record.device)
    return shape if record.split == HELDOUT else shape + (record.data_sha256,)


def scenario_title(record: Record) -> str:
    """A scenario's short name: the dataset, the scenario's name when it has one, and
    under the cross-workload protocol the workload pair."""
    title = f"{record.dataset} {record.scenario}" if record.scenario else str(record.dataset)
    if record.plan_workload is not None:
        title += (f", {record.plan_workload} in-sample" if record.plan_workload == record.serve_workload
                  else f", plan {record.plan_workload} → serve {record.serve_workload}")
    return title


def scenario_heading(record: Record) -> str:
    """A scenario's full heading: name, shape, device, predictor and machine."""
    return (f"{'Held-out ' if record.split == HELDOUT else ''}{scenario_title(record)}: "
            f"R={record.num_replicas} groups={record.num_groups} nodes={record.num_nodes} "
            f"gpus={record.num_gpus}{f' ({record.policy})' if record.policy else ''} device={record.device} "
            f"predictor={record.predictor} on {machine_of(record)}")


def entry_labels(records: Iterable[Record]) -> dict[tuple, str]:
    """balancer_key -> the entry's label: its name, plus what tells it apart from other
    entries of the same name (source hash, predictor, migration)."""
    keys = sorted({r.balancer_key() for r in records}, key=lambda key: tuple(map(str, key)))
    labels = {}
    for name, same in groupby(keys, key=lambda key: key[0]):
        same = list(same)
        varies = [len({key[i] for key in same}) > 1 for i in range(len(same[0]))]
        for key in same:
            _, source_hash, predictor, migration = key
            label = str(name)
            if varies[1]:
                label += f"@{str(source_hash)[:HASH_DIGITS] if source_hash else 'unhashed'}"
            if varies[2]:
                label += f" [{predictor}]"
            if varies[3]:
                label += " [migration]" if migration else " [no migration]"
            labels[key] = label
    return labels


def display_name(label: str, isolated: bool) -> str:
    """An entry's label as tables and plots show it: marked when not isolated."""
    return label if isolated else f"{label} {NOT_ISOLATED_MARK}"


def _mean(values: list) -> float | None:
    values = [v for v in map(finite, values) if v is not None]
    return sum(values) / len(values) if values else None


def _geometric_mean(values: list) -> float | None:
    values = [v for v in map(finite, values) if v is not None]
    if not values:
        return None
    return math.exp(sum(math.log(max(value, MIN_RUNTIME_MS)) for value in values) / len(values))


def _scenarios_ok(records: list[Record]) -> set:
    """Scenarios on which every one of these records is ok (a held-out scenario drawn
    with several seeds counts only when every draw was ok)."""
    failed = {scenario_of(r) for r in records if r.status != "ok"}
    return {scenario_of(r) for r in records if r.status == "ok"} - failed


def balancer_summary(records: list[Record], scenarios_total: int, label: str | None = None) -> dict:
    """One entry's records on one machine and split, summarised (not yet ranked).

    Means are over the ok records (each scorer's over those it scored); failures list
    "status (scenario)".
    """
    records = as_records(records)
    ok = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status != "ok"]
    return {
        "machine": machine_of(records[0]),
        "split": records[0].split,
        "algorithm": records[0].algorithm,
        "entry": label or records[0].algorithm,
        "isolated": all(is_isolated(r) for r in records),
        "heldout_seeds": sorted({r.heldout_seed for r in records if r.heldout_seed is not None}),
        "scores": {name: _mean([(r.scores or {}).get(name) for r in ok]) for name in SCORERS},
        "balancedness_gpu": _mean([r.balancedness_gpu for r in ok]),
        "balancedness_gpu_insample": _mean([r.balancedness_gpu_insample for r in ok]),
        "balancedness_node": _mean([r.balancedness_node for r in ok]),
        "migrated_replicas": _mean([r.migrated_replicas for r in ok]),
        "runtime_ms": _mean([r.runtime_ms for r in ok]),
        "runtime_ms_geomean": _geometric_mean([r.runtime_ms for r in ok]),
        "scenarios_ok": len(_scenarios_ok(records)),
        "scenarios_total": scenarios_total,
        "failures": sorted(f"{r.status} ({scenario_title(r)})" for r in failed),
        "failed_statuses": sorted({r.status for r in failed}),
    }


def _standing_order(summary: dict, scorer: str) -> tuple:
    """Complete entries first, then more scenarios ok, then best mean score (a missing
    or non-finite score last), then by label."""
    complete = summary["scenarios_ok"] == summary["scenarios_total"]
    score = finite(summary["scores"][scorer])
    return (not complete, -summary["scenarios_ok"], score is None, -(score or 0.0), summary["entry"])


def check_scorer(scorer: str) -> None:
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")


def standings(records: Iterable, scorer: str = DEFAULT_SCORER) -> list[dict]:
    """One ranked row per (split, machine identity, entry): the public split first.

    Within each split and machine, an entry that is ok on every scenario measured
    there by any entry ranks above every incomplete one; complete entries are ordered
    by their mean `scorer` score, best first; incomplete ones by scenarios ok, then by
    mean score. Each row is a `balancer_summary` with rank and complete added.
    """
    check_scorer(scorer)
    records = as_records(records)
    labels = entry_labels(records)
    rows = []
    for _, group_records in groupby(sorted(records, key=ranking_group), key=ranking_group):
        group_records = list(group_records)
        scenarios_total = len({scenario_of(r) for r in group_records})
        by_entry = sorted(group_records, key=lambda r: labels[r.balancer_key()])
        summaries = [balancer_summary(list(group), scenarios_total, label)
                     for label, group in groupby(by_entry, key=lambda r: labels[r.balancer_key()])]
        summaries.sort(key=lambda s: _standing_order(s, scorer))
        for rank, summary in enumerate(summaries, 1):
            summary["rank"] = rank
            summary["complete"] = summary["scenarios_ok"] == summary["scenarios_total"]
            rows.append(summary)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (runtime, balance) points, whether each is on the Pareto front (lower runtime
    and higher balance are better; equal points do not dominate each other)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    on_front = [False] * len(points)
    best_faster = -math.inf  # best balance among strictly faster points
    for _, same_runtime in groupby(order, key=lambda i: points[i][0]):
        same_runtime = list(same_runtime)
        top = points[same_runtime[0]][1]
        for i in same_runtime:
            on_front[i] = points[i][1] == top and top > best_faster
        best_faster = max(best_faster, top)
    return on_front


# ---------------------------------------------------------------- tables


def score_names(scorer: str) -> list[str]:
    """Every scorer's name, the chosen one first."""
    return [scorer] + [name for name in SCORERS if name != scorer]


def _note(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _table_id(base: str, taken: list[str]) -> str:
    count = sum(1 for table_id in taken if table_id == base or table_id.startswith(f"{base}-"))
    return base if not count else f"{base}-{count + 1}"


def standings_tables(rows: list[dict], scorer: str, title: str = "Standings") -> list[Table]:
    """One ranked table per (split, machine identity) of `standings` rows."""
    tables = []
    for (split, machine), group in groupby(rows, key=lambda row: (row["split"], row["machine"])):
        group = list(group)
        heldout = split == HELDOUT
        header = (["rank", "balancer"] + score_names(scorer)
                  + ["GPU bal. next", "GPU bal. in-sample", "node bal. next", "migrated/rebalance",
                     "ms (mean)", "scenarios ok"] + (["seeds pooled"] if heldout else []))
        body = []
        for row in group:
            cells = [str(row["rank"]) + ("" if row["complete"] else "*"), display_name(row["entry"], row["isolated"])]
            cells += [number(finite(row["scores"][name]), "{:.4f}") for name in score_names(scorer)]
            cells += [number(row["balancedness_gpu"], "{:.4f}"), number(row["balancedness_gpu_insample"], "{:.4f}"),
                      number(row["balancedness_node"], "{:.4f}"), number(row["migrated_replicas"], "{:.1f}"),
                      number(row["runtime_ms"], "{:.2f}"), f"{row['scenarios_ok']}/{row['scenarios_total']}"]
            body.append(cells + ([str(len(row["heldout_seeds"]))] if heldout else []))
        incomplete = [row for row in group if not row["complete"]]
        failures = "; ".join(f"{row['entry']}: {', '.join(row['failures']) or 'not run everywhere'}"
                             for row in incomplete)
        note = _note(f"Ranks marked * are incomplete. {INCOMPLETE_RULE} Failures: {failures}." if incomplete else "",
                     NOT_ISOLATED_LEGEND if not all(row["isolated"] for row in group) else "")
        full_title = f"{'Held-out ' + title.lower() if heldout else title} on {machine}, ranked by {scorer}"
        table_id = _table_id(("heldout-" if heldout else "") + title.lower().replace(" ", "-"),
                             [table.table_id for table in tables])
        tables.append(Table(full_title, header, body, note, table_id))
    return tables


def status_cell(record: Record) -> str:
    if record.status == "ok":
        return "ok"
    return f"{record.status}: {record.error}" if record.error else record.status


def _ranked_in_scenario(records: list[Record], scorer: str, labels: dict) -> list[Record]:
    """A scenario's records best first by `scorer`, then unscored ones by label and seed."""
    def order(record):
        score = finite((record.scores or {}).get(scorer)) if record.status == "ok" else None
        return (score is None, -(score or 0.0), labels[record.balancer_key()], str(record.heldout_seed))
    return sorted(records, key=order)


def scenario_tables(records: Iterable, scorer: str) -> list[Table]:
    """One ranked table per (split, machine identity, scenario); held-out tables have one
    row per draw, its seed in a column. Columns that no record of the scenario fills
    (bounds, migration) are left out."""
    records = as_records(records)
    labels = entry_labels(records)

    def key(record):
        return ranking_group(record) + tuple(map(str, scenario_of(record)))

    tables = []
    for _, group in groupby(sorted(records, key=key), key=key):
        group = _ranked_in_scenario(list(group), scorer, labels)
        heldout = group[0].split == HELDOUT
        # Under cross-workload the placement is scored on the workload served, not a next window.
        scored = "served" if group[0].protocol == CROSS_WORKLOAD else "next"
        columns = [(f"GPU bal. {scored}", "balancedness_gpu", "{:.4f}"),
                   ("GPU bal. in-sample", "balancedness_gpu_insample", "{:.4f}"),
                   (f"slot bal. {scored}", "balancedness_slot", "{:.4f}"),
                   (f"node bal. {scored}", "balancedness_node", "{:.4f}"),
                   ("internode", "internode_share", "{:.3f}"),
                   ("migrated/rebalance", "migrated_replicas", "{:.1f}"),
                   ("ceiling", "balancedness_ceiling", "{:.4f}"),
                   ("gap in", "optimality_gap", "{:.2%}"),
                   ("ms", "runtime_ms", "{:.2f}"),
                   ("ms IQR", "runtime_ms_iqr", "{:.2f}")]
        optional = ("migrated_replicas", "balancedness_ceiling", "optimality_gap")
        columns = [c for c in columns if c[1] not in optional or any(getattr(r, c[1]) is not None for r in group)]
        header = (["rank", "balancer"] + (["seed"] if heldout else []) + [title for title, _, _ in columns]
                  + score_names(scorer) + ["status"])
        body = []
        for rank, record in enumerate(group, 1):
            scores = record.scores or {}
            body.append([str(rank) if record.status == "ok" else MISSING,
                         display_name(labels[record.balancer_key()], is_isolated(record))]
                        + ([str(record.heldout_seed)] if heldout else [])
                        + [number(finite(getattr(record, field)), fmt) for _, field, fmt in columns]
                        + [number(finite(scores.get(name)), "{:.4f}") for name in score_names(scorer)]
                        + [status_cell(record)])
        several_seeds = len({record.heldout_seed for record in group}) > 1
        note = _note("Rows are draws of different seeds." if heldout and several_seeds else "",
                     NOT_ISOLATED_LEGEND if not all(map(is_isolated, group)) else "")
        tables.append(Table(scenario_heading(group[0]), header, body, note))
    return tables


def records_by_split(records: list[Record]) -> dict[str, list[Record]]:
    """The records of each split, every split in SPLITS order (empty where none)."""
    return {split: [r for r in records if r.split == split] for split in SPLITS}
