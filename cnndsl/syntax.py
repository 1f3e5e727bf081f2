"""The program as written: what the parser builds before blocks and arithmetic are expanded.

These nodes still hold unevaluated expressions and block calls; `cnndsl.expand` turns them into
the flat IR (`cnndsl.ir`) that every pass and backend reads. They live only between the parser and
the expander, so they are NamedTuples: a tenth of a dataclass's creation cost, which every
`cnndsl analyze` pays at start-up.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import Span


class Num(NamedTuple):
    value: int | float
    span: Span


class Var(NamedTuple):
    name: str
    span: Span


class BinOp(NamedTuple):
    op: str  # + - * /
    left: Expr
    right: Expr
    span: Span


class Neg(NamedTuple):
    operand: Expr
    span: Span


Expr = Num | Var | BinOp | Neg


class Option(NamedTuple):
    """One option of a layer statement: `pad 1`, `/2`, `-> 64`, `nobias`.

    `value` is an Expr, a tuple of Exprs (a `HxW` pair), a word (`same`), or True for a flag.
    """

    key: str
    value: object
    span: Span


class Layer(NamedTuple):
    op: str  # conv pool fc flatten dropout bn act
    options: tuple[Option, ...]
    span: Span


class KeywordArg(NamedTuple):
    name: str
    value: Expr
    span: Span


class Call(NamedTuple):
    block: str
    args: tuple[Expr, ...]
    kwargs: tuple[KeywordArg, ...]
    span: Span


class Repeat(NamedTuple):
    stmt: Statement
    count: Expr
    span: Span


class Residual(NamedTuple):
    body: tuple[Statement, ...]
    shortcut: tuple[Statement, ...] | None
    always: bool
    span: Span


class Branches(NamedTuple):
    kind: str  # concat | add
    branches: tuple[tuple[Statement, ...], ...]
    branch_spans: tuple[Span, ...]
    span: Span


Statement = Layer | Call | Repeat | Residual | Branches


class Param(NamedTuple):
    name: str
    default: Expr | None
    span: Span


class BlockDef(NamedTuple):
    name: str
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    span: Span


class ExpectStmt(NamedTuple):
    what: str
    comparison: str  # < <= > >= ==
    value: tuple[int | float, ...]  # one number, or a shape
    span: Span
    what_span: Span


class Setting(NamedTuple):
    """One line of a preprocess / augment / train section."""

    key: str
    values: tuple[object, ...]
    options: tuple[tuple[str, object], ...]
    span: Span


class Section(NamedTuple):
    kind: str  # preprocess | augment | train
    settings: tuple[Setting, ...]
    span: Span


class Program(NamedTuple):
    items: tuple[object, ...]  # network/input headers, BlockDefs, statements, ExpectStmts, Sections


class NetworkHeader(NamedTuple):
    name: str
    span: Span


class InputHeader(NamedTuple):
    shape: tuple[int, ...]
    span: Span
