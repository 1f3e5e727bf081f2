"""Parsed program -> flat IR, in one place: block calls inlined, `x N` repeated, arithmetic
evaluated, option values checked, and every node given its unique dotted name.

Limits keep a hostile or mistaken program from exhausting the machine: a repeat count, the depth
of nested block calls, and the total number of nodes are bounded, and each is checked before the
work is done (`x 1000000000` fails at once, not after expanding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from . import ir
from . import syntax as S
from .analysis.shapes import LayerShape, Shape, Shapes
from .errors import BadValueError, CnnDslError, CnnSyntaxError, LimitError, Source, Span, UnknownNameError, closest
from .kinds import STATEMENTS
from .kinds.base import number_text
from .parser import KEYWORDS, misplaced_keyword

_MISSING = object()  # no default: the option must be there

MAX_REPEAT = 10_000
MAX_CALL_DEPTH = 64
MAX_NODES = 100_000
MAX_DEPTH = 100  # residuals, branches and block calls, one inside another

EXPECTATIONS = ("params", "trainable_params", "macs", "rf", "output", "memory")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass
class _Scope:
    prefix: str
    counts: dict[str, int] = field(default_factory=dict)
    used: set = field(default_factory=set)
    stems: dict[str, str] = field(default_factory=dict)  # kind -> the name before its number

    def name(self, kind: str) -> str:
        stem = self.stems.get(kind)
        if stem is None:
            # `relu6` and a block called `conv3` end in a digit: their first use is `relu6_1`, `conv3_1`,
            # never `relu61`/`conv31`, which the 61st relu or the 31st conv of the scope would also get.
            stem = self.stems[kind] = self.prefix + kind + ("_" if kind[-1:].isdigit() else "")
        count = self.counts.get(kind, 0) + 1
        name = stem + str(count)
        while name in self.used:  # a last guard, e.g. blocks `conv3` and `conv3_`
            count += 1
            name = stem + str(count)
        self.counts[kind] = count
        self.used.add(name)
        return name


@dataclass
class _Frame:
    env: dict[str, int | float]
    calls: tuple[Span, ...]
    blocks_on_stack: tuple[str, ...]
    block: str | None = None
    in_c: int | None = None  # the channels entering this call of `block` (None: unknown here)

    @cached_property
    def values(self) -> tuple:
        """Everything a statement's expression may read here: the arguments and `in_c`."""
        return (self.block, self.in_c, _typed(self.env))


def _typed(env: dict[str, int | float]) -> tuple:
    """The arguments as a key that tells 1 from 1.0 and 0.0 from -0.0 (equal in Python, printed apart)."""
    return tuple((name, type(value), value, math.copysign(1, value)) for name, value in env.items())


IN_C = "in_c"
"""Inside a block, the channel count entering that call (a vector's length); a reserved name."""

FUNCTIONS = {"min": "min(a, b, ...)", "max": "max(a, b, ...)", "round": "round(x)", "divisible": "divisible(v, d)"}
"""The functions an expression may call, with how each is written."""


