"""Results files: JSON lines of records, appended as they finish, read back by everyone.

One rule for every reader (`run --resume`, `leaderboard`, the tests): a line that is
not a valid record (a line cut short when a run was killed, above all) is skipped and
reported as "FILE:LINE: reason", never fatal, and never silently dropped. One rule
for every writer: a file that ends in a cut line gets a newline first, so the next
record starts on a line of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from eplb_bench.core.record import Record, RecordError


class ResultsError(Exception):
    """A results file that cannot be read at all; one line naming the file."""


@dataclass
class ReadResults:
    """What a set of results files holds.

    records: the valid records, in file order.
    skipped: "FILE:LINE: reason" of each line that was not a valid record.
    """

    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResultsError(f"{path}: cannot read: {' '.join(str(reason).split())}") from None


def read_results(paths: Iterable[str | Path]) -> ReadResults:
    """Every record of the given files; blank lines and evaluate's summary line skipped
    quietly, anything else that is not a record skipped and reported."""
    result = ReadResults()
    for path in map(Path, paths):
        for number, text in enumerate(_lines(path), 1):
            if not text.strip():
                continue
            try:
                record = Record.from_json(text)
            except RecordError as exc:
                result.skipped.append(f"{path}:{number}: {exc}")
                continue
            if record is not None:
                result.records.append(record)
    return result


@dataclass
class Collision:
    """A record superseded by a later one of the same identity."""

    kept: Record
    dropped: Record

    def describe(self) -> str:
        return (f"{self.kept.algorithm} on {self.kept.dataset} {self.kept.scenario or ''}".rstrip()
                + f" ({self.kept.device}): an earlier record of the same measurement was superseded")


def latest_by_identity(records: Iterable[Record], machine=None) -> tuple[list[Record], list[Collision]]:
    """The last record of each identity (with the machine label `machine(record)`, when
    given, as part of it), in order of first appearance, and the collisions found."""
    latest: dict[tuple, Record] = {}
    collisions = []
    for record in records:
        key = record.identity() + ((machine(record),) if machine else ())
        if key in latest:
            collisions.append(Collision(kept=record, dropped=latest[key]))
        latest[key] = record
    return list(latest.values()), collisions


def ends_in_cut_line(path: str | Path) -> bool:
    """Whether a non-empty file's last byte is not a newline (a line cut short)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


class ResultsWriter:
    """Appends records to a results file, one flushed line each."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cut = ends_in_cut_line(self.path)
        self.handle = open(self.path, "a", encoding="utf-8")
        if cut:
            self.handle.write("\n")

    def append(self, record: Record) -> None:
        self.handle.write(record.to_json() + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
