"""Issue 15, dense prediction: `upsample`, `deconv` and `concat crop`.

Shapes, parameters and MACs against hand-built torch modules (nn.ConvTranspose2d, F.interpolate, the
common PyTorch U-Net with biases), the errors with their place and fix, every new NumPy kernel's
backward against float64 finite differences, PyTorch, ONNX (onnxruntime) and NumPy agreeing with each
other and with the independent reference on shared weights, and the acceptance: every field figure
(rf, jump, offset, and the rows each output reads) equals the field measured by gradient on the
generated torch module over a period of output positions, the original U-Net's included (188 rows
at some outputs, 204 at most, a period of 16).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import reference
from extras import needs, require
from test_backend_numpy import compare_with_torch
from test_runtime_gradients import check, normal

import cnndsl
from cnndsl import ir
from cnndsl.analysis import receptive_fields
from cnndsl.backends import numpy_codegen, torch_codegen
from cnndsl.errors import BadValueError, CnnDslError, ShapeError
from cnndsl.runtime import kernels as K

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Every form of the three statements in one network (each branch of the crop is a different size).
EVERY_FORM = """
network forms
input 3x10x9
upsample 2x; conv 3x3 -> 4; relu              # 20x18 -> 18x16
upsample 2x bilinear                           # 36x32
upsample to 12x12 bilinear                     # down, by 3 and by 8/3
upsample to (15, 20)                           # up, by 5/4 and 5/3 (nearest)
deconv 3x3/2 pad1 outpad1 -> 6                 # 30x40
deconv 4x4/2 pad1 groups2 nobias -> 4          # 60x80
concat crop {                                  # to 56x76, every branch centred on the same input rows
  branch {}                                                          # 60x80, 2 rows and columns cropped
  branch { pool max 2; conv 3x3 -> 4; relu; deconv 2x2/2 -> 2 }      # 56x76
  branch { conv 3x3 -> 2; deconv 3x3 pad1 -> 2; upsample 1x }        # 58x78, 1 cropped
}
upsample to input bilinear                     # 10x9
conv 1x1 -> 3
"""

UNET_SMALL = EXAMPLES / "unet_small.cnn"
UNET = EXAMPLES / "unet.cnn"


def body(text: str, input_shape: str = "4x8x8") -> str:
    return f"network t\ninput {input_shape}\n{text}\n"


def random_weights(net: cnndsl.Net, seed: int = 1) -> dict[str, np.ndarray]:
    """Weights whose biases are not zero and whose batch norm statistics are not the identity."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in net.tensor_specs():
        if spec.dtype == "int64":
            out[spec.name] = np.zeros(spec.shape, np.int64)
        elif spec.role == "running_var":
            out[spec.name] = rng.uniform(0.5, 2.0, spec.shape).astype(np.float32)
        else:
            out[spec.name] = (0.3 * rng.standard_normal(spec.shape)).astype(np.float32)
    return out


def field(net: cnndsl.Net):
    """The field of the network's output."""
    return receptive_fields(net.ir, net.shapes)[net.ir.body.name]


# ---------------------------------------------------------------- shapes, parameters, MACs, printing


SHAPES = [
    # (statement, input, output)
    ("upsample 2x", "4x8x8", (4, 16, 16)),
    ("upsample 3x bilinear", "4x5x7", (4, 15, 21)),
    ("upsample 1x", "4x5x7", (4, 5, 7)),
    ("upsample to 12x20", "4x5x7", (4, 12, 20)),
    ("upsample to (3, 4) bilinear", "4x5x7", (4, 3, 4)),
    ("upsample to input", "4x5x7", (4, 5, 7)),
    ("deconv 2x2/2 -> 6", "4x5x7", (6, 10, 14)),
    ("deconv 3x3/2 pad1 outpad1 -> 6", "4x5x7", (6, 10, 14)),
    ("deconv 3x3/2 pad1 -> 6", "4x5x7", (6, 9, 13)),
    ("deconv 4x4/2 pad1 -> 6", "4x5x7", (6, 10, 14)),
    ("deconv 3x3 pad1 -> 6", "4x5x7", (6, 5, 7)),
    ("deconv 3x3 -> 6", "4x5x7", (6, 7, 9)),
    ("deconv (3, 1)/(2, 1) pad (1, 0) outpad (1, 0) -> 2", "4x5x7", (2, 10, 7)),
    ("deconv 5x5/3 pad2 outpad2 groups2 -> 6", "4x5x7", (6, 15, 21)),
]


@pytest.mark.parametrize("text, shape, output", SHAPES, ids=[s[0] for s in SHAPES])
def test_output_shapes(text, shape, output):
    assert cnndsl.parse(body(text, shape)).analyze().output == output


