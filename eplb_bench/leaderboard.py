"""A leaderboard built from result records: Markdown, two plots and one HTML page.

Everything here reads result records (the JSON lines `eplb-bench run` and
`eplb-bench evaluate` write), never a live run. Rankings are made per split and
machine: the public split (the shipped datasets) and the held-out split (fresh draws
of the synthetic generators) are ranked apart, and runtimes, and so every score with
a speed term, depend on where they were measured, so records from different machines
are never ranked against each other. A result that was not isolated is marked.
"""

from __future__ import annotations

import base64
import html
import json
import math
from itertools import groupby
from pathlib import Path
from typing import Iterable, NamedTuple

from .report import _scenario_key
from .scoring import DEFAULT_SCORER, SCORERS

# Fields that, with the machine label, name one measurement; a later record with the
# same ones replaces an earlier one.
IDENTITY_FIELDS = ("algorithm", "dataset", "scenario", "num_replicas", "num_groups", "num_nodes", "num_gpus",
                   "device", "predictor")
REQUIRED_FIELDS = ("algorithm", "dataset", "status")
# Measured values that must be finite and non-negative wherever a record holds one;
# every value in `scores` must be finite (a score may be negative).
NON_NEGATIVE_FIELDS = ("runtime_ms", "runtime_ms_min", "runtime_ms_max", "balancedness_gpu",
                       "balancedness_gpu_insample")
# Record splits, in the order their sections appear; a record without `split` is public.
SPLITS = ("public", "heldout")
HELDOUT = "heldout"
# An evaluated program is named by its file; the harness's registered balancers never are.
PROGRAM_SUFFIX = ".py"
NOT_ISOLATED_MARK = "†"
# Runtimes are drawn on a log axis and averaged geometrically; a zero clock reading
# is taken as this many milliseconds.
MIN_RUNTIME_MS = 1e-6
MISSING = "-"
# Text columns; the others hold numbers and align right.
LEFT_ALIGNED = ("balancer", "status")
FILES = {
    "markdown": "leaderboard.md",
    "scatter": "balance_vs_runtime.png",
    "bars": "balance_by_dataset.png",
    "html": "leaderboard.html",
}
INCOMPLETE_RULE = ("A balancer that failed, or was not run, on some scenario ranks after every balancer "
                   "that completed them all, whatever its mean over fewer scenarios.")
PER_MACHINE_RULE = ("Rankings are per machine and never mixed: runtimes, and every score with a speed term, "
                    "depend on where they were measured.")
HELDOUT_HEADING = "Held-out draws (fresh seeds, seed in each record)"
HELDOUT_RULE = ("Held-out records score fresh random draws of the synthetic suite generators, seeded at run time, "
                "so no program could have been tuned to these draws. They are ranked here on their own and never enter "
                "the public standings above. A balancer's draws of different seeds are pooled: its means are "
                "over all its held-out records, and a scenario counts as ok only when every draw of it was ok.")
PUBLIC_ONLY_RULE = ("The standings, scenario tables and plots before the held-out section are of the public split "
                    "(the shipped datasets) only.")
NOT_ISOLATED_LEGEND = (f"{NOT_ISOLATED_MARK} not isolated: ran with --isolation process (or, as a program file, in "
                       "the harness's own process), a program could have forged it.")


class ResultsError(Exception):
    """A results file that cannot be read; the message is one line naming file and line."""


class Table(NamedTuple):
    """A table before rendering: a title, a header row, text rows, an optional note and HTML id."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    table_id: str = ""


# ---------------------------------------------------------------- reading records


def _number_problem(value, non_negative: bool) -> str | None:
    """Why `value` is not a usable measurement (a finite number, >= 0 if asked), or None.
    Python's json reads NaN and Infinity, so finiteness is checked here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is not a number ({type(value).__name__})"
    if not math.isfinite(value):
        return f"is {value}"
    if non_negative and value < 0:
        return f"is negative ({value})"
    return None


