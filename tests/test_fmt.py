"""`cnndsl fmt`: the canonical layout keeps every token and comment, is idempotent, and the formatted
program parses to the same tree and analyzes to the same figures."""

from __future__ import annotations

import functools
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnndsl
from cnndsl import syntax as S
from cnndsl.errors import CnnSyntaxError, Span
from cnndsl.fmt import format_text, lex
from cnndsl.parser import parse_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "examples").glob("*.cnn")) + sorted((ROOT / "tests" / "fixtures").glob("sketch_*.cnn"))



def figures(text: str) -> dict:
    """What `analyze --json` says, without the source positions a layout moves."""
    report = cnndsl.parse(text).analyze().to_json()
    for row in report["layers"]:
        del row["line"], row["column"], row["statement"], row["call_lines"]
    for warning in report["warnings"]:
        del warning["line"], warning["column"]
    return report


def tree(text: str):
    """The syntax tree without spans: what the program means, wherever it is written."""
    def strip(value):
        if isinstance(value, Span):
            return None
        if isinstance(value, tuple):
            return type(value).__name__, tuple(strip(v) for v in value if not isinstance(v, Span))
        return value
    return strip(S.written_out(parse_program(text)))


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_every_program_formats_idempotently_to_the_same_figures(path):
    text = path.read_text(encoding="utf-8")
    once = format_text(text)
    assert format_text(once) == once
    assert tree(once) == tree(text)
    if re.search(r"^input ", text, re.MULTILINE):  # a network, not one of the sketch's fragments
        assert figures(once) == figures(text)
    assert once == text  # every shipped example and sketch program is in the layout the rules describe


def test_fmt_check_passes_on_every_example():
    examples = sorted((ROOT / "examples").glob("*.cnn"))
    assert len(examples) >= 20
    proc = run("--check", *map(str, examples))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_trailing_comments_align_as_the_author_aligned_them():
    """A group is the consecutive trailing comments written at one column: it moves together when its
    code grows past it; a comment written one column off its neighbour (the sketch's ResNet-18) is
    its own group and stays where it was written, two spaces after its code at least."""
    sketch = (ROOT / "tests" / "fixtures" / "sketch_resnet18.cnn").read_text(encoding="utf-8")
    assert "  } shortcut {                 # the projection" in sketch
    assert "    conv 1x1/s -> c nobias; bn  # where the shapes" in sketch
    assert format_text(sketch) == sketch
    source = ("input 3x8x8\n"
              "conv 3x3->8;relu # a\n"
              "pool max 2       # b\n"
              "conv 1x1 -> 4    # c\n"
              "relu # d\n")
    assert format_text(source) == ("input 3x8x8\n"
                                   "conv 3x3 -> 8; relu  # a\n"
                                   "pool max 2           # b\n"
                                   "conv 1x1 -> 4        # c\n"
                                   "relu  # d\n")


def test_the_rules():
    source = """

# a header

network  t ;;input 3x32x32   # trailing
block b ( c , s = 1 ) {conv 3x3 / s pad 1 -> c*2+1 nobias ; bn
  residual { conv 3x3 pad1 -> c }
  shortcut { conv 1x1 -> c }
      # inside



  relu x 2 ; dropout .5 x 2;
}
b(16, s=2) x 2 # a
b(16)          # b, continued
               # on the next line
conv (1, 3) pad (0, 1) -> - (-8)  ; leaky -0.1
concat { branch {} branch { conv 1x1 -> 4 } }
conv 3x3 \\
  pad 1 -> 8
channels :4;channels 1 : 3
expect params<5M
"""
    assert format_text(source) == """\
# a header

network t; input 3x32x32     # trailing
block b(c, s=1) {
  conv 3x3/s pad1 -> c*2+1 nobias; bn
  residual { conv 3x3 pad1 -> c } shortcut { conv 1x1 -> c }
  # inside

  relu x 2; dropout .5 x2
}
b(16, s=2) x2  # a
b(16)          # b, continued
               # on the next line
conv (1, 3) pad (0, 1) -> -(-8); leaky -0.1
concat { branch {} branch { conv 1x1 -> 4 } }
conv 3x3 \\
    pad1 -> 8
channels :4; channels 1:3
expect params < 5M
"""


def test_glued_only_where_the_lexer_reads_it_back():
    # After `relu` a name may follow (leaky's slope), so `x2` there would be a name: `x 2` stays.
    assert format_text("relu x 2\nconv 1x1 -> 8 x 2\ndropout x 2\n") == "relu x 2\nconv 1x1 -> 8 x2\ndropout x 2\n"
    assert format_text("dropout x2\n") == "dropout x2\n"  # the name x2, as written


def test_a_syntax_error_is_a_user_error():
    with pytest.raises(CnnSyntaxError):
        format_text("conv 3x3 ->\n", "bad.cnn")


# ------------------------------------------------------------------ any layout of a program

_EXAMPLES = [p.read_text(encoding="utf-8") for p in PROGRAMS if p.stem in ("resnet18", "cifar_tiny", "unet_shapes",
                                                                             "mobilenet_v3_small", "inception")]
_GAPS = (" ", "  ", "\t", " \\\n  ", "\\\n")
_SEPARATORS = ("\n", ";", " ; ", "\n\n\n", ";\n", "  # note\n", "\n# own line\n", " ;; # x\n  \n")


