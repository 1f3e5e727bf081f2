"""Arithmetic everywhere (`//`, min, max, round, divisible, expressions after every option, `(kh, kw)`
pairs) and `in_c`, the channels entering a block's call (issue 13, section 7 of the sketch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cnndsl
from cnndsl.errors import CnnDslError


def nodes(text: str, input_line: str = "input 3x32x32"):
    net = cnndsl.parse(f"{input_line}\n{text}\n")
    return [n for n in net.ir.leaves()], net


def out_channels(expr: str, params: str = "", args: str = "") -> int:
    text = f"block b({params}) {{ conv 1x1 -> {expr} }}\nb({args})"
    (conv,), _ = nodes(text)
    return conv.out_channels


@pytest.mark.parametrize("expr, value", [
    ("7//2", 3), ("(0-7)//2 + 5", 1), ("-7//2 + 5", 1), ("7.5//2", 3), ("min(3, 9, 4)", 3), ("max(3, 9, 4)", 9),
    ("round(2.5)", 3), ("round(3.5)", 4), ("round(2.49)", 2), ("divisible(32*0.75, 8)", 24),
    ("divisible(10, 8)", 16), ("divisible(16*0.25, 8)", 8), ("divisible(96, 8)", 96), ("divisible(100/3, 8)", 32),
])
def test_functions_and_floor_division(expr, value):
    assert out_channels(expr) == value


def test_round_halves_up_not_to_even():
    # Python's round(2.5) is 2 and round(0.5) is 0; the language's is floor(x + 0.5).
    assert out_channels("round(0.5)") == 1 and out_channels("round(4.5)") == 5


def test_divisible_is_mobilenets_make_divisible():
    def make_divisible(v, divisor, min_value=None):  # torchvision.models._utils._make_divisible
        min_value = min_value or divisor
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
        if new_v < 0.9 * v:
            new_v += divisor
        return new_v

    for v in (3, 10, 12, 16 * 0.25, 24 * 0.75, 32 * 0.35, 57.6, 100, 1280 * 1.4):
        for d in (1, 4, 8, 16):
            assert out_channels(f"divisible({v!r}, {d})") == make_divisible(v, d)


def test_options_take_expressions_without_parentheses():
    text = "block b(k, c) { conv k pad (k-1)/2 groups c/16 -> 2*c; pool max k/2 pad k//2 }\nb(5, 64)"
    (conv, pool), _ = nodes(text, "input 64x32x32")
    assert conv.kernel == (5, 5) and conv.padding.top == 2 and conv.groups == 4 and conv.out_channels == 128
    # `k/2` after `pool max` is the kernel k and the stride 2: the kernel stays an atom.
    assert pool.kernel == (5, 5) and pool.stride == (2, 2) and pool.padding.top == 2


def test_stride_dilation_and_repeat_take_expressions():
    text = "block b(s, d, n) { conv 3x3/s*2 dil d+1 pad d+1 -> 8 x n-1 }\nb(1, 1, 3)"
    convs, _ = nodes(text)
    assert len(convs) == 2 and all(c.stride == (2, 2) and c.dilation == (2, 2) for c in convs)


def test_pairs_are_height_first_and_match_sizes():
    pairs, _ = nodes("block b(k) { conv (1, k)/(2, 1) pad (0, k//2) dil (1, 2) -> 8 }\nb(7)")
    sizes, _ = nodes("conv 1x7/2x1 pad 0x3 dil 1x2 -> 8")
    assert pairs[0].kernel == (1, 7) and pairs[0].stride == (2, 1) and pairs[0].dilation == (1, 2)
    assert (pairs[0].kernel, pairs[0].stride, pairs[0].padding, pairs[0].dilation) == \
        (sizes[0].kernel, sizes[0].stride, sizes[0].padding, sizes[0].dilation)


def test_unknown_function_and_arity_are_errors_with_fixes():
    with pytest.raises(CnnDslError) as err:
        out_channels("divisable(10, 8)")
    assert "unknown function 'divisable'" in str(err.value) and "did you mean 'divisible'" in str(err.value)
    with pytest.raises(CnnDslError) as err:
        out_channels("round(3, 4)")
    assert "round() takes 1 argument, got 2" in str(err.value) and "write round(x)" in str(err.value)
    with pytest.raises(CnnDslError) as err:
        out_channels("max(3)")
    assert "at least 2 arguments" in str(err.value)
    with pytest.raises(CnnDslError) as err:
        out_channels("8 // (c - 4)", "c", "4")
    assert "division by zero" in str(err.value) and "fix:" in str(err.value)


# ------------------------------------------------------------------ in_c


def test_in_c_is_the_channels_entering_each_call():
    text = """