def divisible(value: float, divisor: int) -> int:
    """MobileNet's `_make_divisible`: `value` to a multiple of `divisor`, never 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Unknowable(CnnDslError):
    """A value that depends on a shape an earlier error left unknown: not reported (the earlier
    error is), only the statement is given up."""


MAX_BUILT = 4096
"""Layers remembered for reuse (`_Expander.built`): enough for every distinct layer of a real network."""


class _Expander:
    def __init__(self, blocks: dict[str, S.BlockDef], source: Source | None = None):
        self.blocks = blocks
        self.lines = source.lines if source is not None else []  # the statements' text: what `built` is keyed by
        self.nodes = 0
        self.depth = 0
        self.shapes = Shapes()
        self.shape_lost = False  # an earlier statement's error left the shape flowing on unknown
        self.droppaths = False  # whether a droppath was built: only then is where each stands checked
        # (statement text, what its expressions read, input shape) -> (node, name stem, its shape).
        # A layer is a pure function of these: `bn` or `conv 3x3 pad1 -> c` written again, or called
        # again with the same arguments and input, is the node built before at another place.
        self.built: dict[tuple, tuple[ir.Node, str, LayerShape]] = {}
        # The same for block calls: (block, arguments, input shape, nesting, the blocks calling it) ->
        # (the call's Seq, the statements it counts); `bottleneck(256) x35` expands once, moves 34 times.
        self.called: dict[tuple, tuple[ir.Seq, int]] = {}

    # ------------------------------------------------------------ arithmetic
    def eval(self, expr: S.Expr, frame: _Frame) -> int | float:
        if isinstance(expr, S.Num):
            return expr.value
        if isinstance(expr, S.Var):
            return self.variable(expr, frame)
        if isinstance(expr, S.Neg):
            return -self.eval(expr.operand, frame)
        if isinstance(expr, S.Func):
            return self.function(expr, frame)
        left, right = self.eval(expr.left, frame), self.eval(expr.right, frame)
        if expr.op == "+":
            return left + right
        if expr.op == "-":
            return left - right
        if expr.op == "*":
            return left * right
        if right == 0:
            raise BadValueError("division by zero", expr.span, calls=frame.calls, notes=[f"{left} {expr.op} {right}"],
                                hint="check the divisor: a block parameter or in_c that is 0 here?")
        if expr.op == "//":
            return _whole(math.floor(left / right) if isinstance(left, float) or isinstance(right, float)
                          else left // right)
        if isinstance(left, int) and isinstance(right, int) and left % right == 0:
            return left // right
        return left / right

    def variable(self, expr: S.Var, frame: _Frame) -> int | float:
        if expr.name in frame.env:
            return frame.env[expr.name]
        if expr.name == IN_C:
            if frame.block is None:
                raise UnknownNameError("'in_c' is only defined inside a block", expr.span, calls=frame.calls,
                                       hint="in_c is the channel count entering a block's call; at the top level "
                                            "write the number")
            if frame.in_c is None and self.shape_lost:
                raise _Unknowable("in_c after an error")
            if frame.in_c is None:
                raise UnknownNameError("'in_c' is unknown here: this shortcut is not used, so nothing enters it",
                                       expr.span, calls=frame.calls,
                                       hint="give the count as a block parameter instead")
            return frame.in_c
        known = sorted(frame.env)
        close = closest(expr.name, known + ([IN_C] if frame.block else []))
        if frame.block:
            hint = f"the parameters of block {frame.block} are: {', '.join(known) or '(none)'}, and in_c"
            if close:
                hint = f"did you mean '{close}'? " + hint
        else:
            hint = "names stand for block parameters; outside a block write a number"
        raise UnknownNameError(f"unknown name '{expr.name}'", expr.span, hint=hint, calls=frame.calls)

    def function(self, expr: S.Func, frame: _Frame) -> int | float:
        if expr.name not in FUNCTIONS:
            close = closest(expr.name, FUNCTIONS)
            raise UnknownNameError(f"unknown function '{expr.name}'", expr.span, calls=frame.calls,
                                   hint=(f"did you mean '{close}'? " if close else "")
                                   + f"the functions are {', '.join(FUNCTIONS.values())}")
        args = [self.eval(a, frame) for a in expr.args]
        arity = {"round": 1, "divisible": 2}.get(expr.name)
        if (arity is not None and len(args) != arity) or (arity is None and len(args) < 2):
            wanted = f"{arity} argument{'s' * (arity != 1)}" if arity else "at least 2 arguments"
            raise BadValueError(f"{expr.name}() takes {wanted}, got {len(args)}", expr.span, calls=frame.calls,
                                hint=f"write {FUNCTIONS[expr.name]}")
        if expr.name == "min":
            return min(args)
        if expr.name == "max":
            return max(args)
        if expr.name == "round":
            return math.floor(args[0] + 0.5)  # halves up, as the language says (Python's round goes to even)
        value, divisor = args
        divisor = self.integer(expr.args[1], frame, "the divisor of divisible()")
        if value <= 0:
            raise BadValueError(f"divisible() rounds a positive value, got {value:g}", expr.args[0].span,
                                calls=frame.calls, hint="divisible(v, d) rounds a channel count v to a multiple of d")
        return divisible(value, divisor)

    def integer(self, expr: S.Expr, frame: _Frame, what: str, minimum: int = 1) -> int:
        value = expr.value if type(expr) is S.Num else self.eval(expr, frame)
        if isinstance(value, float):
            # 0.7*10 is 7.000000000000001 in floats: a whole number written with decimals is whole.
            if math.isfinite(value) and abs(value - round(value)) <= 1e-9 * max(1.0, abs(value)):
                value = float(round(value))
            if not value.is_integer():
                raise BadValueError(f"{what} must be a whole number, got {value:g}", expr.span,
                                    calls=frame.calls, hint="round it, e.g. with integer arithmetic")
            value = int(value)
        if value < minimum:
            hint = (f"use {minimum} or more" if type(expr) is S.Num
                    else f"the expression gives {value} here; check the block's arguments (or use max({minimum}, ...))")
            raise BadValueError(f"{what} must be at least {minimum}, got {value}", expr.span, calls=frame.calls,
                                hint=hint)
        return value

    def number(self, expr: S.Expr, frame: _Frame, what: str, low: float, high: float) -> float:
        value = self.eval(expr, frame)
        if not -1e308 < value < 1e308:  # 1e300*1e300 is inf; float() of a 400-digit whole number overflows
            raise BadValueError(f"{what} is too large to represent", expr.span, calls=frame.calls,
                                hint=f"use a value from {low:g} to {high:g}")
        value = float(value)
        if not low <= value <= high:
            raise BadValueError(f"{what} must be between {low:g} and {high:g}, got {value:g}", expr.span,
                                calls=frame.calls, hint=f"use a value from {low:g} to {high:g}")
        return value

    def pair(self, exprs: tuple[S.Expr, ...], frame: _Frame, what: str, minimum: int = 1) -> tuple[int, int]:
        values = [self.integer(e, frame, what, minimum) for e in exprs]
        if len(values) == 1:
            return (values[0], values[0])
        if len(values) != 2:
            raise BadValueError(f"{what} takes one size or HxW, got {len(values)} sizes", exprs[0].span,
                                calls=frame.calls, hint="write one size (3) or a pair (3x5 or (3, 5))")
        return (values[0], values[1])

    # ------------------------------------------------------------ statements
    # Expansion knows the shapes: each node's shape rule runs as soon as the node is built, so a block
    # call knows the channels entering it (`in_c`). `shape` is None only inside a shortcut that the
    # residual does not use (nothing enters it); its nodes are expanded but have no shapes.
    def statements(self, stmts: tuple[S.Statement, ...], scope: _Scope, frame: _Frame, shape: Shape | None
                   ) -> tuple[list[ir.Node], Shape | None]:
        out: list[ir.Node] = []
        for stmt in stmts:
            nodes, shape = self.statement(stmt, scope, frame, shape)
            out.extend(nodes)
        return out, shape

    def count(self, nodes: int, stmt: S.Statement, frame: _Frame) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            raise LimitError(f"the network expands to more than {MAX_NODES:,} nodes", stmt.span, calls=frame.calls,
                             hint="lower a repeat count or the number of block calls; a network this large is "
                                  "almost surely a typo")

    def infer(self, node: ir.Node, shape: Shape | None) -> Shape | None:
        return None if shape is None else self.shapes.infer(node, shape)

    def statement(self, stmt: S.Statement, scope: _Scope, frame: _Frame, shape: Shape | None
                  ) -> tuple[list[ir.Node], Shape | None]:
        if type(stmt) is S.Layer or type(stmt) is S.Again:  # most statements
            self.count(1, stmt, frame)
            return self.layer(stmt, scope, frame, shape)
        if isinstance(stmt, S.Repeat):
            count = self.integer(stmt.count, frame, "a repeat count", minimum=0)  # x 0: a switch, e.g. `x use_se`
            if count > MAX_REPEAT:
                raise LimitError(f"repeat count {count} exceeds the limit of {MAX_REPEAT}", stmt.count.span,
                                 calls=frame.calls, hint="a network this deep is almost surely a typo")
            out: list[ir.Node] = []
            for index in range(count):
                before = self.nodes
                nodes, shape = self.statement(stmt.stmt, scope, frame, shape)
                out.extend(nodes)
                # Every repetition expands to as many nodes as the first: fail now, not after the limit.
                if index == 0 and self.nodes + (count - 1) * (self.nodes - before) > MAX_NODES:
                    raise LimitError(f"the network expands to more than {MAX_NODES:,} nodes", stmt.span,
                                     calls=frame.calls, hint=f"this repeat makes {count:,} x {self.nodes - before:,} "
                                     f"= {count * (self.nodes - before):,} nodes; is the count a typo?")
            return out, shape
        self.count(1, stmt, frame)
        if self.depth >= MAX_DEPTH:
            raise LimitError(f"residuals, branches and block calls nest deeper than {MAX_DEPTH} levels", stmt.span,
                             calls=frame.calls, hint="flatten the structure; real networks nest a few levels")
        self.depth += 1
        try:
            node = self.compound(stmt, scope, frame, shape)
        finally:
            self.depth -= 1
        # The children's shapes are known by now: the compound's own rule only joins them.
        return [node], self.infer(node, shape)

    def sequence(self, shape: Shape | None, out: Shape | None, **fields) -> ir.Seq:
        """A Seq of statements already expanded from `shape` to `out`: its shape is known without
        running its rule over them again."""
        seq = ir.Seq(**fields)
        if shape is not None and out is not None:
            self.shapes[seq.name] = LayerShape(shape, out)
        return seq

    def compound(self, stmt: S.Statement, scope: _Scope, frame: _Frame, shape: Shape | None) -> ir.Node:
        if isinstance(stmt, S.Call):
            return self.call(stmt, scope, frame, shape)
        if isinstance(stmt, S.Residual):
            name = scope.name("residual")
            items, body_shape = self.statements(stmt.body, scope, frame, shape)
            body = self.sequence(shape, body_shape, name=f"{name}.body", span=stmt.span, calls=frame.calls,
                                 items=tuple(items))
            shortcut = None
            if stmt.shortcut is not None:
                inner = _Scope(scope.name("shortcut") + ".")
                projects = stmt.always or body_shape != shape
                used = shape if projects else None
                items, out = self.statements(stmt.shortcut, inner, frame, used)
                shortcut = self.sequence(used, out, name=inner.prefix[:-1], span=stmt.span, calls=frame.calls,
                                         items=tuple(items))
            return ir.Residual(name=name, span=stmt.span, calls=frame.calls, body=body, shortcut=shortcut,
                               always=stmt.always)
        assert isinstance(stmt, S.Branches)
        written = stmt.kind.replace("_", " ")  # `concat crop` is a concat, named and counted as one
        if not stmt.branches:
            raise BadValueError(f"{written} needs at least one branch", stmt.span, calls=frame.calls,
                                hint=f"{written} {{ branch {{ ... }} branch {{ ... }} }}")
        name = scope.name(written.split()[0])
        branches = []
        for index, (body, span) in enumerate(zip(stmt.branches, stmt.branch_spans, strict=True), 1):
            inner = _Scope(f"{name}.branch{index}.")
            items, out = self.statements(body, inner, frame, shape)
            branches.append(self.sequence(shape, out, name=inner.prefix[:-1], span=span, calls=frame.calls,
                                          items=tuple(items)))
        if stmt.kind == "concat_crop":  # `concat crop { ... }`: a concat that centre-crops its larger branches
            return ir.Concat(name=name, span=stmt.span, calls=frame.calls, branches=tuple(branches), crop=True)
        node_type = {"concat": ir.Concat, "add": ir.Add, "mul": ir.Mul}[stmt.kind]
        return node_type(name=name, span=stmt.span, calls=frame.calls, branches=tuple(branches))

    def call(self, stmt: S.Call, scope: _Scope, frame: _Frame, shape: Shape | None) -> ir.Seq:
        block = self.blocks.get(stmt.block)
        if block is None and (where := misplaced_keyword(stmt.block)) is not None:
            raise CnnSyntaxError(f"'{stmt.block}' cannot start a statement", stmt.span, calls=frame.calls, hint=where)
        if block is None:
            candidates = list(self.blocks) + list(KEYWORDS)
            close = closest(stmt.block, candidates)
            defined = f"blocks defined: {', '.join(sorted(self.blocks))}" if self.blocks else "no block is defined"
            params = [f"p{i}" for i in range(1, len(stmt.args) + 1)] + [kw.name for kw in stmt.kwargs]
            signature = f"{stmt.block}({', '.join(params)})" if params else stmt.block
            define = f"define it: 'block {signature} {{ ... }}' with the layers it stands for"
            raise UnknownNameError(
                f"unknown block or layer '{stmt.block}'", stmt.span, calls=frame.calls,
                hint=f"did you mean '{close}'? ({defined})" if close else f"{define} ({defined})")
        if stmt.block in frame.blocks_on_stack:
            chain = " -> ".join(frame.blocks_on_stack + (stmt.block,))
            raise LimitError(f"block {stmt.block} calls itself ({chain}), which would never end", stmt.span,
                             calls=frame.calls, hint="a block may call other blocks, not itself")
        if len(frame.calls) >= MAX_CALL_DEPTH:
            raise LimitError(f"block calls nest deeper than {MAX_CALL_DEPTH}", stmt.span, calls=frame.calls,
                             hint="call fewer blocks inside one another; real networks nest a few levels")
        in_c = shape[0] if shape is not None else None
        env = self.bind(block, stmt, frame, in_c)
        calls = frame.calls + (stmt.span,)
        # The blocks on the stack are part of it: the same call made inside another chain of calls may
        # call a block already on that chain (an error there, not here).
        key = (block.name, _typed(env), shape, self.depth, frame.blocks_on_stack) if shape is not None else None
        known = self.called.get(key) if key is not None else None
        # (Past the node limit the call is expanded again, to fail at the statement that passes it.)
        if known is not None and self.nodes + known[1] - 1 <= MAX_NODES:
            template, nodes = known
            self.nodes += nodes - 1  # the call itself is counted already
            return _moved_tree(template, scope.name(block.name), calls, self.shapes)
        nodes, warnings = self.nodes, len(self.shapes.warnings.items)
        inner_frame = _Frame(env, calls, frame.blocks_on_stack + (stmt.block,), block.name, in_c)
        inner = _Scope(scope.name(block.name) + ".")
        items, out = self.statements(block.body, inner, inner_frame, shape)
        seq = self.sequence(shape, out, name=inner.prefix[:-1], span=block.span, calls=calls, items=tuple(items),
                            block=block.name, args=tuple(env.items()))
        if key is not None and len(self.shapes.warnings.items) == warnings and len(self.called) < MAX_BUILT:
            self.called[key] = (seq, self.nodes - nodes + 1)
        return seq

    def bind(self, block: S.BlockDef, stmt: S.Call, frame: _Frame, in_c: int | None) -> dict[str, int | float]:
        """The call's arguments, evaluated where the call is written; the defaults inside the block,
        where `in_c` is the callee's."""
        names = [p.name for p in block.params]
        signature = f"{block.name}({', '.join(p.name + ('=...' if p.default else '') for p in block.params)})"
        if len(stmt.args) > len(names):
            raise UnknownNameError(
                f"block {block.name} takes {len(names)} argument(s), {len(stmt.args)} given", stmt.span,
                calls=frame.calls, hint=f"call it as {signature}")
        env: dict[str, int | float] = {}
        for param, arg in zip(block.params, stmt.args, strict=False):
            env[param.name] = self.eval(arg, frame)
        for kw in stmt.kwargs:
            if kw.name not in names:
                close = closest(kw.name, names)
                raise UnknownNameError(
                    f"block {block.name} has no parameter '{kw.name}'", kw.span, calls=frame.calls,
                    hint=(f"did you mean '{close}'? " if close else "") + f"the block is {signature}")
            if kw.name in env:
                raise UnknownNameError(f"parameter '{kw.name}' is given twice", kw.span, calls=frame.calls,
                                       hint=f"give '{kw.name}' once, by position or by name")
            env[kw.name] = self.eval(kw.value, frame)
        # Defaults may refer to earlier parameters: block b(c, mid=c/4).
        for param in block.params:
            if param.name in env:
                continue
            if param.default is None:
                raise UnknownNameError(f"block {block.name} needs a value for '{param.name}'", stmt.span,
                                       calls=frame.calls, hint=f"call it as {signature}")
            try:
                env[param.name] = self.eval(param.default, _Frame(dict(env), frame.calls, (), block.name, in_c))
            except UnknownNameError as err:
                earlier = [p.name for p in block.params[: block.params.index(param)]]
                raise UnknownNameError(
                    err.message, err.span, calls=err.calls,
                    hint=f"a default may use only the parameters before it ({', '.join(earlier) or 'none here'}); "
                         f"move '{param.name}' after the one it uses") from None
        return env

    # ------------------------------------------------------------ layers
    def layer(self, stmt: S.Layer | S.Again, scope: _Scope, frame: _Frame, shape: Shape | None
              ) -> tuple[list[ir.Node], Shape | None]:
        line, column, end_line, end_column = span = stmt.span
        key = None
        if shape is not None and end_line == line:
            key = (self.lines[line - 1][column - 1:end_column - 1], frame.values, shape)
            known = self.built.get(key)
            if known is not None:
                node, stem, layer_shape = known
                name = scope.name(stem)
                self.shapes[name] = layer_shape
                return [node.moved(name, span, frame.calls)], layer_shape.output
        if type(stmt) is S.Again:  # a layer's text read before, not built from here yet: its syntax, here
            stmt = stmt.written_out()
        options: dict[str, S.Option] = {}
        for option in stmt.options:
            if option.key in options:
                raise BadValueError(f"'{option.key}' is given twice", option.span, calls=frame.calls,
                                    hint="keep one of them")
            options[option.key] = option
        built = Options(self, stmt, options, scope, frame)
        node = STATEMENTS[stmt.op].build(built)
        self.droppaths = self.droppaths or isinstance(node, ir.DropPath)
        if shape is None:
            return [node], None
        warnings = len(self.shapes.warnings.items)
        output = self.shapes.infer(node, shape)
        # A warning names its place: a layer that warned is built again wherever it is written.
        if key is not None and len(self.shapes.warnings.items) == warnings and len(self.built) < MAX_BUILT:
            self.built[key] = (node, built.stem, self.shapes[node.name])
        return [node], output


