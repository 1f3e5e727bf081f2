"""Text -> `syntax.Program`, with lark (LALR, contextual lexer) and one method per grammar rule.

The parser is the stand-alone module lark generates from `grammar/cnndsl.lark`
(`cnndsl.grammar.cnndsl_lalr`, rebuilt by `python -m cnndsl.grammar`), used as lark made it (no
plugins), so parsing needs no lark import at run time. The module also records the grammar's
keywords, which the messages here list and suggest. Lark's own exceptions never escape: they become
`CnnSyntaxError`s that name the line, the column, the offending text, what was expected in words,
and a "did you mean" for misspelled keywords.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Literal, NamedTuple

from . import syntax as S
from .errors import MAX_ERRORS, CnnDslError, CnnSyntaxError, LimitError, Source, Span, closest
from .grammar.cnndsl_lalr import (
    FIRST_CHARACTERS,
    KEPT_TERMINALS,
    LAYER_KEYWORDS,
    OPTION_KEYWORDS,
    SECTION_KEYWORDS,
    TERMINAL_WORDS,
    TOP_KEYWORDS,
    Lark,
    Lark_StandAlone,
    Shift,
    Token,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    _create_unless,
    reduce_actions,
)

__all__ = ["KEYWORDS", "LAYER_KEYWORDS", "OPTION_KEYWORDS", "SECTION_KEYWORDS", "TOP_KEYWORDS", "WORDS",
           "misplaced_keyword", "parse_program"]

# The keyword lists come from the grammar, through the generated module.
KEYWORDS = tuple(w for w in TOP_KEYWORDS + LAYER_KEYWORDS + OPTION_KEYWORDS if w != "x")
"""Words a block may not be named: those of statements and top-level items. The repeat's `x`, a
keyword only right after a statement, stays free for block names."""
WORDS = tuple(dict.fromkeys(TOP_KEYWORDS + LAYER_KEYWORDS + OPTION_KEYWORDS + SECTION_KEYWORDS))
"""Every word the grammar reads as a keyword somewhere: the candidates of "did you mean"."""

# What a terminal means to a user, for "expected ..." lists.
_TERMINAL_WORDS = {
    "_SEP": "the end of the statement (';' or a newline)",
    "$END": "the end of the file",
    "NAME": "a name",
    "NUMBER": "a number",
    "SIZE": "a number like 5M",
    "DIMS": "a size like 3x3",
    "MULT": "a channel multiplier like 2x",
    "ACTIVATION": "an activation (relu, tanh, ...)",
    "POOL_MODE": " or ".join(f"'{w}'" for w in TERMINAL_WORDS["POOL_MODE"]),
    "FLIP_AXIS": " or ".join(f"'{w}'" for w in TERMINAL_WORDS["FLIP_AXIS"]),
    "SETTING": f"a setting ({', '.join(TERMINAL_WORDS['SETTING'])})",
}


# Span(...) and the commonest syntax nodes without their Python-level __new__, which only checks the
# number of fields: one is made for every token and node.
_new_tuple = tuple.__new__


def _span(token: Token) -> Span:
    return _new_tuple(Span, (token.line, token.column, token.end_line, token.end_column))


_SCALES = {"K": 10**3, "M": 10**6, "G": 10**9}


def _number(text: str) -> int | float:
    if text.isdigit():
        return int(text)
    scale = _SCALES.get(text[-1])
    if scale:
        text = text[:-1]
    if not scale:
        return float(text) if any(c in text for c in ".eE") else int(text)
    # Exact decimal arithmetic: in floats 2.01K would be 2009.9999999999998, not 2010.
    from decimal import Decimal  # only sizes like 61.7K need it: not imported at start-up

    value = Decimal(text) * scale
    return int(value) if value == value.to_integral_value() else float(value)


def _literal(token: Token) -> int | float:
    """A number token's value; one too large for a float (1e400 is inf) is refused."""
    value = _number(str(token))
    if isinstance(value, float) and not math.isfinite(value):
        raise CnnSyntaxError(f"the number {token} is too large to represent", _span(token),
                             hint="write a number below 1e308 (or a whole number, which is exact)")
    return value


def _dims(token: Token) -> tuple[S.Num, ...]:
    span = _span(token)
    return tuple([_new_tuple(S.Num, (int(part), span)) for part in token.split("x")])


class _LooseShortcut(S.Node):
    """`shortcut { ... }` written as its own statement; it belongs to the residual before it."""

    body: tuple
    always: bool
    span: Span


def _misplaced_shortcut(span: Span) -> CnnSyntaxError:
    return CnnSyntaxError("'shortcut' must follow a residual", span,
                          hint="write it right after the residual's closing brace: "
                               "'residual { ... } shortcut { ... }'")


def _attach_shortcuts(items) -> tuple:
    if _LooseShortcut not in map(type, items):  # mostly: no loop in Python over a long list
        return tuple(items)
    out: list = []
    for item in items:
        if isinstance(item, _LooseShortcut):
            previous = out[-1] if out else None
            if not isinstance(previous, S.Residual) or previous.shortcut is not None:
                raise _misplaced_shortcut(item.span)
            out[-1] = S.Residual(previous.body, item.body, item.always, previous.span)
        else:
            out.append(item)
    return tuple(out)


