"""The expander builds a layer or a block call once per (text, arguments, input shape) and moves it
to every other place it recurs (`_Expander.built`, `_Expander.called`). Moved or built afresh, the IR,
its shapes, its warnings and its errors must be the same: each program here is expanded both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnndsl
from cnndsl import expand as expansion
from cnndsl import ir
from cnndsl.errors import CnnDslError, Source
from cnndsl.parser import parse_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "examples").glob("*.cnn")) + sorted((ROOT / "tests" / "fixtures").glob("sketch_*.cnn")) \
    + sorted((ROOT / "benchmarks").glob("*.cnn"))


REMEMBERED = expansion.MAX_BUILT


def expanded(text: str, reuse: bool, monkeypatch) -> ir.Network:
    monkeypatch.setattr(expansion, "MAX_BUILT", REMEMBERED if reuse else 0)
    source = Source(text, "net.cnn")
    return expansion.expand(parse_program(text, source), source)


def same_expansion(text: str, monkeypatch) -> ir.Network:
    reused, fresh = expanded(text, True, monkeypatch), expanded(text, False, monkeypatch)
    # Node equality is every field, children included: names, spans, calls and evaluated options.
    assert reused.body == fresh.body
    assert [(n.name, n.span, n.calls) for n in reused.walk()] == [(n.name, n.span, n.calls) for n in fresh.walk()]
    assert dict(reused.shapes) == dict(fresh.shapes)
    assert reused.shapes.warnings.items == fresh.shapes.warnings.items
    return reused


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_program_expands_alike_with_and_without_reuse(path, monkeypatch):
    text = path.read_text(encoding="utf-8")
    try:
        same_expansion(text, monkeypatch)
    except CnnDslError:  # a fragment of the sketch (no input line): the same errors both ways
        errors = []
        for reuse in (True, False):
            with pytest.raises(CnnDslError) as raised:
                expanded(text, reuse, monkeypatch)
            errors.append([e.diagnostic() for e in raised.value.errors])
        assert errors[0] == errors[1]


def test_resnet152_builds_a_tenth_of_its_layers(monkeypatch):
    """Its 50 bottleneck calls fall into 16 (arguments, input) cases; the layers built are the first
    call's of each, every other one is moved. Counted by the kinds' build rules being run."""
    built = []
    original = expansion.Options.name

    def counting(self, stem):
        built.append(stem)
        return original(self, stem)

    monkeypatch.setattr(expansion.Options, "name", counting)
    network = same_expansion((ROOT / "benchmarks" / "resnet152.cnn").read_text(encoding="utf-8"), monkeypatch)
    layers = sum(1 for n in network.walk() if not n.children() and not isinstance(n, ir.Seq))
    assert layers == 556
    built.clear()
    expanded((ROOT / "benchmarks" / "resnet152.cnn").read_text(encoding="utf-8"), True, monkeypatch)
    assert len(built) < layers / 5, f"{len(built)} of {layers} layers built"
    cnndsl.parse((ROOT / "benchmarks" / "resnet152.cnn").read_text(encoding="utf-8")).analyze()  # expect holds


def test_a_layer_that_warns_warns_at_every_place(monkeypatch):
    """A warning names its place and its call sites, so a layer that warned is not moved: both calls
    of `down`, with the same argument and input, warn, each with its own call site."""
    text = """\
block down(c) { conv 2x2/2 -> c; relu }
input 3x31x31
add {
  branch { down(4) }
  branch { down(4) }
}
add {
  branch { conv 2x2/2 -> 4 }
  branch { conv 2x2/2 -> 4 }
}
"""
    network = same_expansion(text, monkeypatch)
    warnings = network.shapes.warnings.items
    assert [(w.span.line, tuple(c.line for c in w.calls)) for w in warnings] == [(1, (4,)), (1, (5,)), (8, ()), (9, ())]
    assert [n.name for n in network.walk() if isinstance(n, ir.Activation)] == [
        "add1.branch1.down1.relu1", "add1.branch2.down1.relu1"]


def test_the_node_limit_counts_moved_calls(monkeypatch):
    """2,100 calls of a 50-layer block are 107,100 nodes: over the limit at the same call, moved or not."""
    text = "block b { " + "; ".join(["conv 1x1 -> 4"] + ["relu"] * 49) + " }\ninput 4x8x8\n" \
        + "\n".join(["b; b; b; b; b; b; b"] * 300) + "\n"
    messages = []
    for reuse in (True, False):
        with pytest.raises(CnnDslError) as raised:
            expanded(text, reuse, monkeypatch)
        messages.append([(e.message, e.span) for e in raised.value.errors])
    assert messages[0] == messages[1]
    assert "more than 100,000 nodes" in messages[0][0][0]


def test_block_arguments_and_in_c_tell_calls_apart(monkeypatch):
    """The same text with other arguments, another `in_c` or another input is built again."""
    text = """\
block unit(c) { conv 3x3 pad1 -> c + in_c nobias; bn; relu }
input 8x16x16
unit(8); unit(8); unit(4); unit(4)
pool max 2/2
unit(4)
"""
    network = same_expansion(text, monkeypatch)
    convs = [(n.name, n.out_channels) for n in network.walk() if isinstance(n, ir.Conv)]
    assert convs == [("unit1.conv1", 16), ("unit2.conv1", 24), ("unit3.conv1", 28), ("unit4.conv1", 32),
                     ("unit5.conv1", 36)]
    assert [network.shapes[name].output for name, _ in convs] == [
        (16, 16, 16), (24, 16, 16), (28, 16, 16), (32, 16, 16), (36, 8, 8)]


def test_a_whole_float_argument_is_not_an_int_argument(monkeypatch):
    """1 == 1.0 in Python, but a call's arguments are printed as written: `b(1.0)` is not moved to `b(1)`
    (each call here has the same 4x8x8 input)."""
    text = "block b(k) { conv 1x1 -> 4 * k }\ninput 4x8x8\nb(1.0); b(1); b(1)\n"
    network = same_expansion(text, monkeypatch)
    calls = [n for n in network.walk() if isinstance(n, ir.Seq) and n.block]
    assert [type(dict(c.args)["k"]) for c in calls] == [float, int, int]


def test_a_call_is_not_moved_into_a_chain_that_calls_it(monkeypatch):
    """`Y` -> `C(1)` -> `X(0)` is fine, but the same `C(1)` under `X(1)` makes X call itself: the error
    must come whichever of the two is written first."""
    for order in (("Y", "X(1)"), ("X(1)", "Y")):
        blocks = "input 3x8x8\nblock C(k) { X(0) x k }\nblock X(j) { C(1) x j }\nblock Y { C(1) }\n"
        text = blocks + "\n".join(order) + "\n"
        for reuse in (True, False):
            with pytest.raises(CnnDslError, match=r"block X calls itself \(X -> C -> X\)"):
                expanded(text, reuse, monkeypatch)


def test_minus_zero_is_not_zero(monkeypatch):
    text = "block b(p) { dropout p }\ninput 4x8x8\nb(0.0); b(-0.0)\n"
    network = same_expansion(text, monkeypatch)
    assert [str(dict(n.args)["p"]) for n in network.walk() if isinstance(n, ir.Seq) and n.block] == ["0.0", "-0.0"]
