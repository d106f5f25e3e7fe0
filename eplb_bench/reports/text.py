"""Plain-text reports of result records: what `run` and `evaluate` print."""

from __future__ import annotations

from eplb_bench.reports.leaderboard import overall_tables
from eplb_bench.reports.standings import as_records, scenario_tables
from eplb_bench.reports.tables import text_table


def format_table(records, scorer: str) -> str:
    """One ranked table per scenario, then the overall standings by `scorer` and by
    next-window balance alone."""
    records = as_records(records)
    blocks = [text_table(table) for table in scenario_tables(records, scorer)]
    blocks += [text_table(table) for table in overall_tables(records, scorer)]
    return "\n\n".join(blocks)