class _ToSyntax:
    """One method per grammar rule, called by the parser as it reduces the rule (no parse tree is
    built), with the rule's span and its children already converted; each returns a `syntax` node
    carrying its span."""

    def start(self, span, items):
        return S.Program(_attach_shortcuts(items))

    def network(self, span, items):
        return S.NetworkHeader(str(items[0]), span)

    def input(self, span, items):
        return S.InputHeader(tuple(int(p) for p in str(items[0]).split("x")), _span(items[0]))

    # ------------------------------------------------------------ blocks
    def block_def(self, span, items):
        name, *rest = items
        params = rest[0] if len(rest) == 2 else ()
        return S.BlockDef(str(name), params, rest[-1], span)

    def params(self, span, items):
        return tuple(items)

    def param(self, span, items):
        return S.Param(str(items[0]), items[1] if len(items) > 1 else None, span)

    def body(self, span, items):
        return _attach_shortcuts(items)

    def repeat(self, span, items):
        if isinstance(items[0], _LooseShortcut):
            raise _misplaced_shortcut(items[0].span)
        return _new_tuple(S.Repeat, (items[0], items[1], span))

    def loose_shortcut(self, span, items):
        return _LooseShortcut(items[-1], len(items) == 2, span)

    def call(self, span, items):
        args = items[1] if len(items) > 1 else ()
        positional = tuple(a for a in args if not isinstance(a, S.KeywordArg))
        keywords = tuple(a for a in args if isinstance(a, S.KeywordArg))
        return S.Call(str(items[0]), positional, keywords, span)

    def call_args(self, span, items):
        return tuple(items)

    def positional_arg(self, span, items):
        return items[0]

    def keyword_arg(self, span, items):
        return S.KeywordArg(str(items[0]), items[1], span)

    def residual(self, span, items):
        body = items[0]
        shortcut, always = (items[1] if len(items) > 1 else (None, False))
        return _new_tuple(S.Residual, (body, shortcut, always, span))

    def shortcut(self, span, items):
        return (items[-1], len(items) == 2)

    def concat(self, span, items):
        kind = "concat_crop" if len(items) == 2 else "concat"  # `concat crop { ... }`
        return S.Branches(kind, tuple(b for b, _ in items[-1]), tuple(s for _, s in items[-1]), span)

    def add(self, span, items):
        return S.Branches("add", tuple(b for b, _ in items[0]), tuple(s for _, s in items[0]), span)

    def mul(self, span, items):
        return S.Branches("mul", tuple(b for b, _ in items[0]), tuple(s for _, s in items[0]), span)

    def branches(self, span, items):
        return tuple(items)

    def branch(self, span, items):
        return (items[0], span)

    # ------------------------------------------------------------ layers
    def _layer(self, op, span, options):
        return _new_tuple(S.Layer, (op, tuple(options), span))

    def _flag(self, token: Token) -> S.Option:
        return _new_tuple(S.Option, (str(token).lower(), True, _span(token)))

    def _options(self, items):
        return [self._flag(i) if isinstance(i, Token) else i for i in items]

    def conv(self, span, items):
        return _new_tuple(S.Layer, ("conv", tuple(self._options(items)), span))

    def deconv(self, span, items):
        return self._layer("deconv", span, self._options(items))

    def outpad(self, span, items):
        return S.Option("outpad", self._pair(items[0]), span)

    def upsample(self, span, items):
        options = []
        for item in items:
            if isinstance(item, tuple):  # `to (h, w)`
                options.append(S.Option("to", item, item[0].span))
            elif item.type == "MULT":  # `2x`
                options.append(S.Option("factor", S.Num(int(str(item)[:-1]), _span(item)), _span(item)))
            elif item.type == "TO_INPUT":
                options.append(S.Option("to", "input", _span(item)))
            elif item.type == "DIMS":
                options.append(S.Option("to", _dims(item), _span(item)))
            else:
                options.append(S.Option("mode", str(item), _span(item)))
        return self._layer("upsample", span, options)

    def kernel(self, span, items):
        return _new_tuple(S.Option, ("kernel", self._pair(items[0]), span))

    def stride(self, span, items):
        return _new_tuple(S.Option, ("stride", self._pair(items[0]), span))

    def _pair(self, item):
        if isinstance(item, Token):
            return _dims(item)
        return item if type(item) is tuple else (item,)

    def pair(self, span, items):
        return tuple(items)  # (height, width)

    def out(self, span, items):
        return _new_tuple(S.Option, ("out", items[0], span))

    def mult(self, span, items):
        return S.Option("mult", S.Num(int(str(items[0])[:-1]), _span(items[0])), span)

    def pad(self, span, items):
        (item,) = items
        if isinstance(item, Token) and item.type in ("SAME", "VALID"):
            return S.Option("pad", str(item), span)
        return _new_tuple(S.Option, ("pad", self._pair(item), span))

    def dil(self, span, items):
        return S.Option("dil", self._pair(items[0]), span)

    def groups(self, span, items):
        return S.Option("groups", items[0], span)

    def pool(self, span, items):
        mode, *rest = items
        options = [S.Option("mode", str(mode), _span(mode))]
        options += self._options(rest)  # global, adaptive, ceil: flags; the kernel, stride, pad: options
        return self._layer("pool", span, options)

    def fc(self, span, items):
        options = [S.Option("out", items[0], span)] + self._options(items[1:])
        return self._layer("fc", span, options)

    def flatten(self, span, items):
        return self._layer("flatten", span, [])

    def dropout(self, span, items):
        return self._layer("dropout", span, [S.Option("p", items[0], span)] if items else [])

    def bn(self, span, items):
        return _new_tuple(S.Layer, ("bn", tuple(items), span))

    def ln(self, span, items):
        return self._layer("ln", span, items)

    def gn(self, span, items):
        return self._layer("gn", span, [S.Option("groups", items[0], items[0].span), *items[1:]])

    def _single(op, key):  # noqa: N805 - a method factory: a statement with one value, e.g. `shuffle G`
        def method(self, span, items):
            return self._layer(op, span, [S.Option(key, items[0], items[0].span)])
        return method

    layerscale = _single("layerscale", "init")
    droppath = _single("droppath", "p")
    shuffle = _single("shuffle", "groups")

    def channels(self, span, items):
        return self._layer("channels", span, items)

    def channel_from(self, span, items):
        return S.Option("start", items[0], span)

    def channel_to(self, span, items):
        return S.Option("stop", items[0], span)

    def eps(self, span, items):
        return S.Option("eps", items[0], span)

    def momentum(self, span, items):
        return S.Option("momentum", items[0], span)

    def activation(self, span, items):
        options = (_new_tuple(S.Option, ("kind", str(items[0]), _span(items[0]))),)
        if len(items) > 1:
            options += (S.Option("alpha", items[1], items[1].span),)
        return _new_tuple(S.Layer, ("act", options, span))

    # ------------------------------------------------------------ arithmetic
    def number(self, span, items):
        if items[0].isdigit():  # the common case, without _literal's checks; the span is the token's
            return _new_tuple(S.Num, (int(items[0]), span))
        return S.Num(_literal(items[0]), _span(items[0]))

    def var(self, span, items):
        return _new_tuple(S.Var, (str(items[0]), _span(items[0])))

    def neg(self, span, items):
        return S.Neg(items[0], span)

    def _binop(op):  # noqa: N805 - a method factory used in the class body
        def method(self, span, items):
            return _new_tuple(S.BinOp, (op, items[0], items[1], span))
        return method

    binop_add = _binop("+")
    binop_sub = _binop("-")
    binop_mul = _binop("*")
    binop_div = _binop("/")
    binop_floordiv = _binop("//")

    def func(self, span, items):
        name, *args = items
        return S.Func(str(name), tuple(args), span)

    # ------------------------------------------------------------ expect and sections
    def expect(self, span, items):
        what = items[0]
        comparison = items[1] if len(items) == 3 else "=="
        raw = str(items[-1])
        value = tuple(int(p) for p in raw.split("x")) if items[-1].type == "DIMS" else (_literal(items[-1]),)
        return S.ExpectStmt(str(what), "==" if comparison == "=" else comparison, value, span,
                            _span(what))

    def comparison(self, span, items):
        return str(items[0])

    def _section(kind):  # noqa: N805
        def method(self, span, items):
            return S.Section(kind, tuple(items), span)
        return method

    preprocess = _section("preprocess")
    augment = _section("augment")
    train = _section("train")

    def _setting(key):  # noqa: N805
        def method(self, span, items):
            values = tuple(str(i) if isinstance(i, Token) else i for i in items)
            return S.Setting(key, values, (), span)
        return method

    scale = _setting("scale")
    rotate = _setting("rotate")
    zoom = _setting("zoom")
    skew = _setting("skew")
    brightness = _setting("brightness")
    contrast = _setting("contrast")
    flip = _setting("flip")

    def crop(self, span, items):
        options = (("pad", items[1]),) if len(items) > 1 else ()
        return S.Setting("crop", (items[0],), options, span)

    def standardize(self, span, items):
        options = (("mean", items[0]), ("std", items[1])) if items else ()
        return S.Setting("standardize", (), options, span)

    def tuple(self, span, items):
        return tuple(items)

    def optimizer(self, span, items):
        name, *opts = items
        options = tuple(("nesterov", True) if isinstance(o, Token) else o for o in opts)
        return S.Setting("optimizer", (str(name),), options, span)

    def opt_lr(self, span, items):
        return ("lr", items[0])

    def opt_momentum(self, span, items):
        return ("momentum", items[0])

    def opt_betas(self, span, items):
        return ("betas", items[0])

    def setting(self, span, items):
        return S.Setting(str(items[0]), (items[1],), (), span)

    def schedule(self, span, items):
        return S.Setting("schedule", (str(items[0]), *items[1:]), (), span)


