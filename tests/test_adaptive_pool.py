"""`pool avg|max adaptive HxW` (PyTorch's adaptive pooling) and the exact rational receptive fields
it needs (issue 13, items 3 and 4).

Figures without torch: shapes, parameters, the printer, errors, fields in exact rationals and their
JSON. With torch, onnxruntime and NumPy: every backend against PyTorch's own AdaptiveAvgPool2d /
AdaptiveMaxPool2d and against each other on the same weights (even windows, uneven ones, an output
larger than the input, AlexNet at 224 and 256), the NumPy backward against float64 finite
differences, and the field of uneven windows against the one measured by gradient on the generated
torch module, at every output position.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import reference
from extras import needs, require

import cnndsl
from cnndsl import ir
from cnndsl.errors import CnnDslError
from cnndsl.kinds.base import INPUT_FIELD, adaptive_windows, rational_json, rational_text
from cnndsl.runtime import kernels

ROOT = Path(__file__).resolve().parent.parent
ALEXNET = ROOT / "examples" / "alexnet.cnn"
ALEXNET_PARAMS = 61_100_840  # torchvision.models.alexnet

# (input HxW, output HxW): even, uneven, output larger than the input, mixed axes, to 1x1
CASES = [((6, 6), (3, 3)), ((7, 7), (3, 3)), ((5, 5), (3, 3)), ((2, 2), (3, 3)), ((12, 7), (6, 3)),
         ((7, 5), (6, 10)), ((4, 4), (1, 1)), ((1, 1), (6, 6)), ((13, 6), (6, 4))]
CASE_IDS = [f"{h}x{w}-{oh}x{ow}" for (h, w), (oh, ow) in CASES]


def net_of(body: str, shape: str) -> cnndsl.Net:
    return cnndsl.parse(f"network t\ninput {shape}\n{body}\n")


def windows_by_formula(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's rule, written from its definition with exact fractions (not cnndsl's code)."""
    return [(int(Fraction(i * size, out)), -int(-Fraction((i + 1) * size, out) // 1)) for i in range(out)]


# ------------------------------------------------------------------ the statement


def test_windows_are_pytorchs():
    for size in range(1, 20):
        for out in range(1, 20):
            assert adaptive_windows(size, out) == windows_by_formula(size, out), (size, out)
    assert adaptive_windows(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert adaptive_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert adaptive_windows(2, 3) == [(0, 1), (0, 2), (1, 2)]  # larger than the input: rows repeat


def test_statement_shape_cost_and_printer():
    net = net_of("conv 3x3 -> 8; pool avg adaptive 6x5; pool max adaptive 4", "3x20x20")
    first, second = (node for node in net.ir.leaves() if isinstance(node, ir.AdaptivePool))
    assert (first.mode, first.size, second.mode, second.size) == ("avg", (6, 5), "max", (4, 4))
    assert (first.text(), second.text()) == ("pool avg adaptive 6x5", "pool max adaptive 4x4")
    report = net.analyze()
    assert [(row.op, row.output, row.params, row.macs) for row in report.layers[1:]] == [
        ("pool", (8, 6, 5), 0, 0), ("pool", (8, 4, 4), 0, 0)]
    assert net_of("pool avg adaptive (2 + 1, 2 * 2)", "1x9x9").analyze().output == (1, 3, 4)


def test_explain_shows_the_windows():
    report = net_of("pool avg adaptive 3x2", "1x7x6").analyze()
    lines = report.explain_lines("pool1")
    assert lines[0] == ("height: 7 -> 3: window i is rows floor(i*7/3) to ceil((i+1)*7/3) - 1: 3 rows, "
                        "7/3 apart on average")
    assert lines[1] == "width: 6 -> 2: windows of 3, stride 3 (6 / 2)"
    assert lines[2].startswith("rf: 1 -> 3, jump 1 -> 7/3, first centre 0 -> 2/3 (rows seen depend on the position")
    assert net_of("pool max adaptive 3", "1x5x5").analyze().explain_lines("pool1")[0].endswith(
        ": 2 or 3 rows, 5/3 apart on average")


@pytest.mark.parametrize(("text", "message", "column", "hint"), [
    ("pool avg adaptive 6x6 pad1", "an adaptive pool takes no 'pad'", 23, "remove 'pad'"),
    ("pool max adaptive 6x6 ceil", "an adaptive pool takes no 'ceil'", 23, "remove 'ceil'"),
    ("pool avg adaptive 0x6", "the output size of an adaptive pool must be at least 1, got 0", 19,
     "pool avg adaptive 6x6"),
    ("pool avg adaptive 2x2x2", "the output size of an adaptive pool takes one size or HxW, got 3", 19, "6x6"),
    ("pool avg adaptive 2.5", "the output size of an adaptive pool must be a whole number", 19, "round"),
    ("flatten; pool avg adaptive 2x2", "adaptive pool needs a CxHxW input, but its input is the vector 192", 10,
     "before 'flatten'"),
])
def test_mistakes_are_errors_with_a_fix(text, message, column, hint):
    with pytest.raises(CnnDslError) as info:
        net_of(text, "3x8x8")
    err = info.value
    assert message in err.message and (err.line, err.column) == (3, column) and hint in err.hint, err.render()


def test_a_stride_is_a_syntax_error_at_the_slash():
    with pytest.raises(CnnDslError) as info:
        net_of("pool max adaptive 6x6/2", "3x8x8")
    assert (info.value.line, info.value.column) == (3, 22) and "'/'" in info.value.message


# ------------------------------------------------------------------ AlexNet, torchvision's layout


def test_alexnet_example_is_torchvisions_at_224_and_256():
    """torchvision's AlexNet has AdaptiveAvgPool2d((6, 6)) before the classifier: the identity at
    224 (the last pool gives 6x6), uneven 7 -> 6 windows at 256; the parameters are the same."""
    at_224 = cnndsl.load(ALEXNET).analyze()
    at_256 = cnndsl.load(ALEXNET, (3, 256, 256)).analyze()
    assert at_224.params == at_256.params == ALEXNET_PARAMS
    assert at_224.output == at_256.output == (1000,)
    pool = [row for row in at_256.layers if row.statement.startswith("pool avg adaptive")]
    assert [(row.input, row.output) for row in pool] == [((256, 7, 7), (256, 6, 6))]
    assert at_224.macs == 714_188_480
    pool_224 = at_224.layer(pool[0].name)
    assert (pool_224.rf, pool_224.jump, pool_224.offset) == ((195, 195), (32, 32), (31, 31))  # the identity
    # 7 -> 6: every window is 2 of the last pool's outputs (32 apart): 195 + 32 = 227 rows, jump 32 * 7/6
    row = pool[0]
    assert (row.rf, row.jump, row.offset) == ((227, 227), (Fraction(112, 3),) * 2, (Fraction(101, 3),) * 2)
    # the classifier sees the whole map: the rows of window 0 to those of window 5, centred at 127
    assert (at_256.rf, at_256.jump, at_256.offset) == ((387, 387), (Fraction(112, 3),) * 2, (127, 127))


def test_vgg_style_adaptive_pool_at_any_size():
    text = "conv 3x3 pad1 -> 4; pool max 2/2; pool avg adaptive 7x7; fc 10"
    params = {net_of(text, f"3x{size}x{size}").analyze().params for size in (14, 32, 64, 100, 5)}
    assert params == {(3 * 9 + 1) * 4 + (4 * 49 + 1) * 10}


# ------------------------------------------------------------------ fields in exact rationals


@pytest.mark.parametrize(("shape", "out", "rf", "jump", "offset"), [
    ("1x12x12", "6x6", 2, 2, Fraction(1, 2)),  # even: pool 2x2/2
    ("1x7x7", "3x3", 3, Fraction(7, 3), Fraction(2, 3)),
    ("1x5x5", "3x3", 3, Fraction(5, 3), Fraction(1, 3)),
    ("1x2x2", "3x3", 2, Fraction(2, 3), Fraction(-1, 6)),
    ("1x13x13", "6x6", 3, Fraction(13, 6), Fraction(7, 12)),
])
def test_adaptive_fields(shape, out, rf, jump, offset):
    report = net_of(f"pool avg adaptive {out}", shape).analyze()
    assert (report.rf, report.jump, report.offset) == ((rf, rf), (jump, jump), (offset, offset))
    for value in (*report.jump, *report.offset):
        assert type(value) is (int if value == int(value) else Fraction)


def test_field_positions_are_the_windows():
    field = INPUT_FIELD.adaptive((5, 7), (3, 3))
    assert [field.span(0, o) for o in range(3)] == [(0, 1), (1, 3), (3, 4)]
    assert [field.span(1, o) for o in range(3)] == [(0, 2), (2, 4), (4, 6)]
    # the pattern continues past the output (where a later layer's padding reads it)
    assert (field.span(0, 3), field.span(0, -1)) == ((5, 6), (-2, -1))
    # a 2x2/2 window after it reads outputs 0..1 and 2..3
    after = field.through((2, 2), (2, 2), (0, 0), (1, 1))
    assert after.size == (4, 5) and (after.span(0, 0), after.span(1, 0)) == ((0, 3), (0, 4))


def test_json_writes_fractions_as_strings_and_whole_values_as_integers():
    assert [rational_json(v) for v in (3, Fraction(6, 2), Fraction(1, 2), Fraction(-7, 12), 2.0)] == [
        3, 3, "1/2", "-7/12", 2]
    assert [rational_text(v) for v in (3, Fraction(1, 2), Fraction(-5, 4), Fraction(7, 3), Fraction(1, 64))] == [
        "3", "0.5", "-1.25", "7/3", "0.015625"]
    report = net_of("conv 3x3 -> 2; pool max 2/2; pool avg adaptive 3x3", "1x12x12").analyze()
    data = json.loads(json.dumps(report.to_json()))
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["conv1"]["offset"] == [1, 1] and rows["pool1"]["offset"] == ["3/2", "3/2"]
    assert rows["pool2"]["jump"] == ["10/3", "10/3"] and rows["pool2"]["offset"] == ["13/6", "13/6"]
    assert data["jump"] == ["10/3", "10/3"] and data["rf"] == [8, 8]


def test_lenet_offsets_in_json_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", str(ROOT / "examples" / "lenet5.cnn"),
                          "--json"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    layers = {row["op"] + str(i): row for i, row in enumerate(json.loads(out)["layers"])}
    offsets = [row["offset"] for row in layers.values()]
    assert ["1/2", "1/2"] in offsets and ["9/2", "9/2"] in offsets and [0, 0] in offsets


def test_table_prints_fractions_readably(tmp_path):
    path = tmp_path / "t.cnn"
    path.write_text("network t\ninput 1x7x8\npool max 2/2\npool avg adaptive 3x3\n")
    out = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", str(path)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    row = next(line for line in out.splitlines() if "pool avg adaptive 3x3" in line)
    assert row.split()[-3:] == ["2x4", "2x8/3", "0.5x5/6"], row
    assert "receptive field 2x4, jump 2x8/3, offset 0.5x5/6" in out, out


def test_alignment_is_compared_exactly():
    same = "concat { branch { pool avg adaptive 3x3 } branch { pool max adaptive 3x3 } }"
    report = net_of(same, "2x7x7").analyze()
    assert report.rf == (3, 3) and report.jump == (Fraction(7, 3),) * 2
    # 6 -> 3 adaptive is exactly pool 2/2: aligned. 7 -> 3 against pool 3x3/2 (the same windows on 7
    # rows, but centred by the affine rule at 2/3, not 1): misaligned, and the error says so exactly.
    net_of("add { branch { pool avg adaptive 3x3 } branch { pool avg 2/2 } }", "2x6x6")
    with pytest.raises(CnnDslError) as info:
        net_of("add { branch { pool avg adaptive 3x3 } branch { pool avg 3x3/2 } }", "2x7x7")
    notes = "\n".join(info.value.notes)
    assert "misaligned" in info.value.message
    assert "jump 7/3x7/3, first output centred at (2/3, 2/3)" in notes and "jump 2x2, first output centred at (1, 1)" \
        in notes


def test_whole_figures_need_no_fractions():
    """Fraction is slow and `import fractions` costs more than ResNet-152's whole field pass: a
    network whose figures are all whole never imports it."""
    code = ("import sys, cnndsl; r = cnndsl.load(sys.argv[1]).analyze(); "
            "print(r.rf, 'fractions' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks" / "resnet152.cnn")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out[-1] == "False", out


# ------------------------------------------------------------------ backends


def _weights(net, seed=0):
    return net.init_weights(seed)


def _backends(net, weights, x):
    """Outputs of the torch backend, ONNX (onnxruntime), NumPy and the reference on the same weights."""
    torch = require("torch")
    ort = require("onnxruntime")
    model = net.to_torch(weights).eval()
    with torch.no_grad():
        from_torch = model(torch.from_numpy(x)).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(net.to_onnx(weights).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"input": x})[0]
    from_numpy = net.to_numpy(weights).forward(x)
    return from_torch, from_onnx, from_numpy, reference.evaluate(net, weights, x)


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("size", "out"), CASES, ids=CASE_IDS)
def test_every_backend_is_pytorchs_adaptive_pool(size, out, mode):
    torch = require("torch")
    (h, w), (oh, ow) = size, out
    net = net_of(f"pool {mode} adaptive {oh}x{ow}", f"3x{h}x{w}")
    assert net.analyze().output == (3, oh, ow)
    x = np.random.default_rng(1).standard_normal((2, 3, h, w)).astype(np.float32)
    module = (torch.nn.AdaptiveAvgPool2d if mode == "avg" else torch.nn.AdaptiveMaxPool2d)((oh, ow))
    want = module(torch.from_numpy(x)).numpy()
    for got in _backends(net, {}, x):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    generated = net.to_torch()
    assert type(generated.pool1).__name__ == ("AdaptiveAvgPool2d" if mode == "avg" else "AdaptiveMaxPool2d")
    assert generated.pool1.output_size == (oh, ow)


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("size", "out"), [((7, 7), (3, 3)), ((5, 5), (3, 3)), ((2, 2), (3, 3)), ((8, 8), (4, 4))],
                         ids=["7-3", "5-3", "2-3", "8-4"])
def test_backends_agree_on_the_same_weights(size, out, mode):
    (h, w), (oh, ow) = size, out
    net = net_of(f"conv 3x3 pad1 -> 4; relu; pool {mode} adaptive {oh}x{ow}; conv 1x1 -> 3; flatten; fc 5",
                 f"2x{h}x{w}")
    weights = _weights(net, seed=3)
    x = np.random.default_rng(2).standard_normal((3, 2, h, w)).astype(np.float32)
    outputs = _backends(net, weights, x)
    for got in outputs[:3]:
        np.testing.assert_allclose(got, outputs[3], rtol=1e-4, atol=1e-5)


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 256])
def test_alexnet_backends_agree(size):
    net = cnndsl.load(ALEXNET, (3, size, size))
    assert net.analyze().params == ALEXNET_PARAMS
    weights = _weights(net)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    outputs = _backends(net, weights, x)
    scale = np.abs(outputs[3]).max()
    for got in outputs[:3]:
        assert got.shape == (1, 1000)
        np.testing.assert_allclose(got, outputs[3], rtol=1e-3, atol=1e-4 * scale)


