"""Plain-text tables of result records (never of a live run's internals)."""

from __future__ import annotations

from itertools import groupby

from .scoring import SCORERS

COLUMNS = [
    ("algorithm", "balancer", "{}"),
    ("balancedness_gpu", "gpu next", "{:.4f}"),
    ("balancedness_gpu_insample", "gpu in", "{:.4f}"),
    ("balancedness_slot", "slot next", "{:.4f}"),
    ("internode_share", "internode", "{:.3f}"),
    ("runtime_ms", "ms", "{:.2f}"),
]
# Shown when the dataset's manifest holds proven lower bounds for the scenario.
BOUND_COLUMNS = [
    ("balancedness_ceiling", "gpu ceiling", "{:.4f}"),
    ("optimality_gap", "gap in", "{:.2%}"),
]


def _cell(record: dict, key: str, fmt: str) -> str:
    value = record.get(key)
    return "-" if value is None else fmt.format(value)


def ranked(records: list[dict], scorer: str) -> list[dict]:
    """Scored records best first by `scorer`, then failed ones by name."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    ok.sort(key=lambda r: -r["scores"][scorer])
    failed.sort(key=lambda r: r["algorithm"])
    return ok + failed


def _scenario_key(record: dict):
    return (record["dataset"], record.get("scenario") or "", record["num_replicas"], record["num_groups"],
            record["num_nodes"], record["num_gpus"], record["device"], record.get("predictor", "last"))


def format_table(records: list[dict], scorer: str) -> str:
    """One ranked table per (dataset, scenario, device)."""
    score_names = [scorer] + [name for name in SCORERS if name != scorer]
    blocks = []
    ordered = sorted(records, key=lambda r: tuple(map(str, _scenario_key(r))))
    for key, group in groupby(ordered, key=_scenario_key):
        dataset, name, replicas, groups, nodes, gpus, device, predictor = key
        group = ranked(list(group), scorer)
        policy = group[0].get("policy", "")
        columns = COLUMNS + (BOUND_COLUMNS if any(r.get("optimality_gap") is not None for r in group) else [])
        header = ["#"] + [title for _, title, _ in columns] + score_names + ["status"]
        rows = []
        for rank, record in enumerate(group, 1):
            scores = record.get("scores") or {}
            row = [str(rank) if record["status"] == "ok" else "-"]
            row += [_cell(record, key, fmt) for key, _, fmt in columns]
            row += ["-" if name not in scores else f"{scores[name]:.4f}" for name in score_names]
            row.append(record["status"] if record["status"] == "ok" else f"{record['status']}: {record['error']}")
            rows.append(row)
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header) - 1)]
        title = f"{dataset} {name}" if name else dataset
        lines = [
            f"{title}  R={replicas} groups={groups} nodes={nodes} gpus={gpus} ({policy})  device={device}"
            f"  predictor={predictor}  ranked by {scorer}"
        ]
        for row in [header] + rows:
            cells = [cell.ljust(width) if i == 1 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells) + "  " + row[-1])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