# ---------------------------------------------------------------- parsing
#
# Parsing runs lark's LALR tables in one loop (`_parse_fast`) with reduce actions generated, one per
# rule, from the grammar at build time (grammar/fast_path.py explains them): every value on the
# stack is an entry (value, line, column, end_line, end_column), the value being a kept token, a
# syntax node or an inlined rule's list of values, the positions the span. lark's own parser runs
# the same actions (`_lark_callback`), for the errors and for `cnndsl fmt`.


def _first_entry(children):
    for child in children:
        if child[1] is not None:
            return child
    return None


def _last_entry(children):
    for child in reversed(children):
        if child[1] is not None:
            return child
    return None


class _Grammar(NamedTuple):
    parser: Lark
    reducers: dict  # rule -> its reduce action, or None where the rule's value is its child's
    kept_terminals: frozenset[str]  # whose tokens some rule keeps: the parser holds them on the stack
    rule_names: frozenset[str]


@functools.cache
def _grammar() -> _Grammar:
    """lark's stand-alone LALR parser, with its reduce actions replaced by the generated ones:
    parsing builds the syntax nodes directly, in lark's parser as in the fast path."""
    parser = Lark_StandAlone()
    table_parser = parser.parser.parser.parser  # ParsingFrontend -> LALR_Parser -> _Parser
    actions = reduce_actions(_TRANSFORMER, Span, _new_tuple, _first_entry, _last_entry)
    rules = list(table_parser.callbacks)
    if {str(rule) for rule in rules} != set(actions):
        raise AssertionError("the parser module's reduce actions are not its rules': run `python -m cnndsl.grammar`")
    reducers = {rule: actions[str(rule)] for rule in rules}
    table_parser.callbacks = {rule: _lark_callback(reducers[rule], KEPT_TERMINALS) for rule in rules}
    return _Grammar(parser, reducers, KEPT_TERMINALS, frozenset(rule.origin.name for rule in rules))


def _parser() -> Lark:
    return _grammar().parser


def _lark_callback(reducer, kept_terminals: frozenset[str]):
    """The reduce action for lark's own parser, whose stack holds its Tokens where the fast path
    holds entries."""
    token_type = Token

    def callback(children: list):
        entries = [(child if child.type in kept_terminals else None, child.line, child.column, child.end_line,
                    child.end_column) if type(child) is token_type else child for child in children]
        return entries[0] if reducer is None else reducer(entries)

    return callback


_TRANSFORMER = _ToSyntax()


class _Irregular(Exception):
    """The fast path met a token or character the grammar does not allow: lark's own parse of the
    text then raises the error, with everything its messages need."""


class _Tables(NamedTuple):
    """lark's LALR table, for the fast path.

    `actions[state]` maps a terminal to the state to shift to (>= 0) or to ~the index of the rule to
    reduce (< 0); `rules[index]` is (length, reduce action or None, name). `gotos[state]` maps a rule's
    name to where the parser goes after reducing it with `state` below: (state, None), or (state,
    {terminal: state}) when, with that terminal next, the new state would only reduce a rule that
    leaves its child's value as it is, and so on (`number` -> `_atom` -> `_unary` -> `product` ->
    `_sum` -> `expr`): the state at the end of that chain, reached at once.
    """

    actions: list[dict[str, int]]
    gotos: dict[int, dict[str, tuple[int, dict[str, int] | None]]]
    rules: list[tuple[int, object, str]]
    start: int
    end: int
    kept_terminals: frozenset[str]
    lexers: list[tuple | None]  # state -> its `_scanner`, made when the state first lexes
    unusual: tuple[frozenset[str], frozenset[str]]  # the terminals that may hold newlines; those ignored


