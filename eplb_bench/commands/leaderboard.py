"""The leaderboard command."""

from __future__ import annotations

from eplb_bench.commands.common import warn
from eplb_bench.core.results import latest_by_identity, read_results
from eplb_bench.reports.leaderboard import write_leaderboard
from eplb_bench.reports.standings import machine_of


def command_leaderboard(args) -> int:
    """Pages and plots from results files; lines that are not records are skipped and
    reported, and so is every record superseded by a later one of the same identity."""
    read = read_results(args.results)
    for line in read.skipped:
        warn(f"{line} (skipped)")
    records, collisions = latest_by_identity(read.records, machine_of)
    for collision in collisions:
        warn(collision.describe())
    if not records:
        warn(f"no records in {', '.join(args.results)}", "error")
        return 1
    written = write_leaderboard(records, args.out, scorer=args.scorer)
    print(f"{len(records)} record(s) from {len(args.results)} file(s), ranked by {args.scorer}"
          + (f"; {len(read.skipped)} line(s) skipped" if read.skipped else "")
          + (f"; {len(collisions)} superseded" if collisions else "") + ":")
    for path in written.values():
        print(f"  {path}")
    return 0
