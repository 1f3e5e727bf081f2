"""One class per block definition: what it takes to write a definition's statements once for all its calls.

The IR holds every call of a block expanded with its own numbers. A class per definition needs, for
each value a layer is built with, one Python expression over the constructor's arguments that gives
the value of every call. The values come from the IR and the shape pass, per call (`Inst`; per call
and iteration where a repeat becomes a loop). The expressions are candidates, tried in order: what
the definition wrote (`-> c`, `/s`, `x n`, a call's arguments: `Translator` turns them into Python)
and the channels flowing through the block (`in_channels`, then what each statement makes of them);
`fit` keeps the first that gives every value. A value that no candidate gives and that differs
between calls becomes a constructor argument of its own, which each caller passes.

Expressions are `ast` nodes: `code` prints them (with Python's precedence), `evaluate` runs them on
an instance's values, exactly as the generated file will. Nothing here knows PyTorch: the torch
backend walks a definition with these pieces and writes the modules.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from cnndsl import ir
from cnndsl import syntax as S

# Functions an expression may call that Python lacks: their source, written into a generated file
# that uses them, and the same functions for `evaluate`.
HELPER_SOURCE = {
    "_round": '''def _round(value: float) -> int:
    """cnndsl's round(): halves go up."""
    return int((value + 0.5) // 1)''',
    "_make_divisible": '''def _make_divisible(value: float, divisor: int) -> int:
    """cnndsl's divisible(v, d), MobileNet's _make_divisible: v to a multiple of d, never 10% below v."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded''',
}
HELPERS: dict[str, Any] = {}
for _source in HELPER_SOURCE.values():
    exec(_source, HELPERS)  # noqa: S102 - our own two functions
FUNCTIONS = {"min": "min", "max": "max", "round": "_round", "divisible": "_make_divisible"}

ZERO, ONE = ast.Constant(0), ast.Constant(1)


# ---------------------------------------------------------------- expressions


def literal(value: Any) -> ast.expr:
    """A value as a Python literal: numbers, booleans, None, tuples of them."""
    if isinstance(value, tuple):
        return ast.Tuple([literal(v) for v in value], ast.Load())
    if isinstance(value, float) and not math.isfinite(value):
        return ast.Call(ast.Name("float", ast.Load()), [ast.Constant(str(value))], [])
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return ast.UnaryOp(ast.USub(), ast.Constant(-value))
    return ast.Constant(value)


def name(identifier: str) -> ast.Name:
    return ast.Name(identifier, ast.Load())


def code(expr: ast.expr) -> str:
    return ast.unparse(expr).replace("float('", 'float("').replace("')", '")')


def names_in(expr: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}


def free_names(expr: ast.expr) -> set[str]:
    """The names `expr` reads other than the functions it calls: none for a constant expression."""
    return names_in(expr) - {"float", "round", *FUNCTIONS.values()}


def is_constant(expr: ast.expr | None) -> bool:
    return isinstance(expr, ast.Constant) and isinstance(expr.value, int) and not isinstance(expr.value, bool)


def add(left: ast.expr, right: ast.expr) -> ast.expr:
    """left + right, with whole constants folded and kept last (`i * 2 + 1`)."""
    if is_constant(left) and is_constant(right):
        return ast.Constant(left.value + right.value)
    if is_constant(left):
        left, right = right, left
    if is_constant(right) and right.value == 0:
        return left
    if (is_constant(right) and isinstance(left, ast.BinOp) and isinstance(left.op, ast.Add)
            and is_constant(left.right)):
        return add(left.left, ast.Constant(left.right.value + right.value))
    return ast.BinOp(left, ast.Add(), right)


def mul(left: ast.expr, right: ast.expr) -> ast.expr:
    """left * right, with whole constants folded."""
    if is_constant(left) and is_constant(right):
        return ast.Constant(left.value * right.value)
    for a, b in ((left, right), (right, left)):
        if is_constant(a) and a.value == 0:
            return ZERO
        if is_constant(a) and a.value == 1:
            return b
    return ast.BinOp(left, ast.Mult(), right)