class _Rows(dict):
    """The goto table's rows, each made when the parser first reduces above its state: most
    programs need few of them."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, state: int):
        row = self[state] = self.make(state)
        return row


@functools.cache
def _tables() -> _Tables:
    grammar = _grammar()
    table = grammar.parser.parser.parser.parser.parse_table
    index: dict = {}
    rules: list[tuple[int, object, str]] = []
    actions: list[dict[str, int]] = [{} for _ in table.states]
    targets: list[dict[str, int]] = [{} for _ in table.states]
    for state, entries in table.states.items():
        for symbol, (action, arg) in entries.items():
            if action == Shift:
                (targets if symbol in grammar.rule_names else actions)[state][symbol] = arg
                continue
            if arg not in index:
                index[arg] = len(rules)
                rules.append((len(arg.expansion), grammar.reducers[arg], arg.origin.name))
            actions[state][symbol] = ~index[arg]

    def chain_end(below: int, state: int, terminal: str) -> int:
        for _ in range(len(rules)):  # a chain of unit rules has no cycle in an LALR table
            code = actions[state].get(terminal)
            if code is None or code >= 0 or rules[~code][1] is not None:
                return state
            state = targets[below][rules[~code][2]]
        raise AssertionError("a cycle of unit rules in the LALR table")

    def goto_row(below: int) -> dict[str, tuple[int, dict[str, int] | None]]:
        row = {}
        for name, state in targets[below].items():
            chain = {terminal: end for terminal in actions[state]
                     if (end := chain_end(below, state, terminal)) != state}
            row[name] = (state, chain or None)
        return row

    gotos = _Rows(goto_row)
    lexers = grammar.parser.parser.lexer.lexers
    newline_kinds = frozenset().union(*(lexer.newline_types for lexer in lexers.values()))
    ignore_kinds = frozenset().union(*(lexer.ignore_types for lexer in lexers.values()))
    return _Tables(actions, gotos, rules, table.start_states["start"], table.end_states["start"],
                   grammar.kept_terminals, [None] * len(actions), (newline_kinds, ignore_kinds))


def _scanner(state: int) -> tuple:
    """The contextual lexer of `state`: the match of a regex of only the terminals that can start
    with a token's first character (FIRST_CHARACTERS), by that character, as far as made, and the
    function that makes and records one; and the names it
    gives keywords matched as names (lark's "unless" callbacks, whose patterns are all plain
    strings here). lark's regex of the state tries every terminal in turn, in its order: leaving out
    those that cannot match here keeps that order, and so the token lark would read, in a third of
    the time. The terminals and callbacks are those lark's lexer makes (`_build_scanner`), without
    compiling its regex of them all."""
    lexer = _parser().parser.lexer.lexers[state]
    if lexer.user_callbacks:
        raise AssertionError("the fast path expects no lexer callbacks of the user's")
    terminals, callbacks = _create_unless(lexer.terminals, lexer.g_regex_flags, lexer.re, lexer.use_bytes)
    keywords = {}
    for kind, callback in callbacks.items():
        words = getattr(getattr(callback, "scanner", None), "terminals", None)
        if words is None or any(t.pattern.type != "str" or t.pattern.flags for t in words):
            raise AssertionError(f"the fast path reads lark's callbacks as keyword tables, not {callback!r}")
        keywords[kind] = {t.pattern.value: t.name for t in words}
    flags = lexer.g_regex_flags
    by_character: dict[str, object] = {}

    def matcher(character: str):
        found = by_character.get(character)
        if found is None:
            known = len(character) == 1 and character <= "\x7f"  # FIRST_CHARACTERS know ASCII only
            chosen = tuple((t.name, t.pattern.to_regexp()) for t in terminals
                           if not known or FIRST_CHARACTERS[t.name] is None or character in FIRST_CHARACTERS[t.name])
            found = by_character[character] = _regex(chosen, flags) if chosen else _NO_MATCH
        return found

    return by_character, matcher, keywords


_NO_MATCH = re.compile("(?!)").match  # no terminal of the state can start with the character


@functools.cache
def _regex(terminals: tuple[tuple[str, str], ...], flags: int):
    """The match of lark's regex for `terminals` ((name, regex) pairs), in that order: one per set
    of terminals that can start with some character, shared by the states."""
    return re.compile("|".join(f"(?P<{name}>{regexp})" for name, regexp in terminals), flags).match


def _parse(text: str) -> S.Program:
    """Lex and parse `text` in one loop over lark's tables, reducing into syntax nodes: what lark's
    contextual lexer and LALR parser do, without their per-token objects and indirections. Anything
    irregular is left to lark (`_Irregular`), whose errors the messages read."""
    try:
        return _parse_fast(text)
    except _Irregular:
        return _parser().parse(text)[0]  # raises lark's UnexpectedInput


_BLANKS = re.compile(r"[ \t\f\r]+").match  # the grammar's %ignore of blanks

# Reuse of statements read before. Generated programs, and most long ones, say the same statement
# again and again (`conv 3x3 pad1 -> 64 nobias` in every unit): where a statement may start, the text
# up to the next character that can end one (';', a newline, '}', or a comment) is looked up, with the
# parser's state, among the texts read before. Read from the same state, the same text lexes into the
# same tokens and reduces in the same steps, so a text that ended as one statement again is one, with
# the same value and the same state after it: the parser pushes that value at the new place (a layer
# as an `Again` of the first, anything else with its spans moved) and reads on from the stop. The
# token at the stop is still lexed, by the lexer the first reading used, and must be of the kind it
# was then, since which rule a reduction ends in may depend on it. A text that did not end as one
# statement of its own (`residual { conv ...` before its first ';') is remembered as such and read as
# usual.
# A carriage return after a blank is no stop: the plain reading skips it with the blanks (`_BLANKS`),
# and the token after the statement begins after it.
_STATEMENT_STOP = re.compile(r"[;\n}#]|(?<![ \t\f\r])\r").search

# What a text makes is kept from its second reading on, when it is likely to come again: a statement
# or a line said once costs a lookup. So a text's entry in the parser's tables is `_NEW` (not read
# before: absent), None (read once: the next reading is watched), False (watched, and no statement or
# line of its own) or its reading.
_NEW = object()


# Whole lines read before, likewise: where a line begins with a statement, its text (to its newline,
# or to a comment at its end, which the separator after the last statement holds) is looked up with
# the parser's whole state stack. A line that left the stack as it found it, but for the statements
# it added to the list below its start (the statement list's left-recursive rule grows one list) and
# the separator it ended with, does that again from the same stack: the parser adds the same
# statements, moved to the new line, lexes the separator again (with the lexer that read it, as it
# may run on over blank lines and comments) and reads on after it.
class _LineReading(NamedTuple):
    """What reading a whole line from some stack made (see above)."""

    line: int  # where it was read
    statements: tuple  # what it added to the statement list below it
    list_end: tuple[int, int]  # where the list then ended (its last statement's end)
    separator_column: int  # where the separator that ends the line begins
    separator_lexer: tuple  # the lexer that read it (`_scanner`)

    @classmethod
    def of(cls, line: int, states: tuple[int, ...], statements: list, count: int, state_stack: list[int],
           value_stack: list, position: tuple[int, int], lexer: tuple) -> _LineReading | Literal[False]:
        """The reading of the line read from `line` with `states` on the stack and the list
        `statements` below it, `count` long then, now that the parser is about to read on at
        `position` (line, column); False if the line did more than add statements to that list and
        end in a separator there."""
        if len(value_stack) < 2 or value_stack[-2][0] is not statements or tuple(state_stack) != states:
            return False
        below, separator = value_stack[-2], value_stack[-1]
        added = statements[count:]
        ends_here = separator[0] is None and separator[1] == line and (separator[3], separator[4]) == position
        if not added or not ends_here or not all(S.movable(v) for v in added):
            return False
        return cls(line, tuple(added), below[3:], separator[2], lexer)

    def statements_at(self, line: int) -> list:
        """The line's statements as read at `line`."""
        return [S.moved(statement, line, 0, again=True) for statement in self.statements]


