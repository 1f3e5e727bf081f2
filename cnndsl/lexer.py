"""Lark's contextual lexer, with scanners that cost nothing to build.

Lark's contextual lexer gives every parser state its own scanner: one regular expression that
alternates the terminals the state accepts. Python's `re` compiles each of those alternations on
first use, about 40 of them to parse a ResNet, which is most of a `cnndsl analyze` run's parsing
time. An alternation matches its first alternative that matches, so trying the terminals one by
one in the same order gives the same tokens; each terminal's pattern is compiled once per process
(`re` caches it) and shared by every state.

Installed through lark's `_plugins` option (how lark-cython replaces lark's classes), into the
stand-alone parser lark generates for cnndsl (`cnndsl.grammar.cnndsl_lalr`).
"""

from __future__ import annotations

from copy import copy
from functools import cached_property

from .grammar.cnndsl_lalr import BasicLexer, CallChain, ContextualLexer, PatternStr, TerminalDef, UnlessCallback


class TerminalScanner:
    """Drop-in for `lark.lexer.Scanner`: the same first-match-in-order answer, without the alternation."""

    def __init__(self, terminals: list[TerminalDef], g_regex_flags: int, re_, use_bytes: bool) -> None:
        if use_bytes:
            raise NotImplementedError("cnndsl parses text, not bytes")
        self.terminals = terminals
        self.allowed_types = {t.name for t in terminals}
        self._patterns = [(re_.compile(t.pattern.to_regexp(), g_regex_flags), t.name) for t in terminals]

    def match(self, text, pos: int) -> tuple[str, str] | None:
        # lark >= 1.2 hands over a TextSlice (the text and where to stop).
        string, end = text.text, text.end
        for pattern, name in self._patterns:
            m = pattern.match(string, pos, end)
            if m:
                return m.group(0), name
        return None

    def fullmatch(self, text: str) -> str | None:
        for pattern, name in self._patterns:
            if pattern.fullmatch(text):
                return name
        return None


def _keywords_of(terminal: TerminalDef, strings: list[TerminalDef], g_regex_flags: int, re_) -> list[TerminalDef]:
    """The string terminals (keywords) that `terminal`'s pattern also matches whole, as lark's
    `_create_unless` finds them: a NAME token that reads `conv` is the keyword `conv`."""
    regexp = terminal.pattern.to_regexp()
    return [s for s in strings if s.priority == terminal.priority
            and (m := re_.match(regexp, s.pattern.value, g_regex_flags)) and m.group(0) == s.pattern.value]


class TerminalLexer(BasicLexer):
    def _build_scanner(self) -> TerminalScanner:
        # lark's _create_unless, with TerminalScanner in place of Scanner.
        strings = [t for t in self.terminals if isinstance(t.pattern, PatternStr)]
        embedded: set[TerminalDef] = set()
        self.callback = {}
        for terminal in self.terminals:
            if isinstance(terminal.pattern, PatternStr):
                continue
            keywords = _keywords_of(terminal, strings, self.g_regex_flags, self.re)
            if keywords:
                embedded.update(k for k in keywords if k.pattern.flags <= terminal.pattern.flags)
                self.callback[terminal.name] = UnlessCallback(
                    TerminalScanner(keywords, self.g_regex_flags, self.re, self.use_bytes))
        for type_, f in self.user_callbacks.items():
            if type_ in self.callback:
                self.callback[type_] = CallChain(self.callback[type_], f, lambda t, type_=type_: t.type == type_)
            else:
                self.callback[type_] = f
        kept = [t for t in self.terminals if t not in embedded]
        return TerminalScanner(kept, self.g_regex_flags, self.re, self.use_bytes)


class _LexersByState(dict):
    """parser state -> its lexer, made the first time a parse reaches the state."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, state: int) -> TerminalLexer:
        lexer = self[state] = self._make(state)
        return lexer


class TerminalContextualLexer(ContextualLexer):
    """lark's ContextualLexer, making each state's lexer when first needed: lark makes one for each
    of the grammar's ~370 states up front (a quarter of building the parser), a parse needs a few
    dozen."""

    BasicLexer = TerminalLexer

    def __init__(self, conf, states: dict[int, list[str]], always_accept=()) -> None:
        self._conf = copy(conf)
        self._conf.terminals = list(conf.terminals)
        self._states = states
        self._always = set(conf.ignore) | set(always_accept)
        self._by_accepts: dict[frozenset[str], TerminalLexer] = {}  # states that accept the same share one
        self.lexers = _LexersByState(self._lexer_for)

    def _lexer_for(self, state: int) -> TerminalLexer:
        accepts = frozenset(self._states[state])
        lexer = self._by_accepts.get(accepts)
        if lexer is None:
            conf = copy(self._conf)
            conf.terminals = [conf.terminals_by_name[n] for n in accepts | self._always if n in conf.terminals_by_name]
            lexer = self._by_accepts[accepts] = self.BasicLexer(conf)
        return lexer

    @cached_property
    def root_lexer(self) -> TerminalLexer:
        """Every terminal: on an error, what the text would have been anywhere (lark's better message)."""
        conf = copy(self._conf)
        conf.skip_validation = True
        return self.BasicLexer(conf)


PLUGINS = {"ContextualLexer": TerminalContextualLexer}