block grow() { concat { branch {} branch { conv 3x3 pad1 -> 32 } } }
block transition() { conv 1x1 -> in_c/2; conv 1x1 -> in_c/4 }
grow x3; transition
grow; transition
"""
    convs, net = nodes(text, "input 64x8x8")
    transitions = [c for c in convs if ".conv" in c.name and c.name.startswith("transition")]
    # 64 + 3*32 = 160 enters the first call: one value for the whole call, though conv1 changed it;
    # 40 + 32 = 72 enters the second
    assert [c.out_channels for c in transitions] == [80, 40, 36, 18]
    assert net.report.output == (18, 8, 8)


def test_in_c_arguments_at_the_call_site_defaults_in_the_block():
    text = """
block inner(c=in_c) { conv 1x1 -> c }
block outer() { conv 1x1 -> 2*in_c; inner(in_c); inner }
outer
"""
    convs, _ = nodes(text, "input 8x4x4")
    # outer's in_c is 8: the argument `in_c` is evaluated in outer (8), the default in inner (16)
    assert [c.out_channels for c in convs] == [16, 8, 8]
    convs, _ = nodes(text.replace("inner(in_c); inner", "inner; inner(in_c)"), "input 8x4x4")
    assert [c.out_channels for c in convs] == [16, 16, 8]


def test_in_c_in_a_shortcut_is_the_calls():
    text = "block b(s) { residual { conv 3x3/s pad1 -> 2*in_c } shortcut { conv 1x1/s -> 2*in_c } }\nb(2); b(1)"
    convs, net = nodes(text, "input 4x8x8")
    assert [c.out_channels for c in convs] == [8, 8, 16, 16] and net.report.output == (16, 4, 4)


def test_in_c_of_a_vector_is_its_length():
    (fc,), _ = nodes("block half() { fc in_c/2 }\nhalf", "input 100")
    assert fc.out_features == 50


@pytest.mark.parametrize("text, message", [
    ("conv 1x1 -> in_c", "'in_c' is only defined inside a block"),
    ("block b(in_c) { relu }\nb(3)", "'in_c' is reserved"),
    ("block c() { conv 1x1 -> in_c }\nblock b() { residual { relu } shortcut { c } }\nb", "this shortcut is not used"),
    ("block b() { conv 1x1 -> in_k }\nb", "did you mean 'in_c'?"),
])
def test_in_c_errors(text, message):
    with pytest.raises(CnnDslError) as err:
        cnndsl.parse(f"input 3x8x8\n{text}\n")
    assert message in str(err.value)
    assert "fix:" in str(err.value)


def test_another_input_expands_again():
    text = "input 3x32x32\nblock half() { conv 1x1 -> in_c*2 }\nhalf\nexpect params == 24\n"
    net = cnndsl.parse(text)
    assert net.report.params == 3 * 6 + 6
    assert net.analyze((5, 16, 16)).params == 5 * 10 + 10
    again = cnndsl.parse(text, input_shape=(5, 16, 16))
    assert again.report.params == 60 and again.report.output == (10, 16, 16)


def test_cli_input_expands_again(tmp_path):
    path = tmp_path / "double.cnn"
    path.write_text("input 3x32x32\nblock double() { conv 1x1 -> in_c*2 }\ndouble\n")
    done = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", str(path), "--input", "4x8x8", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["output"] == [8, 8, 8] and figures["params"] == 4 * 8 + 8


def test_shapes_are_computed_once_while_expanding():
    net = cnndsl.parse("input 3x32x32\nblock double() { conv 1x1 -> in_c*2 }\ndouble x2\n")
    assert net.report.shapes is net.ir.shapes
    assert net.report.output == (12, 32, 32)