@functools.cache
def _statement_starts() -> frozenset[int]:
    """The parser states where a statement may begin: those that read the keyword `conv`."""
    return frozenset(state for state, row in enumerate(_tables().actions) if "CONV" in row)


class _Reading(NamedTuple):
    """What reading a statement's text from some state made (see above)."""

    lexer_state: int  # the state whose lexer read the token at the stop
    next_kind: str  # that token's kind
    state: int  # the state after the statement, reduced with that token next
    entry: tuple  # the statement's stack entry, at the place of its first reading
    column: int  # where that text began

    @classmethod
    def of(cls, lexer_state: int, next_kind: str, state: int, entry: tuple, line: int, column: int
           ) -> _Reading | Literal[False]:
        if entry[1] != line or entry[3] != line or not isinstance(entry[0], S.Node) or not S.movable(entry[0]):
            return False
        return cls(lexer_state, next_kind, state, entry, column)

    def entry_at(self, line: int, column: int) -> tuple:
        """The statement's stack entry, read at `line` from `column` on."""
        value, _, first, _, last = self.entry
        shift = column - self.column
        return (S.moved(value, line, shift, again=True), line, first + shift, line, last + shift)


def _parse_fast(text: str, reuse: bool = True) -> S.Program:
    actions, gotos, rules, state, end_state, kept_terminals, lexers, unusual = _tables()
    newline_kinds, ignore_kinds = unusual
    unusual = newline_kinds | ignore_kinds
    new_token, token_type, skip_blanks = str.__new__, Token, _BLANKS
    state_stack: list[int] = [state]
    value_stack: list = []
    push_state, push_value = state_stack.append, value_stack.append
    pos, line, line_start, size_of_text = 0, 1, 0, len(text)
    # Statements read before (see _Reading): where one starts, `reused` holds what reading its text
    # from that state made, and the reading of a new one is watched (`watch_*`) until it ends.
    starts, find_stop, reused = (_statement_starts() if reuse else frozenset()), _STATEMENT_STOP, {}
    watch_floor, watch_stop, watch_key, watch_line, watch_column = -1, -1, None, 0, 0
    at_stop, stop_state, stop_kind, replayed = False, 0, None, None
    # Lines read before (see _LineReading), and the one being read the first time.
    lines_read, lexer = {}, None
    line_key, line_end, line_floor, line_list, line_count, line_first = None, -1, -1, None, 0, 0
    while True:
        kind = "$END"
        while pos < size_of_text:
            if pos >= line_end >= 0:  # the first token after the line watched
                lines_read[line_key] = _LineReading.of(line_first, line_key[0], line_list, line_count, state_stack,
                                                       value_stack, (line, pos - line_start + 1), lexer)
                line_key, line_end, line_floor = None, -1, -1
            if replayed is not None:  # the token after a reused statement, matched by the lexer it is read with
                found, lexer = replayed
                replayed = None
            else:
                if pos == line_start and state in starts and (end := text.find("\n", pos)) >= 0:
                    comment = text.find("#", pos, end)  # not part of the key: the separator holds it
                    key = (tuple(state_stack), text[pos:end + 1] if comment < 0 else text[pos:comment])
                    reading = lines_read.get(key, _NEW)
                    below = value_stack[-2] if len(value_stack) > 1 else (None,)
                    if reading is _NEW:  # watched from its second reading on: most lines are said once
                        lines_read[key] = None
                    elif reading is None:
                        if type(below[0]) is list:
                            line_key, line_end, line_floor = key, end + 1, len(state_stack) - 2
                            line_list, line_count, line_first = below[0], len(below[0]), line
                    elif reading and type(below[0]) is list:
                        start = pos + reading.separator_column - 1
                        separator_lexer = reading.separator_lexer
                        found = (separator_lexer[0].get(text[start]) or separator_lexer[1](text[start]))(text, start)
                        if found is not None and found.lastgroup == "_SEP" and found.end() > end:
                            shift = line - reading.line
                            below[0].extend(reading.statements_at(line))
                            value_stack[-2] = (below[0], below[1], below[2], reading.list_end[0] + shift,
                                               reading.list_end[1])
                            pos, separator_line = found.end(), line
                            line += text.count("\n", start, pos)
                            line_start = text.rindex("\n", start, pos) + 1
                            value_stack[-1] = (None, separator_line, reading.separator_column, line,
                                               pos - line_start + 1)
                            watch_floor, watch_stop, watch_key, at_stop = -1, -1, None, False
                            continue
                lexer = lexers[state]
                if lexer is None:
                    lexer = lexers[state] = _scanner(state)
                character = text[pos]
                if character in " \t":  # blanks between tokens, cheaper to skip than to try every terminal on
                    pos += 1
                    if text[pos:pos + 1] in (" ", "\t"):  # more than one
                        pos = skip_blanks(text, pos).end()
                    if pos == size_of_text:
                        break
                    character = text[pos]
                if state in starts and (stop := find_stop(text, pos)) is not None and (stop := stop.start()) > pos:
                    if watch_key is not None:  # a statement starts inside the one watched: that one is none
                        reused[watch_key] = False
                        watch_floor, watch_stop, watch_key = -1, -1, None
                    key = (state, text[pos:stop])
                    reading = reused.get(key, _NEW)
                    if reading is _NEW:  # watched from its second reading on, as lines are
                        reused[key] = None
                    elif reading is None:
                        watch_floor, watch_stop, watch_key, at_stop = len(state_stack), stop, key, False
                        watch_line, watch_column = line, pos - line_start + 1
                    elif reading:
                        after = reading.lexer_state
                        after_lexer = lexers[after]
                        ahead = text[stop]
                        found = (after_lexer[0].get(ahead) or after_lexer[1](ahead))(text, stop)
                        if found is not None:
                            ahead = found.lastgroup
                            if ahead in after_lexer[2]:
                                ahead = after_lexer[2][ahead].get(found.group(), ahead)
                            if ahead == reading.next_kind:
                                state = reading.state
                                push_state(state)
                                push_value(reading.entry_at(line, pos - line_start + 1))
                                pos, replayed = stop, (found, after_lexer)
                                continue
                found = (lexer[0].get(character) or lexer[1](character))(text, pos)
                if found is None:
                    raise _Irregular
            kind = found.lastgroup
            start, start_line, pos = pos, line, found.end()
            column = start - line_start + 1
            if kind in unusual:
                if kind in newline_kinds and "\n" in (value := text[start:pos]):
                    line += value.count("\n")
                    line_start = start + value.rindex("\n") + 1
                if kind in ignore_kinds:
                    kind = "$END"
                    continue
            keywords = lexer[2]
            if kind in keywords:
                kind = keywords[kind].get(text[start:pos], kind)
            if start >= watch_stop >= 0:  # the token after the watched statement's text
                if start == watch_stop:
                    at_stop, stop_state, stop_kind = True, state, kind
                else:  # a token runs past the stop: not a statement of its own
                    reused[watch_key] = False
                    watch_floor, watch_stop, watch_key = -1, -1, None
            if kind in kept_terminals:
                value = text[start:pos]
                token = new_token(token_type, value)
                token.type, token.value, token.line, token.column, token.end_line, token.end_column = (
                    kind, value, start_line, column, line, pos - line_start + 1)
            else:
                token = None
            entry = (token, start_line, column, line, pos - line_start + 1)
            break
        row = actions[state]
        while True:
            code = row.get(kind)
            if code is None:
                raise _Irregular
            if watch_floor >= 0 and (at_stop if code >= 0 else len(state_stack) - rules[~code][0] < watch_floor):
                # The token at the stop is shifted, or a reduction reaches below the watched statement: it
                # was read whole now (one symbol above where it began), or it is no statement of its own.
                whole = at_stop and len(state_stack) == watch_floor + 1
                reused[watch_key] = whole and _Reading.of(stop_state, stop_kind, state, value_stack[-1],
                                                          watch_line, watch_column)
                watch_floor, watch_stop, watch_key, at_stop = -1, -1, None, False
            if code < 0 and len(state_stack) - rules[~code][0] < line_floor:  # below the watched line's start
                lines_read[line_key] = False
                line_key, line_end, line_floor = None, -1, -1
            if code >= 0:  # shift
                state = code
                push_state(state)
                push_value(entry)
                break
            size, reduce, name = rules[~code]
            if reduce is None:  # the child stays on the stack as the rule's value
                state, chain = gotos[state_stack[-2]][name]
                if chain is not None:
                    state = chain.get(kind, state)
                state_stack[-1] = state
            elif size:  # the rule's children give way to it on both stacks
                state, chain = gotos[state_stack[-size - 1]][name]
                if chain is not None:
                    state = chain.get(kind, state)
                state_stack[-size:] = (state,)
                value_stack[-size:] = (reduce(value_stack[-size:]),)
                if state == end_state and kind == "$END":
                    return value_stack[-1][0]
            else:  # an empty rule
                state, chain = gotos[state_stack[-1]][name]
                if chain is not None:
                    state = chain.get(kind, state)
                push_state(state)
                push_value(reduce(()))
                if state == end_state and kind == "$END":
                    return value_stack[-1][0]
            row = actions[state]


