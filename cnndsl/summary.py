"""The `cnndsl analyze` table, in the manner of torchinfo and Keras summaries."""

from __future__ import annotations

import sys

from .analysis import Report, fmt
from .kinds.base import rational_text


def _human(value: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _bytes(value: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _pair(values) -> str:
    a, b = (rational_text(v) for v in values)  # 0.5, 7/6: exact, as the analysis keeps them
    return a if a == b else f"{a}x{b}"


def print_report(report: Report, net, explain: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150, highlight=False)
    table = Table(title=f"{report.network}: input {fmt(report.input)}", title_justify="left",
                  show_lines=explain, pad_edge=False)
    for column, justify in (("layer", "left"), ("line", "right"), ("statement", "left"), ("output", "right"),
                            ("params", "right"), ("MACs", "right"), ("RF", "right"), ("jump", "right"),
                            ("offset", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "statement")
    for row in report.layers:
        statement = row.statement
        lines = report.explain(row) if explain else ()
        if lines:
            statement += "\n" + "\n".join(f"[dim]{line}[/dim]" for line in lines)
        line = str(row.line) + (f" (via {','.join(map(str, row.call_lines))})" if row.call_lines else "")
        table.add_row("  " * row.depth + row.name, line, statement, fmt(row.output), f"{row.params:,}",
                      f"{row.macs:,}", _pair(row.rf), _pair(row.jump), _pair(row.offset))
    console.print(table)
    console.print(
        f"parameters: {report.params:,} ({report.trainable_params:,} trainable), buffers: {report.buffers:,}\n"
        f"MACs (conv + fc): {report.macs:,} ({_human(report.macs)})\n"
        f"memory per sample (float32): weights {_bytes(report.weight_bytes)}, "
        f"activations {_bytes(report.activation_bytes)}\n"
        f"output {fmt(report.output)}; receptive field {_pair(report.rf)}, jump {_pair(report.jump)}, "
        f"offset {_pair(report.offset)}")
