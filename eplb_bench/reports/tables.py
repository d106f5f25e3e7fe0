"""The one table model of every report, and its three renderings: text, Markdown, HTML.

A Table holds plain text cells; each renderer escapes them for its medium, so a
balancer named `<b>$x$|y</b>` shows as exactly that everywhere and breaks nothing.
"""

from __future__ import annotations

import html
from typing import NamedTuple

MISSING = "-"
# Columns of text; the others hold numbers and align right.
LEFT_ALIGNED = ("balancer", "status", "scenario")


class Table(NamedTuple):
    """A table before rendering: a title, a header row, text rows, an optional note and HTML id."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    table_id: str = ""


def number(value, fmt: str) -> str:
    """`value` formatted, or MISSING for None."""
    return MISSING if value is None else fmt.format(value)


def _flat(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- text


def text_table(table: Table) -> str:
    """A Table as aligned plain text: title, header, a rule, rows, note."""
    cells = [table.header] + table.rows
    widths = [max(len(_flat(row[i])) for row in cells) for i in range(len(table.header))]

    def line(row):
        return "  ".join(_flat(cell).ljust(width) if title in LEFT_ALIGNED else _flat(cell).rjust(width)
                         for cell, width, title in zip(row, widths, table.header)).rstrip()

    lines = [_flat(table.title), line(table.header), "-" * len(line(table.header))]
    lines += [line(row) for row in table.rows]
    if table.note:
        lines.append(_flat(table.note))
    return "\n".join(lines)


# ---------------------------------------------------------------- Markdown

# Characters Markdown would read as markup inside a line (emphasis, code, links, table
# cells, strike-through); math renderers read "$". "<", ">" and "&" become entities.
MARKDOWN_SPECIAL = "\\`*[]|$~"


def markdown_text(text: str) -> str:
    """Text that renders as itself in Markdown: one line, HTML escaped, markup characters
    backslash-escaped ("$" -> "\\$", "|" -> "\\|")."""
    flat = html.escape(_flat(text), quote=False)
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in flat)


def markdown_table(table: Table, level: int = 2) -> str:
    """A Table as a Markdown heading, pipe table and note."""
    lines = [f"{'#' * level} {markdown_text(table.title)}", ""]
    lines.append("| " + " | ".join(map(markdown_text, table.header)) + " |")
    lines.append("|" + "|".join(":---" if title in LEFT_ALIGNED else "---:" for title in table.header) + "|")
    lines += ["| " + " | ".join(map(markdown_text, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", markdown_text(table.note)]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML


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


# ---------------------------------------------------------------- plots


def plot_text(text: str) -> str:
    """Text for a matplotlib label: "$" escaped, so no name is read as mathtext."""
    return str(text).replace("$", r"\$")