def parse_program(text: str, source: Source | None = None) -> S.Program:
    """Parse cnndsl text into a `syntax.Program`; raise `CnnSyntaxError` on malformed input.

    After a syntax error the parser resynchronises at the next statement: the statement in error
    is blanked out (positions kept) and the text parsed again, so one run reports every
    independent syntax error (up to MAX_ERRORS), carried by the first one (`CnnDslError.errors`)."""
    source = source or Source(text)
    _check_nesting(text, source)
    errors: list[CnnDslError] = []
    seen: set[tuple[int, int]] = set()
    current = text
    while True:
        try:
            program = _parse(current)
        except UnexpectedInput as err:
            error, position, final = _syntax_error(err, current)
        except CnnDslError as err:  # raised by a rule's method
            error, position, final = err, _offset(current, err.span), False
        except RecursionError:
            error, position, final = _too_deep(source), None, True
        else:
            if not errors:
                return program
            break
        if (error.line, error.column) not in seen:  # a resumed parse may stop at the same place again
            seen.add((error.line, error.column))
            errors.append(error)
        if final or position is None or len(errors) >= MAX_ERRORS:
            break
        blanked = _blank_statement(current, position, brace_alone=getattr(error, "_stray_brace", False))
        if blanked == current:
            break
        current = blanked
    raise CnnDslError.collect(errors).with_source(source) from None


def _offset(text: str, span: Span | None) -> int | None:
    """The index in `text` of a span's start."""
    if span is None or span.line < 1:
        return None
    start = 0
    for _ in range(span.line - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return None
    return start + span.column - 1


_STATEMENT_ENDS = ";\n{}"


def _blank_statement(text: str, position: int, brace_alone: bool = False) -> str:
    """`text` with the statement around `position` replaced by spaces (newlines kept, so every
    position stays where it was): where a parse resumes after an error. A statement runs from the
    separator or brace before it to the separator after it, across any braces it opens itself."""
    if brace_alone or position >= len(text) or (text[position] == "}" and _blank_before(text, position)):
        end = min(position + 1, len(text))
        return text[:position] + " " * (end - position) + text[end:]
    start = _statement_start(text, position)
    depth, end = 0, position
    while end < len(text):
        char = text[end]
        if char == "#":
            end = text.find("\n", end)
            end = len(text) if end < 0 else end
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                break
            depth -= 1
        elif char in ";\n" and depth == 0:
            break
        end += 1
    if end == start:  # nothing but the separator: drop it
        end = start + 1
    return text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]


