"""Every independent error in one run, `cnndsl.diagnose`, and `cnndsl check --format json` / `-`."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import MAX_ERRORS, CnnSyntaxError

NET = "network t\ninput 3x32x32\n"


def _errors(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(cnndsl.CnnDslError) as info:
        cnndsl.parse(text, "n.cnn").analyze()
    return [(e.line, e.column, e.message) for e in info.value.errors]


def test_every_syntax_error_is_reported_in_source_order():
    text = NET + "conv 3x3 64\nrelu\ncnov 3x3 -> 4\nconv 3x3 -> ; relu\nrelu }\npool max 2\n"
    found = _errors(text)
    assert [(line, column) for line, column, _ in found] == [(3, 10), (5, 1), (6, 13), (7, 6)]
    assert "unexpected '64'" in found[0][2]
    assert "unknown statement 'cnov'" in found[1][2]
    assert "incomplete" in found[2][2]
    assert "no '{' is open" in found[3][2]


def test_a_syntax_error_inside_a_block_resumes_at_the_next_statement_of_the_block():
    text = NET + "block b(c) {\n  conv 3x3 c\n  relu\n  pool max 2 3\n}\nb(4)\n"
    assert [(line, column) for line, column, _ in _errors(text)] == [(4, 12), (6, 14)]


def test_semantic_errors_in_different_statements_are_all_reported():
    text = (NET + "block b(c) { conv 3x3 -> c/0 }\nconv 3x3 -> 0\nb(4)\nb(5)\nfoo(3)\n"
            "expect parms 4\ntrain { optimizer sgdd }\n")
    found = _errors(text)
    assert [(line, column) for line, column, _ in found] == [(3, 26), (4, 13), (7, 1), (8, 8), (9, 9)]
    assert [m.split()[0] for _, _, m in found] == ["division", "an", "unknown", "unknown", "unknown"]


def test_a_shape_error_stops_shape_checks_after_it_but_not_other_checks():
    # after the failing conv the channels are unknown: the 'groups' conv is not shape-checked, the
    # bad dropout still is
    text = NET + "conv 7x7 dil20 -> 4\nconv 3x3 groups3 -> 8\ndropout 2\n"
    found = _errors(text)
    assert [(line, column) for line, column, _ in found] == [(3, 1), (5, 9)]


def test_errors_stop_at_the_limit():
    text = NET + "".join(f"conv 3x3 -> {i} 4\n" for i in range(40))
    assert len(_errors(text)) == MAX_ERRORS


def test_the_check_command_prints_every_error_and_the_count(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(NET + "conv 3x3 64\nrelu }\nrelu\nconv 1x1 -> ; relu\n")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 1
    assert result.stderr.count(": error: ") == 3
    assert result.stderr.rstrip().endswith("3 errors")
    assert result.stderr.count("  fix: ") == 3


def test_unclosed_brace_points_at_the_opening_brace():
    with pytest.raises(CnnSyntaxError) as info:
        cnndsl.parse(NET + "concat {\n  branch { relu }\n  branch {\n    relu\n\nconv 1x1 -> 4\n")
    err = info.value
    assert (err.line, err.column) == (5, 10)
    assert err.message == "unclosed '{' opened at 5:10"
    assert "closes the branch" in err.hint


# ---------------------------------------------------------------- diagnose


def test_diagnose_returns_errors_without_raising():
    found = cnndsl.diagnose(NET + "conv 3x3 64\nrelu }\n", "x.cnn")
    assert [d.severity for d in found] == ["error", "error"]
    assert all(d.fix for d in found)
    first = found[0].to_json()
    assert first == {"file": "x.cnn", "range": {"start": {"line": 3, "column": 10}, "end": {"line": 3, "column": 12}},
                     "severity": "error", "message": "unexpected '64'", "fix": found[0].fix, "notes": [], "calls": []}


def test_diagnose_returns_warnings_and_call_sites():
    found = cnndsl.diagnose(NET + "block b(c) { conv 3x3/2 -> c }\nb(4)\n")
    (warning,) = found
    assert warning.severity == "warning" and warning.path == "<stdin>"
    assert warning.to_json()["calls"] == [{"start": {"line": 4, "column": 1}, "end": {"line": 4, "column": 5}}]
    errors = cnndsl.diagnose(NET + "block b(c) { conv 3x3 -> c/0 }\nb(4)\n")
    assert errors[0].to_json()["calls"][0]["start"] == {"line": 4, "column": 1}
    assert cnndsl.diagnose(NET + "relu\n") == []


def test_check_format_json_and_stdin():
    text = NET + "conv 3x3 64\nrelu }\n"
    result = CliRunner().invoke(main, ["check", "--format", "json", "-"], input=text)
    assert result.exit_code == 1
    diagnostics = json.loads(result.stdout)
    assert [(d["range"]["start"]["line"], d["file"], d["severity"]) for d in diagnostics] == [
        (3, "<stdin>", "error"), (4, "<stdin>", "error")]
    assert all(d["fix"] for d in diagnostics)
    ok = CliRunner().invoke(main, ["check", "-"], input=NET + "relu\n")
    assert ok.exit_code == 0 and "<stdin>: ok: t" in ok.stdout
    clean = CliRunner().invoke(main, ["check", "--format", "json", "-"], input=NET + "relu\n")
    assert clean.exit_code == 0 and json.loads(clean.stdout) == []


# ---------------------------------------------------------------- text and encodings


def test_times_sign_suggests_x():
    with pytest.raises(CnnSyntaxError) as info:
        cnndsl.parse(NET + "conv 3\u00d73 -> 4\n")
    assert (info.value.line, info.value.column) == (3, 7)
    assert info.value.hint == "write 'x' instead of '\u00d7'"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.cnn"
    path.write_bytes(b"\xef\xbb\xbf" + (NET + "conv 3x3 -> 4\n").encode())
    assert cnndsl.load(path).analyze().output == (4, 30, 30)
    assert cnndsl.parse("\ufeff" + NET + "relu\n").name == "t"


def test_a_file_that_is_not_utf8_is_reported_at_its_line_and_column(tmp_path):
    path = tmp_path / "latin.cnn"
    path.write_bytes((NET + "# caf").encode() + b"\xe9 au lait\nrelu\n")
    with pytest.raises(cnndsl.CnnDslError) as info:
        cnndsl.load(path)
    err = info.value
    assert (err.line, err.column) == (3, 6)
    assert "not UTF-8" in err.message and "0xe9" in err.message
    assert "UTF-8" in err.hint and "iconv -f cp1252" in err.hint
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 1 and f"{path}:3:6: error: " in result.stderr


def test_check_format_json_reports_a_file_it_cannot_read_or_decode(tmp_path):
    latin = tmp_path / "latin.cnn"
    latin.write_bytes((NET + "# caf").encode() + b"\xe9\nrelu\n")
    for path, line, words in ((tmp_path / "missing.cnn", None, "cannot read"), (latin, 3, "not UTF-8")):
        result = CliRunner().invoke(main, ["check", "--format", "json", str(path)])
        assert result.exit_code == 1
        (diagnostic,) = json.loads(result.stdout)
        assert diagnostic["file"] == str(path) and diagnostic["severity"] == "error"
        assert words in diagnostic["message"] and diagnostic["fix"]
        start = diagnostic["range"] and diagnostic["range"]["start"]
        assert start == ({"line": line, "column": 6} if line else None)


def test_standard_input_is_decoded_like_a_file():
    latin = (NET + "# caf").encode() + b"\xe9\nconv 3x3 -> 4\n"
    result = CliRunner().invoke(main, ["check", "-"], input=latin)
    assert result.exit_code == 1
    assert "<stdin>:3:6: error: standard input is not UTF-8: byte 0xe9" in result.stderr
    assert "iconv -f cp1252 -t utf-8" in result.stderr
    as_json = CliRunner().invoke(main, ["check", "--format", "json", "-"], input=latin)
    (diagnostic,) = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and diagnostic["range"]["start"] == {"line": 3, "column": 6}
    bom = CliRunner().invoke(main, ["check", "-"], input=b"\xef\xbb\xbf" + (NET + "relu\n").encode())
    assert bom.exit_code == 0 and "<stdin>: ok: t" in bom.stdout


# ---------------------------------------------------------------- every error has a fix

_ERROR_CLASSES = {"CnnDslError", "CnnSyntaxError", "UnknownNameError", "BadValueError", "ShapeError",
                  "ExpectationError", "LimitError", "WeightsError"}


def _error_sites(package: Path):
    """(file, line, has a hint) for every place the code makes a user error: a CnnDslError class
    called, or a node's or statement's `error(...)` helper."""
    for path in sorted(package.rglob("*.py")):
        if path.name == "cnndsl_lalr.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            helper = name == "error" and isinstance(func, ast.Attribute) and not (
                isinstance(func.value, ast.Name) and func.value.id == "click")
            # The ONNX import's `graph.error(...)` always gives a fix (its own default where none is passed).
            import_graph = helper and ast.unparse(func.value).split(".")[-1] in ("g", "graph")
            if name in _ERROR_CLASSES or helper:
                yield path, node.lineno, import_graph or any(k.arg == "hint" for k in node.keywords)


def test_every_error_the_code_makes_has_a_fix():
    root = Path(cnndsl.__file__).parent
    backends = Path(importlib.import_module("cnndsl.backends").__file__).parent
    sites = list(_error_sites(root)) + list(_error_sites(backends))
    assert len(sites) > 90  # the walk finds them
    assert sum("training" in path.parts for path, _, _ in sites) > 40  # cnndsl train's own errors too
    assert [f"{path}:{line}" for path, line, has_hint in sites if not has_hint] == []


# ---------------------------------------------------------------- linear-time checking


def _calls_to_check(text: str) -> int:
    """Python and C function calls made by parse + expand + analyze of `text`: a count of work that,
    unlike a timing, does not depend on the machine."""
    import sys

    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        cnndsl.parse(text).analyze()
    finally:
        sys.setprofile(None)
    return calls


def test_checking_is_linear_in_the_program_size():
    spec = importlib.util.spec_from_file_location(
        "check_scale", Path(__file__).resolve().parent.parent / "benchmarks" / "check_scale.py")
    check_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_scale)
    cnndsl.parse(check_scale.program(100)).analyze()  # the parser's tables and lexers, built once
    # By increments: what each size costs beyond the one before, so that the fixed cost (the first reading
    # of each distinct statement text, which the parser then reuses) does not count.
    small, middle, large = (_calls_to_check(check_scale.program(n)) for n in (1_500, 3_000, 6_000))
    assert 1.9 < (large - middle) / (middle - small) < 2.1, (small, middle, large)