class Options:
    """A layer statement's options, as its kind's `build` reads them: evaluated and checked here,
    so every kind reports a bad value the same way (at the option, with the block calls)."""

    def __init__(self, expander: _Expander, stmt: S.Layer, options: dict[str, S.Option], scope: _Scope,
                 frame: _Frame):
        self._expander, self._stmt, self._options, self._scope, self._frame = expander, stmt, options, scope, frame
        self.common = dict(span=stmt.span, calls=frame.calls)
        self.stem = ""  # what name() was asked for: the same statement elsewhere is named alike

    def __contains__(self, key: str) -> bool:
        return key in self._options

    def name(self, stem: str) -> str:
        """The node's unique dotted name in its scope (`conv3`, `basic2.relu1`)."""
        self.stem = stem
        return self._scope.name(stem)

    def word(self, key: str) -> str:
        """A keyword option's value as written (`max`, `relu`)."""
        return self._options[key].value

    def integer(self, key: str, what: str, default=_MISSING, minimum: int = 1):
        return self._value(key, default, self._expander.integer, what, minimum)

    def number(self, key: str, what: str, low: float, high: float, default=_MISSING):
        return self._value(key, default, self._expander.number, what, low, high)

    def pair(self, key: str, what: str, default=_MISSING, minimum: int = 1):
        return self._value(key, default, self._expander.pair, what, minimum)

    def _value(self, key: str, default, evaluate, *checks):
        """Option `key` evaluated and checked by `evaluate`, or `default` where it is not written."""
        if key not in self._options and default is not _MISSING:
            return default
        return evaluate(self._options[key].value, self._frame, *checks)

    def padding(self, key: str = "pad") -> ir.Padding:
        option = self._options.get(key)
        if option is None or option.value == "valid":
            return ir.Padding()
        if option.value == "same":
            return ir.Padding(same=True)
        ph, pw = self._expander.pair(option.value, self._frame, "padding", minimum=0)
        return ir.Padding(top=ph, bottom=ph, left=pw, right=pw)

    def error(self, message: str, key: str | None = None, hint: str | None = None) -> BadValueError:
        """A mistake in the statement, shown at option `key` (or at the statement)."""
        span = self._options[key].span if key is not None else self._stmt.span
        return BadValueError(message, span, calls=self._frame.calls, hint=hint)


