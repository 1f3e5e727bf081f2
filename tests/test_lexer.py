"""cnndsl's contextual lexer (cnndsl.lexer) gives exactly the tokens, trees and errors of lark's own.

Lexing depends on the parser state (`pad1` is `pad` and 1 after a conv, `x2` a repeat after a
statement), so the comparison is of whole parses: the same tree with the same token types and
positions, or the same exception at the same place with the same expected set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput
from test_errors import CASES
from test_fuzz import DERANDOMIZE, TEXTS, mutated, program

from cnndsl import grammar
from cnndsl.lexer import TerminalContextualLexer
from cnndsl.parser import _parser

GRAMMAR = Path(grammar.__file__).with_name("cnndsl.lark").read_text(encoding="utf-8")
STOCK = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _dump(tree):
    if isinstance(tree, Token):
        return (tree.type, str(tree), tree.line, tree.column, tree.end_line, tree.end_column)
    assert isinstance(tree, Tree)
    return (tree.data, tuple(_dump(child) for child in tree.children))


def _outcome(parser: Lark, text: str):
    try:
        return _dump(parser.parse(text))
    except UnexpectedInput as err:
        token = getattr(err, "token", None)
        expected = getattr(err, "expected", None) or getattr(err, "allowed", None) or ()
        return (type(err).__name__, err.line, err.column, token and (token.type, str(token)),
                tuple(sorted(expected)))


def _same(text: str) -> None:
    assert _outcome(_parser(), text) == _outcome(STOCK, text)


def test_cnndsl_parser_uses_its_own_lexer():
    assert isinstance(_parser().parser.lexer, TerminalContextualLexer)
    assert not isinstance(STOCK.parser.lexer, TerminalContextualLexer)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_examples_lex_alike(name):
    _same(TEXTS[name])


@pytest.mark.parametrize("text", [case.text for case in CASES], ids=[case.id for case in CASES])
def test_error_table_lexes_alike(text):
    _same(text)


@pytest.mark.parametrize("text", [
    "conv 3x3 pad1 -> 64", "conv 3x3/2 pad 1x0 -> 2x", "relu x2", "conv 3 -> 8 x 2", "block b(c) { conv 1 -> c }",
    "expect params 61.7K", "expect rf >= 14", "pool max 3x3/2 ceil", "padding", "conv3x3", "x", "3x", "2x3x",
    "conv 1x1 -> 2x depthwise", "input 1x28x28\n\\\n", "é", "conv 3x3 -> 5M", "fc -> 10 nobias", "",
])
def test_corner_cases_lex_alike(text):
    _same(text)


@settings(max_examples=150, deadline=None, derandomize=DERANDOMIZE)
@given(mutated())
def test_mutated_examples_lex_alike(text):
    _same(text)


@settings(max_examples=100, deadline=None, derandomize=DERANDOMIZE)
@given(program())
def test_generated_programs_lex_alike(text):
    _same(text)


@settings(max_examples=100, deadline=None, derandomize=DERANDOMIZE)
@given(st.text(alphabet="conv pad x1230/->;\n{}()relu#.KM", max_size=40))
def test_token_soup_lexes_alike(text):
    _same(text)