def _blank_before(text: str, position: int) -> bool:
    """Whether only blanks stand between the statement separator before `position` and it."""
    return not text[_statement_start(text, position):position].strip()


def _statement_start(text: str, position: int) -> int:
    """The index where the statement holding `position` starts: after the separator or brace before it."""
    start = position
    while start > 0 and text[start - 1] not in _STATEMENT_ENDS:
        start -= 1
    return start


MAX_NESTING = 100  # braces and parentheses, one inside another


_BRACKETS = re.compile(r"[{}()]|#[^\n]*")  # a bracket, or a comment to pass over


def _check_nesting(text: str, source: Source) -> None:
    """Fail with a location, before parsing, where braces or parentheses nest absurdly deep."""
    if text.count("{") + text.count("(") <= MAX_NESTING:
        return
    depth = 0
    for found in _BRACKETS.finditer(text):  # the brackets alone: a program has few among its characters
        char = found.group()
        if char in ("{", "("):
            depth += 1
            if depth > MAX_NESTING:
                start = found.start()
                line_start = text.rfind("\n", 0, start) + 1
                number, column = text.count("\n", 0, start) + 1, start - line_start + 1
                raise LimitError(f"braces and parentheses nest deeper than {MAX_NESTING} levels",
                                 Span(number, column, number, column + 1),
                                 hint="a block can call another block instead").with_source(source)
        elif char in ("}", ")"):
            depth = max(depth - 1, 0)


def _too_deep(source: Source) -> LimitError:
    return LimitError("the program nests too deeply to parse (a very long expression?)",
                      hint="split it with block parameters").with_source(source)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    definition = _parser().get_terminal(terminal) if terminal in _terminal_names() else None
    if definition is not None and definition.pattern.type == "str":
        return f"'{definition.pattern.value}'"
    return terminal.lower()


@functools.cache
def _terminal_names() -> frozenset[str]:
    return frozenset(t.name for t in _parser().terminals)


def _expected_words(expected) -> str:
    # Words first (the end of the statement, keywords, kinds of value), bare symbols last.
    words = sorted({_describe(t) for t in expected if not t.startswith("__IGNORE")},
                   key=lambda w: (not w.startswith("the end"), not w.strip("'").isalpha(), w))
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


_OPTION_EXAMPLES = {
    "pad": "conv 3x3 pad1 -> 64", "same": "conv 3x3 pad same -> 64", "valid": "conv 3x3 pad valid -> 64",
    "dil": "conv 3x3 dil2 pad2 -> 64", "groups": "conv 3x3 groups4 -> 64", "depthwise": "conv 3x3 pad1 depthwise",
    "nobias": "conv 3x3 pad1 -> 64 nobias", "ceil": "pool max 3x3/2 ceil", "global": "pool avg global",
    "max": "pool max 2/2", "avg": "pool avg 3x3/2 pad1", "eps": "bn eps 1e-3", "momentum": "bn momentum .01",
    "always": "residual { ... } shortcut always { ... }",
}


# What a statement needs after the word it stops at (or stumbles after), as a value to write there;
# a list of the tokens lark would accept is no fix.
_NEXT_VALUE = {
    "x": ("the repeat count", "2"), "->": ("the output channel count", "64"), "pad": ("the padding", "1"),
    "groups": ("the group count", "4"), "dil": ("the dilation", "2"), "outpad": ("the output padding", "1"),
    "eps": ("the epsilon", "1e-5"), "momentum": ("the momentum", "0.1"),
}
_FIRST_WORDS = {
    "conv": "the kernel size and output channels: 'conv 3x3 -> 64'",
    "deconv": "the kernel, stride and output channels: 'deconv 2x2/2 -> 64'",
    "pool": "the pooling and its window: 'pool max 2/2' or 'pool avg global'",
    "fc": "the output size: 'fc 10'",
}


def _what_to_write(text: str, position: int) -> str | None:
    """The fix for a statement that stops or goes wrong at `position` right after a word that must
    be followed by a value (`pool max 2/2 x`, `conv 3x3 ->`, `conv`), or None."""
    written = text[_statement_start(text, position):position].split("#", 1)[0].strip()
    words = written.split()
    if not words:
        return None
    last = words[-1]
    if len(words) == 1 and last in _FIRST_WORDS:
        return f"write {_FIRST_WORDS[last]}"
    if words[:2] in (["pool", "max"], ["pool", "avg"]) and len(words) == 2:
        return f"write the window: '{written} 2/2' or '{written} global'"
    if last in _NEXT_VALUE and (last != "x" or len(words) > 1):
        what, example = _NEXT_VALUE[last]
        return f"write {what}: '{written} {example}'"
    return None


def misplaced_keyword(word: str) -> str | None:
    """A fix for a keyword used where a statement starts (`branch` outside concat, `nobias` alone)."""
    if word == "branch":
        return "branches go inside 'concat { branch { ... } branch { ... } }' or 'add { ... }'"
    if word in _OPTION_EXAMPLES:
        return f"'{word}' is an option: it goes on its layer's line, e.g. '{_OPTION_EXAMPLES[word]}'"
    return None


def _suggest(word: str) -> str | None:
    return closest(word.lower(), WORDS)