def relayout(text: str, seed: int, density: float) -> str:
    """`text` with its tokens kept and the space between them redrawn: any gap (spaces, tabs, line
    continuations) and any separator (blank lines, comments, ';')."""
    pick = random.Random(seed)
    out, previous = [], 0
    for token in lex(text):
        if token.kind == "_SEP":
            out.append(pick.choice(_SEPARATORS))
        else:
            gap = text[previous:token.start]
            out.append(gap + pick.choice(_GAPS) if pick.random() < density else gap)
            out.append(token.text)
        previous = token.end
    return "".join(out)


_tree_of_example = functools.cache(tree)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_EXAMPLES), st.integers(0, 2**32), st.floats(0, 1))
def test_formatting_never_changes_the_parse(original, seed, density):
    relaid = relayout(original, seed, density)
    meaning = _tree_of_example(original)
    assert tree(relaid) == meaning
    once = format_text(relaid)
    assert tree(once) == meaning
    assert format_text(once) == once


# ------------------------------------------------------------------ the command


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnndsl.cli", "fmt", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_command_check_write_and_stdin(tmp_path):
    messy, tidy = tmp_path / "messy.cnn", tmp_path / "tidy.cnn"
    messy.write_text("input 3x8x8\nconv 3x3  pad 1 ->8 ;relu\n", encoding="utf-8")
    tidy.write_text("input 3x8x8\nconv 3x3 pad1 -> 8; relu\n", encoding="utf-8")
    proc = run("--check", str(messy), str(tidy))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"would reformat {messy}"]
    assert messy.read_text(encoding="utf-8").startswith("input 3x8x8\nconv 3x3  pad")  # --check writes nothing
    proc = run(str(messy), str(tidy))
    assert proc.returncode == 0, proc.stderr
    assert messy.read_text(encoding="utf-8") == tidy.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.cnn", "tidy.cnn"]  # no temporary left
    assert run("--check", str(messy)).returncode == 0
    proc = run("-", stdin="conv 3x3  ->  8\n")
    assert (proc.returncode, proc.stdout) == (0, "conv 3x3 -> 8\n")


def test_command_errors_name_the_place():
    proc = run("-", stdin="input 3x8x8\nconv 3x3 ->\n")
    assert proc.returncode == 1
    assert proc.stderr.startswith("<stdin>:2:12: error: the statement is incomplete")
    assert "Traceback" not in proc.stderr


def test_stdin_is_decoded_as_files_are(tmp_path):
    """`fmt -` reads bytes and decodes them with read_source's decoder: a byte-order mark is dropped,
    a byte that is not UTF-8 is an error at its line and column with the fix, never passed through."""
    def fmt_stdin(data: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cnndsl.cli", "fmt", "-"], capture_output=True,
                              input=data, timeout=60)

    proc = fmt_stdin(b"\xef\xbb\xbfinput 3x8x8\nconv 3x3  ->  8\n")
    assert (proc.returncode, proc.stdout) == (0, b"input 3x8x8\nconv 3x3 -> 8\n"), proc.stderr
    latin1 = b"network a\ninput 3x8x8\n# caf\xe9\nconv 3x3 -> 4\n"
    proc = fmt_stdin(latin1)
    assert (proc.returncode, proc.stdout) == (1, b"")
    stderr = proc.stderr.decode()
    assert stderr.startswith("<stdin>:3:6: error: standard input is not UTF-8: byte 0xe9"), stderr
    assert "fix: send UTF-8; if it is cp1252, convert it first: iconv -f cp1252 -t utf-8" in stderr
    file = tmp_path / "cafe.cnn"
    file.write_bytes(latin1)
    proc = run(str(file))
    assert proc.returncode == 1 and proc.stderr.startswith(f"{file}:3:6: error: the file is not UTF-8: byte 0xe9")
    assert file.read_bytes() == latin1


def test_an_error_in_one_file_does_not_stop_the_others(tmp_path):
    """Each file's errors are reported, the files after it are still checked or formatted, exit 1."""
    good1, bad, good3 = tmp_path / "g1.cnn", tmp_path / "b2.cnn", tmp_path / "g3.cnn"
    good1.write_text("input 3x8x8\nconv 3x3  -> 8\n", encoding="utf-8")
    bad.write_text("input 3x8x8\nconv 3x3 ->\n", encoding="utf-8")
    good3.write_text("input 3x8x8\nconv 3x3 ->  8\n", encoding="utf-8")
    missing = tmp_path / "missing.cnn"
    proc = run("--check", str(good1), str(bad), str(good3))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"would reformat {good1}", f"would reformat {good3}"]
    assert proc.stderr.startswith(f"{bad}:2:12: error: the statement is incomplete")
    assert proc.stderr.endswith("1 of 3 files not formatted: its errors are above\n")
    proc = run(str(good1), str(bad), str(missing), str(good3))
    assert proc.returncode == 1
    assert f"{missing}: error: cannot read {missing}" in proc.stderr
    assert proc.stderr.index(f"{bad}:2:12") < proc.stderr.index(f"reformatted {good3}")
    assert proc.stderr.endswith("2 of 4 files not formatted: their errors are above\n")
    assert good1.read_text(encoding="utf-8") == good3.read_text(encoding="utf-8") == "input 3x8x8\nconv 3x3 -> 8\n"
    assert bad.read_text(encoding="utf-8") == "input 3x8x8\nconv 3x3 ->\n"
