"""Regenerate cnndsl's parser from the grammar: `python -m cnndsl.grammar [--check]`.

cnndsl parses with the stand-alone LALR parser that lark generates from `cnndsl.lark`: one module
holding lark's parser runtime and the grammar's tables, which cnndsl imports instead of lark
(importing lark and loading its cached tables was a third of `cnndsl analyze`'s start-up). Run
this after editing the grammar; `--check` (and a test) fails while the module is older than the
grammar. lark is needed here only, not at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAMMAR = HERE / "cnndsl.lark"
MODULE = HERE / "cnndsl_lalr.py"
_DIGEST = re.compile(r'^GRAMMAR_SHA256 = "([0-9a-f]{64})"$', re.MULTILINE)


def grammar_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_digest(module_text: str) -> str | None:
    """The digest of the grammar the module was generated from, as its header records it."""
    match = _DIGEST.search(module_text)
    return match.group(1) if match else None


def generate(grammar: str) -> str:
    """The stand-alone parser module for `grammar`, with the options cnndsl parses with."""
    from lark import Lark
    from lark.tools.standalone import gen_standalone

    parser = Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=False)
    lines = [
        "# Generated from cnndsl.lark by lark's stand-alone tool (`python -m cnndsl.grammar`): do not edit.",
        "# After changing the grammar, regenerate this file; a test fails until then.",
        "# ruff: noqa",
        f'GRAMMAR_SHA256 = "{grammar_digest(grammar)}"',
        "",
    ]
    gen_standalone(parser, output=lambda *parts: lines.append(" ".join(map(str, parts))), compress=True)
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnndsl.grammar", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the parser module was not generated from the grammar as it is now")
    args = parser.parse_args(argv)
    grammar = GRAMMAR.read_text(encoding="utf-8")
    if args.check:
        recorded = recorded_digest(MODULE.read_text(encoding="utf-8")) if MODULE.exists() else None
        if recorded != grammar_digest(grammar):
            print(f"{MODULE.name} is out of date with {GRAMMAR.name}: run `python -m cnndsl.grammar`", file=sys.stderr)
            return 1
        print(f"{MODULE.name} is up to date with {GRAMMAR.name}")
        return 0
    try:
        module = generate(grammar)
    except ImportError:
        print("regenerating the parser needs lark: pip install 'lark>=1.2'", file=sys.stderr)
        return 1
    _write_atomically(MODULE, module)
    print(f"wrote {MODULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
