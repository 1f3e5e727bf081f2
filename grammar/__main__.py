"""Regenerate cnndsl's parser from the grammar: `python -m cnndsl.grammar [--check]`.

cnndsl parses with the stand-alone LALR parser that lark generates from `cnndsl.lark`: one module
holding lark's parser runtime and the grammar's tables, which cnndsl imports instead of lark
(importing lark and loading its cached tables was a third of `cnndsl analyze`'s start-up), used
as lark made it. Ahead of lark's code the module records the grammar's keywords by where they
appear (`keywords`), which the parser's messages list and suggest. Run this after editing the
grammar. `--check` exits 1 unless the committed module is, byte for byte,
what the installed lark generates now. lark is needed here only, not at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import pprint
import re
import sys
from collections import defaultdict
from pathlib import Path

from . import fast_path

HERE = Path(__file__).resolve().parent
GRAMMAR = HERE / "cnndsl.lark"
MODULE = HERE / "cnndsl_lalr.py"
_DIGEST = re.compile(r'^GRAMMAR_SHA256 = "([0-9a-f]{64})"$', re.MULTILINE)
_LARK_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)  # a line lark's tool writes
_WORDS = re.compile(r"\(([a-z_][a-z0-9_]*(?:\|[a-z_][a-z0-9_]*)*)\)\(\?!\\w\)")  # (relu6|relu|...)(?!\w)


def grammar_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_digest(module_text: str) -> str | None:
    """The digest of the grammar the module was generated from, as its header records it."""
    match = _DIGEST.search(module_text)
    return match.group(1) if match else None


def recorded_lark_version(module_text: str) -> str | None:
    """The version of lark that generated the module."""
    match = _LARK_VERSION.search(module_text)
    return match.group(1) if match else None


def _canonical(table):
    """`table` (lark's IntParseTable) with its states numbered in one fixed order.

    lark numbers the LALR states in the iteration order of sets of its item sets, which hash by
    identity, so the tables differ from run to run (even with a fixed PYTHONHASHSEED) and the module
    could never be compared byte for byte. Here states are numbered breadth-first from the start
    states, following each state's actions by symbol name, and each state's actions are in name
    order (which fixes the order of the token list lark serializes): an isomorphic table.
    """
    from lark.parsers.lalr_analysis import IntParseTable, Shift

    order: list[int] = []
    number: dict[int, int] = {}

    def visit(state: int) -> None:
        if state not in number:
            number[state] = len(order)
            order.append(state)

    for start in sorted(table.start_states):
        visit(table.start_states[start])
    for state in order:  # grows while it is walked: breadth-first
        for _symbol, (action, target) in sorted(table.states[state].items()):
            if action is Shift:
                visit(target)
    unreachable = set(table.states) - set(number)
    if unreachable:
        raise RuntimeError(f"{len(unreachable)} LALR states are unreachable from the start states")

    states = {
        number[state]: {symbol: (action, number[target] if action is Shift else target)
                        for symbol, (action, target) in sorted(table.states[state].items())}
        for state in order
    }
    return IntParseTable(states,
                         {start: number[s] for start, s in sorted(table.start_states.items())},
                         {start: number[s] for start, s in sorted(table.end_states.items())})


def terminal_words(parser) -> dict[str, tuple[str, ...]]:
    """terminal name -> the words it matches, for every terminal that matches words: a keyword
    (`"conv"`) or an alternation of words (`/(max|avg)(?!\\w)/`)."""
    words: dict[str, tuple[str, ...]] = {}
    for terminal in parser.terminals:
        pattern = terminal.pattern
        if pattern.type == "str" and pattern.value.isidentifier():
            words[terminal.name] = (pattern.value,)
        elif pattern.type == "re" and (match := _WORDS.fullmatch(pattern.value)):
            words[terminal.name] = tuple(match.group(1).split("|"))
    return words


def keywords(parser) -> dict[str, tuple[str, ...]]:
    """The grammar's keywords by where they appear, each list sorted:

    TOP: the first word of each top-level item other than a statement (`network`, `train`);
    LAYER: the first word of each statement (`conv`, every activation, `residual`);
    OPTION: every other word within statements (`pad`, `nobias`, the repeat's `x`);
    SECTION: every other word within top-level items that hold no statements (`scale`, `epochs`).
    """
    words = terminal_words(parser)
    rules: dict[str, list[list[str]]] = defaultdict(list)
    for rule in parser.rules:
        rules[rule.origin.name].append([symbol.name for symbol in rule.expansion])

    def reachable(*roots: str) -> set[str]:
        seen, todo = set(), list(roots)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += [s for expansion in rules.get(name, ()) for s in expansion if s in rules]
        return seen

    def first_words(names) -> set[str]:
        return {w for n in names for expansion in rules[n] if expansion for w in words.get(expansion[0], ())}

    def all_words(names) -> set[str]:
        return {w for n in names for expansion in rules[n] for s in expansion for w in words.get(s, ())}

    items = [e[0] for e in rules["_top"] if e != ["_stmt"]]
    statements = reachable("_stmt")
    top = first_words(items)
    layer = first_words(e[0] for e in rules["_simple_stmt"])
    option = all_words(statements) - layer
    section = set().union(*(all_words(reachable(i)) for i in items if "_stmt" not in reachable(i))) - top
    return {"TOP": tuple(sorted(top)), "LAYER": tuple(sorted(layer)), "OPTION": tuple(sorted(option)),
            "SECTION": tuple(sorted(section))}


def _literal(value) -> str:
    return pprint.pformat(value, width=100, compact=True, sort_dicts=False)


def generate(grammar: str) -> str:
    """The stand-alone parser module for `grammar`, with the options cnndsl parses with."""
    import lark
    from lark.tools.standalone import gen_standalone

    parser = lark.Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                       maybe_placeholders=False)
    lalr = parser.parser.parser  # lark's LALR_Parser; the module serializes its `_parse_table`
    lalr._parse_table = _canonical(lalr._parse_table)
    lines = [
        f"# Generated by lark {lark.__version__}'s stand-alone tool from cnndsl.lark by `python -m cnndsl.grammar`:",
        "# do not edit. Regenerate it after changing the grammar (`python -m cnndsl.grammar --check` and a",
        "# test fail until then).",
        "# ruff: noqa",
        f'GRAMMAR_SHA256 = "{grammar_digest(grammar)}"',
        "",
        "# The grammar's keywords (`keywords` in grammar/__main__.py), and the words that each terminal",
        "# matching one of several words matches: what cnndsl's messages list and suggest.",
        *(f"{place}_KEYWORDS = {_literal(words)}" for place, words in keywords(parser).items()),
        "TERMINAL_WORDS = " + _literal({name: words for name, words in terminal_words(parser).items()
                                        if len(words) > 1}),
        "",
    ]
    gen_standalone(parser, output=lambda *parts: lines.append(" ".join(map(str, parts))), compress=False)
    lines += fast_path.source(parser)
    return "\n".join(lines) + "\n"


def _why_stale(committed: str, grammar: str, installed_lark: str) -> str:
    made_by = recorded_lark_version(committed)
    if made_by != installed_lark:
        return (f"{MODULE.name} was generated by lark {made_by}, but lark {installed_lark} is installed: "
                f"regenerate it with `python -m cnndsl.grammar`, or check it with lark=={made_by}")
    if recorded_digest(committed) != grammar_digest(grammar):
        return f"{GRAMMAR.name} changed since {MODULE.name} was generated: run `python -m cnndsl.grammar`"
    return (f"{MODULE.name} differs from what its generator writes (edited by hand? another zlib?): "
            "run `python -m cnndsl.grammar`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnndsl.grammar", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the parser module is what the installed lark generates from the grammar")
    args = parser.parse_args(argv)
    grammar = GRAMMAR.read_text(encoding="utf-8")
    try:
        import lark
    except ImportError:
        print("generating the parser needs lark: pip install 'lark>=1.2'", file=sys.stderr)
        return 1
    module = generate(grammar)
    if args.check:
        committed = MODULE.read_text(encoding="utf-8") if MODULE.exists() else ""
        if committed != module:
            print(_why_stale(committed, grammar, lark.__version__), file=sys.stderr)
            return 1
        print(f"{MODULE.name} is up to date with {GRAMMAR.name}")
        return 0
    from cnndsl.outputs import write_atomic

    write_atomic(MODULE, module.encode("utf-8"))
    print(f"wrote {MODULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