def _moved_tree(root: ir.Node, name: str, calls: tuple[Span, ...], shapes: Shapes) -> ir.Node:
    """`root` and everything in it renamed from `root.name` to `name`, and called from `calls` instead
    of `root.calls`, with the shapes each had."""
    names_from, calls_from = len(root.name), len(root.calls)

    def move(node: ir.Node) -> ir.Node:
        children = None
        if node.children():  # structure: each field holding nodes is moved along
            children = {}
            for key, value in node.__dict__.items():
                if type(value) is tuple:
                    if value and isinstance(value[0], ir.Node):
                        children[key] = tuple([move(v) for v in value])
                elif isinstance(value, ir.Node):
                    children[key] = move(value)
        moved = node.moved(name + node.name[names_from:], node.span, calls + node.calls[calls_from:], children)
        layer_shape = shapes.get(node.name)
        if layer_shape is not None:  # a shortcut the residual does not use has none
            shapes[moved.name] = layer_shape
        return moved

    return move(root)


def _whole(value: int | float) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ---------------------------------------------------------------- the program


def expand(program: S.Program, source: Source, input_override: tuple[int, ...] | None = None) -> ir.Network:
    """Build the flat IR from a parsed program. Raises a `CnnDslError` for any mistake.

    Each top-level statement's syntax is let go as soon as it is expanded: where the caller keeps
    no reference to `program` (`cnndsl.parse` passes it straight from the parser), the IR grows into
    the memory the syntax leaves (a 90,000-statement program's syntax is 60 MB)."""
    items = list(program.items)
    del program
    try:
        return _expand(items, source, input_override)
    except CnnDslError as err:
        raise err.with_source(source) from None
    except RecursionError:
        raise LimitError("the program nests too deeply to expand", hint="nest fewer blocks and branches"
                         ).with_source(source) from None