def substitute(expr: ast.expr | None, mapping: dict[str, ast.expr]) -> ast.expr | None:
    """`expr` with its names replaced by `mapping`'s expressions; None if it has a name `mapping` lacks."""
    if expr is None or not names_in(expr) <= set(mapping):
        return None

    class Replace(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return mapping[node.id]

    return Replace().visit(ast.parse(code(expr), mode="eval").body)


@lru_cache(maxsize=4096)
def _compiled(source: str):
    return compile(source, "<cnndsl expression>", "eval")


def compiled(expr: ast.expr):
    return _compiled(code(expr))


def evaluate(expr: ast.expr, env: dict[str, Any]) -> Any:
    """What `expr` gives in the generated file, with `env`'s values for its names."""
    return eval(compiled(expr), HELPERS, env)  # noqa: S307 - expressions this module wrote


# ---------------------------------------------------------------- does an expression give the values?


def same(got: Any, want: Any, pairable: bool = False) -> tuple[bool, bool]:
    """Whether `got`, what an expression gives, stands for the value `want`, and whether it must be
    made whole (`round()`) to do so: a float equal to a whole number that a layer takes as an int.
    torch reads n as (n, n) where it takes a pair; `pairable`: `want` is such a place."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want, False
    if isinstance(want, tuple):
        if isinstance(got, tuple):
            return len(got) == len(want) and all(same(g, w) == (True, False)
                                                 for g, w in zip(got, want, strict=False)), False
        return type(got) is int and len(want) == 2 and want[0] == want[1] == got, False
    if isinstance(got, tuple):
        return pairable and len(got) == 2 and got[0] == got[1] == want and type(got[0]) is type(want), False
    if not isinstance(got, int | float) or not isinstance(want, int | float) or got != want:
        return False, False
    return True, isinstance(want, int) and isinstance(got, float)


def fit(expr: ast.expr | None, envs: list[dict[str, Any]], values: list[Any]) -> ast.expr | None:
    """`expr` (made whole where it has to be) if it gives `values[k]` on `envs[k]` for every k, else None."""
    if expr is None:
        return None
    pairable = any(isinstance(v, tuple) for v in values)
    whole = False
    program = compiled(expr)
    for env, want in zip(envs, values, strict=True):
        try:
            got = eval(program, HELPERS, env)  # noqa: S307 - expressions this module wrote
        except Exception:  # a candidate that does not even run is no candidate
            return None
        ok, make_whole = same(got, want, pairable)
        if not ok:
            return None
        whole = whole or make_whole
    return ast.Call(name("round"), [expr], []) if whole else expr


def uniform(values: list[Any]) -> bool:
    """The same value (and type) in every instance."""
    return all(type(v) is type(values[0]) and v == values[0] for v in values)


_NOT_LITERAL = object()


def _literal_value(tree: ast.expr) -> Any:
    if (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "float"
            and len(tree.args) == 1 and isinstance(tree.args[0], ast.Constant)):
        return float(tree.args[0].value)
    try:
        return ast.literal_eval(tree)
    except ValueError:
        return _NOT_LITERAL


@lru_cache(maxsize=4096)
def literal_value(text: str) -> Any:
    """The value of a literal written by an emitter (`64`, `(1, 2)`, `1e-05`, `float("-inf")`)."""
    value = _literal_value(ast.parse(text, mode="eval").body)
    if value is _NOT_LITERAL:
        raise ValueError(f"not a literal: {text}")
    return value


def anti_unify(trees: list[ast.expr], holes: list[tuple[ast.Name, list[Any]]]) -> ast.expr:
    """One expression for several that differ only in literals: each literal that differs becomes a
    hole (an `ast.Name` to be given its id) with its value in each tree. ValueError where they
    differ otherwise."""
    first = trees[0]
    if all(ast.dump(t) == ast.dump(first) for t in trees):
        return first
    values = [_literal_value(t) for t in trees]
    if all(v is not _NOT_LITERAL for v in values):
        hole = ast.Name("_", ast.Load())
        holes.append((hole, values))
        return hole
    if any(type(t) is not type(first) for t in trees):
        raise ValueError("the expressions differ in more than their numbers")
    fields = {}
    for key in first._fields:
        column = [getattr(t, key) for t in trees]
        if isinstance(column[0], list):
            if len({len(c) for c in column}) != 1:
                raise ValueError("the expressions differ in more than their numbers")
            fields[key] = [anti_unify([c[k] for c in column], holes) if isinstance(column[0][k], ast.AST)
                           else column[0][k] for k in range(len(column[0]))]
        elif isinstance(column[0], ast.AST):
            fields[key] = anti_unify(column, holes)
        elif all(c == column[0] for c in column):
            fields[key] = column[0]
        else:
            raise ValueError("the expressions differ in more than their numbers")
    return type(first)(**fields)


# ---------------------------------------------------------------- cnndsl expressions in Python


class Translator:
    """A block's expressions as written (`syntax.Expr`) -> Python over the constructor's names.

    `names` maps the block's names (its parameters, `in_c`) to Python names; `envs` are the values
    of those names in every instance, which decide what `/` becomes: cnndsl's `/` gives a whole
    number where it divides exactly and a float otherwise, so it is `//` where it divides exactly in
    every call, and `/` elsewhere."""

    def __init__(self, names: dict[str, str], envs: list[dict[str, Any]]):
        self.names, self.envs = names, envs

    def __call__(self, expr: S.Expr) -> ast.expr | None:
        try:
            return self._expr(expr)
        except LookupError:
            return None

    def _expr(self, expr: S.Expr) -> ast.expr:
        if isinstance(expr, S.Num):
            return literal(expr.value)
        if isinstance(expr, S.Var):
            return name(self.names[expr.name])
        if isinstance(expr, S.Neg):
            return ast.UnaryOp(ast.USub(), self._expr(expr.operand))
        if isinstance(expr, S.Func):
            return ast.Call(name(FUNCTIONS[expr.name]), [self._expr(a) for a in expr.args], [])
        if not isinstance(expr, S.BinOp):
            raise LookupError(expr)
        left, right = self._expr(expr.left), self._expr(expr.right)
        ops = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "//": ast.FloorDiv}
        op = ops[expr.op]() if expr.op in ops else ast.FloorDiv() if self._exact(left, right) else ast.Div()
        return ast.BinOp(left, op, right)

    def _exact(self, left: ast.expr, right: ast.expr) -> bool:
        left_program, right_program = compiled(left), compiled(right)
        for env in self.envs:
            try:
                a, b = eval(left_program, HELPERS, env), eval(right_program, HELPERS, env)  # noqa: S307
            except Exception:
                return False
            if not (type(a) is int and type(b) is int and b != 0 and a % b == 0):
                return False
        return True

    def option(self, value: object) -> list[ast.expr]:
        """The candidates an option's value gives: its expression; for a pair, the one expression
        of `3x3`-like pairs or the tuple of both."""
        if isinstance(value, S.Num | S.Var | S.BinOp | S.Neg | S.Func):  # (syntax nodes are tuples too)
            expr = self(value)
            return [expr] if expr is not None else []
        if isinstance(value, tuple) and not isinstance(value, S.Node):
            parts = [self(e) for e in value]
            if any(p is None for p in parts):
                return []
            if len(parts) == 1 or all(code(p) == code(parts[0]) for p in parts):
                return [parts[0]]
            return [ast.Tuple(parts, ast.Load()), *parts]
        return []  # a word (`same`, `max`) or a flag


# ---------------------------------------------------------------- instances


@dataclass
class Inst:
    """One run of a statement of a class: in the call `call` (the call's IR name), in the loop
    iterations `loop` (of `counts` each). `env` holds the values of the names the constructor sees
    there: its arguments, loop variables, local variables."""

    call: str
    env: dict[str, Any]
    loop: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()

    def iteration(self, variable: str, index: int, count: int) -> Inst:
        return Inst(self.call, {**self.env, variable: index}, self.loop + (index,), self.counts + (count,))


def per_call(insts: list[Inst], values: list[Any], indexed: bool) -> dict[str, Any]:
    """Each call's value: one value, or with `indexed` nested tuples indexed by the iteration
    numbers (`value[i][j]`); a call that never runs this place has none."""
    calls: dict[str, list[tuple[Inst, Any]]] = {}
    for inst, value in zip(insts, values, strict=True):
        calls.setdefault(inst.call, []).append((inst, value))
    if not indexed:
        return {call: runs[0][1] for call, runs in calls.items()}
    return {call: _nested(runs[0][0].counts, {i.loop: v for i, v in runs}) for call, runs in calls.items()}


def _nested(counts: tuple[int, ...], table: dict[tuple[int, ...], Any], prefix: tuple[int, ...] = ()) -> tuple:
    if len(prefix) == len(counts) - 1:
        return tuple(table.get(prefix + (k,)) for k in range(counts[-1]))
    return tuple(_nested(counts, table, prefix + (k,)) for k in range(counts[len(prefix)]))


def varies_within_a_call(insts: list[Inst], values: list[Any]) -> bool:
    seen: dict[str, Any] = {}
    for inst, value in zip(insts, values, strict=True):
        if inst.call in seen and not uniform([seen[inst.call], value]):
            return True
        seen.setdefault(inst.call, value)
    return False


def annotation(values: Iterable[Any]) -> str:
    """The type of an argument with these values: `int`, `float` (ints and floats), `bool`,
    `tuple[int, int, int, int]`, `tuple[bool, ...]` (tuples of several lengths)."""
    values = list(values)
    kinds = {type(v) for v in values}
    if kinds == {tuple}:
        lengths = {len(v) for v in values}
        if len(lengths) == 1 and 0 < min(lengths) <= 4:
            return f"tuple[{', '.join(annotation(v[k] for v in values) for k in range(min(lengths)))}]"
        inner = annotation(e for v in values for e in v) if max(lengths) else "int"
        return f"tuple[{inner}, ...]"
    if len(kinds) == 1:
        return kinds.pop().__name__
    return "float" if kinds <= {int, float} else "object"


def usual(values: list[Any]) -> Any:
    """A default for an argument with these values: False for a flag, else the most common value."""
    if all(isinstance(v, bool) for v in values):
        return False
    counts = Counter(repr(v) for v in values)
    best = max(counts.values())
    return next(v for v in values if counts[repr(v)] == best)


# ---------------------------------------------------------------- statements and their IR nodes


def statement_span(node: ir.Node):
    """Where the statement that made `node` is written: a block call's call, else its own span."""
    if isinstance(node, ir.Seq) and node.block is not None and node.calls:
        return node.calls[-1]
    return node.span


def align(stmts: tuple[S.Statement, ...], seqs: list[tuple[ir.Node, ...]]
          ) -> list[tuple[S.Statement, list[list[ir.Node]]]]:
    """The IR nodes each statement made, per instance: `seqs[k]` are instance k's nodes for
    `stmts`, in order. A repeat made one node per iteration, anything else one node."""
    cursors = [0] * len(seqs)
    out = []
    for stmt in stmts:
        span = (stmt.stmt if isinstance(stmt, S.Repeat) else stmt).span
        groups = []
        for k, items in enumerate(seqs):
            end = cursors[k]
            while end < len(items) and statement_span(items[end]) == span:
                end += 1
            groups.append(list(items[cursors[k]:end]))
            cursors[k] = end
        out.append((stmt, groups))
    for cursor, items in zip(cursors, seqs, strict=True):
        if cursor != len(items):
            raise AssertionError(f"block expansion {items[cursor].name!r} does not follow its definition")
    return out


# ---------------------------------------------------------------- module names


def stem(part: str) -> str:
    """The kind or block a name part counts (`conv12` -> conv, `relu6_1` -> relu6, `branch2` -> branch)."""
    match = re.fullmatch(r"(.*\d)_\d+", part)
    return match.group(1) if match else part.rstrip("0123456789")


@dataclass(frozen=True)
class Part:
    """One dotted part of a module's name: `prefix` and a counter (`conv` and 1: conv1; `conv` and
    i + 1: the name computed in a loop), or a fixed name (`counter` None)."""

    prefix: str
    counter: ast.expr | None = None

    @property
    def static(self) -> str | None:
        """The name, where it is the same in every instance."""
        if self.counter is None:
            return self.prefix
        if isinstance(self.counter, ast.Constant):
            return f"{self.prefix}{self.counter.value}"
        return None

    @property
    def role(self) -> str:
        return stem(self.static) if self.static is not None else self.prefix.rstrip("_")

    @cached_property
    def source(self) -> str:
        """The name as a Python string expression: `"conv1"` or `f"conv{i + 1}"`."""
        static = self.static
        return f'"{static}"' if static is not None else f'f"{self.prefix}{{{code(self.counter)}}}"'

    def code(self) -> str:
        return self.source

    def value(self, env: dict[str, Any]) -> str:
        static = self.static
        return static if static is not None else eval(_compiled(self.source), HELPERS, env)  # noqa: S307


class Scope:
    """The names of one IR scope (a class, a shortcut, a branch) being written: per kind, how many
    nodes were named so far, as an expression (a loop counts `i * per_iteration + ...`)."""

    def __init__(self, parts: tuple[Part, ...] = ()):
        self.parts = parts
        self.counts: dict[str, ast.expr] = {}

    def next(self, kind: str) -> Part:
        count = add(self.counts.get(kind, ZERO), ONE)
        self.counts[kind] = count
        # as the expander names them: `relu6_1`, a kind ending in a digit takes a `_`
        return Part(kind + ("_" if kind[-1:].isdigit() else ""), count)

    def child(self, part: Part) -> Scope:
        return Scope(self.parts + (part,))


def increments(stmt: S.Statement, layer_kind: Callable[[S.Layer], str | None],
               translate: Callable[[S.Expr], ast.expr | None]) -> dict[str, ast.expr]:
    """How many names of each kind one run of `stmt` takes in its scope (what the expander counts)."""
    out: dict[str, ast.expr] = {}

    def count(kind: str | None, n: ast.expr) -> None:
        if kind is not None:
            out[kind] = add(out.get(kind, ZERO), n)

    if isinstance(stmt, S.Repeat):
        times = translate(stmt.count)
        if times is None:
            raise ValueError(f"repeat count at line {stmt.span.line} cannot be written in Python")
        for kind, n in increments(stmt.stmt, layer_kind, translate).items():
            count(kind, mul(times, n))
    elif isinstance(stmt, S.Layer):
        count(layer_kind(stmt), ONE)
    elif isinstance(stmt, S.Call):
        count(stmt.block, ONE)
    elif isinstance(stmt, S.Residual):
        count("residual", ONE)
        for inner in stmt.body:
            for kind, n in increments(inner, layer_kind, translate).items():
                count(kind, n)
        if stmt.shortcut is not None:
            count("shortcut", ONE)
    elif isinstance(stmt, S.Branches):
        count(stmt.kind, ONE)
    return out



def kinds(stmts: Iterable[S.Statement], layer_kind: Callable[[S.Layer], str | None]) -> set[str]:
    """The kinds statements name nodes of in their scope (the keys of their `increments`)."""
    out: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, S.Repeat):
            out |= kinds((stmt.stmt,), layer_kind)
        elif isinstance(stmt, S.Layer):
            out.add(layer_kind(stmt))
        elif isinstance(stmt, S.Call):
            out.add(stmt.block)
        elif isinstance(stmt, S.Residual):
            out |= {"residual", "shortcut"} | kinds(stmt.body, layer_kind)
        elif isinstance(stmt, S.Branches):
            out.add(stmt.kind)
    return out
