"""Property tests: whatever the text, cnndsl answers with figures or a CnnDslError, never a crash.

(a) random programs from a small grammar-shaped strategy (layers with random kernels, strides,
    padding and channels; blocks with parameters; repeats; residuals and branches);
(b) the examples with characters inserted, deleted or replaced, and tokens shuffled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnndsl
from cnndsl import ir

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.cnn"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES}

DERANDOMIZE = not os.environ.get("CNNDSL_FUZZ_RANDOM")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=DERANDOMIZE)

_SPAN = re.compile(r":\d+:\d+: (error|warning): ")


def outcome(text: str):
    """Parse and analyze; return the report or the CnnDslError. Anything else fails the test."""
    try:
        net = cnndsl.parse(text, path="fuzz.cnn")
        report = net.analyze()
    except cnndsl.CnnDslError as err:
        rendered = err.render()
        assert isinstance(rendered, str) and rendered
        assert "Traceback" not in rendered
        if err.span is not None:
            assert f"fuzz.cnn:{err.span.line}:{err.span.column}: error: " in rendered, rendered
            assert err.span.line >= 1 and err.span.column >= 1, rendered
            lines = text.split("\n")
            if err.span.line <= len(lines) and lines[err.span.line - 1].strip():
                assert f"| {lines[err.span.line - 1].rstrip()}\n" in rendered + "\n", rendered  # the right line
        return err
    names = [node.name for node in net.ir.walk()]
    assert len(names) == len(set(names)), "node names must be unique: " + ", ".join(
        sorted({n for n in names if names.count(n) > 1}))
    for warning in report.warnings:
        assert _SPAN.search(warning.render(net.source)), warning
    assert report.params >= 0 and report.macs >= 0
    assert all(d >= 1 for d in report.output)
    return report


# ------------------------------------------------------------------ (a) generated programs

small = st.integers(min_value=0, max_value=4)
kernels = st.sampled_from(["1", "2", "3", "5", "1x3", "3x1", "7x7", "2x4"])
_STRIDES = ["", "/2", "/1", "/3", "/2x1"]
_PADS = ["", " pad1", " pad2", " pad same", " pad valid", " pad 1x0", " pad0", " pad (1+1)"]
_CHANNELS = ["4", "8", "16", "6/3", "2*3", "6/4"]
_IN_BLOCK = {"strides": ["/s", "/(s*2)"], "pads": [" pad s", " pad p"], "channels": ["c", "2*c", "c/2", "c+1", "c-c"]}


def pick(draw, what: str, names: bool):
    options = {"strides": _STRIDES, "pads": _PADS, "channels": _CHANNELS}[what]
    if names and draw(st.integers(0, 2)) == 0:
        options = _IN_BLOCK[what]
    return draw(st.sampled_from(options))


@st.composite
def conv(draw, names=False):
    kind = draw(st.integers(0, 9))
    k, s, p = draw(kernels), pick(draw, "strides", names), pick(draw, "pads", names)
    extra = draw(st.sampled_from(["", " nobias", " dil2", " groups2", " groups1"]))
    if kind == 0:
        return f"conv {k}{s}{p} depthwise" + draw(st.sampled_from(["", " -> 2x", " -> 3", " nobias"]))
    return f"conv {k}{s}{p}{extra} -> {pick(draw, 'channels', names)}"


@st.composite
def simple(draw, names=False):
    choice = draw(st.integers(0, 11))
    if choice <= 3:
        return draw(conv(names))
    if choice == 4:
        mode = draw(st.sampled_from(["max", "avg"]))
        if draw(st.booleans()):
            return f"pool {mode} global"
        pad = draw(st.sampled_from(["", " pad1", " pad same"]))
        return f"pool {mode} {draw(kernels)}{pick(draw, 'strides', names)}{pad}" + draw(st.sampled_from(["", " ceil"]))
    if choice == 5:
        return draw(st.sampled_from(["bn", "bn eps 1e-3 momentum .01", "relu", "relu6", "leaky .1", "tanh",
                                     "gelu", "silu", "hardswish", "sigmoid", "elu", "softmax"]))
    if choice == 6:
        return draw(st.sampled_from(["dropout .5", "dropout", "dropout 0", "dropout .9"]))
    if choice == 7:
        return draw(st.sampled_from(["flatten", f"fc {pick(draw, 'channels', names)}", "fc 10 nobias"]))
    if choice == 8:
        return "b1(" + draw(st.sampled_from(["", "4", "8, s=2", "c=3", "2, 1", "s=1"])) + ")"
    if choice == 9:
        return "b2(" + pick(draw, "channels", names) + ")"
    return draw(st.sampled_from(["relu", "bn"]))


def _lines(items):
    return "\n".join(items)


@st.composite
def statement(draw, depth=0, names=False):
    choice = draw(st.integers(0, 9))
    if depth < 2 and choice == 7:
        body = draw(st.lists(statement(depth + 1, names), min_size=0, max_size=3))
        shortcut = draw(st.sampled_from(["", "always"]))
        text = "residual {\n" + _lines(body) + "\n}"
        if draw(st.booleans()):
            sc = draw(st.lists(statement(depth + 1, names), min_size=0, max_size=2))
            text += f" shortcut {shortcut} {{\n" + _lines(sc) + "\n}"
        return text
    if depth < 2 and choice == 8:
        kind = draw(st.sampled_from(["concat", "add"]))
        branches = draw(st.lists(st.lists(statement(depth + 1, names), min_size=1, max_size=2), min_size=0, max_size=3))
        return f"{kind} {{\n" + "\n".join("branch {" + "; ".join(b) + "}" for b in branches) + "\n}"
    stmt = draw(simple(names))
    if choice == 9:
        stmt += " x " + draw(st.sampled_from(["2", "3", "(3-1)", "0", "1", "2.5"] + (["c", "(c-1)"] if names else [])))
    return stmt


@st.composite
def program(draw):
    lines = []
    if draw(st.booleans()):
        lines.append("network fuzzed")
    lines.append("input " + draw(st.sampled_from(["3x32x32", "1x28x28", "4x9x9", "3x7x8", "16", "2x1x1", "3x64x33"])))
    if draw(st.integers(0, 4)):
        body = draw(st.lists(statement(1, names=True), min_size=1, max_size=3))
        lines.append("block b1(c=4, s=1, p=1) {\n" + _lines(body) + "\n}")
    if draw(st.integers(0, 4)):
        body = draw(st.lists(simple(names=True), min_size=1, max_size=3))
        body = [b for b in body if not b.startswith("b2")]
        lines.append("block b2(c) {\n" + _lines(body or ["relu"]) + "\n}")
    lines.extend(draw(st.lists(statement(), min_size=1, max_size=8)))
    if draw(st.booleans()):
        lines.append("expect " + draw(st.sampled_from(["params < 5M", "rf >= 3", "output 10", "macs > 1K",
                                                      "params == 0", "memory < 1G", "trainable_params > 0"])))
    return "\n".join(lines) + "\n"


@FUZZ
@given(program())
def test_generated_programs_analyze_or_fail_cleanly(text):
    outcome(text)


@settings(max_examples=60, deadline=None, derandomize=DERANDOMIZE)
@given(program(), st.sampled_from([(3, 17, 23), (1, 5, 5), (8, 64, 64), (3, 2, 2)]))
def test_other_input_sizes_analyze_or_fail_cleanly(text, shape):
    try:
        net = cnndsl.parse(text)
        net.analyze(shape)
    except cnndsl.CnnDslError as err:
        assert err.render()


# ------------------------------------------------------------------ (b) mutated examples

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n\t\r\f;{}()->/x*+.,=#_KMG\\'\"@$%\x00é\u2028"


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(TEXTS)))
    text = TEXTS[name]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(text)))
        if op == 0:
            text = text[:pos] + draw(st.text(alphabet=_ALPHABET, min_size=1, max_size=3)) + text[pos:]
        elif op == 1:
            text = text[:pos] + text[pos + draw(st.integers(1, 6)):]
        elif op == 2:
            text = text[:pos] + draw(st.sampled_from(_ALPHABET)) + text[pos + 1:]
        else:
            tokens = re.split(r"(\s+)", text)
            words = [i for i, t in enumerate(tokens) if t.strip()]
            if len(words) >= 2:
                i, j = draw(st.sampled_from(words)), draw(st.sampled_from(words))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            text = "".join(tokens)
    return text


@FUZZ
@given(mutated())
def test_mutated_examples_analyze_or_fail_cleanly(text):
    outcome(text)


@settings(max_examples=100, deadline=None, derandomize=DERANDOMIZE)
@given(st.sampled_from(sorted(TEXTS)), st.data())
def test_truncated_examples_fail_cleanly(name, data):
    text = TEXTS[name]
    cut = data.draw(st.integers(0, len(text)))
    outcome(text[:cut])


@settings(max_examples=100, deadline=None, derandomize=DERANDOMIZE)
@given(st.text(max_size=80))
def test_arbitrary_text_fails_cleanly(text):
    outcome(text)


def test_every_example_is_clean():
    for name, text in TEXTS.items():
        result = outcome(text)
        assert not isinstance(result, cnndsl.CnnDslError), f"{name}: {result}"


def test_node_names_are_unique_when_block_names_end_in_digits():
    # A block called conv3 and the 31st conv of the same scope must not share a name, nor a relu6
    # and the 61st relu: names are what backends call tensors and modules.
    text = "input 3x8x8\nblock conv3(c) { conv 1x1 -> c }\n" + "conv 1x1 -> 3\n" * 31 + "conv3(3)\n" + \
        "relu\n" * 61 + "relu6\n"
    net = cnndsl.parse(text)
    names = [n.name for n in net.ir.walk()]
    assert len(names) == len(set(names))
    report = net.analyze()
    specs = net.tensor_specs()
    assert len({s.name for s in specs}) == len(specs)
    assert report.params == 32 * (3 + 1) * 3
    assert any(isinstance(n, ir.Seq) and n.block == "conv3" for n in net.ir.walk())