@needs("torch")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_numpy_gradients_match_torch_autograd(train):
    from test_backend_numpy import compare_with_torch

    for mode in ("avg", "max"):
        for h, (oh, ow) in ((7, (3, 3)), (5, (3, 2)), (2, (3, 3)), (6, (3, 3))):
            net = net_of(f"conv 3x3 pad1 -> 3; bn; relu; pool {mode} adaptive {oh}x{ow}; fc 4", f"2x{h}x{h}")
            compare_with_torch(net, batch=2, train=train)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("size", "out"), CASES, ids=CASE_IDS)
def test_numpy_backward_matches_finite_differences(size, out, mode):
    (h, w), (oh, ow) = size, out
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, h, w))  # float64, no ties (a max pool's kink)
    dy = rng.standard_normal((2, 2, oh, ow))
    forward = getattr(kernels, f"adaptive_{mode}_pool2d_forward")
    backward = getattr(kernels, f"adaptive_{mode}_pool2d_backward")
    y, cache = forward(x, (oh, ow))
    assert y.shape == (2, 2, oh, ow) and y.dtype == np.float64
    dx = backward(dy, cache)
    numeric = np.zeros_like(x)
    eps = 1e-6
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        numeric[index] = ((forward(x + step, (oh, ow))[0] - forward(x - step, (oh, ow))[0]) * dy).sum() / (2 * eps)
    assert np.linalg.norm(dx - numeric) <= 1e-5 * max(np.linalg.norm(numeric), 1e-12)


