"""The program as written: what the parser builds before blocks and arithmetic are expanded.

These nodes still hold unevaluated expressions and block calls; `cnndsl.expand` turns them into
the flat IR (`cnndsl.ir`) that every pass and backend reads. They live only between the parser and
the expander, so they are tuples, as cheap to make as NamedTuples, through one small base class
instead of `typing.NamedTuple`: that compiles code for every class it makes (16M instructions for
this module's twenty, on every `cnndsl analyze`), and its instances compare as plain tuples, so a
`Var('x', span)` was equal to a `NetworkHeader('x', span)`. A node equals only a node of its own
kind with equal fields.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, ClassVar

from .errors import Span


class _NodeType(type):
    """Makes each field named in the class body's annotations a read-only property of the tuple."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]):
        inherited = tuple(f for base in bases for f in getattr(base, "_fields", ()))
        own = tuple(f for f in namespace.get("__annotations__", {}) if not f.startswith("_"))
        namespace["__slots__"] = ()  # no __dict__: nodes stay immutable
        namespace["_fields"] = namespace["__match_args__"] = inherited + own
        for index, field in enumerate(own, len(inherited)):
            namespace[field] = property(itemgetter(index), doc=f"field {index} of the tuple")
        return super().__new__(mcs, name, bases, namespace)


class Node(tuple, metaclass=_NodeType):
    """A syntax-tree node: the tuple of its fields, in the order the class annotates them."""

    _fields: ClassVar[tuple[str, ...]]

    def __new__(cls, *values: Any, **named: Any):
        if named:
            values = cls._bind(values, named)
        if len(values) != len(cls._fields):
            raise TypeError(f"{cls.__name__}() takes {len(cls._fields)} fields ({', '.join(cls._fields)}), "
                            f"{len(values)} given")
        return tuple.__new__(cls, values)

    @classmethod
    def _bind(cls, values: tuple, named: dict[str, Any]) -> tuple:
        unknown = set(named) - set(cls._fields[len(values):])
        if unknown:
            raise TypeError(f"{cls.__name__}() got unexpected or repeated fields {sorted(unknown)}")
        return values + tuple(named.pop(f) for f in cls._fields[len(values):] if f in named)

    def __eq__(self, other: object) -> bool:
        if self.__class__ is other.__class__:
            return tuple.__eq__(self, other)
        return False if isinstance(other, tuple) else NotImplemented  # a plain tuple is no node either

    def __ne__(self, other: object) -> bool:
        if self.__class__ is other.__class__:
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    def __hash__(self) -> int:
        return hash((self.__class__, tuple.__hash__(self)))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self, strict=True))})"

    def __getnewargs__(self) -> tuple:  # copy and pickle call __new__ with the fields, not one tuple
        return tuple(self)

    def _replace(self, **changes: Any) -> Node:
        values = tuple(changes.pop(f, v) for f, v in zip(self._fields, self, strict=True))
        if changes:
            raise TypeError(f"{self.__class__.__name__} has no fields {sorted(changes)}")
        return self.__class__(*values)


class Num(Node):
    value: int | float
    span: Span


class Var(Node):
    name: str
    span: Span


class BinOp(Node):
    op: str  # + - * / //
    left: Expr
    right: Expr
    span: Span


class Neg(Node):
    operand: Expr
    span: Span


class Func(Node):
    """`min(a, b)`, `max(a, b)`, `round(x)`, `divisible(v, d)`."""

    name: str
    args: tuple[Expr, ...]
    span: Span


Expr = Num | Var | BinOp | Neg | Func


class Option(Node):
    """One option of a layer statement: `pad 1`, `/2`, `-> 64`, `nobias`.

    `value` is an Expr, a tuple of Exprs (a `HxW` pair), a word (`same`), or True for a flag.
    """

    key: str
    value: object
    span: Span


class Layer(Node):
    op: str  # conv pool fc flatten dropout bn act
    options: tuple[Option, ...]
    span: Span


class KeywordArg(Node):
    name: str
    value: Expr
    span: Span