def _measurement_problem(record: dict) -> str | None:
    """Why a record's runtimes, balancedness or scores cannot be used, or None (None values are missing ones)."""
    for field in NON_NEGATIVE_FIELDS:
        if record.get(field) is not None:
            problem = _number_problem(record[field], non_negative=True)
            if problem:
                return f"{field} {problem}"
    scores = record.get("scores")
    if scores is None:
        return None
    if not isinstance(scores, dict):
        return f"scores must be an object, got {type(scores).__name__}"
    for name, value in scores.items():
        problem = None if value is None else _number_problem(value, non_negative=False)
        if problem:
            return f"scores.{name} {problem}"
    return None


def _label_problem(record: dict) -> str | None:
    """Why a record's status, split, held-out seed or isolation is malformed, or None."""
    if not isinstance(record["status"], str):
        return f"status must be a string, got {type(record['status']).__name__}"
    split = record.get("split")
    if split is not None and split not in SPLITS:
        return f"split must be one of {', '.join(SPLITS)}, got {split!r}"
    seed = record.get("heldout_seed")
    if split == HELDOUT and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"a held-out record needs an integer heldout_seed, got {seed!r}"
    if not isinstance(record.get("isolation", ""), (str, type(None))):
        return f"isolation must be a string, got {type(record['isolation']).__name__}"
    return None


def _parse_line(text: str, where: str) -> dict | None:
    """One JSON line as a record (None for an evaluate summary), or ResultsError naming `where` (FILE:LINE)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if set(record) == {"summary"}:
        return None  # the last line of `evaluate --json`
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ResultsError(f"{where}: record lacks {', '.join(missing)}")
    problem = _label_problem(record) or _measurement_problem(record)
    if problem:
        raise ResultsError(f"{where}: {problem}")
    return record


def _read_lines(path: Path) -> list[str]:
    """The lines of a results file, or ResultsError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResultsError(f"{path}: cannot read: {' '.join(str(reason).split())}") from None


def record_split(record: dict) -> str:
    """A record's split: "public" (the shipped datasets; also every record without the
    field, as `eplb-bench run` writes) or "heldout" (a fresh draw, seed in `heldout_seed`)."""
    return record.get("split") or "public"


def is_isolated(record: dict) -> bool:
    """Whether a record's result can be trusted as measured: a program file scored in
    Linux namespaces (isolation "namespaces"), or one of the harness's registered
    balancers run in its own process (no isolation field, a name not ending in ".py").
    Anything else, --isolation process above all, is not isolated."""
    isolation = record.get("isolation")
    if isolation is None:
        return not str(record["algorithm"]).endswith(PROGRAM_SUFFIX)
    return isolation == "namespaces"


def record_identity(record: dict) -> tuple:
    """What names one measurement: the scenario, balancer, device, predictor, split
    (with the held-out seed) and machine."""
    return (tuple(str(record.get(field)) for field in IDENTITY_FIELDS)
            + (record_split(record), str(record.get("heldout_seed")), machine_label(record)))


def load_records(paths: Iterable[str | Path]) -> list[dict]:
    """Records of the given .jsonl files, in file order; blank lines and the summary
    line of `evaluate --json` are skipped.

    A line that is not a JSON object with at least algorithm, dataset and a string
    status, or that holds a runtime or balancedness that is not a finite non-negative
    number (NaN and Infinity included), a score that is not finite, scores that are
    not an object, an unknown split or a held-out record without an integer seed, or a
    file that cannot be read, raises ResultsError ("FILE:LINE: reason"). When one
    measurement (see `record_identity`) appears more than once, the last one wins.
    """
    latest: dict[tuple, dict] = {}
    for path in map(Path, paths):
        for number, text in enumerate(_read_lines(path), 1):
            if not text.strip():
                continue
            record = _parse_line(text, f"{path}:{number}")
            if record is None:
                continue
            identity = record_identity(record)
            latest.pop(identity, None)
            latest[identity] = record
    return list(latest.values())


# ---------------------------------------------------------------- machines and standings


def _torch_version(host: dict) -> str:
    """The torch release without its local build tag ("2.13.0+cpu" -> "2.13.0")."""
    return str(host.get("torch") or "").split("+")[0]