def test_max_gradient_goes_to_the_first_maximum_of_each_window():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, :] = 1.0  # ties: the first maximum in row-major order wins
    y, cache = kernels.adaptive_max_pool2d_forward(x, (2, 2))  # windows rows 0-1, 1-2; columns 0-1, 1-2
    dx = kernels.adaptive_max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    assert np.array_equal(y[0, 0], [[1, 1], [1, 1]])
    assert np.array_equal(dx[0, 0], [[0, 0, 0], [2, 2, 0], [0, 0, 0]])  # (1, 0) and (1, 1), each twice


# ------------------------------------------------------------------ the field, measured by gradient


def _constant_weights(net) -> dict[str, np.ndarray]:
    """Positive weights everywhere, so every input an output depends on gets a nonzero gradient."""
    return {spec.name: np.full(spec.shape, 0.1, dtype=np.float32) for spec in net.tensor_specs()}


def _measured_spans(net, model, out_index):
    """Rows and columns of the input whose gradient reaches output[0, 0, i, j] in the generated module."""
    torch = require("torch")
    x = torch.ones((1, *net.ir.input_shape), requires_grad=True)
    model(x)[(0, 0, *out_index)].backward()
    nz = x.grad[0].abs().sum(0).nonzero()
    return (nz[:, 0].min().item(), nz[:, 0].max().item()), (nz[:, 1].min().item(), nz[:, 1].max().item())