def _single(items: list, what: str):
    if len(items) > 1:
        raise BadValueError(f"'{what}' is given more than once", items[1].span,
                            hint=f"keep one '{what}' line", notes=[f"first at line {items[0].span.line}"])
    return items[0] if items else None


def _expand(items: list, source: Source, input_override: tuple[int, ...] | None) -> ir.Network:
    """The IR, or every independent mistake in the program raised together (`CnnDslError.errors`):
    each header, block definition, top-level statement, expectation and section is checked on its
    own. After a statement fails the shape flowing on is unknown, so the statements after it are
    still expanded (their values, names and calls checked) but no longer shape-checked. `items`, the
    program's, is emptied: the statements are dropped one by one as they are expanded."""
    errors: list[CnnDslError] = []

    def attempt(check, *args):
        try:
            return check(*args)
        except _Unknowable:
            return None
        except CnnDslError as err:
            errors.append(err)
            return None

    by_kind: dict[type, list] = {}
    statements = []
    for item in items:
        if type(item) in _STATEMENT_TYPES:
            statements.append(item)
        else:
            by_kind.setdefault(type(item), []).append(item)
    items.clear()
    headers, inputs, block_defs, expects, sections = (
        by_kind.get(kind, []) for kind in (S.NetworkHeader, S.InputHeader, S.BlockDef, S.ExpectStmt, S.Section))
    header = attempt(_single, headers, "network") or (headers[0] if headers else None)
    input_header = attempt(_single, inputs, "input") or (inputs[0] if inputs else None)

    blocks: dict[str, S.BlockDef] = {}
    for block in block_defs:
        attempt(_check_block, block, blocks)
        blocks.setdefault(block.name, block)

    input_shape: tuple[int, ...] | None = None
    input_span = input_header.span if input_header else None
    if input_override is not None:
        input_shape = tuple(input_override)
    elif input_header is None:
        first = statements[0].span if statements else Span(1, 1)
        errors.append(BadValueError("the network has no 'input' statement", Span(first.line, first.column),
                                    hint="add a line like 'input 3x224x224' (channels x height x width) "
                                         "before the layers"))
    else:
        input_shape = input_header.shape
    if input_shape is not None and (len(input_shape) not in (1, 3) or min(input_shape) < 1):
        errors.append(BadValueError(
            f"input must be CxHxW (or one size for a vector), got {'x'.join(map(str, input_shape))}",
            input_span, hint="e.g. 'input 3x32x32'"))
        input_shape = None
    if not statements:
        errors.append(BadValueError("the network has no layers", input_span or Span(1, 1),
                                    hint="add statements after 'input', e.g. 'conv 3x3 pad1 -> 16; relu'"))

    expander = _Expander(blocks, source)
    expander.shapes.input = input_shape  # known while the nodes are built (`upsample to input`)
    expander.shape_lost = input_shape is None
    items: list[ir.Node] = []
    shape, scope, frame = input_shape, _Scope(""), _Frame({}, (), ())
    first_span = statements[0].span if statements else None
    for index, stmt in enumerate(statements):
        statements[index] = None  # its syntax is not needed once it is expanded
        try:
            nodes, shape = expander.statement(stmt, scope, frame, shape)
            items.extend(nodes)
        except _Unknowable:
            shape = None
        except LimitError as err:  # the statements after it could only hit the same limit
            errors.append(err)
            break
        except CnnDslError as err:
            errors.append(err)
            shape, expander.shape_lost = None, True
    checked_expects = tuple(attempt(_expect, e) for e in expects)
    preprocess = attempt(_section, sections, "preprocess", _preprocess)
    augment = attempt(_section, sections, "augment", _augment)
    train = attempt(_section, sections, "train", _train)
    if errors:
        raise CnnDslError.collect(_distinct(errors))

    body = ir.Seq(name="", span=first_span, items=tuple(items))
    # Each statement's shape was inferred as it was built: the body's runs from the input to the last.
    expander.shapes[body.name] = LayerShape(input_shape, shape)
    if expander.droppaths:
        _check_droppaths(body)
    expander.shapes.body = body
    name = header.name if header else _default_name(source.path)
    return ir.Network(
        name=name,
        input_shape=input_shape,
        body=body,
        shapes=expander.shapes,
        expects=checked_expects,
        preprocess=preprocess,
        augment=augment,
        train=train if train is not None else ir.TrainConfig(),
        source=source,
        input_span=input_span,
        declared_input=input_header.shape if input_header else None,
        blocks=tuple(blocks.values()),
    )


