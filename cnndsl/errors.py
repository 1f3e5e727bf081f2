"""User-facing diagnostics.

Every mistake a user can make is a `CnnDslError` carrying a `Span`; it renders as
``file:line:col: error: message``, the source line, a caret under the offending text, the
shapes involved and a fix. Anything else escaping the package is a bug in cnndsl.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple


class Span(NamedTuple):
    """A 1-based source range (end column exclusive). A tuple: one is made for every token and node."""

    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True)
class Source:
    """The text a network came from, for rendering diagnostics."""

    text: str
    path: str = "<string>"

    @cached_property
    def lines(self) -> list[str]:
        # Lines as the parser counts them: only "\n" ends one (str.splitlines also splits at form
        # feeds and other separators, which would show the wrong line under an error).
        return self.text.split("\n")

    def line_text(self, line: int) -> str:
        lines = self.lines
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""

    def statement(self, span: Span) -> str:
        """The statement at `span` as written, on its first line, without a trailing comment
        (`concat {` for a statement with a body)."""
        text = self.line_text(span.line)
        if span.end_line == span.line and span.end_column > span.column:
            text = text[span.column - 1 : span.end_column - 1]
        else:
            text = text[max(span.column - 1, 0):]
        return text.split("#", 1)[0].strip()


class Diagnostic(NamedTuple):
    """An error or warning about one place in the source."""

    severity: str  # "error" | "warning"
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: tuple[str, ...] = ()
    calls: tuple[Span, ...] = ()  # block call sites that led here, outermost first
    path: str | None = None  # the file it is about, where the diagnostic outlives its Source

    @property
    def fix(self) -> str | None:
        """What to change: the `fix:` line."""
        return self.hint

    def sort_key(self) -> tuple[int, int, int]:
        """Source order; a diagnostic about no place comes first."""
        span = self.span
        return (span.line, span.column, self.severity != "error") if span else (0, 0, self.severity != "error")

    def to_json(self) -> dict:
        """A JSON-ready dict: file, range (1-based lines and columns, end exclusive), severity,
        message, fix, notes and the block call sites that led here (outermost first)."""
        return {
            "file": self.path,
            "range": _range_json(self.span),
            "severity": self.severity,
            "message": self.message,
            "fix": self.hint,
            "notes": list(self.notes),
            "calls": [_range_json(call) for call in self.calls],
        }

    def render(self, source: Source | None = None) -> str:
        path = source.path if source else (self.path or "<string>")
        # An error about no place in any source (a weights file, an output folder) names no file:
        # its message says which file it is about.
        where = f"{path}:{self.span.line}:{self.span.column}: " if self.span else (f"{path}: " if source else "")
        out = [f"{where}{self.severity}: {self.message}"]
        if self.span and source is not None:
            text = source.line_text(self.span.line)
            if text:
                width = 1
                if self.span.end_line == self.span.line and self.span.end_column > self.span.column:
                    width = self.span.end_column - self.span.column
                out.append(f"  {self.span.line:>4} | {text.rstrip()}")
                # Keep the line's tabs under the caret so it lines up however wide a tab is shown.
                indent = "".join(c if c == "\t" else " " for c in text[: self.span.column - 1])
                out.append(f"       | {indent}^{'~' * (width - 1)}")
        out.extend(f"  {note}" for note in self.notes)
        for call in reversed(self.calls):
            line = source.line_text(call.line).strip() if source else ""
            out.append(f"  in the block call at {path}:{call.line}:{call.column}: {line}")
        if self.hint:
            out.append(f"  fix: {self.hint}")
        return "\n".join(out)


def _range_json(span: Span | None) -> dict | None:
    if span is None:
        return None
    end_line = span.end_line or span.line
    end_column = span.end_column if span.end_line else span.column + 1
    return {"start": {"line": span.line, "column": span.column}, "end": {"line": end_line, "column": end_column}}


MAX_ERRORS = 20
"""Errors reported from one run at most: past that, more are rarely independent of the first ones."""


class CnnDslError(Exception):
    """A mistake in a user's program (or its command line): reported, never a traceback."""

    kind = "error"

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        hint: str | None = None,
        notes: tuple[str, ...] | list[str] = (),
        calls: tuple[Span, ...] = (),
        source: Source | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)
        self.calls = tuple(calls)
        self.source = source
        self.others: tuple[CnnDslError, ...] = ()  # further independent errors of the same run

    @property
    def errors(self) -> tuple[CnnDslError, ...]:
        """Every error of the run, in source order: this one first."""
        return (self, *self.others)

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def diagnostic(self) -> Diagnostic:
        return Diagnostic("error", self.message, self.span, self.hint, self.notes, self.calls,
                          self.source.path if self.source else None)

    def with_source(self, source: Source) -> CnnDslError:
        if self.source is None:
            self.source = source
        for other in self.others:
            other.with_source(source)
        return self

    @classmethod
    def collect(cls, errors: list[CnnDslError]) -> CnnDslError:
        """One error to raise for several independent ones: the first in source order, carrying
        the others (at most MAX_ERRORS in all)."""
        flat = [each for error in errors for each in error.errors]
        ordered = sorted(flat, key=lambda e: e.diagnostic().sort_key())[:MAX_ERRORS]
        for error in ordered:
            error.others = ()
        ordered[0].others = tuple(ordered[1:])
        return ordered[0]

    def render(self) -> str:
        return self.diagnostic().render(self.source)

    def __str__(self) -> str:
        return self.render()


class CnnSyntaxError(CnnDslError):
    """The text does not follow the grammar."""


class UnknownNameError(CnnDslError):
    """An unknown block, parameter or name, or a bad call."""


class BadValueError(CnnDslError):
    """A number that is out of range, not whole where it must be, or otherwise unusable."""


class ShapeError(CnnDslError):
    """Sizes that do not fit together: kernels, channels, branches."""


class ExpectationError(CnnDslError):
    """The network breaks one of the user's `expect` lines."""


class LimitError(CnnDslError):
    """Expansion would exceed a safety bound (repetition, nesting, total layers)."""


class WeightsError(CnnDslError):
    """A weights file whose tensor names or shapes do not match the network."""


class Warnings:
    """Collects warnings from the passes in order."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def warn(self, message: str, span: Span | None, hint: str | None = None, notes=(), calls=()) -> None:
        self.items.append(Diagnostic("warning", message, span, hint, tuple(notes), tuple(calls)))


def closest(word: str, choices, cutoff: float = 0.6) -> str | None:
    """The choice `word` was most likely meant to be, for a "did you mean" (None if none is close)."""
    import difflib  # only mistakes need it: not imported at start-up

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None