FIELD_NETS = [  # no padding: every field lies inside the image and is measured whole
    ("pool avg adaptive 3x3", "1x7x7"),
    ("pool avg adaptive 3x3", "1x5x5"),
    ("pool avg adaptive 3x3", "1x2x2"),  # larger than the input
    ("pool avg adaptive 3x4", "1x8x11"),  # sizes 3, 4, 3 rows; columns 3 or 4 at uneven steps
    ("conv 3x3/2 -> 2; relu; pool avg adaptive 3x4; conv 2x2 -> 1", "1x21x17"),
    ("conv 3x3 -> 2; pool avg adaptive 5x7; conv 3x3 -> 2; pool avg adaptive 2x2", "1x30x26"),
    ("conv 5x5/2 -> 2; pool avg adaptive 7x6; conv 2x2/2 -> 2", "2x31x27"),
]


@needs("torch")
@pytest.mark.parametrize(("body", "shape"), FIELD_NETS, ids=[b for b, _ in FIELD_NETS])
def test_uneven_field_is_the_field_measured_by_gradient(body, shape):
    net = net_of(body, shape)
    report = net.analyze()
    last = report.layers[-1]
    field = report.fields[last.name]
    _, oh, ow = last.output
    model = net.to_torch(_constant_weights(net)).eval()
    measured = {}
    for index in np.ndindex(oh, ow):  # every output position: more than one period of the pattern
        measured[index] = _measured_spans(net, model, index)
        for axis in range(2):
            assert measured[index][axis] == field.span(axis, index[axis]), (index, axis)
    for axis in range(2):
        extents = [spans[axis][1] - spans[axis][0] + 1 for spans in measured.values()]
        assert last.rf[axis] == max(extents), axis


