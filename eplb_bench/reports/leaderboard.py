"""The leaderboard: Markdown, plots and one HTML page, from result records only.

Standings come first (by the chosen scorer, then by next-window balance alone), then
every scenario; held-out draws get their own section. The tables are built once
(`reports.standings`) and rendered by `reports.tables`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from eplb_bench.core.record import Record
from eplb_bench.core.scoring import BALANCE_SCORER, DEFAULT_SCORER, SCORERS
from eplb_bench.reports.plots import (
    plot_balance_by_scenario,
    plot_balance_vs_runtime,
    plot_migrations_by_scenario,
    plot_runtime_by_scenario,
)
from eplb_bench.reports.modeled import modeled_tables, plot_speedup_vs_interval
from eplb_bench.reports.standings import (
    HELDOUT,
    INCOMPLETE_RULE,
    as_records,
    check_scorer,
    machine_of,
    records_by_split,
    scenario_tables,
    standings,
    standings_tables,
)
from eplb_bench.reports.tables import Table, html_table, markdown_table, markdown_text

FILES = {
    "markdown": "leaderboard.md",
    "scatter": "balance_vs_runtime.png",
    "bars": "balance_by_dataset.png",
    "runtime": "runtime_by_scenario.png",
    "migrations": "migrations_by_scenario.png",
    "speedup": "speedup_vs_interval.png",
    "html": "leaderboard.html",
}
PLOT_TEXT = {
    "scatter": "Mean GPU balancedness (next window) against mean runtime per balancer, log runtime axis, "
               "Pareto front marked",
    "bars": "GPU balancedness per scenario: next window beside in-sample, with the proven ceiling where a bound "
            "beats the mean load",
    "runtime": "Median runtime per call for each scenario, log axis, whiskers from the fastest to the slowest call",
    "migrations": "Slots whose expert changed per rebalance, for each scenario",
    "speedup": "Modeled speedup over the contiguous placement against the rebalance interval, per replayed scenario "
               "(run --cost-model), log interval axis",
}
MODELED_HEADING = "Modeled serving time"
PER_MACHINE_RULE = ("Rankings are per machine identity (CPU or GPU model, cores, threads, library versions) and "
                    "never mixed: runtimes, and every score with a speed term, depend on them.")
HELDOUT_HEADING = "Held-out draws (fresh seeds, seed in each record)"
HELDOUT_RULE = ("Held-out records score fresh random draws of the synthetic suite generators, seeded at run time, "
                "so no program could have been tuned to these draws. They are ranked here on their own and never enter "
                "the public standings above. A balancer's draws of different seeds are pooled: its means are "
                "over all its held-out records, and a scenario counts as ok only when every draw of it was ok.")
PUBLIC_ONLY_RULE = ("The standings, scenario tables and plots before the held-out section are of the public split "
                    "(the shipped datasets) only.")


def overall_tables(records: list[Record], scorer: str) -> list[Table]:
    """The standings by `scorer`, then (unless that is already it) by balance alone."""
    tables = standings_tables(standings(records, scorer), scorer)
    if scorer != BALANCE_SCORER:
        tables += standings_tables(standings(records, BALANCE_SCORER), BALANCE_SCORER, title="Balance standings")
    return tables


def _record_count(records: list[Record]) -> str:
    heldout = len(records_by_split(records)[HELDOUT])
    return f"{len(records)} records" + (f" ({len(records) - heldout} public, {heldout} held-out)" if heldout else "")


def _page_notes(records: list[Record]) -> list[str]:
    notes = [PER_MACHINE_RULE] if len({machine_of(r) for r in records}) > 1 else []
    return notes + ([PUBLIC_ONLY_RULE] if records_by_split(records)[HELDOUT] else [])


def _intro(records: list[Record], scorer: str) -> str:
    return (f"Ranked by {scorer} ({SCORERS[scorer].formula}; higher is better), then by balance alone. "
            f"{_record_count(records)}, {len({machine_of(r) for r in records})} machine identity(ies). "
            f"{INCOMPLETE_RULE}")


def leaderboard_markdown(records, scorer: str) -> str:
    """The whole leaderboard as Markdown."""
    records = as_records(records)
    splits = records_by_split(records)
    parts = ["# EPLB leaderboard", "", markdown_text(_intro(records, scorer))]
    parts += [part for note in _page_notes(records) for part in ("", markdown_text(note))]
    tables = overall_tables(splits["public"], scorer)
    if not tables:
        parts += ["", "No public records." if records else "No records."]
    parts += ["\n" + markdown_table(table) for table in tables]
    modeled = modeled_tables(splits["public"])
    if modeled:
        parts += ["", f"## {MODELED_HEADING}"] + ["\n" + markdown_table(table, level=3) for table in modeled]
    parts += ["", "## Scenarios"]
    parts += ["\n" + markdown_table(table, level=3) for table in scenario_tables(splits["public"], scorer)]
    if splits[HELDOUT]:
        parts += ["", f"## {markdown_text(HELDOUT_HEADING)}", "", markdown_text(HELDOUT_RULE)]
        parts += ["\n" + markdown_table(table, level=3) for table in overall_tables(splits[HELDOUT], scorer)]
        parts += ["", "### Held-out scenarios"]
        parts += ["\n" + markdown_table(table, level=4) for table in scenario_tables(splits[HELDOUT], scorer)]
    return "\n".join(parts) + "\n"


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


def png_data_uri(path: Path) -> str:
    """A PNG file as a base64 data: URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def leaderboard_html(records, scorer: str, plots: dict[str, Path]) -> str:
    """One self-contained page: inline CSS, the tables, and the plots as data URIs."""
    records = as_records(records)
    splits = records_by_split(records)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>EPLB leaderboard</title>", f"<style>{PAGE_STYLE}</style>", "</head>", "<body>",
             "<h1>EPLB leaderboard</h1>", _html_note(_intro(records, scorer))]
    parts += [_html_note(note) for note in _page_notes(records)]
    tables = overall_tables(splits["public"], scorer)
    parts += [html_table(table) for table in tables] or [f"<p>{'No public records.' if records else 'No records.'}</p>"]
    modeled = modeled_tables(splits["public"])
    if modeled:
        parts += [f"<h2>{MODELED_HEADING}</h2>"] + [html_table(table) for table in modeled]
    parts += ["<h2>Plots</h2>"]
    parts += [f'<img src="{png_data_uri(path)}" alt="{html.escape(PLOT_TEXT[kind])}">' for kind, path in plots.items()]
    parts += ["<h2>Scenarios</h2>"]
    parts += [html_table(table) for table in scenario_tables(splits["public"], scorer)]
    if splits[HELDOUT]:
        parts += [f'<h2 id="heldout">{html.escape(HELDOUT_HEADING)}</h2>', _html_note(HELDOUT_RULE)]
        parts += [html_table(table) for table in overall_tables(splits[HELDOUT], scorer)]
        parts += ["<h3>Held-out scenarios</h3>"]
        parts += [html_table(table) for table in scenario_tables(splits[HELDOUT], scorer)]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_leaderboard(records, out_dir: str | Path, scorer: str = DEFAULT_SCORER) -> dict[str, Path]:
    """Write the Markdown page, five plots and the HTML page into `out_dir` (created if
    needed); return their paths by kind (see FILES). The plots show the public split."""
    check_scorer(scorer)
    records = as_records(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    paths["markdown"].write_text(leaderboard_markdown(records, scorer), encoding="utf-8")
    public = records_by_split(records)["public"]
    plot_balance_vs_runtime(standings(public, scorer), paths["scatter"])
    plot_balance_by_scenario(public, paths["bars"])
    plot_runtime_by_scenario(public, paths["runtime"])
    plot_migrations_by_scenario(public, paths["migrations"])
    plot_speedup_vs_interval(public, paths["speedup"])
    plots = {kind: paths[kind] for kind in PLOT_TEXT}
    paths["html"].write_text(leaderboard_html(records, scorer, plots), encoding="utf-8")
    return paths