def test_upsample_to_input_is_the_network_inputs_size_at_any_input():
    text = body("pool max 4; conv 3x3 pad1 -> 8; upsample to input bilinear", "3x32x24")
    net = cnndsl.parse(text)
    assert net.analyze().output == (8, 32, 24)
    assert net.analyze((3, 64, 40)).output == (8, 64, 40)  # expanded again at the other size
    assert cnndsl.parse(text, input_shape=(3, 16, 16)).analyze().output == (8, 16, 16)


def test_deconv_parameters_macs_and_tensors():
    net = cnndsl.parse(body("deconv 4x4/2 pad1 groups2 -> 6\ndeconv 2x2/2 nobias -> 3", "4x5x7"))
    r = net.analyze()
    first, second = r.layers
    assert first.params == (4 // 2 * 4 * 4) * 6 + 6 == 198  # (C_in/G * K * K) * C + C
    assert first.macs == 4 * 4 * 4 * (6 // 2) * 5 * 7 == 6720  # C_in * K * K * (C/G) * H_in * W_in, as fvcore
    assert second.params == 6 * 2 * 2 * 3 == 72 and second.macs == 6 * 2 * 2 * 3 * 10 * 14
    specs = {s.name: s for s in net.tensor_specs()}
    assert specs["deconv1.weight"].shape == (4, 3, 4, 4)  # (C_in, C/G, kh, kw), nn.ConvTranspose2d's layout
    assert specs["deconv1.bias"].shape == (6,) and "deconv2.bias" not in specs
    assert specs["deconv1.weight"].init.bound == pytest.approx(1 / math.sqrt(3 * 16))  # PyTorch's fan-in C/G*k*k


def test_upsample_and_crop_have_no_parameters_and_no_macs():
    r = cnndsl.parse(body("upsample 2x bilinear; concat crop { branch {} branch { conv 3x3 -> 2 } }")).analyze()
    assert [(row.op, row.params, row.macs) for row in r.layers if row.op != "conv"] == [
        ("upsample", 0, 0), ("concat", 0, 0)]


def test_explain_shows_the_arithmetic():
    net = cnndsl.parse(body("deconv 3x3/2 pad1 outpad1 groups2 -> 6\nupsample 2x bilinear\nupsample to input", "4x5x7"))
    shapes = net.shapes
    deconv, up, to_input = net.ir.leaves()
    lines = deconv.explain(shapes.of(deconv))
    assert "height: (5 - 1) * 2 - 2 * 1 + 3 + 1 = 10" in lines
    assert "params: (4/2*3*3) * 6 + 6 = 114" in lines
    assert any(line.startswith("macs: 4*3*3 * (6/2) * 5*7 = 3,780") for line in lines)
    assert up.explain(shapes.of(up))[0] == "height: 10 * 2 = 20"
    assert any("align_corners=False" in line for line in up.explain(shapes.of(up)))
    assert to_input.explain(shapes.of(to_input))[0] == "height: 20 -> 5 (the network input's)"


PRINTED = ["upsample 2x", "upsample 3x bilinear", "upsample to 12x20", "upsample to 3x4 bilinear", "upsample to input",
           "upsample to input bilinear", "deconv 2x2/2 -> 6", "deconv 3x3/2 pad1 outpad1 -> 6 nobias",
           "deconv 1x3/2 pad 0x1 outpad 1x0 groups2 -> 6", "deconv 3x3 -> 6"]


@pytest.mark.parametrize("text", PRINTED)
def test_statements_print_as_written_and_parse_back(text):
    node = cnndsl.parse(body(text)).ir.body.items[0]
    assert node.text() == text
    again = cnndsl.parse(body(node.text())).ir.body.items[0]
    assert again.text() == text and again._values()[3:] == node._values()[3:]  # all but name, span, calls


def test_concat_crop_is_a_concat_named_and_printed_as_written():
    net = cnndsl.parse(body("concat crop { branch {} branch { conv 3x3 -> 2 } }\nconcat { branch {} }"))
    crop, plain = net.ir.body.items
    assert isinstance(crop, ir.Concat) and crop.crop and not plain.crop
    assert (crop.name, plain.name) == ("concat1", "concat2")
    assert (crop.text(), plain.text()) == ("concat crop", "concat")
    assert crop.crops(net.shapes) == [(1, 1, 1, 1), (0, 0, 0, 0)]
    assert net.analyze().output == (6, 6, 6)


def test_json_writes_fractional_jumps_and_offsets_exactly():
    report = cnndsl.parse(body("upsample 3x bilinear; deconv 2x2/2 -> 2")).analyze()
    rows = report.to_json()["layers"]
    assert (rows[0]["jump"], rows[0]["offset"]) == (["1/3", "1/3"], ["-1/3", "-1/3"])
    assert (rows[1]["jump"], rows[1]["offset"]) == (["1/6", "1/6"], ["-5/12", "-5/12"])
    json.dumps(report.to_json())


# ---------------------------------------------------------------- errors


ERRORS = [
    # (statements after `conv 1x1 -> 8` on 4x8x8, error class, line, column, words in the message, words in the fix)
    ("deconv 3x3/2 outpad2 -> 4", BadValueError, 4, 14, ("outpad 2", "smaller than the stride 2", "PyTorch"),
     ("'outpad 1'",)),
    ("deconv 3x3 outpad1 -> 4", BadValueError, 4, 12, ("outpad 1", "smaller than the stride 1"),
     ("leave 'outpad' out",)),
    ("deconv 3x3/(2, 1) outpad (1, 1) -> 4", BadValueError, 4, 19, ("outpad 1", "stride 1", "width"), ()),
    ("deconv 3x3/2 pad same -> 4", BadValueError, 4, 14, ("numbers", "(in - 1) * S - 2P + K + outpad"),
     ("'pad 1 outpad 1'",)),
    ("deconv 2x2/4 pad same -> 4", BadValueError, 4, 14, ("numbers",), ("'pad 0 outpad 2'",)),
    ("deconv 2x2/2", BadValueError, 4, 1, ("output channel count",), ("'-> C'",)),
    ("deconv 3x3 pad5 -> 4", ShapeError, 4, 1, ("output height of 0", "(8 - 1) * 1 - 2 * 5 + 3 + 0 = 0"),
     ("'pad 4'",)),
    ("deconv 2x2/2 groups3 -> 4", ShapeError, 4, 1, ("groups3 does not divide the 8 input and 4 output",),
     ("groups4",)),
    ("flatten\nupsample 2x bilinear", ShapeError, 5, 1, ("bilinear interpolation needs a CxHxW input",
                                                       "vector 512", "interpolate between"), ("before 'flatten'",)),
    ("flatten\nupsample 2x", ShapeError, 5, 1, ("upsample needs a CxHxW input",), ("before 'flatten'",)),
    ("upsample to 0x4", BadValueError, 4, 13, ("upsample size", "at least 1, got 0"), ()),
    ("upsample 0x", BadValueError, 4, 10, ("upsample factor", "at least 1, got 0"), ()),
    ("concat crop { branch {} branch { conv 2x2 -> 8 } }", ShapeError, 4, 1,
     ("branch 1 gives 8x8x8", "smallest is 7x7", "odd difference (1 rows and 1 columns)", "half a pixel apart"),
     ("even number",)),
    ("concat crop { branch { conv 3x3 pad1 -> 2 } branch { pool max 2; deconv 3x3/2 pad1 outpad1 -> 2 } }",
     ShapeError, 4, 1, ("misaligned after cropping", "branch 2's outputs are centred 0.5 input rows lower and 0.5 "
                        "input columns further right than branch 1's"), ("pad symmetrically",)),
    ("concat crop { branch {} branch { pool max 2 } }", ShapeError, 4, 1, ("branch 2 steps 2x2", "branch 1 1x1"),
     ("same total stride",)),
    ("concat crop { branch {} branch { flatten } }", ShapeError, 4, 1, ("every branch must give a CxHxW map",), ()),
]


@pytest.mark.parametrize("text, error, line, column, words, fix", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_have_a_place_and_a_fix(text, error, line, column, words, fix):
    with pytest.raises(CnnDslError) as info:
        cnndsl.parse(body(f"conv 1x1 -> 8\n{text}"), path="case.cnn").analyze()
    err = info.value
    assert type(err) is error, err.render()
    assert (err.line, err.column) == (line, column), err.render()
    for word in words:
        assert word in err.message, err.render()
    for word in fix:
        assert err.hint and word in err.hint, err.render()
    assert err.render().startswith(f"case.cnn:{line}:{column}: error: ")


def test_upsample_to_input_needs_an_image_input():
    with pytest.raises(ShapeError, match="needs a CxHxW input"):
        cnndsl.parse("network t\ninput 16\nupsample to input\n")


def test_an_odd_crop_inside_a_block_names_the_call():
    text = body("block up(c) {\n  concat crop { branch {} branch { conv 2x2 -> c } }\n}\nup(4)")
    with pytest.raises(ShapeError) as info:
        cnndsl.parse(text, path="case.cnn")
    assert (info.value.line, info.value.column) == (4, 3)
    assert "in the block call at case.cnn:6:1: up(4)" in info.value.render()


# ---------------------------------------------------------------- NumPy kernels against finite differences

RESIZES = [((5, 7), (10, 14), 2), ((4, 5), (12, 15), 3), ((6, 9), (4, 5), None), ((4, 6), (7, 9), None),
           ((5, 5), (5, 5), None), ((3, 4), (9, 4), None)]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size, out, factor", RESIZES, ids=[f"{a[0]}x{a[1]}->{b[0]}x{b[1]}" for a, b, _ in RESIZES])
def test_upsample_kernel(mode, size, out, factor):
    check(lambda x: K.upsample_forward(x, out, mode, factor), K.upsample_backward, {"x": normal(2, 3, *size)})


@needs("torch")
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size, out, factor", RESIZES, ids=[f"{a[0]}x{a[1]}->{b[0]}x{b[1]}" for a, b, _ in RESIZES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_upsample_kernel_is_torchs_interpolate(mode, size, out, factor, dtype):
    torch = require("torch")
    x = normal(2, 3, *size).astype(dtype)
    options = dict(scale_factor=factor) if factor else dict(size=out)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode, **options,
                                               **({"align_corners": False} if mode == "bilinear" else {}))
    y = K.upsample_forward(x, out, mode, factor)[0]
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=4e-6 if dtype == np.float32 else 1e-13)


DECONVS = {
    "2x2/2": dict(c=4, o=6, k=(2, 2), stride=(2, 2), pads=(0, 0), outpad=(0, 0), groups=1),
    "3x3/2 pad1 outpad1": dict(c=3, o=4, k=(3, 3), stride=(2, 2), pads=(1, 1), outpad=(1, 1), groups=1),
    "4x4/2 pad1 groups2": dict(c=4, o=6, k=(4, 4), stride=(2, 2), pads=(1, 1), outpad=(0, 0), groups=2),
    "3x2/(1, 2) pad (1, 0)": dict(c=2, o=3, k=(3, 2), stride=(1, 2), pads=(1, 0), outpad=(0, 1), groups=1),
    "depthwise 3x3/3 pad2 outpad2": dict(c=3, o=3, k=(3, 3), stride=(3, 3), pads=(2, 2), outpad=(2, 2), groups=3),
    "1x1/2 (gaps)": dict(c=2, o=2, k=(1, 1), stride=(2, 2), pads=(0, 0), outpad=(1, 1), groups=1),
}


@pytest.mark.parametrize("case", DECONVS)
def test_conv_transpose_kernel(case):
    p = DECONVS[case]
    c, o, groups = p["c"], p["o"], p["groups"]

    def forward(x, w, b):
        return K.conv_transpose2d_forward(x, w, b, p["stride"], p["pads"], p["outpad"], groups)

    check(forward, K.conv_transpose2d_backward,
          {"x": normal(2, c, 4, 5), "w": normal(c, o // groups, *p["k"], seed=1), "b": normal(o, seed=2)})


@needs("torch")
@pytest.mark.parametrize("case", DECONVS)
def test_conv_transpose_kernel_is_torchs(case):
    torch = require("torch")
    p = DECONVS[case]
    x, w, b = normal(2, p["c"], 4, 5), normal(p["c"], p["o"] // p["groups"], *p["k"], seed=1), normal(p["o"], seed=2)
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                    p["stride"], p["pads"], p["outpad"], p["groups"])
    np.testing.assert_allclose(K.conv_transpose2d_forward(x, w, b, p["stride"], p["pads"], p["outpad"],
                                                          p["groups"])[0], expected.numpy(), atol=1e-12)


def test_conv_transpose_kernel_without_input_gradient():
    x, w = normal(2, 3, 4, 4), normal(3, 2, 3, 3, seed=1)
    y, cache = K.conv_transpose2d_forward(x, w, None, (2, 2), (1, 1))
    dy = normal(*y.shape, seed=2)
    full = K.conv_transpose2d_backward(dy, cache)
    dx, dw, db = K.conv_transpose2d_backward(dy, cache, input_grad=False)
    assert dx is None and db is None
    np.testing.assert_array_equal(dw, full[1])


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 2, 2), (2, 1, 0, 3)])
def test_crop_kernel(pads):
    def forward(x):
        return K.crop_forward(x, pads), None

    check(forward, lambda dy, cache: K.crop_backward(dy, pads), {"x": normal(2, 3, 6, 7)})


def test_numpy_model_backward_against_finite_differences():
    """The generated NumPy model of every form, float64: input and parameter gradients."""
    from test_runtime_gradients import numeric_grad, rel_error

    net = cnndsl.parse(EVERY_FORM)
    model = numpy_codegen.build(net, random_weights(net), dtype=np.float64)
    x = normal(2, *net.ir.input_shape)
    r = normal(2, *net.analyze().output, seed=3)

    def loss():
        return float(np.sum(model.forward(x, train=False) * r))

    model.forward(x)
    model.zero_grad()
    dx = model.backward(r)
    numeric, points = numeric_grad(loss, x, max_points=60)
    assert rel_error(dx.reshape(-1)[points], numeric) < 1e-5
    for name in ("deconv1.weight", "deconv1.bias", "deconv2.weight", "concat1.branch2.deconv1.weight"):
        numeric, points = numeric_grad(loss, model.params[name], max_points=40)
        assert rel_error(model.grads[name].reshape(-1)[points], numeric) < 1e-5, name


# ---------------------------------------------------------------- the backends agree


@needs("torch")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_numpy_model_matches_torch_autograd(train):
    """Outputs, input and parameter gradients of the generated NumPy model against the reference's
    autograd, float32 and float64 (test_backend_numpy.compare_with_torch)."""
    compare_with_torch(cnndsl.parse(EVERY_FORM), batch=3, train=train)


def _outputs(net, weights, x, opsets=(17, 18)):
    """The network's output from the reference (float64), torch, NumPy and onnxruntime."""
    torch = require("torch")
    ort = require("onnxruntime")
    from cnndsl.backends import onnx_builder

    with torch.no_grad():
        outputs = {"torch": net.to_torch(weights).eval()(torch.from_numpy(x)).numpy(),
                   "numpy": net.to_numpy(weights).forward(x)}
    options = ort.SessionOptions()
    options.log_severity_level = 3  # bn's num_batches_tracked is read by no node, which onnxruntime would log
    for opset in opsets:
        model = onnx_builder.build(net, weights, opset=opset)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs[f"onnx{opset}"] = session.run(None, {"input": x})[0]
    return outputs


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("name", ["every_form", "unet_small"])
def test_torch_onnx_numpy_and_the_reference_agree(name):
    net = cnndsl.parse(EVERY_FORM) if name == "every_form" else cnndsl.load(UNET_SMALL)
    weights = random_weights(net)
    x = np.random.default_rng(2).standard_normal((3, *net.ir.input_shape)).astype(np.float32)
    expected = reference.evaluate(net, weights, x)
    scale = max(1.0, float(np.abs(expected).max()))
    for backend, y in _outputs(net, weights, x).items():
        assert y.shape == expected.shape, backend
        err = float(np.abs(y - expected).max()) / scale
        assert err < 2e-5, f"{backend}: {err:.2e}"


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.slow
def test_unet_backends_agree_on_its_output():
    """The original U-Net at its own 572x572: torch, NumPy and onnxruntime give the same 2x388x388."""
    net = cnndsl.load(UNET)
    weights = net.init_weights(0)
    x = np.random.default_rng(0).standard_normal((1, 1, 572, 572)).astype(np.float32)
    outputs = _outputs(net, weights, x, opsets=(17,))
    expected = outputs.pop("torch")
    assert expected.shape == (1, 2, 388, 388)
    scale = float(np.abs(expected).max())
    for backend, y in outputs.items():
        assert float(np.abs(y - expected).max()) / scale < 1e-4, backend


@needs("onnx")
@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_lowering_passes_the_checker_and_shape_inference(opset):
    onnx = require("onnx")
    net = cnndsl.parse(EVERY_FORM)
    from cnndsl.backends import onnx_builder

    model = onnx_builder.build(net, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    modes = [{a.name: a.s.decode() for a in n.attribute if a.type == onnx.AttributeProto.STRING} for n in resizes]
    assert modes[0] == {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    assert modes[1] == {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvTranspose") == 4 and ops.count("Slice") == 2  # two of the three branches are cropped
    declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in model.graph.value_info}
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    # Below opset 18 a resize to a size that is not a whole factor reads N and C with Shape: only data
    # propagation follows that.
    inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=True, data_prop=True)
    found = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
             for v in inferred.graph.value_info}
    for value, dims in declared.items():
        assert found.get(value)[1:] == dims[1:], value


def test_generated_torch_code_reads_like_the_hand_written_unet():
    source = torch_codegen.generate(cnndsl.load(UNET))
    assert "nn.ConvTranspose2d(512, 256, 2, stride=2)" in source
    assert "x = torch.cat([x[:, :, 88:480, 88:480], branch2], 1)" in source  # the first skip, 568 -> 392
    source = torch_codegen.generate(cnndsl.parse(EVERY_FORM))
    assert 'nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)' in source
    assert 'nn.Upsample(size=(15, 20), mode="nearest")' in source
    assert "nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2, bias=False)" in source
    assert "nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)" in source


@needs("torch")
def test_a_block_whose_calls_crop_differently():
    """The sketch's `up(c)` at two levels of a valid-conv network, each call cropping its own amount: the
    torch class takes the bounds as constructor arguments."""
    torch = require("torch")
    text = body("""block up(c, k) {
  concat crop { branch {} branch { pool max 2; conv k -> 2*c; relu; deconv 2x2/2 -> c } }
}
conv 3x3 -> 4; up(4, 3); conv 3x3 -> 8; up(8, 5)""", "3x34x34")
    net = cnndsl.parse(text)
    crops = [n.crops(net.shapes)[0] for n in net.ir.walk() if isinstance(n, ir.Concat)]
    assert crops == [(2, 2, 2, 2), (4, 4, 4, 4)]
    assert "concat1_crop1: tuple[int, int, int, int]" in torch_codegen.generate(net)
    weights = random_weights(net)
    x = np.random.default_rng(0).standard_normal((2, 3, 34, 34)).astype(np.float32)
    with torch.no_grad():
        y = net.to_torch(weights).eval()(torch.from_numpy(x)).numpy()
    expected = reference.evaluate(net, weights, x)
    assert float(np.abs(y - expected).max()) < 1e-5 * float(np.abs(expected).max())


# ---------------------------------------------------------------- hand-built torch modules


def _torch_unet(torch, channels=(64, 128, 256, 512, 1024), classes=2, same=False, bn=False):
    """The common PyTorch U-Net, written out: double convs (with biases, or without and with batch norm),
    max pools, 2x2/2 up-convolutions, the skip centre-cropped and concatenated before the upsampled path."""
    nn = torch.nn

    def double(c_in, c):
        layers = []
        for a in (c_in, c):
            layers += [nn.Conv2d(a, c, 3, padding=1 if same else 0, bias=not bn)]
            layers += [nn.BatchNorm2d(c)] if bn else []
            layers += [nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    def crop(skip, size):
        top, left = (skip.shape[2] - size[0]) // 2, (skip.shape[3] - size[1]) // 2
        return skip[:, :, top:top + size[0], left:left + size[1]]

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            pairs = list(zip(channels, channels[1:], strict=False))
            self.down = nn.ModuleList([double(1, channels[0])] + [double(a, b) for a, b in pairs])
            self.ups = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, 2) for a, b in pairs])
            self.up_convs = nn.ModuleList([double(2 * a, a) for a in channels[:-1]])
            self.head = nn.Conv2d(channels[0], classes, 1)

        def forward(self, x):
            skips = []
            for level, block in enumerate(self.down):
                x = block(x if level == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            x = skips.pop()
            for up, conv in zip(reversed(self.ups), reversed(self.up_convs), strict=True):
                x = up(x)
                x = conv(torch.cat([crop(skips.pop(), x.shape[2:]), x], 1))
            return self.head(x)

        def cnndsl_order(self):
            """The parameters in the order the .cnn file registers them: down the levels, then back up."""
            out = []
            for block in self.down:
                out += list(block.parameters())
            for up, conv in zip(reversed(self.ups), reversed(self.up_convs), strict=True):
                out += list(up.parameters()) + list(conv.parameters())
            return out + list(self.head.parameters())

    return UNet()


def _macs(torch, model, x):
    """conv MACs as torchvision counts them and transposed-conv MACs as fvcore does, by forward hooks."""
    nn, total = torch.nn, [0]

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel meets K*K*C/G weights
            total[0] += inputs[0][0].numel() * k * module.out_channels // module.groups
        else:
            total[0] += output[0].numel() * k * module.in_channels // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return total[0], out


@needs("torch")
def test_unet_is_the_common_pytorch_unet():
    """31,030,658 parameters for one input channel and two classes, all convs with biases (the brief's
    31,031,685 is not this network: a hand count agrees with the module), and conv + deconv MACs."""
    torch = require("torch")
    with torch.device("meta"):
        model = _torch_unet(torch)
        macs, out = _macs(torch, model, torch.empty(1, 1, 572, 572))
    r = cnndsl.load(UNET).analyze()
    assert r.params == sum(p.numel() for p in model.parameters()) == 31_030_658
    assert r.macs == macs
    assert r.output == tuple(out.shape[1:]) == (2, 388, 388)


@needs("torch")
def test_unet_computes_what_the_hand_built_module_computes():
    """The same weights in both (by registration order), at 188x188, the smallest input (4x4 out)."""
    torch = require("torch")
    net = cnndsl.load(UNET, input_shape=(1, 188, 188))
    model = _torch_unet(torch).eval()
    weights = net.init_weights(0)
    specs = net.tensor_specs()
    with torch.no_grad():
        for spec, param in zip(specs, model.cnndsl_order(), strict=True):
            assert tuple(param.shape) == spec.shape, spec.name
            param.copy_(torch.from_numpy(weights[spec.name]))
        x = torch.randn(1, 1, 188, 188)
        expected = model(x)
        generated = net.to_torch(weights).eval()(x)
    assert generated.shape == (1, 2, 4, 4)
    torch.testing.assert_close(generated, expected, rtol=1e-4, atol=1e-5)


@needs("torch")
def test_small_unet_is_the_hand_built_module():
    torch = require("torch")
    net = cnndsl.load(UNET_SMALL)
    model = _torch_unet(torch, channels=(16, 32, 64, 128), classes=3, same=True, bn=True).eval()
    macs, out = _macs(torch, model, torch.zeros(1, 1, 64, 64))
    r = net.analyze()
    assert r.params == sum(p.numel() for p in model.parameters()) == 482_483
    assert r.buffers == sum(m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (r.macs, r.output) == (macs, tuple(out.shape[1:]))
    generated = net.to_torch().eval()
    params = [p for p in model.cnndsl_order()]
    buffers = [b for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
    assert len(params) == len(list(generated.parameters())) and len(buffers) == len(list(generated.buffers()))
    with torch.no_grad():
        for mine, theirs in zip(generated.parameters(), params, strict=True):
            theirs.copy_(mine)
        x = torch.randn(2, 1, 64, 64)
        torch.testing.assert_close(generated(x), model(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- fields against the gradient


def _probe(torch, model, light: bool):
    """The generated module made fit for measuring by gradient: max pools become average pools of the
    same geometry (a max routes the gradient to one cell of its window), weights are positive (no
    cancellation), float64. `light` also replaces each conv and deconv by one of the same geometry
    on the sum of its input channels: the same field at a fraction of the cost (the original U-Net)."""
    nn = torch.nn

    class Geometry(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            m, f = self.m, nn.functional
            w = torch.ones(1, 1, *m.kernel_size, dtype=x.dtype) / (m.kernel_size[0] * m.kernel_size[1])
            x = x.sum(1, keepdim=True)
            if isinstance(m, nn.ConvTranspose2d):
                return f.conv_transpose2d(x, w, None, m.stride, m.padding, m.output_padding, 1, m.dilation)
            return f.conv2d(x, w, None, m.stride, m.padding, m.dilation)

    for name, m in list(model.named_modules()):
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        if isinstance(m, nn.MaxPool2d):
            setattr(holder, leaf, nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode))
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if light:
                setattr(holder, leaf, Geometry(m))
            else:
                with torch.no_grad():
                    m.weight.fill_(1.0 / m.weight[0].numel())
                    if m.bias is not None:
                        m.bias.zero_()
    return model.double().eval()


def measured_rows(net, positions, light=False, threshold=0.0):
    """For each output position (i, j), the first and last input row and column that output[b, :, i, j]
    depends on, by gradient on the generated torch module (one sample per position)."""
    torch = require("torch")
    model = _probe(torch, net.to_torch(), light)
    x = torch.ones(len(positions), *net.ir.input_shape, dtype=torch.float64, requires_grad=True)
    y = model(x)
    sum(y[b, :, i, j].sum() for b, (i, j) in enumerate(positions)).backward()
    out = []
    for grad in x.grad:
        g = grad.abs().sum(0)
        limit = threshold * float(g.max())
        rows, cols = (g.sum(1) > limit).nonzero()[:, 0], (g.sum(0) > limit).nonzero()[:, 0]
        out.append(((int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))))
    return out


def assert_field_is_measured(net, light=False, threshold=0.0, centre_off=(0, 0)):
    """Over a period (and one more position) of outputs whose rows lie inside the input on both axes:
    the rows each output reads, `rf` (the largest extent), `jump` (the rows moved per output over the
    period) and `offset` (the affine centre: over a period, the mean of start + jump * o equals the
    mean of the measured centres, or differs from it by `centre_off`) all equal the measured ones.
    Returns the measured extents."""
    f = field(net)
    period = math.lcm(f.axis_spans(0).period, f.axis_spans(1).period)
    out, size = net.analyze().output[1:], net.ir.input_shape[1:]
    starts = []
    for axis in range(2):
        inside = [o for o in range(out[axis] - period)
                  if all(f.span(axis, q)[0] >= 0 and f.span(axis, q)[1] < size[axis] for q in range(o, o + period + 1))]
        assert inside, f"no period of outputs reads only the input on axis {axis}: use a larger input"
        starts.append(inside[len(inside) // 2])
    positions = [(starts[0] + k, starts[1] + k) for k in range(period + 1)]
    measured = measured_rows(net, positions, light, threshold)
    for axis in range(2):
        spans = [m[axis] for m in measured]
        for k, span in enumerate(spans):
            assert span == f.span(axis, starts[axis] + k), (axis, starts[axis] + k)
        assert f.size[axis] == max(b - a + 1 for a, b in spans[:period])
        assert f.jump[axis] == Fraction(spans[period][0] - spans[0][0], period)
        centres = sum(Fraction(a + b, 2) for a, b in spans[:period]) / period
        affine = f.start[axis] + f.jump[axis] * (starts[axis] + Fraction(period - 1, 2))
        assert centres - affine == centre_off[axis], axis
    return measured


FIELDS = [
    ("1x24x24", "upsample 2x"),
    ("1x24x24", "upsample 3x"),
    ("1x24x24", "upsample 2x bilinear"),
    ("1x24x24", "upsample 3x bilinear"),
    ("1x24x24", "upsample 4x bilinear"),
    ("1x24x24", "upsample to 36x36"),
    ("1x24x24", "upsample to 36x36 bilinear"),
    ("1x36x36", "upsample to 24x24"),
    ("1x36x36", "upsample to 24x24 bilinear"),
    ("1x20x20", "upsample to 28x28"),
    ("1x20x20", "upsample to (28, 30) bilinear"),
    ("1x16x16", "deconv 2x2/2 -> 1"),
    ("1x16x16", "deconv 3x3/2 pad1 outpad1 -> 2"),
    ("1x16x16", "deconv 4x4/2 pad1 -> 2"),
    ("1x16x16", "deconv 5x5/3 pad2 -> 2"),
    ("1x16x16", "deconv 3x3 pad1 -> 2"),
    ("1x16x16", "deconv 3x4/(2, 3) pad (1, 1) -> 2"),
    ("1x32x32", "conv 3x3 -> 2; pool max 2; deconv 3x3/2 -> 2; conv 3x3 -> 1"),
    ("1x32x32", "pool avg 2; upsample 2x bilinear; conv 3x3 pad1 -> 1"),
    ("1x32x32", "pool max 3/2; upsample 3x; conv 2x2 -> 1"),
    ("1x30x30", "upsample to 45x45 bilinear; deconv 3x3/2 -> 2; conv 3x3 -> 1"),
    ("1x34x34", "concat crop { branch {} branch { conv 3x3 -> 2; pool max 2; conv 3x3 -> 2; deconv 2x2/2 -> 1 } }; "
                "conv 3x3 -> 1"),
    ("1x40x40", "concat crop { branch { conv 3x3 -> 2 } branch { pool max 2; conv 3x3 -> 2; upsample 2x bilinear } "
                "branch { pool avg 4; deconv 4x4/4 -> 2 } }; conv 3x3 -> 1"),
]


@needs("torch")
@pytest.mark.parametrize("shape, text", FIELDS, ids=[f[1] for f in FIELDS])
def test_every_field_figure_is_the_measured_one(shape, text):
    # bilinear by 3 reads rows with a weight of 0 exactly, which float rounding makes 1e-17 instead
    assert_field_is_measured(cnndsl.parse(body(text, shape)), threshold=1e-12)


@needs("torch")
@pytest.mark.parametrize("shape, text, off", [
    ("1x24x24", "upsample 3x; conv 1x1/3 -> 1", Fraction(1, 3)),
    ("1x30x30", "upsample to 45x45 bilinear; deconv 3x3/2 -> 2; conv 3x3/3 -> 1", Fraction(1, 6)),
])
def test_a_strided_layer_after_a_fractional_resize_keeps_the_affine_offset(shape, text, off):
    """Section 7 defines the offset as the affine centre, composed layer by layer: `upsample 3x` puts
    its output o at input (o + 1/2)/3 - 1/2, so `conv 1x1/3` reading rows 3o is at o - 1/3. A strided
    layer that reads a resized field at some of its phases only sees rows whose mean centre is off
    that model (nearest: row 3o reads input row o, centred on o). The rows of every output, `rf` and
    `jump` are measured exactly, and the offset is the affine figure, `off` from the rows' centre."""
    assert_field_is_measured(cnndsl.parse(body(text, shape)), threshold=1e-12, centre_off=(off, off))


@needs("torch")
def test_small_unet_field_is_the_measured_one():
    """The whole generated module (every layer with its channels) at 128x128, where a period of
    outputs reads only the image: the field repeats every 8 outputs, 92 to 100 rows."""
    net = cnndsl.load(UNET_SMALL, input_shape=(1, 128, 128))
    f = field(net)
    assert (f.size, f.jump, f.start) == ((100, 100), (1, 1), (0, 0))
    assert f.axis_spans(0).period == 8
    measured = assert_field_is_measured(net)
    assert sorted({b - a + 1 for (a, b), _ in measured[:8]}) == [92, 100]
    assert (cnndsl.load(UNET_SMALL).analyze().rf, cnndsl.load(UNET_SMALL).analyze().offset) == ((100, 100), (0, 0))


@needs("torch")
@pytest.mark.slow
def test_unet_field_is_the_measured_one():
    """The original U-Net at 572x572, measured on its generated module with each conv replaced by one of the
    same geometry (see _probe): every output reads 188 or 204 rows, the pattern repeats every 16
    outputs, jump 1, and output 0 is centred on input row 92."""
    net = cnndsl.load(UNET)
    r = net.analyze()
    assert (r.rf, r.jump, r.offset) == ((204, 204), (1, 1), (92, 92))
    f = field(net)
    spans = f.axis_spans(0)
    assert (spans.period, spans.shift) == (16, 16)
    assert sorted({b - a + 1 for a, b in zip(spans.first, spans.last, strict=True)}) == [188, 204]
    measured = assert_field_is_measured(net, light=True)
    assert [b - a + 1 for (a, b), _ in measured[:16]].count(188) == 4


def test_unet_figures_without_torch():
    r = cnndsl.load(UNET).analyze()
    assert (r.params, r.output, r.rf, r.jump, r.offset) == (31_030_658, (2, 388, 388), (204, 204), (1, 1), (92, 92))
    rows = {row.name: row for row in r.layers}
    bottom = rows["concat1.branch2.concat1.branch2.concat1.branch2.concat1.branch2.deconv1"]
    assert (bottom.output, bottom.jump, bottom.offset) == ((512, 56, 56), (8, 8), (Fraction(131, 2),) * 2)
    first = rows["concat1.branch2.deconv1"]
    assert (first.output, first.rf, first.jump, first.offset) == ((64, 392, 392), (204, 204), (1, 1), (90, 90))