@needs("torch")
@pytest.mark.slow
def test_alexnet_field_at_256_by_gradient():
    """AlexNet's geometry at 256 (average pools, so the gradient reaches every input a unit depends on;
    few channels): at each of the 6x6 adaptive outputs the rows and columns measured are the field's,
    clipped to the image, and rf 227 is the field of an output seeing two of pool3's outputs."""
    text = ALEXNET.read_text().replace("pool max", "pool avg")
    for wide, narrow in (("-> 64", "-> 2"), ("-> 192", "-> 2"), ("-> 384", "-> 2"), ("-> 256", "-> 1")):
        text = text.replace(wide, narrow)
    text = text.split("dropout")[0].replace("input 3x224x224", "input 1x256x256")
    net = cnndsl.parse(text)
    report = net.analyze()
    last = report.layers[-1]
    assert last.output == (1, 6, 6) and last.rf == (227, 227)
    field = report.fields[last.name]
    model = net.to_torch(_constant_weights(net)).eval()
    for index in [(0, 0), (2, 3), (3, 2), (5, 5), (1, 4)]:
        measured = _measured_spans(net, model, index)
        for axis in range(2):
            first, end = field.span(axis, index[axis])
            assert measured[axis] == (max(first, 0), min(end, 255)), (index, axis)
