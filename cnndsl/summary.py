"""The `cnndsl analyze` table, in the manner of torchinfo and Keras summaries, fitted to a width.

`table_rows` makes the rows (every layer, or with `depth` the rows below that depth collapsed into
their block calls); `render_text` lays them out in plain text within a width, `render_html` as an
HTML table. `str(report)` and `report._repr_html_()` are these two.

Fitting a width: the table starts with every column and, while it is wider than the width, takes the
next step of `FIT_STEPS` (documented in docs/language.md, "The analyze table"): it drops or shortens
columns, then wraps the statement and the layer names over several lines. A number is never cut: an
abbreviated count (2.36M) is a rounding the column heading says nothing else about, and a wrapped
cell breaks only between words (a statement) or after a dot (a layer name). Narrower than the last
step allows, the table is as narrow as it can be and wider than asked.
"""

from __future__ import annotations

import html
import os
import shutil
import textwrap
from typing import TYPE_CHECKING, NamedTuple

from . import ir
from .kinds.base import fmt, rational_text

if TYPE_CHECKING:
    from .analysis import Report
    from .analysis.erf import EffectiveField

DEFAULT_WIDTH = 80  # when neither COLUMNS nor a terminal says (a pipe, a file): what `ls` and `man` assume
GAP = "  "

# The steps that make a table narrower, in the order they are taken.
FIT_STEPS = ("drop offset", "drop jump", "line without via", "abbreviate counts", "no indentation", "drop line",
             "drop MACs", "wrap statement", "wrap layer")


