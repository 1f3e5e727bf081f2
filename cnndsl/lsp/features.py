"""What the language server knows about one version of a document, without the protocol: the
diagnostics, and where the analysis' figures are written (for hover and inlay hints).

Every figure comes from the analysis `Report` (rows per layer, shapes and fields per node); this
module only maps them to places in the text. Positions here are cnndsl's: 1-based lines and
columns, as in `Span`.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from functools import cached_property
from typing import NamedTuple

from .. import ir
from ..analysis import Report, active
from ..api import Net, diagnose, parse
from ..errors import CnnDslError, Diagnostic, Span
from ..expand import EXPECTATIONS, OPTIMIZERS, SCHEDULES
from ..kinds.base import fmt
from ..summary import pair_text
from ..syntax import BlockDef

_WORD = re.compile(r"[A-Za-z0-9_.]+")


class Site(NamedTuple):
    """One figure-bearing thing at one place in the text: a layer's statement, or a block call,
    in one of the expansions that reach it (one per call site of the block it is written in)."""

    span: Span
    calls: tuple[Span, ...]  # the call sites that led here, outermost first
    node: ir.Node  # its `text()` is the statement evaluated: `conv 3x3/2 pad1 -> 128 nobias`
    output: tuple[int, ...]
    params: int | None  # its own; None for a block call (hover sums what is inside: `Analysis.inside`)
    macs: int | None
    rf: tuple[int, int]
    jump: tuple


def contains(span: Span, line: int, column: int) -> bool:
    end = (span.end_line, span.end_column) if span.end_line else (span.line, span.column + 1)
    return (span.line, span.column) <= (line, column) < end


def _size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_column - span.column if span.end_line == span.line else 10**6)


@contextmanager
def collector_paused():
    """The cyclic garbage collector off for a while. An analysis makes tens of thousands of small
    objects and no cycles (reference counting frees them); the collector's passes over them, and
    its full passes over the previous analyses the server holds, took a quarter of a re-analysis
    (ResNet-152: median 26 ms with them, 20 ms without). It runs again afterwards, between edits."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Analysis:
    """A document's text analysed once: `net` is None where it has an error."""

    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.net: Net | None = None
        self.diagnostics: list[Diagnostic]
        with collector_paused():
            try:
                self.net = parse(text, path)
            except CnnDslError:  # then every error, each at its place (a program with none costs one parse)
                self.diagnostics = diagnose(text, path)
            else:
                self.diagnostics = list(self.net.report.warnings)

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    # ------------------------------------------------------------ sites
    @cached_property
    def sites(self) -> tuple[Site, ...]:
        if self.net is None:
            return ()
        report: Report = self.net.report
        out = [Site(row.node.span, row.node.calls, row.node, row.output, row.params, row.macs, row.rf, row.jump)
               for row in report.layers]
        fields = report.fields
        for node in active(self.net.ir.body, report.shapes):
            if isinstance(node, ir.Seq) and node.block and node.calls:
                field = fields.get(node.name)
                out.append(Site(node.calls[-1], node.calls[:-1], node, report.shapes.of(node).output, None, None,
                                field.size if field else (0, 0), field.jump if field else (0, 0)))
        return tuple(out)

    @cached_property
    def _costs(self) -> dict[str, tuple[int, int]]:
        return {row.name: (row.params, row.macs) for row in self.net.report.layers} if self.net else {}

    def inside(self, node: ir.Node) -> tuple[int, int]:
        """The parameters and MACs of `node` and everything in it (a block call, a residual)."""
        costs = [self._costs.get(n.name, (0, 0)) for n in ir.walk(node)]
        return sum(c[0] for c in costs), sum(c[1] for c in costs)

    def at(self, line: int, column: int) -> list[Site]:
        """The sites of the innermost statement or call written at (line, column), one per expansion."""
        here = [s for s in self.sites if contains(s.span, line, column)]
        if not here:
            return []
        smallest = min(_size(s.span) for s in here)
        return [s for s in here if _size(s.span) == smallest]

    def hover(self, line: int, column: int) -> tuple[str, Span] | None:
        sites = self.at(line, column)
        if not sites:
            return None
        span = sites[0].span
        written = self.lines[span.line - 1][span.column - 1:span.end_column - 1 if span.end_line == span.line else None]
        out = [f"```cnndsl\n{written.split('#', 1)[0].strip()}\n```"]
        if len(sites) > 1:
            out.append(f"{len(sites)} expansions (one per call site or repetition):")
        out.append("| where | evaluated | output | params | MACs | RF | jump |")
        out.append("|---|---|---|---|---|---|---|")
        for site in sites:
            where = " → ".join(f"line {c.line} `{self._call_text(c)}`" for c in site.calls) or f"`{site.node.name}`"
            params, macs = self.inside(site.node) if site.node.children() else (site.params, site.macs)
            text = site.node.text()
            # As the table prints them: "-" where the layer has no spatial field (its figures are 0).
            rf = pair_text(site.rf) if any(site.rf) else "-"
            jump = pair_text(site.jump) if any(site.jump) else "-"
            out.append(f"| {where} | `{text}` | {fmt(site.output)} | {params:,} | {macs:,} | "
                       f"{rf} | {jump} |")
        return "\n".join(out), span

    def _call_text(self, span: Span) -> str:
        text = self.lines[span.line - 1]
        return text[span.column - 1:span.end_column - 1] if span.end_line == span.line else text.strip()

    def inlay_hints(self) -> list[tuple[int, int, str]]:
        """(line, column, label): after the last statement of each line, the shape it gives; in a
        block, one shape per call (the distinct ones, in order)."""
        by_line: dict[int, list[Site]] = {}
        for site in self.sites:
            by_line.setdefault(site.span.end_line or site.span.line, []).append(site)
        hints = []
        for line, sites in sorted(by_line.items()):
            end = max((s.span.end_column if s.span.end_line else s.span.column) for s in sites)
            last = [s for s in sites if (s.span.end_column if s.span.end_line else s.span.column) == end]
            shapes = list(dict.fromkeys(fmt(s.output) for s in last))
            label = " | ".join(shapes[:4]) + (f" | … ({len(shapes)} shapes)" if len(shapes) > 4 else "")
            hints.append((line, end, f" → {label}"))
        return hints

    # ------------------------------------------------------------ names
    @cached_property
    def blocks(self) -> dict[str, BlockDef]:
        if self.net is not None and self.net._program is not None:
            program = self.net._program
        else:
            from ..parser import parse_program

            try:
                program = parse_program(self.text)
            except CnnDslError:
                return {}
        return {item.name: item for item in program.items if isinstance(item, BlockDef)}

    def word_at(self, line: int, column: int) -> str:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        for match in _WORD.finditer(text):
            if match.start() < column <= match.end() + 1 and match.start() + 1 <= column:
                return match.group()
        return ""

    def definition(self, line: int, column: int) -> BlockDef | None:
        return self.blocks.get(self.word_at(line, column))