_STATEMENT_TYPES = frozenset((S.Layer, S.Again, S.Call, S.Repeat, S.Residual, S.Branches))


def _distinct(errors: list[CnnDslError]) -> list[CnnDslError]:
    """One error per place and message: a mistake in a block body fails each call of the block."""
    seen: dict[tuple, CnnDslError] = {}
    for err in errors:
        seen.setdefault((err.span, err.message), err)
    return list(seen.values())


def _section(sections: list[S.Section], kind: str, build):
    return build(_single([s for s in sections if s.kind == kind], kind))


def _check_block(block: S.BlockDef, blocks: dict[str, S.BlockDef]) -> None:
    if block.name in blocks:
        raise BadValueError(f"block {block.name} is defined twice", block.span,
                            notes=[f"first defined at line {blocks[block.name].span.line}"],
                            hint="rename one of them")
    if block.name in KEYWORDS:
        raise BadValueError(f"'{block.name}' is a keyword and cannot name a block", block.span,
                            hint=f"call it {block.name}_block")
    seen = set()
    for param in block.params:
        if param.name == IN_C:
            raise BadValueError(f"'{IN_C}' is reserved: inside a block it is the channel count entering the call",
                                param.span, hint=f"rename the parameter, or drop it and use {IN_C} in the body")
        if param.name in seen:
            raise BadValueError(f"parameter '{param.name}' appears twice in block {block.name}", param.span,
                                hint="give each parameter its own name")
        seen.add(param.name)