def terminal_width() -> int:
    """COLUMNS if set (also when piped), else the terminal's width, else DEFAULT_WIDTH."""
    value = os.environ.get("COLUMNS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def human(value: int) -> str:
    """A count for a person: `118M`, `2.36M`, `10.0T`: three significant figures, scientific
    (`1.23e+18`) from a million T on."""
    if value < 1000:
        return str(value)
    for unit, size in (("K", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12), ("P", 10**15)):
        text = f"{value / size:#.3g}".rstrip(".")
        if float(text) < 1000:  # else 999,999 would be 1.00e+03K: it is 1.00M
            return f"{text}{unit}"
    return f"{value:.2e}"


def bytes_text(value: int) -> str:
    """A size for a person, in binary units: `528.00 MiB`, `6.98 TiB`, `812 B`."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def pair_text(values) -> str:
    """A per-axis figure (height, width) as the table prints it: `7` when square, else `7x5`; exact
    rationals (`0.5`, `7/6`). The one formatter for RF, ERF, jump and offset everywhere."""
    a, b = (rational_text(v) for v in values)  # 0.5, 7/6: exact, as the analysis keeps them
    return a if a == b else f"{a}x{b}"


class TableRow(NamedTuple):
    """One row of the table, every figure of it; `cells` picks what a layout shows."""

    name: str
    depth: int
    line: int
    via: tuple[int, ...]
    statement: str  # the evaluated statement (`conv 3x3/2 pad1 -> 128`), or the block call
    output: tuple[int, ...]
    params: int
    macs: int
    rf: str  # "7", "7x5", or "-" where the layer has no spatial field
    erf: str
    jump: str
    offset: str
    collapsed: bool = False  # a block call standing for the rows under it (`depth`)


def table_rows(report: Report, depth: int | None = None,
               erf: dict[str, EffectiveField] | None = None) -> list[TableRow]:
    """The rows of the table: every layer, or, with `depth`, the layers nested deeper than `depth`
    folded into the block call (or shortcut) they are in at that depth, as torchinfo's `depth`
    does: its parameters and MACs summed, its output, field and ERF those of the call's output."""
    rows: list[TableRow] = []
    spans = {}
    if depth is not None and report.shapes.body is not None:
        spans = _outer_seqs(report.shapes.body, depth)
    seen: dict[str, int] = {}
    for row in report.layers:
        seq = spans.get(row.name)
        if seq is None:
            field = report.fields.get(row.name)
            rows.append(TableRow(row.name, row.depth, row.line, row.call_lines, row.node.text(), row.output,
                                 row.params, row.macs, _field_text(field, "size"), _erf_text(erf, row.name),
                                 _field_text(field, "jump"), _field_text(field, "start")))
            continue
        index = seen.get(seq.name)
        if index is None:
            seen[seq.name] = len(rows)
            field = report.fields.get(seq.name)
            calls = tuple(span.line for span in seq.calls)
            line, via = (calls[-1], calls[:-1]) if seq.block is not None and calls else (seq.span.line, calls)
            rows.append(TableRow(seq.name, depth or 0, line, via, seq.text(), report.shapes.of(seq).output,
                                 row.params, row.macs, _field_text(field, "size"), _erf_text(erf, seq.name),
                                 _field_text(field, "jump"), _field_text(field, "start"), collapsed=True))
        else:
            rows[index] = rows[index]._replace(params=rows[index].params + row.params,
                                               macs=rows[index].macs + row.macs)
    return rows


def _field_text(field, what: str) -> str:
    return "-" if field is None else pair_text(getattr(field, what))


def _erf_text(erf: dict[str, EffectiveField] | None, name: str) -> str:
    if erf is None or name not in erf:
        return "-"
    return pair_text(erf[name].size)


def _outer_seqs(body: ir.Seq, depth: int) -> dict[str, ir.Seq]:
    """Node name -> the sequence at nesting `depth` it is folded into, for nodes nested deeper."""
    out: dict[str, ir.Seq] = {}

    def visit(node: ir.Node, level: int, fold: ir.Seq | None) -> None:
        counts = isinstance(node, ir.Seq) and node.name != "" and not node.name.endswith(".body") \
            and node is not body
        if fold is not None:
            out[node.name] = fold
        elif counts and level == depth:
            fold = node
        for child in node.children():
            visit(child, level + 1 if counts else level, fold)

    visit(body, 0, None)
    return out


# ---------------------------------------------------------------- columns and layout


class _Column(NamedTuple):
    title: str
    cells: list[str]
    right: bool = True
    wrap: str = ""  # "" never wrapped; " " between words; "." after a dot


def _columns(rows: list[TableRow], steps: set[str], erf: bool) -> list[_Column]:
    indent = "no indentation" not in steps
    short = "abbreviate counts" in steps
    count = human if short else "{:,}".format
    columns = [_Column("layer", [("  " * r.depth if indent else "") + r.name for r in rows], False,
                       "." if "wrap layer" in steps else "")]
    if "drop line" not in steps:
        with_via = "line without via" not in steps
        columns.append(_Column("line", [str(r.line) + (f" (via {','.join(map(str, r.via))})" if r.via and with_via
                                                       else "") for r in rows]))
    columns.append(_Column("statement", [r.statement for r in rows], False, " " if "wrap statement" in steps else ""))
    columns.append(_Column("output", [fmt(r.output) for r in rows]))
    columns.append(_Column("params", [count(r.params) for r in rows]))
    if "drop MACs" not in steps:
        columns.append(_Column("MACs", [count(r.macs) for r in rows]))
    columns.append(_Column("RF", [r.rf for r in rows]))
    if erf:
        columns.append(_Column("ERF", [r.erf for r in rows]))
    if "drop jump" not in steps:
        columns.append(_Column("jump", [r.jump for r in rows]))
    if "drop offset" not in steps:
        columns.append(_Column("offset", [r.offset for r in rows]))
    return columns


def _natural(column: _Column) -> int:
    return max(len(column.title), *(len(c) for c in column.cells)) if column.cells else len(column.title)


def _narrowest(column: _Column) -> int:
    """The width below which a wrapped column would have to cut a word."""
    if not column.wrap:
        return _natural(column)
    pieces = [p for cell in column.cells for p in _pieces(cell, column.wrap)]
    return max(len(column.title), *(len(p.rstrip()) for p in pieces)) if pieces else len(column.title)


def _pieces(cell: str, wrap: str) -> list[str]:
    """A cell cut where it may wrap: words keep their spaces, a layer name breaks after each dot."""
    if wrap == " ":
        return [word + " " for word in cell.split(" ")]
    indent = len(cell) - len(cell.lstrip(" "))
    parts = cell.strip(" ").split(".")
    return [" " * indent + parts[0] + ("." if len(parts) > 1 else "")] + \
        [p + "." for p in parts[1:-1]] + ([parts[-1]] if len(parts) > 1 else [])


def _wrap(cell: str, wrap: str, width: int) -> list[str]:
    if not wrap or len(cell) <= width:
        return [cell]
    lines, current = [], ""
    for piece in _pieces(cell, wrap):
        if current and len((current + piece).rstrip()) > width:
            lines.append(current.rstrip())
            current = "  " if wrap == "." else ""  # a wrapped name's continuation is indented
        current += piece
    lines.append(current.rstrip())
    return lines


def _widths(columns: list[_Column], width: int) -> list[int] | None:
    """Column widths within `width`, or None when the columns cannot fit."""
    natural = [_natural(c) for c in columns]
    room = width - len(GAP) * (len(columns) - 1)
    if sum(natural) <= room:
        return natural
    wrapping = [i for i, c in enumerate(columns) if c.wrap]
    fixed = sum(n for i, n in enumerate(natural) if i not in wrapping)
    least = {i: _narrowest(columns[i]) for i in wrapping}
    spare = room - fixed - sum(least.values())
    if not wrapping or spare < 0:
        return None
    widths = list(natural)
    for i in wrapping:  # the statement first: a layer name is better kept on one line
        give = min(natural[i] - least[i], spare)
        widths[i] = least[i] + give
        spare -= give
    return widths


def _layout(rows: list[TableRow], width: int | None, erf: bool) -> tuple[list[_Column], list[int]]:
    steps: set[str] = set()
    columns = _columns(rows, steps, erf)
    if width is None:
        return columns, [_natural(c) for c in columns]
    for step in (None, *FIT_STEPS):
        if step is not None:
            steps.add(step)
            columns = _columns(rows, steps, erf)
        widths = _widths(columns, width)
        if widths is not None:
            return columns, widths
    return columns, [_narrowest(c) for c in columns]


def _table_lines(rows: list[TableRow], width: int | None, erf: bool) -> list[str]:
    columns, widths = _layout(rows, width, erf)

    def line(cells: list[str]) -> str:
        return GAP.join((c.rjust(w) if col.right else c.ljust(w)) for c, w, col in zip(cells, widths, columns,
                                                                                            strict=True)).rstrip()

    out = [line([c.title for c in columns]), "-" * min(sum(widths) + len(GAP) * (len(widths) - 1),
                                                       width or 1 << 30)]
    for index in range(len(rows)):
        wrapped = [_wrap(col.cells[index], col.wrap, w) for col, w in zip(columns, widths, strict=True)]
        for k in range(max(len(w) for w in wrapped)):
            out.append(line([w[k] if k < len(w) else "" for w in wrapped]))
    return out


def totals(report: Report) -> list[str]:
    """The summary under the table, one figure group per line."""
    return [
        f"parameters: {report.params:,} ({human(report.params)}); {report.trainable_params:,} trainable; "
        f"buffers: {report.buffers:,}",
        f"MACs (conv + fc): {report.macs:,} ({human(report.macs)})",
        f"memory per sample (float32): weights {bytes_text(report.weight_bytes)}, "
        f"activations {bytes_text(report.activation_bytes)}",
        f"output {fmt(report.output)}; " + ("receptive field -" if not report.fields else
                                           f"receptive field {pair_text(report.rf)}, jump {pair_text(report.jump)}, "
                                           f"offset {pair_text(report.offset)}"),
    ]


def _fill(text: str, width: int | None, indent: str = "") -> list[str]:
    if width is None:
        return [indent + text]
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False) or [""]


