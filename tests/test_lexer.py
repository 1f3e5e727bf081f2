"""cnndsl's parser (lark's stand-alone module generated from the grammar, with cnndsl's contextual
lexer) gives exactly the tokens, trees and errors of lark itself reading cnndsl.lark.

Lexing depends on the parser state (`pad1` is `pad` and 1 after a conv, `x2` a repeat after a
statement), so the comparison is of whole parses: the same tree with the same token types and
positions, or the same exception at the same place with the same expected set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lark
import pytest
from cnndsl.grammar import __main__ as regenerate
from hypothesis import given, settings
from hypothesis import strategies as st
from test_errors import CASES
from test_fuzz import DERANDOMIZE, EXAMPLES, TEXTS, mutated, program

from cnndsl import grammar
from cnndsl.lexer import TerminalContextualLexer
from cnndsl.parser import _parser

GRAMMAR = Path(grammar.__file__).with_name("cnndsl.lark").read_text(encoding="utf-8")
STOCK = lark.Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _dump(tree):
    # By name, not class: lark and each generated module have their own Token and Tree classes.
    if type(tree).__name__ == "Token":
        return (tree.type, str(tree), tree.line, tree.column, tree.end_line, tree.end_column)
    assert type(tree).__name__ == "Tree", tree
    return (tree.data, tuple(_dump(child) for child in tree.children))


def _outcome(parser, text: str):
    try:
        return _dump(parser.parse(text))
    except Exception as err:  # noqa: BLE001 - lark's or a generated module's UnexpectedInput
        if not any(cls.__name__ == "UnexpectedInput" for cls in type(err).__mro__):
            raise
        token = getattr(err, "token", None)
        expected = getattr(err, "expected", None) or getattr(err, "allowed", None) or ()
        return (type(err).__name__, err.line, err.column, token and (token.type, str(token)),
                tuple(sorted(expected)))


def _same(text: str) -> None:
    assert _outcome(_parser(), text) == _outcome(STOCK, text)


def test_cnndsl_parser_uses_its_own_lexer():
    assert isinstance(_parser().parser.lexer, TerminalContextualLexer)
    assert not isinstance(STOCK.parser.lexer, TerminalContextualLexer)


def test_parser_module_was_generated_from_this_grammar():
    assert regenerate.recorded_digest(regenerate.MODULE.read_text(encoding="utf-8")) == \
        regenerate.grammar_digest(GRAMMAR), "grammar/cnndsl.lark changed: run `python -m cnndsl.grammar`"
    assert regenerate.main(["--check"]) == 0


def test_check_fails_for_a_module_of_another_grammar(tmp_path, monkeypatch):
    edited = tmp_path / "cnndsl.lark"
    edited.write_text(GRAMMAR + "\n// an edit\n", encoding="utf-8")
    monkeypatch.setattr(regenerate, "GRAMMAR", edited)
    assert regenerate.main(["--check"]) == 1


def test_regenerating_gives_a_parser_that_parses_alike(tmp_path):
    # Lark's tables are numbered differently from run to run, so compare behaviour, not bytes.
    module = tmp_path / "regenerated_lalr.py"
    module.write_text(regenerate.generate(GRAMMAR), encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        import regenerated_lalr
    finally:
        sys.path.remove(str(tmp_path))
    fresh = regenerated_lalr.Lark_StandAlone(propagate_positions=True)
    for text in TEXTS.values():
        assert _outcome(fresh, text) == _outcome(STOCK, text)


def test_analyze_does_not_import_lark():
    code = ("import sys, cnndsl.cli\n"
            f"cnndsl.cli.main(['analyze', '--json', {str(EXAMPLES[0])!r}], standalone_mode=False)\n"
            "assert 'lark' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lark'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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