def machine_label(record: dict) -> str:
    """Where a record was measured, e.g. "cpu: x86_64 (torch 2.13.0)" or
    "cuda: NVIDIA H100 80GB HBM3 (torch 2.13.0)"."""
    host = record.get("host") or {}
    kind = str(record.get("device") or "cpu").split(":")[0]
    if kind == "cuda" and host.get("gpu"):
        where = host["gpu"]
    else:
        where = host.get("processor") or host.get("machine") or "unknown host"
    torch_version = _torch_version(host)
    return f"{kind}: {where}" + (f" (torch {torch_version})" if torch_version else "")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _geometric_mean(values: list[float]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(max(value, MIN_RUNTIME_MS)) for value in values) / len(values))


def scenario_title(record: dict) -> str:
    """A scenario's short name: the dataset and, when it has one, the scenario's name."""
    name = record.get("scenario") or ""
    return f"{record['dataset']} {name}" if name else str(record["dataset"])


def _is_scored(record: dict) -> bool:
    return record.get("status") == "ok"


def _scenarios_ok(records: list[dict]) -> set:
    """The scenarios on which every one of these records is ok (a scenario drawn
    with several held-out seeds counts only when every draw was ok)."""
    failed = {_scenario_key(r) for r in records if not _is_scored(r)}
    return {_scenario_key(r) for r in records if _is_scored(r)} - failed


def balancer_summary(records: list[dict], scenarios_total: int) -> dict:
    """One balancer's records on one machine and split summarised (not yet ranked).

    Each scorer's mean is over the records that scorer was scored on; balancedness
    and runtime means are over the ok records; failures list "status (scenario)".
    `isolated` is whether every record was (see `is_isolated`); `heldout_seeds`
    lists the held-out seeds pooled (empty for the public split).
    """
    ok = [r for r in records if _is_scored(r)]
    failed = [r for r in records if not _is_scored(r)]
    scores = {name: _mean([r["scores"][name] for r in ok if (r.get("scores") or {}).get(name) is not None])
              for name in SCORERS}
    runtimes = [r["runtime_ms"] for r in ok if r.get("runtime_ms") is not None]
    balance = [r["balancedness_gpu"] for r in ok if r.get("balancedness_gpu") is not None]
    return {
        "machine": machine_label(records[0]),
        "split": record_split(records[0]),
        "algorithm": records[0]["algorithm"],
        "isolated": all(is_isolated(r) for r in records),
        "heldout_seeds": sorted({r["heldout_seed"] for r in records if r.get("heldout_seed") is not None}),
        "scores": scores,
        "balancedness_gpu": _mean(balance),
        "runtime_ms": _mean(runtimes),
        "runtime_ms_geomean": _geometric_mean(runtimes),
        "scenarios_ok": len(_scenarios_ok(records)),
        "scenarios_total": scenarios_total,
        "failures": sorted(f"{r['status']} ({scenario_title(r)})" for r in failed),
        "failed_statuses": sorted({str(r["status"]) for r in failed}),
    }


def _standing_order(summary: dict, scorer: str) -> tuple:
    """Sort key: complete balancers first, then more scenarios ok, then best mean score."""
    complete = summary["scenarios_ok"] == summary["scenarios_total"]
    score = summary["scores"][scorer]
    return (not complete, -summary["scenarios_ok"], score is None, -(score or 0.0), summary["algorithm"])


def _check_scorer(scorer: str) -> None:
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")


def ranking_group(record: dict) -> tuple[int, str, str]:
    """Which ranking a record belongs to: its split (public first) and machine label.
    Records of different groups are never ranked against each other."""
    split = record_split(record)
    return (SPLITS.index(split), split, machine_label(record))


