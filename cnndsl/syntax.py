"""The program as written: what the parser builds before blocks and arithmetic are expanded.

These nodes still hold unevaluated expressions and block calls; `cnndsl.expand` turns them into
the flat IR (`cnndsl.ir`) that every pass and backend reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Var:
    name: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * /
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


Expr = Num | Var | BinOp | Neg


@dataclass(frozen=True)
class Option:
    """One option of a layer statement: `pad 1`, `/2`, `-> 64`, `nobias`.

    `value` is an Expr, a tuple of Exprs (a `HxW` pair), a word (`same`), or True for a flag.
    """

    key: str
    value: object
    span: Span


@dataclass(frozen=True)
class Layer:
    op: str  # conv pool fc flatten dropout bn act
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True)
class KeywordArg:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    block: str
    args: tuple[Expr, ...]
    kwargs: tuple[KeywordArg, ...]
    span: Span


@dataclass(frozen=True)
class Repeat:
    stmt: Statement
    count: Expr
    span: Span


@dataclass(frozen=True)
class Residual:
    body: tuple[Statement, ...]
    shortcut: tuple[Statement, ...] | None
    always: bool
    span: Span


@dataclass(frozen=True)
class Branches:
    kind: str  # concat | add
    branches: tuple[tuple[Statement, ...], ...]
    branch_spans: tuple[Span, ...]
    span: Span


Statement = Layer | Call | Repeat | Residual | Branches


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class ExpectStmt:
    what: str
    comparison: str  # < <= > >= ==
    value: tuple[int | float, ...]  # one number, or a shape
    span: Span
    what_span: Span


@dataclass(frozen=True)
class Setting:
    """One line of a preprocess / augment / train section."""

    key: str
    values: tuple[object, ...]
    options: tuple[tuple[str, object], ...]
    span: Span


@dataclass(frozen=True)
class Section:
    kind: str  # preprocess | augment | train
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class Program:
    items: tuple[object, ...]  # network/input headers, BlockDefs, statements, ExpectStmts, Sections


@dataclass(frozen=True)
class NetworkHeader:
    name: str
    span: Span


@dataclass(frozen=True)
class InputHeader:
    shape: tuple[int, ...]
    span: Span
