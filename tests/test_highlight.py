"""Highlighting: the Pygments lexer (an entry point, so `pygmentize -l cnndsl` finds it) and the
TextMate grammar in editors/ cover every character of every example and sketch program."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number

from cnndsl.grammar.cnndsl_lalr import LAYER_KEYWORDS, OPTION_KEYWORDS, SECTION_KEYWORDS, TERMINAL_WORDS, TOP_KEYWORDS
from cnndsl.highlight import CnnDslLexer

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "examples").glob("*.cnn")) + sorted((ROOT / "tests" / "fixtures").glob("sketch_*.cnn"))
GRAMMAR = json.loads((ROOT / "editors" / "cnndsl.tmLanguage.json").read_text(encoding="utf-8"))
EVERY_WORD = set(TOP_KEYWORDS + LAYER_KEYWORDS + OPTION_KEYWORDS + SECTION_KEYWORDS).union(*TERMINAL_WORDS.values())
SAMPLE = "block se(c=in_c) { conv 3x3/2 pad1 -> 2x depthwise; relu6 }  # gate\nmax(1, 2)\nexpect params < 5M\n"


def test_the_entry_point_finds_the_lexer():
    assert isinstance(get_lexer_by_name("cnndsl"), CnnDslLexer)
    assert isinstance(get_lexer_for_filename("resnet.cnn"), CnnDslLexer)
    proc = subprocess.run([sys.executable, "-m", "pygments", "-l", "cnndsl", "-f", "html"],
                          input="conv 3x3 -> 8  # c\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '<span class="k">conv</span>' in proc.stdout and '<span class="c1"># c</span>' in proc.stdout


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_no_error_token_in_any_program(path):
    text = path.read_text(encoding="utf-8")
    tokens = list(CnnDslLexer().get_tokens(text))
    assert [value for kind, value in tokens if kind in Error] == []
    assert "".join(value for _, value in tokens) == text


def test_what_each_word_is():
    kinds = {value: kind for kind, value in CnnDslLexer().get_tokens(SAMPLE) if value.strip()}
    assert kinds["block"] in Keyword.Declaration and kinds["se"] in Name.Function
    assert kinds["conv"] in Keyword and kinds["pad"] in Keyword.Pseudo and kinds["depthwise"] in Keyword.Pseudo
    assert kinds["3x3"] in Number and kinds["1"] in Number and kinds["2x"] in Number and kinds["5M"] in Number
    assert kinds["relu6"] in Name.Builtin and kinds["max"] in Name.Builtin and kinds["in_c"] in Name.Builtin
    assert kinds["# gate"] in Comment and kinds["params"] in Name.Attribute
    # An invalid character is shown as one
    assert [v for k, v in CnnDslLexer().get_tokens("conv $ 3\n") if k in Error] == ["$"]


# ------------------------------------------------------------------ the TextMate grammar


def scopes(line: str) -> list[tuple[str, str]]:
    """(text, scope) of one line, as a TextMate engine scans it: at each position the pattern whose
    match starts first (the earlier pattern on a tie); text no pattern matches has no scope."""
    patterns = [(re.compile(p["match"]), p) for p in GRAMMAR["patterns"]]
    out, position = [], 0
    while position < len(line):
        found = [(m.start(), i, m) for i, (regex, _) in enumerate(patterns)
                 if (m := regex.search(line, position)) and m.end() > m.start()]
        if not found:
            out.append((line[position:], ""))
            break
        start, index, match = min(found, key=lambda f: (f[0], f[1]))
        if start > position:
            out.append((line[position:start], ""))
        rule = patterns[index][1]
        if "captures" in rule:
            for group, capture in rule["captures"].items():
                out.append((match.group(int(group)), capture["name"]))
        else:
            out.append((match.group(), rule["name"]))
        position = match.end()
    return out


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_textmate_grammar_scopes_every_character(path):
    for line in path.read_text(encoding="utf-8").splitlines():
        unscoped = [text for text, scope in scopes(line) if not scope and text.strip()]
        assert unscoped == [], line


def test_textmate_grammar_knows_every_keyword():
    for word in sorted(EVERY_WORD):
        ((text, scope),) = [(t, s) for t, s in scopes(word) if t.strip()]
        assert text == word and scope.split(".")[0] in ("keyword", "storage", "support"), (word, scope)
    line = dict((t, s) for t, s in scopes(SAMPLE.splitlines()[0]))
    assert line["se"].startswith("entity.name.function") and line["3x3"].startswith("constant.numeric")
    assert line["# gate"].startswith("comment") and line["1"].startswith("constant.numeric")