def _check_droppaths(body: ir.Seq) -> None:
    """`droppath` drops a residual body, so it must end one: the body's last statement, or the last
    statement of the block call that ends it (at most one per body)."""
    allowed = set()
    # One walk: a residual comes before the nodes of its body, so a droppath that ends a body is
    # allowed by the time the walk reaches it.
    for node in ir.walk(body):
        if isinstance(node, ir.Residual):
            last: ir.Node = node.body
            while isinstance(last, ir.Seq) and last.items:
                last = last.items[-1]
            if isinstance(last, ir.DropPath):
                allowed.add(last.name)
        elif isinstance(node, ir.DropPath) and node.name not in allowed:
            raise BadValueError("droppath must be the last statement of a residual body", node.span,
                                calls=node.calls,
                                hint=f"move it to the end of the residual's body: "
                                     f"'residual {{ ...; droppath {number_text(node.p)} }}' (one per body)")


def _default_name(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return cleaned if cleaned and cleaned[0].isalpha() else "network"


def _require_known(word: str, choices: tuple[str, ...], what: str, span: Span) -> None:
    """Raise "unknown <what>" with the closest choice and the full list, unless `word` is a choice."""
    if word in choices:
        return
    close = closest(word, choices)
    raise UnknownNameError(f"unknown {what} '{word}'", span,
                           hint=(f"did you mean '{close}'? " if close else "") + f"one of: {', '.join(choices)}")


def _expect(stmt: S.ExpectStmt) -> ir.Expect:
    _require_known(stmt.what, EXPECTATIONS, "expectation", stmt.what_span)
    if stmt.what != "output" and len(stmt.value) > 1:
        raise BadValueError(f"expect {stmt.what} takes one number", stmt.span,
                            hint=f"write e.g. 'expect {stmt.what} < 5M'; only 'expect output' takes a shape")
    return ir.Expect(stmt.what, stmt.comparison, stmt.value, stmt.span)


# ---------------------------------------------------------------- sections

_TOP = _Frame({}, (), ())


def _const(expr, what: str, low: float = float("-inf"), high: float = float("inf")) -> float:
    return _Expander({}).number(expr, _TOP, what, low, high)


def _preprocess(section: S.Section | None) -> ir.Preprocess | None:
    if section is None:
        return None
    scale, standardize, mean, std = None, False, None, None
    for setting in _unique_settings(section):
        if setting.key == "scale":
            scale = _const(setting.values[0], "scale", 1e-12, 1e12)
        else:
            standardize = True
            options = dict(setting.options)
            if options:
                mean = tuple(_const(e, "a mean") for e in options["mean"])
                std = tuple(_const(e, "a standard deviation", 1e-12) for e in options["std"])
                if len(mean) != len(std):
                    raise BadValueError(f"mean has {len(mean)} values but std has {len(std)}", setting.span,
                                        hint="give one mean and one std per input channel")
    return ir.Preprocess(scale=scale, standardize=standardize, mean=mean, std=std, span=section.span)


def _unique_settings(section: S.Section):
    seen: dict[str, S.Setting] = {}
    for setting in section.settings:
        if setting.key in seen:
            raise BadValueError(f"'{setting.key}' is given twice in {section.kind}", setting.span,
                                notes=[f"first at line {seen[setting.key].span.line}"], hint="keep one")
        seen[setting.key] = setting
        yield setting


def _augment(section: S.Section | None) -> ir.Augment | None:
    if section is None:
        return None
    fields: dict[str, object] = {}
    flips = []
    for setting in section.settings:
        key, values = setting.key, setting.values
        if key == "flip":
            flips.append(values[0] if values else "horizontal")
            continue
        if key in fields:
            raise BadValueError(f"'{key}' is given twice in augment", setting.span, hint="keep one")
        if key == "rotate":
            fields[key] = _const(values[0], "a rotation in degrees", 0, 180)
        elif key == "zoom":
            low = _const(values[0], "a zoom factor", 0.1, 10)
            high = _const(values[1], "a zoom factor", low, 10) if len(values) > 1 else 1 / low
            fields[key] = (min(low, high), max(low, high))
        elif key == "skew":
            fields[key] = _const(values[0], "a skew", 0, 1)
        elif key == "crop":
            fields["crop"] = int(_const(values[0], "a crop size", 1, 1e6))
            if setting.options:
                fields["crop_pad"] = int(_const(setting.options[0][1], "crop padding", 0, 1e6))
        else:  # brightness, contrast
            fields[key] = _const(values[0], key, 0, 1)
    return ir.Augment(flip=tuple(dict.fromkeys(flips)), span=section.span, **fields)


def _train(section: S.Section | None) -> ir.TrainConfig:
    if section is None:
        return ir.TrainConfig()
    fields: dict[str, object] = {}
    for setting in _unique_settings(section):
        key, values = setting.key, setting.values
        if key == "optimizer":
            name = values[0]
            _require_known(name, OPTIMIZERS, "optimizer", setting.span)
            fields["optimizer"] = name
            for opt, value in setting.options:
                if opt == "nesterov":
                    fields["nesterov"] = True
                elif opt == "betas":
                    betas = tuple(_const(v, "a beta", 0, 0.999999) for v in value)
                    if len(betas) != 2:
                        raise BadValueError("betas takes two numbers", setting.span,
                                            hint="write 'betas (0.9, 0.999)'")
                    fields["betas"] = betas
                else:
                    fields[opt] = _const(value, opt, 0, 10)
        elif key == "schedule":
            name, *args = values
            _require_known(name, SCHEDULES, "schedule", setting.span)
            fields["schedule"] = name
            fields["schedule_args"] = tuple(float(_const(a, "a schedule argument")) for a in args)
        elif key in ("batch", "epochs", "seed"):
            fields[key] = _Expander({}).integer(values[0], _TOP, key, minimum=0 if key == "seed" else 1)
        elif key in ("lr", "weight_decay"):
            fields[key] = _const(values[0], key, 0, 10)
        else:  # label_smoothing, val_split
            fields[key] = _const(values[0], key, 0, 0.99)
    return ir.TrainConfig(span=section.span, **fields)
