"""Malformed and inconsistent programs: each is a CnnDslError of the right class, at the right line
and column, with a message that names the problem and (where the issue asks for one) a fix.
`cnndsl check` on each prints the diagnostic, no traceback, and exits 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import (
    BadValueError,
    CnnSyntaxError,
    ExpectationError,
    LimitError,
    ShapeError,
    UnknownNameError,
)


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    error: type
    line: int
    column: int
    words: tuple[str, ...]  # in the message
    hint: tuple[str, ...] = ()  # in the fix


NET = "network t\ninput 3x32x32\n"  # two lines: the statements of a case start at line 3
LENET = "network t\ninput 1x28x28\nconv 5x5 -> 6\n"  # 156 parameters, 86,400 MACs, rf 5, output 6x24x24

CASES = [
    # ---------------------------------------------------------------- syntax
    Case("missing channel count", NET + "conv 3x3 -> ; relu\n", CnnSyntaxError, 3, 13,
         ("incomplete", "';'"), ("write the output channel count: 'conv 3x3 -> 64'",)),
    Case("missing repeat count", NET + "pool max 2/2 x\n", CnnSyntaxError, 3, 15, ("incomplete",),
         ("write the repeat count: 'pool max 2/2 x 2'",)),
    Case("missing repeat count at the end of the file", NET + "relu x", CnnSyntaxError, 3, 7, ("ends",),
         ("write the repeat count: 'relu x 2'",)),
    Case("repeat count not a number", NET + "relu x=3\n", CnnSyntaxError, 3, 7, ("'='",),
         ("write the repeat count: 'relu x 2'",)),
    Case("conv alone", NET + "conv\n", CnnSyntaxError, 3, 5, ("incomplete",),
         ("write the kernel size and output channels: 'conv 3x3 -> 64'",)),
    Case("missing arrow", NET + "conv 3x3 64\n", CnnSyntaxError, 3, 10, ("unexpected", "'64'"), ("'-> 64'",)),
    Case("junk after statement", NET + "conv 3x3 -> 8 ;, relu\n", CnnSyntaxError, 3, 16, ("unexpected", "','"), ()),
    Case("stray character", NET + "conv 3x3 -> 8 $ relu\n", CnnSyntaxError, 3, 15, ("unexpected character", "'$'"),
         ("remove",)),
    Case("stray character at line start", NET + "relu\n@relu\n", CnnSyntaxError, 4, 1, ("'@'",), ("remove",)),
    Case("unclosed brace", NET + "block b(c) {\n  conv 3x3 -> c\nb(4)\n", CnnSyntaxError, 3, 12,
         ("unclosed '{' opened at 3:12",), ("'}'", "the block")),
    Case("unclosed branch", NET + "concat {\n  branch { relu }\n  branch { relu\n}\n", CnnSyntaxError, 3, 8,
         ("unclosed '{' opened at 3:8",), ("'}'", "the concat")),
    Case("unclosed brace before the next item", NET + "block b {\n  relu\nnetwork x\n", CnnSyntaxError, 3, 9,
         ("unclosed '{' opened at 3:9",), ("'}'",)),
    Case("closing brace without opening", NET + "relu }\n", CnnSyntaxError, 3, 6, ("unexpected", "'}'"), ()),
    Case("misspelled conv", NET + "cnov 3x3 -> 8\n", CnnSyntaxError, 3, 1, ("unknown statement", "cnov"),
         ("did you mean 'conv'",)),
    Case("misspelled pool", NET + "conv 3x3 -> 8; relu; poool max 2\n", CnnSyntaxError, 3, 22, ("poool",),
         ("did you mean 'pool'",)),
    Case("misspelled call", NET + "cnov(3)\n", UnknownNameError, 3, 1, ("cnov",), ("did you mean 'conv'",)),
    Case("shortcut without a residual", NET + "relu\nshortcut { conv 1x1 -> 4 }\n", CnnSyntaxError, 4, 1,
         ("'shortcut' must follow a residual",), ("residual { ... } shortcut { ... }",)),
    Case("branch outside concat", NET + "branch { relu }\n", CnnSyntaxError, 3, 1, ("'branch' cannot start",),
         ("inside 'concat",)),
    Case("option on its own line", NET + "conv 3x3 -> 4\nnobias\n", CnnSyntaxError, 4, 1, ("'nobias' cannot start",),
         ("-> 64 nobias",)),
    Case("bad number", NET + "conv 3x3 -> 8.5.5\n", CnnSyntaxError, 3, 16, ("unexpected", "'.5'"), ()),
    Case("bad kernel", NET + "conv 3x3x -> 8\n", CnnSyntaxError, 3, 9, ("unexpected", "'x'"), ()),
    Case("bad size suffix", LENET + "expect params < 5X\n", CnnSyntaxError, 4, 18, ("unexpected", "'X'"), ()),
    Case("network without a name", "network\ninput 3x32x32\nrelu\n", CnnSyntaxError, 1, 8, ("incomplete",),
         ("a name",)),
    # ---------------------------------------------------------------- values
    Case("non-integer channels", NET + "conv 3x3 -> 64/3\n", BadValueError, 3, 13, ("whole number", "21.3333"),
         ("round",)),
    Case("zero channels", NET + "conv 3x3 pad1 -> 0\n", BadValueError, 3, 18, ("at least 1", "got 0"), ()),
    Case("negative channels", NET + "conv 3x3 -> -3\n", BadValueError, 3, 13, ("at least 1", "-3"), ()),
    Case("zero stride", NET + "conv 3x3/0 -> 4\n", BadValueError, 3, 10, ("stride", "at least 1"), ()),
    Case("conv without channels", NET + "conv 3x3\n", BadValueError, 3, 1, ("output channel count",), ("-> C",)),
    Case("division by zero", NET + "block b(c) { conv 3x3 -> 64/c }\nb(0)\n", BadValueError, 3, 26,
         ("division by zero",), ()),
    Case("option twice", NET + "conv 3x3 pad1 pad2 -> 8\n", BadValueError, 3, 15, ("'pad'", "twice"), ("keep one",)),
    Case("dropout above 1", NET + "dropout 1.5\n", BadValueError, 3, 9, ("dropout probability", "1.5"), ()),
    Case("dropout negative", NET + "dropout -0.1\n", BadValueError, 3, 9, ("dropout probability", "-0.1"), ()),
    Case("alpha on relu", NET + "relu .5\n", BadValueError, 3, 6, ("relu takes no parameter",), ("'leaky'",)),
    Case("multiplier without depthwise", NET + "conv 3x3 -> 2x\n", BadValueError, 3, 10, ("multiplier",),
         ("depthwise",)),
    Case("groups with depthwise", NET + "conv 3x3 depthwise groups3\n", BadValueError, 3, 20,
         ("'groups' and 'depthwise'",), ()),
    Case("repeat negative times", NET + "relu x (0-1)\n", BadValueError, 3, 9, ("repeat count", "at least 0"), ()),
    Case("repeat fractional", NET + "relu x 2.5\n", BadValueError, 3, 8, ("repeat count", "whole number"), ()),
    Case("global pool with padding", NET + "pool max global pad1\n", BadValueError, 3, 17, ("global pool",),
         ("remove 'pad'",)),
    Case("empty concat", NET + "concat { }\n", BadValueError, 3, 1, ("at least one branch",), ("branch",)),
    Case("block named like a keyword", NET + "block relu(c) { conv 1x1 -> c }\nconv 1x1 -> 4\n", BadValueError, 3, 1,
         ("keyword",), ("relu_block",)),
    Case("bad input shape", "input 3x32\nrelu\n", BadValueError, 1, 7, ("CxHxW", "3x32"), ("3x32x32",)),
    Case("zero input size", "input 0x32x32\nrelu\n", BadValueError, 1, 7, ("0x32x32",), ()),
    # ---------------------------------------------------------------- headers
    Case("duplicate network", "network a\nnetwork b\ninput 3x32x32\nrelu\n", BadValueError, 2, 1,
         ("'network'", "more than once"), ("keep one",)),
    Case("duplicate input", NET + "input 3x32x32\nrelu\n", BadValueError, 3, 7, ("'input'", "more than once"),
         ("keep one",)),
    Case("duplicate block", NET + "block b { relu }\nblock b { relu }\nb\n", BadValueError, 4, 1,
         ("block b", "defined twice"), ("rename",)),
    Case("duplicate parameter", NET + "block b(c, c) { relu }\nb(1, 2)\n", BadValueError, 3, 12,
         ("parameter 'c'", "twice"), ()),
    Case("missing input", "network a\n\nconv 3x3 -> 3\n", BadValueError, 3, 1, ("no 'input'",),
         ("input 3x224x224",)),
    Case("no layers", "network a\ninput 3x32x32\n", BadValueError, 2, 7, ("no layers",), ("conv",)),
    # ---------------------------------------------------------------- names and blocks
    Case("undefined block", NET + "foo(3)\n", UnknownNameError, 3, 1, ("unknown block", "'foo'"),
         ("define it: 'block foo(p1) { ... }'", "(no block is defined)")),
    Case("undefined block among others", NET + "block b { relu }\nfoo(3, k=2)\n", UnknownNameError, 4, 1,
         ("unknown block", "'foo'"), ("'block foo(p1, k) { ... }'", "(blocks defined: b)")),
    Case("undefined block, close to a defined one", NET + "block basic(c) { relu }\nbasc(3)\n", UnknownNameError,
         4, 1, ("'basc'",), ("did you mean 'basic'",)),
    Case("too many arguments", NET + "block b(c) { conv 3x3 -> c }\nb(1, 2)\n", UnknownNameError, 4, 1,
         ("takes 1 argument", "2 given"), ("b(c)",)),
    Case("unknown keyword argument", NET + "block b(c, s=1) { conv 3x3/s -> c }\nb(4, z=2)\n", UnknownNameError,
         4, 6, ("no parameter 'z'",), ("b(c, s=...)",)),
    Case("keyword given twice", NET + "block b(c) { relu }\nb(1, c=2)\n", UnknownNameError, 4, 6,
         ("'c'", "twice"), ()),
    Case("missing argument", NET + "block b(c) { conv 3x3 -> c }\nb()\n", UnknownNameError, 4, 1,
         ("needs a value for 'c'",), ("b(c)",)),
    Case("undefined name at top level", NET + "conv 3x3 -> c\n", UnknownNameError, 3, 13, ("unknown name 'c'",),
         ("block parameters",)),
    Case("undefined name in a block", NET + "block b(chan) { conv 3x3 -> chn }\nb(3)\n", UnknownNameError, 3, 29,
         ("unknown name 'chn'",), ("did you mean 'chan'",)),
    Case("default uses a later parameter", NET + "block b(c=s, s=1) { relu }\nb()\n", UnknownNameError, 3, 11,
         ("unknown name 's'",), ("parameters before it", "move 'c'")),
    Case("recursion", NET + "block b(c) { b(c) }\nb(3)\n", LimitError, 3, 14, ("calls itself",), ("not itself",)),
    Case("mutual recursion", NET + "block a(c) { b(c) }\nblock b(c) { a(c) }\na(3)\n", LimitError, 4, 14,
         ("calls itself", "a -> b -> a"), ()),
    Case("huge repeat", NET + "relu x 1000000000\n", LimitError, 3, 8, ("repeat count", "limit"), ()),
    Case("huge nested repeat", NET + "block b() { relu x 5000 }\nb() x 5000\n", LimitError, 4, 1,
         ("more than", "nodes"), ("5,000 x 5,001",)),
    # ---------------------------------------------------------------- shapes
    Case("kernel larger than padded input", "input 3x4x4\nconv 7x7 pad1 -> 8\n", ShapeError, 2, 1,
         ("kernel 7x7", "padded input 6x6"), ("smaller kernel",)),
    Case("dilated kernel too large", NET + "conv 3x3 dil20 -> 4\n", ShapeError, 3, 1, ("dilated to 41x41",), ()),
    Case("pool too large after downsampling", NET + "pool max 2/2\npool max 2/2\npool max 16\n", ShapeError, 5, 1,
         ("16x16", "8x8"), ()),
    Case("groups do not divide input", "input 4x32x32\nconv 3x3 groups3 -> 6\n", ShapeError, 2, 1,
         ("groups3", "4 input"), ("groups2",)),
    Case("groups do not divide output", NET + "conv 3x3 groups3 -> 8\n", ShapeError, 3, 1,
         ("groups3", "8 output"), ("groups1",)),
    Case("groups: the nearest common divisor, not depthwise", "input 16x32x32\nconv 5x5 groups3 -> 16\n", ShapeError,
         2, 1, ("groups3", "16 input"), ("use 'groups2' or 'groups4': the nearest group counts that divide 16",)),
    Case("groups: the nearest divisor of both", "input 16x32x32\nconv 3x3 groups7 -> 24\n", ShapeError, 2, 1,
         ("groups7",), ("use 'groups8': the nearest group count that divides both 16 and 24",)),
    Case("depthwise channel mismatch", "input 4x32x32\nconv 3x3 depthwise -> 6\n", ShapeError, 2, 1,
         ("depthwise", "4 channels", "6"), ("'-> 4'", "'-> 2x'")),
    Case("conv after flatten", NET + "flatten; conv 3x3 -> 8\n", ShapeError, 3, 10, ("CxHxW", "vector 3072"),
         ("before 'flatten'",)),
    Case("pool after fc", NET + "fc 10\npool max 2\n", ShapeError, 4, 1, ("pool", "vector 10"), ()),
    Case("concat size mismatch", NET + "concat { branch { conv 3x3 -> 4 } branch { conv 1x1 -> 4 } }\n",
         ShapeError, 3, 1, ("concat", "height x width"), ("same strides",)),
    Case("concat size mismatch in a block", NET + "block inc() {\n  concat {\n    branch { conv 1x1 -> 4 }\n"
         "    branch { conv 3x3/2 pad1 -> 4 }\n  }\n}\ninc()\n", ShapeError, 4, 3, ("concat",), ()),
    Case("add shape mismatch", NET + "add { branch { conv 1x1 -> 4 } branch { conv 1x1 -> 5 } }\n", ShapeError,
         3, 1, ("add", "same shape"), ()),
    Case("residual without shortcut", NET + "residual { conv 3x3/2 pad1 -> 8 }\n", ShapeError, 3, 1,
         ("changes the shape", "3x32x32", "8x16x16"), ("shortcut { conv 1x1/2 -> 8 nobias; bn }",)),
    Case("residual without shortcut, in a block", NET + "block b(c) {\n  residual { conv 3x3 pad1 -> c }\n}\nb(16)\n",
         ShapeError, 4, 3, ("changes the shape",), ("shortcut { conv 1x1 -> 16",)),
    Case("shortcut of the wrong shape", NET + "residual { conv 3x3/2 pad1 -> 8 } shortcut { conv 1x1 -> 8 }\n",
         ShapeError, 3, 1, ("shortcut gives 8x32x32", "8x16x16"), ("conv 1x1/2 -> 8",)),
    Case("empty shortcut where the body projects", NET + "residual { conv 1x1 -> 4 } shortcut { }\n", ShapeError,
         3, 1, ("shortcut gives 3x32x32", "4x32x32"), ("'conv 1x1 -> 4'",)),
    Case("misaligned branches", NET + "concat { branch { conv 3x3/2 pad1 -> 4 } branch { conv 2x2/2 -> 4 } }\n",
         ShapeError, 3, 1, ("misaligned",), ("symmetric padding",)),
    Case("misaligned add", NET + "add { branch { conv 3x3/2 pad1 -> 4 } branch { conv 2x2/2 -> 4 } }\n",
         ShapeError, 3, 1, ("add", "misaligned"), ("symmetric padding",)),
    Case("pool padding over half the window", NET + "pool max 3x3 pad3\n", ShapeError, 3, 1,
         ("more than half",), ("pad 1",)),
    # ---------------------------------------------------------------- expectations
    Case("params expectation", LENET + "expect params < 10\n", ExpectationError, 4, 1,
         ("params < 10", "156"), ("change the network",)),
    Case("params expectation with K", LENET + "expect params > 1K\n", ExpectationError, 4, 1, ("1,000", "156"), ()),
    Case("params expectation with M", LENET + "expect params >= 1.5M\n", ExpectationError, 4, 1,
         ("1,500,000", "156"), ()),
    Case("macs expectation with G", LENET + "expect macs > 1G\n", ExpectationError, 4, 1,
         ("macs > 1,000,000,000", "86,400"), ()),
    Case("rf expectation", LENET + "\nexpect rf >= 7\n", ExpectationError, 5, 1, ("rf >= 7", "5x5"), ()),
    Case("output expectation", LENET + "expect output 6x28x28\n", ExpectationError, 4, 1,
         ("6x28x28", "6x24x24"), ()),
    Case("output compared with <", LENET + "expect output < 10\n", ExpectationError, 4, 1, ("'='",),
         ("expect output 10",)),
    Case("unknown expectation", LENET + "expect parms < 5M\n", UnknownNameError, 4, 8, ("unknown expectation",),
         ("did you mean 'params'",)),
    # ---------------------------------------------------------------- data and training sections
    Case("bad optimizer", LENET + "train {\n  optimizer sgdd lr .1\n}\n", UnknownNameError, 5, 3,
         ("unknown optimizer 'sgdd'",), ("did you mean 'sgd'",)),
    Case("bad schedule", LENET + "train {\n  schedule cosin\n}\n", UnknownNameError, 5, 3,
         ("unknown schedule 'cosin'",), ("did you mean 'cosine'",)),
    Case("setting twice", LENET + "train {\n  batch 64\n  batch 32\n}\n", BadValueError, 6, 3,
         ("'batch'", "twice"), ("keep one",)),
    Case("fractional epochs", LENET + "train { epochs 2.5 }\n", BadValueError, 4, 16, ("whole number",), ()),
    Case("learning rate out of range", LENET + "train { optimizer sgd lr 20 }\n", BadValueError, 4, 26,
         ("lr", "20"), ()),
    Case("rotation out of range", LENET + "augment { rotate 400 }\n", BadValueError, 4, 18, ("rotation", "400"), ()),
    Case("mean and std lengths", LENET + "preprocess { standardize mean (1, 2) std (1, 2, 3) }\n", BadValueError,
         4, 14, ("mean has 2", "std has 3"), ("per input channel",)),
]


def _ids():
    return [c.id for c in CASES]


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert len(set(_ids())) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_error(case: Case):
    with pytest.raises(cnndsl.CnnDslError) as info:
        cnndsl.parse(case.text, path="case.cnn").analyze()
    err = info.value
    assert type(err) is case.error, err.render()
    assert (err.line, err.column) == (case.line, case.column), err.render()
    for word in case.words:
        assert word in err.message, err.render()
    for word in case.hint:
        assert err.hint and word in err.hint, err.render()
    assert err.hint, f"no fix: {err.render()}"  # every message says what to do
    rendered = err.render()
    assert rendered.startswith(f"case.cnn:{case.line}:{case.column}: error: ")
    assert "^" in rendered  # the caret under the source line
    line_text = case.text.splitlines()[case.line - 1] if case.line <= len(case.text.splitlines()) else ""
    if line_text.strip():
        assert line_text.rstrip() in rendered


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_check_command(case: Case, runner, tmp_path):
    path = tmp_path / "case.cnn"
    path.write_text(case.text, encoding="utf-8")
    result = runner.invoke(main, ["check", str(path)])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    assert f"case.cnn:{case.line}:{case.column}: error: " in output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in (
    "misspelled conv", "unclosed brace", "residual without shortcut", "params expectation with K", "recursion")],
    ids=lambda c: c.id)
def test_check_command_subprocess(case: Case, tmp_path):
    path = tmp_path / "case.cnn"
    path.write_text(case.text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "cnndsl.cli", "check", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{path}:{case.line}:{case.column}: error: " in proc.stderr
    assert "fix: " in proc.stderr


# ---------------------------------------------------------------- fail fast


@pytest.mark.parametrize("text", [
    NET + "relu x 1000000000\n",
    NET + "block b() { relu x 10000 }\nblock c() { b() x 10000 }\nc() x 10000\n",
    NET + "block b(n) { relu x n }\nb(1000000000)\n",
    NET + "relu x 100000 * 100000 * 100000\n",
])
def test_huge_expansions_fail_fast(text):
    start = time.perf_counter()
    with pytest.raises(LimitError):
        cnndsl.parse(text).analyze()
    assert time.perf_counter() - start < 1.0


def test_deep_but_finite_nesting_is_fine_or_limited():
    blocks = "".join(f"block b{i}() {{ b{i + 1}() }}\n" for i in range(100)) + "block b100() { relu }\n"
    with pytest.raises(LimitError) as info:
        cnndsl.parse(NET + blocks + "b0()\n").analyze()
    assert "nest deeper" in info.value.message
    blocks = "".join(f"block b{i}() {{ b{i + 1}() }}\n" for i in range(10)) + "block b10() { relu }\n"
    assert cnndsl.parse(NET + blocks + "b0()\n").analyze().output == (3, 32, 32)


def test_block_call_errors_name_the_call_site():
    text = NET + "block b(c) {\n  conv 3x3 -> c\n}\nb(64/3)\n"
    with pytest.raises(BadValueError) as info:
        cnndsl.parse(text, path="n.cnn").analyze()
    err = info.value
    assert (err.line, err.column) == (4, 15)
    assert "in the block call at n.cnn:6:1: b(64/3)" in err.render()


# ---------------------------------------------------------------- warnings


def test_squeezenet_stem_warns_about_the_dropped_row(runner, tmp_path):
    text = "network squeeze\ninput 3x224x224\n\nconv 3x3/2 -> 96; relu\n"
    report = cnndsl.parse(text).analyze()
    (warning,) = report.warnings
    assert warning.severity == "warning"
    assert (warning.span.line, warning.span.column) == (4, 1)
    assert "3x224x224" in warning.message and "unseen" in warning.message and "row" in warning.message
    assert "pad" in warning.hint
    path = tmp_path / "squeeze.cnn"
    path.write_text(text)
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 0
    assert f"{path}:4:1: warning: " in result.output + result.stderr
    assert "1 warning" in result.output + result.stderr


@pytest.mark.parametrize("stmt", [
    "conv 7x7/2 pad3 -> 64",  # ResNet's stem: only padding is unseen
    "conv 3x3/2 pad1 -> 8",
    "conv 3x3/2 pad same -> 8",
    "conv 1x1/2 -> 8",  # a kernel smaller than its stride skips rows by design
    "pool max 3x3/2 pad1",
    "pool max 2/2",
])
def test_silent_strides(stmt):
    assert cnndsl.parse(f"input 3x224x224\n{stmt}\n").analyze().warnings == ()


def test_dropped_row_warning_names_the_axis():
    report = cnndsl.parse("input 3x32x33\nconv 3x3/2 -> 4\n").analyze()
    (warning,) = report.warnings
    assert "1 row(s)" in warning.message and "column" not in warning.message


def test_errors_render_without_a_source():
    err = ShapeError("boom", None, hint="fix it")
    assert err.render() == "error: boom\n  fix: fix it"  # about no file: the message says which


@pytest.mark.parametrize(("text", "opened"), [
    (NET + "block b(c) {\n  conv 3x3 -> c   # a comment with a { brace\nb(4)\n", (3, 12)),
    (NET + "concat {\n  branch { relu\n}\n", (3, 8)),
])
def test_unclosed_brace_names_the_opening_brace(text, opened):
    with pytest.raises(CnnSyntaxError) as info:
        cnndsl.parse(text).analyze()
    assert f"the '{{' at line {opened[0]}, column {opened[1]} is never closed" in info.value.render()


def _nested(kind: str, depth: int) -> str:
    opening, closing = {"residual": ("residual { ", " }"), "concat": ("concat { branch { ", " } }"),
                        "paren": ("(", ")")}[kind]
    if kind == "paren":
        return NET + "conv 1x1 -> " + opening * depth + "3" + closing * depth + "\n"
    return NET + opening * depth + "relu" + closing * depth + "\n"


@pytest.mark.parametrize(("kind", "depth"), [("residual", 100), ("concat", 50), ("paren", 100)])
def test_nesting_up_to_the_limit_works(kind, depth):
    net = cnndsl.parse(_nested(kind, depth))
    assert net.analyze().output == (3, 32, 32)
    assert len(net.tensor_specs()) == (1 if kind == "paren" else 0) * 2


@pytest.mark.parametrize(("kind", "depth", "column"), [("residual", 101, 1110), ("concat", 51, 908),
                                                       ("paren", 101, 113), ("residual", 5000, 1110)])
def test_nesting_beyond_the_limit_is_a_limit_error(kind, depth, column):
    with pytest.raises(LimitError) as info:
        cnndsl.parse(_nested(kind, depth)).analyze()
    assert (info.value.line, info.value.column) == (3, column)
    assert "nest deeper than 100" in info.value.message


def test_deep_block_calls_are_a_limit_error():
    blocks = "".join(f"block b{i}() {{ residual {{ b{i + 1}() }} }}\n" for i in range(60)) + "block b60() { relu }\n"
    with pytest.raises(LimitError) as info:
        cnndsl.parse(NET + blocks + "b0()\n").analyze()
    assert "nest deeper than 100" in info.value.message
    assert info.value.line is not None


@pytest.mark.parametrize("text", [NET + "conv 1x1 -> 3" + "+1" * 5000 + "\n",
                                  NET + "conv 1x1 -> " + "-" * 5000 + "3\n"])
def test_absurd_expressions_are_a_limit_error(text, runner, tmp_path):
    with pytest.raises(LimitError):
        cnndsl.parse(text).analyze()
    path = tmp_path / "deep.cnn"
    path.write_text(text)
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_caret_lines_up_under_tabs():
    with pytest.raises(CnnSyntaxError) as info:
        cnndsl.parse("network a\ninput 3x8x8\n\t\tcnov 3x3 -> 4\n").analyze()
    lines = info.value.render().splitlines()
    assert lines[1].endswith("| \t\tcnov 3x3 -> 4")
    assert lines[2].endswith("| \t\t^~~~")


def test_form_feed_does_not_shift_the_shown_line():
    # lark counts lines at "\n" only; the rendered source line must be the same line
    with pytest.raises(CnnSyntaxError) as info:
        cnndsl.parse("network a\f\ninput 3x8x8\nrelu\ncnov 3x3 -> 4\n").analyze()
    assert info.value.line == 4
    assert "   4 | cnov 3x3 -> 4" in info.value.render()


# ---------------------------------------------------------------- sizes no machine holds


@pytest.mark.parametrize("text, line, words", [
    (NET + "conv 3x3 -> 99999999999999999999999\n", 3, "the output of conv1"),  # was a numpy ValueError in report
    (NET + "conv 3x3 -> 400000\nconv 3x3 -> 4000000\n", 4, "the parameters of conv2"),  # 1.44e13 weights
    ("network t\ninput 3x99999999x99999999\nconv 3x3 -> 4\n", 3, "the output of conv1"),
])
def test_tensors_over_the_size_limit_are_a_limit_error(text, line, words, runner, tmp_path):
    with pytest.raises(LimitError) as info:
        cnndsl.parse(text).analyze()
    assert words in info.value.message and "2**40" in info.value.message and info.value.line == line
    path = tmp_path / "huge.cnn"
    path.write_text(text)
    for command in (["check"], ["analyze", "--json"], ["report", "-o", str(tmp_path / "r.html")],
                    ["compile", "--target", "onnx", "-o", str(tmp_path / "r.onnx")]):
        result = runner.invoke(main, [*command, str(path)])
        assert result.exit_code == 1 and "internal error" not in result.output, (command, result.output)
        assert "fix:" in result.output


def test_the_size_limit_is_inclusive(monkeypatch):
    from cnndsl.analysis import shapes

    text = NET + "conv 3x3 -> 8\n"  # output 8x30x30 = 7,200 values; 3*8*9 + 8 = 224 parameters
    monkeypatch.setattr(shapes, "MAX_ELEMENTS", 7_200)
    assert cnndsl.parse(text).report.output == (8, 30, 30)
    monkeypatch.setattr(shapes, "MAX_ELEMENTS", 7_199)
    with pytest.raises(LimitError, match="7,200 values"):
        cnndsl.parse(text).analyze()
    vector = "network v\ninput 100\nfc 2\n"  # 100*2 + 2 parameters, 2 outputs
    monkeypatch.setattr(shapes, "MAX_ELEMENTS", 202)
    assert cnndsl.parse(vector).report.params == 202
    monkeypatch.setattr(shapes, "MAX_ELEMENTS", 201)
    with pytest.raises(LimitError, match="the parameters of fc1: 202 values"):
        cnndsl.parse(vector).analyze()


@pytest.mark.parametrize("text, column", [
    (LENET + "expect rf >= 1e400\n", 14),  # compared against inf before
    (LENET + "dropout 1e400\n", 9),
    (LENET + "expect params <= 2.5e400\n", 18),
])
def test_non_finite_literals_are_refused(text, column):
    with pytest.raises(CnnSyntaxError, match="too large to represent") as info:
        cnndsl.parse(text)
    assert (info.value.line, info.value.column) == (4, column)


@pytest.mark.parametrize("value", ["1e300 * 1e300", "9" * 400])
def test_numbers_overflowing_a_float_are_a_user_error(value):
    with pytest.raises(BadValueError, match="too large to represent"):
        cnndsl.parse(LENET + f"dropout {value}\n").analyze()


def test_out_of_memory_is_a_user_error(tmp_path):
    """Sizes under the limit that this machine cannot hold: a user error, not "a bug in cnndsl"."""
    path = tmp_path / "wide.cnn"
    path.write_text(NET + "conv 3x3 -> 100000\nconv 3x3 -> 100000\n")  # 9e10 weights: 335 GiB
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
              "from cnndsl.cli import main; sys.argv = ['cnndsl'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", script, "compile", "--target", "onnx", "-o", str(tmp_path / "w.onnx"),
                           str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "out of memory" in proc.stderr and "fix:" in proc.stderr, proc.stderr