def render_text(report: Report, width: int | None = None, *, depth: int | None = None,
                erf: dict[str, EffectiveField] | None = None, explain: bool = False) -> str:
    """The table, title and totals in plain text no wider than `width` (None: as wide as it needs;
    `terminal_width()` is what `cnndsl analyze` passes). With `explain`, every row's arithmetic
    (`Report.explain`) follows the table."""
    rows = table_rows(report, depth, erf)
    out = _fill(f"{report.network}: input {fmt(report.input)}"
                + (f", effective fields over {_erf_samples(erf)}" if erf else ""), width)
    out += _table_lines(rows, width, erf is not None)
    for text in totals(report):
        out += _fill(text, width)
    if explain:
        for row in report.layers:
            out.append("")
            out.append(report.explain(row.name, width=width))
    return "\n".join(out)


def _erf_samples(erf: dict[str, EffectiveField]) -> str:
    first = next(iter(erf.values()), None)
    return "no spatial layer" if first is None else f"{first.samples} sample(s), {first.mass:.0%} of the gradient"


def render_html(report: Report, *, depth: int | None = None, erf: dict[str, EffectiveField] | None = None) -> str:
    """The table as HTML (every column, numbers exact), with the title and totals; for notebooks."""
    rows = table_rows(report, depth, erf)
    columns = _columns(rows, set(), erf is not None)
    esc = html.escape
    head = "".join(f"<th style=\"text-align:{'right' if c.right else 'left'}\">{esc(c.title)}</th>" for c in columns)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for col in columns:
            text = col.cells[index]
            if col.title == "layer":
                text = text.strip()
                style = f"text-align:left;padding-left:{row.depth * 1.5 + 0.4:.1f}em"
            else:
                style = f"text-align:{'right' if col.right else 'left'}"
            cells.append(f"<td style=\"{style}\"><code>{esc(text)}</code></td>" if col.title == "statement"
                         else f"<td style=\"{style}\">{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    foot = "".join(f"<li>{esc(line)}</li>" for line in totals(report))
    return (f"<div class=\"cnndsl-report\"><p><b>{esc(report.network)}</b>: input {esc(fmt(report.input))}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ul>{foot}</ul></div>")


def print_report(report: Report, net=None, explain: bool = False, *, width: int | None = None,
                 depth: int | None = None, erf: dict[str, EffectiveField] | None = None) -> None:
    """What `cnndsl analyze` prints: `render_text` at `width` (default `terminal_width()`)."""
    import click

    click.echo(render_text(report, terminal_width() if width is None else width or None, depth=depth, erf=erf,
                           explain=explain))