def standings(records: list[dict], scorer: str = DEFAULT_SCORER) -> list[dict]:
    """One ranked row per (split, machine label, balancer): the public split first,
    then the held-out one, machines in name order within each.

    Ranking rule, within each split and machine label (`ranking_group`): a balancer
    that is complete (ok on every scenario of that split measured on that machine by
    any balancer; for held-out draws, ok on every draw of it) ranks above every incomplete
    one, whatever the incomplete one's mean over fewer scenarios; complete balancers
    are ordered by their mean `scorer` score, best first; incomplete ones by scenarios
    ok, most first, then by mean score. Each row holds: machine, split, algorithm,
    rank (1-based within the split and machine), complete, isolated, heldout_seeds,
    scores (scorer -> mean over the records scored), balancedness_gpu (mean, next
    window), runtime_ms (mean) and runtime_ms_geomean, scenarios_ok, scenarios_total,
    failures and failed_statuses.
    """
    _check_scorer(scorer)
    rows = []
    for _, machine_records in groupby(sorted(records, key=ranking_group), key=ranking_group):
        machine_records = list(machine_records)
        scenarios_total = len({_scenario_key(r) for r in machine_records})
        by_algorithm = sorted(machine_records, key=lambda r: str(r["algorithm"]))
        summaries = [balancer_summary(list(group), scenarios_total)
                     for _, group in groupby(by_algorithm, key=lambda r: str(r["algorithm"]))]
        summaries.sort(key=lambda s: _standing_order(s, scorer))
        for rank, summary in enumerate(summaries, 1):
            summary["rank"] = rank
            summary["complete"] = summary["scenarios_ok"] == summary["scenarios_total"]
            rows.append(summary)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (runtime, balance) points, whether each is on the Pareto front.

    Lower runtime and higher balance are better; a point is on the front when no
    other point is at least as good in both and strictly better in one. Equal points
    do not dominate each other.
    """
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


def _number(value, fmt: str) -> str:
    return MISSING if value is None else fmt.format(value)


def _score_names(scorer: str) -> list[str]:
    """Every scorer's name, the chosen one first."""
    return [scorer] + [name for name in SCORERS if name != scorer]


def display_name(name, isolated: bool) -> str:
    """A balancer's name as tables and plots show it: marked when not isolated."""
    return str(name) if isolated else f"{name} {NOT_ISOLATED_MARK}"