def _syntax_error(err: UnexpectedInput, text: str) -> tuple[CnnSyntaxError, int | None, bool]:
    """The error to report for lark's `err`, where in `text` the parse may resume after blanking the
    statement there (None: it cannot), and whether no resumed parse could make sense of the rest."""
    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        word = _word_at(text, err.pos_in_stream)
        hint = None
        if char in _LOOKALIKES:
            word = char
            hint = f"write {_LOOKALIKES[char]!r} instead of {char!r}"
        elif word and (suggestion := _suggest(word)) and suggestion != word:
            hint = f"did you mean '{suggestion}'?"
        elif char and not (char.isalnum() or char in "_{}()<>=-+*/.,;#\\"):
            hint = f"remove the {char!r}: it has no meaning in cnndsl (comments start with '#')"
        error = CnnSyntaxError(
            f"unexpected character {char!r}" + (f" in '{word}'" if word and word != char else ""),
            Span(err.line, err.column, err.line, err.column + max(len(word), 1)),
            hint=hint or _what_to_write(text, err.pos_in_stream)
            or f"expected {_expected_words(_accepts(err) or err.allowed or [])}",
        )
        return error, err.pos_in_stream, False
    if isinstance(err, UnexpectedEOF):
        return _unexpected_end(text, set(err.expected)), None, True
    assert isinstance(err, UnexpectedToken)
    token = err.token
    expected = set(err.expected)
    if err.interactive_parser is not None:
        # The LALR state's own list is merged with other contexts; simulating each token gives
        # exactly what could follow here.
        try:
            expected = set(err.interactive_parser.accepts()) or expected
        except UnexpectedInput:
            pass
    if token.type == "$END":
        return _unexpected_end(text, expected), None, True
    history = [t for t in (err.token_history or []) if t is not None]
    start = _statement_start(text, token.start_pos)
    first_word = text[start:token.start_pos + len(token)].split(maxsplit=1)[:1]
    if first_word and first_word[0].split("(")[0] in TOP_KEYWORDS and (opened := _open_braces(text, start)):
        # `network`, `input`, `block` ... inside braces: a '}' is missing before them.
        return _unclosed(text, opened[-1]), None, True
    span = _span(token)
    shown = "the end of the line" if token.type == "_SEP" and "\n" in token else repr(str(token))
    # `cnov 3x3`: the misspelled keyword was taken for a block call, and the error is on the next token.
    if history and history[-1].type == "NAME" and _at_statement_start(text, history[-1]):
        name = history[-1]
        suggestion = _suggest(str(name))
        if (where := misplaced_keyword(str(name))) is not None:
            return CnnSyntaxError(f"'{name}' cannot start a statement", _span(name), hint=where), token.start_pos, False
        if suggestion and suggestion != str(name):
            return CnnSyntaxError(
                f"unknown statement '{name}'",
                _span(name),
                hint=f"did you mean '{suggestion}'?",
                notes=[f"'{name}' is not a layer, and a block call would be written {name}(...)"],
            ), token.start_pos, False
    stray = token.type == "RBRACE" and ("_SEP" in expected or "$END" in expected)
    if stray and not _open_braces(text, token.start_pos):
        error = CnnSyntaxError("unexpected '}': no '{' is open here", span,
                               hint="remove the '}', or add the '{' it was meant to close")
        error._stray_brace = True
        return error, token.start_pos, False
    if token.type == "_SEP":
        message = f"the statement is incomplete: it stops at {shown}"
        span = Span(token.line, token.column, token.line, token.column + 1)
    else:
        message = f"unexpected {shown}"
    hint = f"expected {_expected_words(expected)}"
    arrow = token.type in ("NUMBER", "SIZE") and any(_describe(t) == "'->'" for t in expected)
    if (fix := _what_to_write(text, token.start_pos)) is not None:
        hint = fix
    elif arrow:
        # `conv 3x3 64`: the commonest slip is the missing arrow before the channel count.
        hint = f"did you mean '-> {token}'? ({hint})"
    elif str(token).isidentifier() and (suggestion := _suggest(str(token))) and suggestion != str(token):
        hint = f"did you mean '{suggestion}'? ({hint})"
    if token.type == "COMMA" and expected == {"RPAR"}:
        hint = "a pair has two values, height and width: '(kh, kw)'; remove the extra one"
    if "_SEP" in expected and token.type not in ("_SEP", "RBRACE") and not arrow:
        hint += "; two statements on one line are separated by ';'"
    error = CnnSyntaxError(message, span, hint=hint)
    if token.type == "RBRACE" and "_SEP" in expected:
        error._stray_brace = True  # `relu }` at the top level: the brace alone is the mistake
    return error, token.start_pos, False


_LOOKALIKES = {"\u00d7": "x", "\u2212": "-", "\u2013": "-", "\u2192": "->", "\u201c": '"', "\u201d": '"',
               "\u2018": "'", "\u2019": "'", "\uff1b": ";", "\u2010": "-", "\u00a0": " "}
"""Characters that word processors and chat windows put in for the ones cnndsl reads."""


def _unexpected_end(text: str, expected: set[str]) -> CnnSyntaxError:
    opened = _open_braces(text, len(text))
    if opened:
        return _unclosed(text, opened[-1])
    lines = _lines(text.rstrip("\n")) if text.strip("\n") else [""]
    return CnnSyntaxError(
        "the file ends in the middle of a statement",
        Span(len(lines), len(lines[-1]) + 1),
        hint=_what_to_write(text, len(text)) or f"finish the statement: expected {_expected_words(expected)}",
    )


def _unclosed(text: str, brace: tuple[int, int]) -> CnnSyntaxError:
    line, column = brace
    opener = _lines(text)[line - 1][: column - 1].split(";")[-1].strip()
    what = opener.split()[0].split("(")[0] if opener else ""
    owner = {"branch": "the branch", "residual": "the residual's body", "shortcut": "the shortcut",
             "concat": "the concat", "add": "the add", "mul": "the mul", "block": "the block",
             "train": "the train section", "augment": "the augment section",
             "preprocess": "the preprocess section"}.get(what, "it")
    return CnnSyntaxError(
        f"unclosed '{{' opened at {line}:{column}", Span(line, column, line, column + 1),
        hint=f"add the '}}' that closes {owner} after its last statement",
        notes=[f"the '{{' at line {line}, column {column} is never closed"])


def _lines(text: str) -> list[str]:
    """Lines as lark counts them: only "\n" ends a line."""
    return [line.rstrip("\r") for line in text.split("\n")]


def _open_braces(text: str, end: int) -> list[tuple[int, int]]:
    """(line, column) of each '{' still open at index `end` of `text`, outermost first; comments skipped."""
    stack: list[tuple[int, int]] = []
    for number, line in enumerate(_lines(text[:end]), 1):
        for column, char in enumerate(line.split("#", 1)[0], 1):
            if char == "{":
                stack.append((number, column))
            elif char == "}" and stack:
                stack.pop()
    return stack


def _accepts(err: UnexpectedInput) -> set[str]:
    """What may follow here, exactly: the lexer's list is merged across LALR contexts."""
    if getattr(err, "interactive_parser", None) is None:
        return set()
    try:
        return set(err.interactive_parser.accepts())
    except UnexpectedInput:
        return set()


def _at_statement_start(text: str, token: Token) -> bool:
    before = text[: token.start_pos].rstrip(" \t")
    return before == "" or before.endswith((";", "\n", "{"))


def _word_at(text: str, pos: int) -> str:
    start = pos
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    end = pos
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[start:end] or text[pos : pos + 1]