# ---------------------------------------------------------------- completion

def completions(text: str, line: int, column: int, blocks: dict[str, BlockDef]) -> list[tuple[str, str, str]]:
    """(label, kind, detail) for what may be written at (line, column): the keywords the grammar
    accepts there (asked of the parser, fed the text up to the word being typed), block names
    where a call may stand, and the enclosing block's parameters where a value may."""
    from ..grammar.cnndsl_lalr import TERMINAL_WORDS, UnexpectedInput
    from ..parser import _parser

    lines = text.split("\n")
    prefix = "\n".join(lines[:line - 1] + [lines[line - 1][:column - 1] if line <= len(lines) else ""])
    word = re.search(r"[A-Za-z_][A-Za-z0-9_]*$", prefix)
    before = prefix[:word.start()] if word else prefix
    parser = _parser()
    try:
        interactive = parser.parse_interactive(before)
        last = (interactive.exhaust_lexer() or [None])[-1]
        accepted = interactive.accepts()
    except UnexpectedInput:
        last, accepted = None, {"NAME", *(t.name for t in parser.terminals if t.pattern.type == "str")}
    # The names that follow these keywords are checked by the expander, not the grammar.
    named = {"EXPECT": ("expectation", EXPECTATIONS), "OPTIMIZER": ("optimizer", OPTIMIZERS),
             "SCHEDULE": ("schedule", SCHEDULES)}.get(last.type if last is not None else "")
    items: dict[str, tuple[str, str]] = {}
    for name in sorted(accepted):
        if name in TERMINAL_WORDS:
            for value in TERMINAL_WORDS[name]:
                items[value] = ("keyword", name.lower().replace("_", " "))
            continue
        terminal = next((t for t in parser.terminals if t.name == name), None)
        if terminal is not None and terminal.pattern.type == "str" and re.fullmatch(r"[a-z_]+", terminal.pattern.value):
            items.setdefault(terminal.pattern.value, ("keyword", "keyword"))
    if named is not None:
        items = {name: ("keyword", named[0]) for name in named[1]}
    elif "NAME" in accepted:
        offset = len(before)
        for block in blocks.values():
            params = ", ".join(p.name for p in block.params)
            items.setdefault(block.name, ("block", f"block {block.name}({params})"))
            if _offset_of(text, block.span) <= offset < _offset_of(text, block.span, end=True):
                for param in block.params:
                    items.setdefault(param.name, ("parameter", f"parameter of {block.name}"))
                items.setdefault("in_c", ("parameter", "the channels entering this call of the block"))
    if word:
        items = {k: v for k, v in items.items() if k.startswith(word.group())}
    return [(label, kind, detail) for label, (kind, detail) in items.items()]


def _offset_of(text: str, span: Span, end: bool = False) -> int:
    line, column = (span.end_line, span.end_column) if end else (span.line, span.column)
    starts = [0]
    for part in text.split("\n"):
        starts.append(starts[-1] + len(part) + 1)
    return starts[line - 1] + column - 1 if 0 < line <= len(starts) else len(text)