class Call(Node):
    block: str
    args: tuple[Expr, ...]
    kwargs: tuple[KeywordArg, ...]
    span: Span


class Repeat(Node):
    stmt: Statement
    count: Expr
    span: Span


class Residual(Node):
    body: tuple[Statement, ...]
    shortcut: tuple[Statement, ...] | None
    always: bool
    span: Span


class Branches(Node):
    kind: str  # concat | add
    branches: tuple[tuple[Statement, ...], ...]
    branch_spans: tuple[Span, ...]
    span: Span


class Again(Node):
    """A layer statement written again word for word: the text of `first`, read at `span`.

    The parser makes one where it meets the text of a layer it has read before (see
    `cnndsl.parser`). It means `first` with its spans moved to `span`'s place (`written_out`); the
    expander builds most of them as a copy of the layer it built for the same text, and needs no more."""

    first: Layer
    span: Span

    def written_out(self) -> Layer:
        """The layer statement as if read here."""
        return moved(self.first, self.span.line, self.span.column - self.first.span.column)


Statement = Layer | Again | Call | Repeat | Residual | Branches


class Param(Node):
    name: str
    default: Expr | None
    span: Span


class BlockDef(Node):
    name: str
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    span: Span


class ExpectStmt(Node):
    what: str
    comparison: str  # < <= > >= ==
    value: tuple[int | float, ...]  # one number, or a shape
    span: Span
    what_span: Span


class Setting(Node):
    """One line of a preprocess / augment / train section."""

    key: str
    values: tuple[object, ...]
    options: tuple[tuple[str, object], ...]
    span: Span


class Section(Node):
    kind: str  # preprocess | augment | train
    settings: tuple[Setting, ...]
    span: Span


class Program(Node):
    items: tuple[object, ...]  # network/input headers, BlockDefs, statements, ExpectStmts, Sections


class NetworkHeader(Node):
    name: str
    span: Span


class InputHeader(Node):
    shape: tuple[int, ...]
    span: Span


# ---------------------------------------------------------------- moving and writing out

_LEAVES = frozenset((int, float, str, bool, type(None)))


MOVABLE_DEPTH = 40
"""How deep a value `moved` is asked to walk may nest: a longer sum (`1+1+...`, nested once per
term) is left where it is, as the walks recurse and the parser reads sums of a thousand terms."""


def movable(value: object, depth: int = 0) -> bool:
    """Whether `value` is made only of syntax nodes, tuples, spans and plain values, nested at most
    MOVABLE_DEPTH deep: what `moved` can place elsewhere (a token, which has positions of its own,
    is not)."""
    kind = type(value)
    if kind is Span or kind in _LEAVES:
        return True
    return depth < MOVABLE_DEPTH and (kind is tuple or isinstance(value, Node)) and all(
        movable(v, depth + 1) for v in value)


_new = tuple.__new__


def moved(value: Any, line: int, shift: int, again: bool = False) -> Any:
    """`value` (`movable`, its spans all on one line) with every span moved to `line` and `shift`
    columns along; with `again`, each layer in it an `Again` of itself there (two tuples where
    moving a `conv` makes ten), as the parser places a statement it reads again."""
    kind = type(value)
    if kind is Again:  # only its place moves: it still repeats the same first layer
        span = value[1]
        return _new(Again, (value[0], _new(Span, (line, span[1] + shift, line, span[3] + shift))))
    if again and kind is Layer:
        span = value[2]
        return _new(Again, (value, _new(Span, (line, span[1] + shift, line, span[3] + shift))))
    if kind is Span:
        return _new(Span, (line, value[1] + shift, line, value[3] + shift)) if value[0] else value
    if kind in _LEAVES:
        return value
    return _new(kind, [moved(v, line, shift, again) for v in value])


def written_out(value: Any) -> Any:
    """`value` (a program, or any part of one) with every `Again` in it replaced by its layer."""
    kind = type(value)
    if kind is Again:
        return value.written_out()
    if kind is Span or kind in _LEAVES or not isinstance(value, tuple):
        return value
    return tuple.__new__(kind, [written_out(v) for v in value])