def _note(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _table_id(base: str, taken: list[str]) -> str:
    """`base` for the first table of its kind, then base-2, base-3, ..."""
    count = sum(1 for table_id in taken if table_id == base or table_id.startswith(f"{base}-"))
    return base if not count else f"{base}-{count + 1}"


def standings_tables(rows: list[dict], scorer: str) -> list[Table]:
    """One ranked table per (split, machine label) from `standings` rows; held-out
    tables also count the seeds each balancer's means pool."""
    tables = []
    for (split, machine), group in groupby(rows, key=lambda row: (row["split"], row["machine"])):
        group = list(group)
        heldout = split == HELDOUT
        header = (["rank", "balancer"] + _score_names(scorer)
                  + ["GPU balancedness (next window)", "runtime ms (mean)", "scenarios ok"]
                  + (["seeds pooled"] if heldout else []))
        body = []
        for row in group:
            cells = [str(row["rank"]) + ("" if row["complete"] else "*"),
                     display_name(row["algorithm"], row["isolated"])]
            cells += [_number(row["scores"][name], "{:.4f}") for name in _score_names(scorer)]
            cells += [_number(row["balancedness_gpu"], "{:.4f}"), _number(row["runtime_ms"], "{:.2f}"),
                      f"{row['scenarios_ok']}/{row['scenarios_total']}"]
            body.append(cells + ([str(len(row["heldout_seeds"]))] if heldout else []))
        incomplete = [row for row in group if not row["complete"]]
        failures = "; ".join(f"{row['algorithm']}: {', '.join(row['failures']) or 'not run everywhere'}"
                             for row in incomplete)
        note = _note(f"Ranks marked * are incomplete. {INCOMPLETE_RULE} Failures: {failures}." if incomplete else "",
                     NOT_ISOLATED_LEGEND if not all(row["isolated"] for row in group) else "")
        title = f"{'Held-out standings' if heldout else 'Standings'} on {machine}, ranked by {scorer}"
        table_id = _table_id("heldout-standings" if heldout else "standings", [table.table_id for table in tables])
        tables.append(Table(title, header, body, note, table_id))
    return tables


def _status_cell(record: dict) -> str:
    if _is_scored(record):
        return "ok"
    return f"{record['status']}: {record['error']}" if record.get("error") else str(record["status"])


def _scenario_heading(record: dict, machine: str) -> str:
    return (f"{'Held-out ' if record_split(record) == HELDOUT else ''}{scenario_title(record)}: "
            f"R={record.get('num_replicas')} groups={record.get('num_groups')} "
            f"nodes={record.get('num_nodes')} gpus={record.get('num_gpus')} device={record.get('device')} "
            f"predictor={record.get('predictor', 'last')} on {machine}")


def _ranked_in_scenario(records: list[dict], scorer: str) -> list[dict]:
    """A scenario's records best first by `scorer`, then unscored ones by name (and seed)."""
    def order(record):
        score = (record.get("scores") or {}).get(scorer) if _is_scored(record) else None
        return (score is None, -(score or 0.0), str(record["algorithm"]), str(record.get("heldout_seed")))
    return sorted(records, key=order)


def scenario_tables(records: list[dict], scorer: str) -> list[Table]:
    """One table per (split, machine label, dataset/scenario), ranked by `scorer`;
    held-out tables have one row per draw, its seed in a column."""
    def key(record):
        return ranking_group(record) + tuple(map(str, _scenario_key(record)))

    tables = []
    for _, group in groupby(sorted(records, key=key), key=key):
        group = _ranked_in_scenario(list(group), scorer)
        heldout = record_split(group[0]) == HELDOUT
        header = (["rank", "balancer"] + (["seed"] if heldout else [])
                  + ["GPU bal. next", "GPU bal. in-sample", "ceiling", "gap", "ms"] + _score_names(scorer) + ["status"])
        body = []
        for rank, record in enumerate(group, 1):
            scores = record.get("scores") or {}
            body.append([
                str(rank) if _is_scored(record) else MISSING, display_name(record["algorithm"], is_isolated(record)),
            ] + ([str(record.get("heldout_seed"))] if heldout else []) + [
                _number(record.get("balancedness_gpu"), "{:.4f}"),
                _number(record.get("balancedness_gpu_insample"), "{:.4f}"),
                _number(record.get("balancedness_ceiling"), "{:.4f}"),
                _number(record.get("optimality_gap"), "{:.2%}"),
                _number(record.get("runtime_ms"), "{:.2f}"),
            ] + [_number(scores.get(name), "{:.4f}") for name in _score_names(scorer)] + [_status_cell(record)])
        several_seeds = len({record.get("heldout_seed") for record in group}) > 1
        note = _note("Rows are draws of different seeds." if heldout and several_seeds else "",
                     NOT_ISOLATED_LEGEND if not all(map(is_isolated, group)) else "")
        tables.append(Table(_scenario_heading(group[0], machine_label(group[0])), header, body, note))
    return tables


def _markdown_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(table: Table, level: int = 2) -> str:
    """A Table as a Markdown heading, pipe table and note."""
    lines = [f"{'#' * level} {_markdown_cell(table.title)}", ""]
    lines.append("| " + " | ".join(map(_markdown_cell, table.header)) + " |")
    lines.append("|" + "|".join(":---" if title in LEFT_ALIGNED else "---:" for title in table.header) + "|")
    lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", _markdown_cell(table.note)]
    return "\n".join(lines)


def _machines(records: list[dict]) -> list[str]:
    return sorted({machine_label(r) for r in records})


def records_by_split(records: list[dict]) -> dict[str, list[dict]]:
    """The records of each split, every split in SPLITS order (empty where none)."""
    return {split: [r for r in records if record_split(r) == split] for split in SPLITS}


def _record_count(records: list[dict]) -> str:
    """"N records", with the split counts when there are held-out ones."""
    heldout = len(records_by_split(records)[HELDOUT])
    return f"{len(records)} records" + (f" ({len(records) - heldout} public, {heldout} held-out)" if heldout else "")


def _page_notes(records: list[dict]) -> list[str]:
    """The rules a page states under its title, beyond the ranking rule."""
    notes = [PER_MACHINE_RULE] if len(_machines(records)) > 1 else []
    return notes + ([PUBLIC_ONLY_RULE] if records_by_split(records)[HELDOUT] else [])


def _no_public_records(records: list[dict]) -> str:
    return "No records." if not records else "No public records."


def leaderboard_markdown(records: list[dict], scorer: str) -> str:
    """The whole leaderboard as Markdown: public standings per machine, then every
    public scenario, then (when there are any) the held-out draws' own section."""
    splits = records_by_split(records)
    parts = ["# EPLB leaderboard", "",
             f"Ranked by `{scorer}` ({SCORERS[scorer].formula}; higher is better). "
             f"{_record_count(records)}, {len(_machines(records))} machine(s). {INCOMPLETE_RULE}"]
    parts += [part for note in _page_notes(records) for part in ("", note)]
    tables = standings_tables(standings(splits["public"], scorer), scorer)
    if not tables:
        parts += ["", _no_public_records(records)]
    parts += ["\n" + markdown_table(table) for table in tables]
    parts += ["", "## Scenarios"]
    parts += ["\n" + markdown_table(table, level=3) for table in scenario_tables(splits["public"], scorer)]
    if splits[HELDOUT]:
        parts += ["", f"## {HELDOUT_HEADING}", "", HELDOUT_RULE]
        parts += ["\n" + markdown_table(table, level=3)
                  for table in standings_tables(standings(splits[HELDOUT], scorer), scorer)]
        parts += ["", "### Held-out scenarios"]
        parts += ["\n" + markdown_table(table, level=4) for table in scenario_tables(splits[HELDOUT], scorer)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _balancer_colours(names: Iterable[str]) -> dict[str, tuple]:
    """A fixed colour per balancer name, the same in every plot."""
    plt = _pyplot()
    names = sorted(set(names))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _no_results(ax, text: str = "no scored results") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


MACHINE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
CEILING_LABEL = "ILP ceiling (proven best in-sample)"
FRONT_LINES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]


def plot_balance_vs_runtime(rows: list[dict], path: Path) -> Path:
    """Mean GPU balancedness (next window) against mean runtime (log x), one point per
    balancer and machine, with each machine's Pareto front among complete balancers.
    Incomplete balancers are drawn hollow and kept off the front."""
    plt = _pyplot()
    plotted = [row for row in rows if row["balancedness_gpu"] is not None and row["runtime_ms"] is not None]
    colours = _balancer_colours(row["algorithm"] for row in plotted)
    several = len({row["machine"] for row in plotted}) > 1
    fig, ax = plt.subplots(figsize=(9, 6))
    try:
        if not plotted:
            _no_results(ax)
        for index, (machine, group) in enumerate(groupby(plotted, key=lambda row: row["machine"])):
            group = list(group)
            marker = MACHINE_MARKERS[index % len(MACHINE_MARKERS)]
            points = [(max(row["runtime_ms"], MIN_RUNTIME_MS), row["balancedness_gpu"]) for row in group]
            for row, (x, y) in zip(group, points):
                colour = colours[row["algorithm"]]
                ax.scatter([x], [y], s=70, marker=marker, zorder=3, edgecolors=colour, linewidths=1.5,
                           facecolors=colour if row["complete"] else "none")
                label = display_name(row["algorithm"], row["isolated"]) + (
                    "" if row["complete"] else f" ({row['scenarios_ok']}/{row['scenarios_total']})")
                ax.annotate(label, (x, y), xytext=(7, 5), textcoords="offset points", fontsize=9)
            ax.scatter([], [], marker=marker, color="grey", label=machine)
            complete = [(point, row) for point, row in zip(points, group) if row["complete"]]
            front = sorted(point for (point, _), on in zip(complete, pareto_front([p for p, _ in complete])) if on)
            if front:
                ax.plot([x for x, _ in front], [y for _, y in front], color="black", lw=1, zorder=2,
                        linestyle=FRONT_LINES[index % len(FRONT_LINES)], marker="o", markersize=15,
                        markerfacecolor="none", label="Pareto front" + (f" ({machine})" if several else ""))
        if plotted:
            ax.set_xscale("log")
            ax.margins(x=0.15, y=0.12)
            ax.grid(True, which="both", alpha=0.3)
            if any(not row["complete"] for row in plotted):
                ax.scatter([], [], facecolors="none", edgecolors="grey", label="incomplete (hollow, off the front)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("mean runtime per call (ms, log scale)")
        ax.set_ylabel("mean GPU balancedness, next window")
        ax.set_title("Balance against runtime (up and left is better)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _bar_groups(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """Records grouped per machine, in machine order."""
    ordered = sorted(records, key=machine_label)
    return [(machine, list(group)) for machine, group in groupby(ordered, key=machine_label)]


def _draw_balance_bars(ax, records: list[dict], colours: dict[str, tuple]) -> None:
    """One group of bars per scenario on `ax`, with the ceiling as a black mark."""
    def key(record):
        return tuple(map(str, _scenario_key(record)))

    scenarios = [list(group) for _, group in groupby(sorted(records, key=key), key=key)]
    names = sorted({str(r["algorithm"]) for r in records})
    not_isolated = {str(r["algorithm"]) for r in records if not is_isolated(r)}
    width = 0.8 / len(names)
    lowest = 1.0
    missing = []  # (x, colour) of balancers that ran and failed
    for position, group in enumerate(scenarios):
        by_name = {str(r["algorithm"]): r for r in group}
        for slot, name in enumerate(names):
            if name not in by_name:
                continue  # not run on this scenario: no bar, no mark
            value = by_name[name].get("balancedness_gpu_insample")
            x = position - 0.4 + width * (slot + 0.5)
            if value is None or not _is_scored(by_name[name]):
                missing.append((x, colours[name]))
                continue
            ax.bar(x, value, width, color=colours[name], label=display_name(name, name not in not_isolated))
            lowest = min(lowest, value)
        ceilings = [r["balancedness_ceiling"] for r in group if r.get("balancedness_ceiling") is not None]
        if ceilings:
            ax.hlines(max(ceilings), position - 0.45, position + 0.45, colors="black", linewidth=2.5, zorder=4,
                      label=CEILING_LABEL)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([f"{g[0]['dataset']}\n{g[0].get('scenario') or ''}".strip() for g in scenarios],
                       fontsize=8)
    ax.set_xlim(-0.6, len(scenarios) - 0.4)
    bottom = _axis_floor(lowest)
    ax.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.06)
    for x, colour in missing:
        ax.text(x, bottom, "x", ha="center", va="bottom", color=colour, fontsize=10, fontweight="bold")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylabel("GPU balancedness, in-sample" + (f" (axis from {bottom:g})" if bottom > 0 else ""))


def _axis_floor(lowest: float) -> float:
    """Where the balancedness axis starts: a round tenth below the lowest bar, so small
    differences near 1 stay visible (0 when bars go that low)."""
    return max(0.0, math.floor(lowest * 10 - 0.5) / 10)


def _unique_legend(ax) -> None:
    """A legend with each label once (bars and ceiling marks repeat per scenario), the
    ceiling first, then balancers by name."""
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for handle, label in zip(handles, labels):
        seen.setdefault(label, handle)
    labels = sorted(seen, key=lambda label: (label != CEILING_LABEL, label))
    ax.legend([seen[label] for label in labels], labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_balance_by_dataset(records: list[dict], path: Path) -> Path:
    """Per dataset/scenario grouped bars of each balancer's in-sample GPU balancedness,
    one panel per machine, with the ILP ceiling where known."""
    plt = _pyplot()
    scored = [r for r in records if _is_scored(r) and r.get("balancedness_gpu_insample") is not None]
    panels = _bar_groups(records) if scored else []
    colours = _balancer_colours(str(r["algorithm"]) for r in records)
    scenario_count = max((len({_scenario_key(r) for r in group}) for _, group in panels), default=1)
    width = max(9.0, 2.5 + 1.4 * scenario_count)
    fig, axes = plt.subplots(max(len(panels), 1), 1, figsize=(width, 4.8 * max(len(panels), 1)), squeeze=False)
    try:
        if not panels:
            _no_results(axes[0][0])
        for ax, (machine, group) in zip(axes[:, 0], panels):
            _draw_balance_bars(ax, group, colours)
            ax.set_title(f"In-sample GPU balancedness per scenario, {machine} (x: failed)", fontsize=10)
            _unique_legend(ax)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- HTML

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
.text { text-align: left; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
img { max-width: 100%; display: block; margin: 1em 0; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""


def html_table(table: Table) -> str:
    """A Table as an HTML <table> (every text escaped) followed by its note."""
    table_id = f' id="{html.escape(table.table_id)}"' if table.table_id else ""
    classes = [' class="text"' if title in LEFT_ALIGNED else "" for title in table.header]
    head = "".join(f"<th{kind}>{html.escape(cell)}</th>" for kind, cell in zip(classes, table.header))
    body = "\n".join("<tr>" + "".join(f"<td{kind}>{html.escape(cell)}</td>" for kind, cell in zip(classes, row))
                     + "</tr>" for row in table.rows)
    note = f'\n<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f"<table{table_id}>\n<caption>{html.escape(table.title)}</caption>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{note}")


def png_data_uri(path: Path) -> str:
    """A PNG file as a base64 data: URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def leaderboard_html(records: list[dict], scorer: str, scatter: Path, bars: Path) -> str:
    """One self-contained page: inline CSS, the tables, and the plots embedded as data
    URIs; the public split first, then (when there are any) the held-out draws' section."""
    splits = records_by_split(records)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>EPLB leaderboard</title>", f"<style>{PAGE_STYLE}</style>", "</head>", "<body>",
        "<h1>EPLB leaderboard</h1>",
        f'<p class="note">Ranked by <code>{html.escape(scorer)}</code> '
        f"({html.escape(SCORERS[scorer].formula)}; higher is better). {html.escape(_record_count(records))}, "
        f"{len(_machines(records))} machine(s). {html.escape(INCOMPLETE_RULE)}</p>",
    ]
    parts += [_html_note(note) for note in _page_notes(records)]
    tables = standings_tables(standings(splits["public"], scorer), scorer)
    parts += [html_table(table) for table in tables] or [f"<p>{_no_public_records(records)}</p>"]
    parts += [
        "<h2>Plots</h2>",
        f'<img src="{png_data_uri(scatter)}" alt="Mean GPU balancedness against mean runtime per balancer, '
        'log runtime axis, Pareto front marked">',
        f'<img src="{png_data_uri(bars)}" alt="In-sample GPU balancedness per balancer for each dataset and '
        'scenario, with the ILP ceiling where known">',
        "<h2>Scenarios</h2>",
    ]
    parts += [html_table(table) for table in scenario_tables(splits["public"], scorer)]
    if splits[HELDOUT]:
        parts += [f'<h2 id="heldout">{html.escape(HELDOUT_HEADING)}</h2>', _html_note(HELDOUT_RULE)]
        parts += [html_table(table) for table in standings_tables(standings(splits[HELDOUT], scorer), scorer)]
        parts += ["<h3>Held-out scenarios</h3>"]
        parts += [html_table(table) for table in scenario_tables(splits[HELDOUT], scorer)]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_leaderboard(records: list[dict], out_dir: str | Path, scorer: str = DEFAULT_SCORER) -> dict[str, Path]:
    """Write leaderboard.md, balance_vs_runtime.png, balance_by_dataset.png and
    leaderboard.html into `out_dir` (created if needed); return their paths by kind
    ("markdown", "scatter", "bars", "html"). The plots show the public split only."""
    _check_scorer(scorer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    paths["markdown"].write_text(leaderboard_markdown(records, scorer), encoding="utf-8")
    public = records_by_split(records)["public"]
    plot_balance_vs_runtime(standings(public, scorer), paths["scatter"])
    plot_balance_by_dataset(public, paths["bars"])
    paths["html"].write_text(leaderboard_html(records, scorer, paths["scatter"], paths["bars"]), encoding="utf-8")
    return paths
