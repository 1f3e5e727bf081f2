"""Issue 14's norm and channel kinds: `ln`, `gn`, `layerscale`, `shuffle`, `channels`.

Figures (parameters, MACs, explanations), the errors with their fixes, the printer, every NumPy
kernel's backward against float64 finite differences, the PyTorch modules against hand-written
torch code (torchvision's ConvNeXt block and ShuffleNetV2 unit, nn.LayerNorm on a permuted input,
nn.GroupNorm, torch.channel_shuffle), and PyTorch, ONNX (onnxruntime) and NumPy agreeing with each
other and with the independent reference (tests/reference.py) on shared weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference
from extras import needs, require
from test_backend_numpy import compare_with_torch
from test_runtime_gradients import check, normal

import cnndsl
from cnndsl import ir
from cnndsl.errors import BadValueError, CnnDslError, ShapeError
from cnndsl.runtime import kernels as K

# The section-7 blocks of the sketch (without `droppath`, another kind) in small 3x32x32 networks.
CONVNEXT = """
network convnext_small
input 3x32x32
block convnext(c) {                 # ConvNeXt's block
  residual { conv 7x7 pad3 depthwise; ln; conv 1x1 -> 4*c; gelu; conv 1x1 -> c; layerscale 1e-6 }
}
conv 4x4/4 -> 16; ln                # stem: patchify, then LayerNorm2d
convnext(16) x2
ln; conv 2x2/2 -> 32                # downsampling
convnext(32)
pool avg global; ln; flatten; fc 10
"""

SHUFFLENET = """
network shufflenet_small
input 3x32x32
block shuffle_unit(c) {             # ShuffleNetV2, stride 1: half the channels pass through
  concat {
    branch { channels :c/2 }
    branch { channels c/2:; conv 1x1 -> c/2 nobias; bn; relu
             conv 3x3 pad1 depthwise nobias; bn; conv 1x1 -> c/2 nobias; bn; relu }
  }
  shuffle 2
}
conv 3x3/2 pad1 -> 24 nobias; bn; relu
shuffle_unit(24) x2
conv 1x1 -> 48 nobias; bn; relu
gn 4; pool avg global
fc 10
"""

# Every form of every kind, on images and on vectors.
EVERY_FORM = """
network forms
input 4x6x5
conv 3x3 pad1 -> 12
ln; relu
gn 3 eps 1e-3; relu
layerscale 0.5
shuffle 3
shuffle 4
concat { branch { channels :4 } branch { channels 4:10; conv 1x1 -> 2 } branch { channels 10: } }
gn 8
ln eps 1e-4
fc 6; ln; layerscale 2; gn 2; shuffle 3; channels 1:5
"""

NETWORKS = {"convnext": CONVNEXT, "shufflenet": SHUFFLENET, "every_form": EVERY_FORM}


def random_weights(net: cnndsl.Net, seed: int = 1) -> dict[str, np.ndarray]:
    """Weights that make every kind visible: norm weights and biases and layer scales far from 1 and 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in net.tensor_specs():
        if spec.dtype != "float32":
            out[spec.name] = np.zeros(spec.shape, spec.dtype)
        elif spec.role == "running_var":
            out[spec.name] = rng.uniform(0.5, 2.0, spec.shape).astype(np.float32)
        else:
            out[spec.name] = (rng.standard_normal(spec.shape) * (0.3 if spec.role == "weight" and len(spec.shape) > 1
                                                                  else 1.0)).astype(np.float32)
    return out


def body(text: str, input_shape: str = "64x8x8") -> str:
    return f"network t\ninput {input_shape}\n{text}\n"


# ---------------------------------------------------------------- figures


def test_parameters_macs_and_tensors():
    net = cnndsl.parse(body("ln\ngn 8\nlayerscale 1e-6\nshuffle 4\nchannels 8:40\nflatten\nln\nlayerscale 3"))
    rows = {row.name: row for row in net.report.layers}
    assert {name: row.params for name, row in rows.items()} == {
        "ln1": 128, "gn1": 128, "layerscale1": 64, "shuffle1": 0, "channels1": 0, "flatten1": 0,
        "ln2": 2 * 2048, "layerscale2": 2048}
    assert all(row.macs == 0 for row in rows.values())
    assert rows["channels1"].output == (32, 8, 8)
    assert net.report.params == 128 + 128 + 64 + 4096 + 2048 and net.report.buffers == 0
    specs = {spec.name: spec for spec in net.tensor_specs()}
    assert list(specs) == ["ln1.weight", "ln1.bias", "gn1.weight", "gn1.bias", "layerscale1.layer_scale",
                           "ln2.weight", "ln2.bias", "layerscale2.layer_scale"]
    # ConvNeXt's layer_scale: (C, 1, 1) on images, starting at INIT; a vector's is (C,)
    assert specs["layerscale1.layer_scale"].shape == (64, 1, 1) and specs["layerscale1.layer_scale"].init == 1e-6
    assert specs["layerscale2.layer_scale"].shape == (2048,) and specs["layerscale2.layer_scale"].init == 3.0
    assert (specs["ln1.weight"].init, specs["ln1.bias"].init) == (1.0, 0.0)
    weights = net.init_weights()
    assert np.all(weights["layerscale1.layer_scale"] == np.float32(1e-6))


def test_explain_says_the_macs_are_zero_by_convention():
    net = cnndsl.parse(body("ln\ngn 8\nlayerscale 1e-6\nshuffle 4\nchannels 8:40"))
    for row in net.report.layers:
        lines = net.report.explain_lines(row)
        assert any("macs: 0" in line and "conv and fc only" in line for line in lines), (row.name, lines)
    assert net.report.explain_lines("gn1")[0] == "8 groups of 8 channels, each normalised over 8*8*8 values, eps 1e-5"
    assert "params: 2 * 64 = 128" in net.report.explain_lines("ln1")[1]
    assert net.report.explain_lines("channels1")[0] == "channels 8 to 39 of 64: 32"


def test_defaults():
    leaves = list(cnndsl.parse(body("ln; gn 4; layerscale .1; channels :3; channels 1:")).ir.leaves())
    ln, gn, scale, head, tail = leaves
    assert (ln.eps, gn.eps, gn.groups, scale.init) == (1e-6, 1e-5, 4, 0.1)
    assert (head.start, head.stop, tail.start, tail.stop) == (None, 3, 1, None)


def test_pointwise_kinds_keep_the_receptive_field():
    net = cnndsl.parse(body("conv 3x3 -> 64\nln\ngn 8\nlayerscale 1\nshuffle 2\nchannels 3:9", "3x16x16"))
    assert {row.rf for row in net.report.layers} == {(3, 3)}
    assert net.report.output == (6, 14, 14)


@pytest.mark.parametrize("text", [
    "ln", "ln eps 1e-5", "gn 8", "gn 2 eps 0.001", "layerscale 1e-6", "layerscale 0.5", "layerscale -2",
    "shuffle 4", "channels 0:8", "channels :8", "channels 8:", "channels 3:5"])
def test_printed_statements_parse_back(text):
    node = cnndsl.parse(body(text)).ir.body.items[0]
    assert node.text() == text
    again = cnndsl.parse(body(f"conv 1x1 -> 64\n{node.text()}")).ir.body.items[1]
    assert type(again) is type(node)
    assert all(getattr(node, f) == getattr(again, f) for f in node.__dataclass_fields__ if f not in ("span",))


def test_kinds_are_exported_by_the_ir():
    assert {ir.LayerNorm.statement, ir.GroupNorm.statement, ir.LayerScale.statement, ir.Shuffle.statement,
            ir.Channels.statement} == {"ln", "gn", "layerscale", "shuffle", "channels"}


# ---------------------------------------------------------------- errors


ERRORS = [
    # (statement, error class, column, words in the message, words in the fix)
    ("gn 5", ShapeError, 1, ("gn 5", "64 channels"), ("'gn 4' or 'gn 8'", "1, 2, 4, 8, 16, 32, 64")),
    ("gn 128", ShapeError, 1, ("gn 128", "64 channels"), ("'gn 64'",)),
    ("gn 0", BadValueError, 4, ("group count", "at least 1"), ()),
    ("shuffle 3", ShapeError, 1, ("shuffle 3", "64 channels", "3 equal groups"), ("'shuffle 2' or 'shuffle 4'",)),
    ("channels 0:0", BadValueError, 1, ("keeps no channel", "B must be greater than A"), ("'channels 0:1'",)),
    ("channels 5:2", BadValueError, 1, ("keeps no channel",), ("'channels 5:6'", "'channels 5:'")),
    ("channels :0", ShapeError, 1, ("keeps no channel",), ("'channels 0:1'",)),
    ("channels 10:80", ShapeError, 1, ("reaches past the 64 channels", "0 to 63"), ("'channels 10:64'",)),
    ("channels :65", ShapeError, 1, ("reaches past the 64 channels",), ("'channels :64'",)),
    ("channels 64:", ShapeError, 1, ("reaches past the 64 channels",), ("start below 64", "'channels 32:'")),
    ("channels -1:", BadValueError, 10, ("first channel", "at least 0"), ()),
    ("ln eps 2", BadValueError, 8, ("eps", "between"), ()),
    ("layerscale 1e9", BadValueError, 12, ("layer-scale",), ()),
]


@pytest.mark.parametrize("text, error, column, words, fix", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_have_a_place_and_a_fix(text, error, column, words, fix):
    source = body(f"conv 1x1 -> 64\n{text}")
    with pytest.raises(CnnDslError) as info:
        cnndsl.parse(source, path="case.cnn").analyze()
    err = info.value
    assert type(err) is error, err.render()
    assert (err.line, err.column) == (4, column), err.render()
    for word in words:
        assert word in err.message, err.render()
    for word in fix:
        assert err.hint and word in err.hint, err.render()
    rendered = err.render()
    assert rendered.startswith(f"case.cnn:4:{column}: error: ") and text in rendered
    if error is ShapeError:
        assert "input 64x8x8" in rendered


def test_an_error_inside_a_block_names_the_call():
    text = body("block unit(c) {\n  shuffle 3\n}\nconv 1x1 -> 64\nunit(64)")
    with pytest.raises(ShapeError) as info:
        cnndsl.parse(text, path="case.cnn")
    assert (info.value.line, info.value.column) == (4, 3)
    assert "in the block call at case.cnn:7:1: unit(64)" in info.value.render(), info.value.render()


# ---------------------------------------------------------------- NumPy kernels against finite differences


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5)], ids=["images", "vectors"])
def test_layer_norm_kernel(shape):
    c = shape[1]
    check(lambda x, gamma, beta: K.layer_norm_forward(x, gamma, beta, 1e-5), K.layer_norm_backward,
          {"x": normal(*shape), "gamma": normal(c, seed=1), "beta": normal(c, seed=2)})


@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 4), 3), ((2, 6, 3, 4), 1), ((2, 6, 2, 3), 6), ((3, 8), 2)],
                         ids=["3 groups", "one group", "a group per channel", "vectors"])
def test_group_norm_kernel(shape, groups):
    c = shape[1]
    check(lambda x, gamma, beta: K.group_norm_forward(x, gamma, beta, groups, 1e-5), K.group_norm_backward,
          {"x": normal(*shape), "gamma": normal(c, seed=1), "beta": normal(c, seed=2)})


@pytest.mark.parametrize("shape, scale", [((2, 5, 3, 4), (5, 1, 1)), ((3, 5), (5,))], ids=["images", "vectors"])
def test_layer_scale_kernel(shape, scale):
    check(K.layer_scale_forward, K.layer_scale_backward, {"x": normal(*shape), "scale": normal(*scale, seed=1)})


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 12])
def test_channel_shuffle_kernel(groups):
    check(lambda x: K.channel_shuffle_forward(x, groups), K.channel_shuffle_backward, {"x": normal(2, 12, 3, 2)})


def test_channel_shuffle_is_torchs():
    torch = require("torch")
    x = normal(2, 12, 3, 2)
    for groups in (2, 3, 4):
        expected = torch.channel_shuffle(torch.from_numpy(x), groups).numpy()
        np.testing.assert_array_equal(K.channel_shuffle_forward(x, groups)[0], expected)


@pytest.mark.parametrize("start, stop", [(0, 4), (4, 10), (3, 4), (0, 10)])
def test_channel_slice_kernel(start, stop):
    check(lambda x: K.channel_slice_forward(x, start, stop), K.channel_slice_backward, {"x": normal(2, 10, 3, 2)})
    check(lambda x: K.channel_slice_forward(x, start, stop), K.channel_slice_backward, {"x": normal(3, 10)})


# ---------------------------------------------------------------- whole models: NumPy against torch autograd


@needs("torch")
@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_numpy_model_matches_torch_autograd(name, train):
    """Outputs, input and parameter gradients of the generated NumPy model against the reference's
    autograd (float32 and float64; see test_backend_numpy.compare_with_torch)."""
    compare_with_torch(cnndsl.parse(NETWORKS[name]), batch=3, train=train)


# ---------------------------------------------------------------- the backends agree


@needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("name", NETWORKS)
def test_torch_onnx_numpy_and_the_reference_agree(name):
    torch = require("torch")
    ort = require("onnxruntime")
    net = cnndsl.parse(NETWORKS[name])
    weights = random_weights(net)
    x = np.random.default_rng(2).standard_normal((3, *net.ir.input_shape)).astype(np.float32)
    expected = reference.evaluate(net, weights, x)
    with torch.no_grad():
        outputs = {"torch": net.to_torch(weights).eval()(torch.from_numpy(x)).numpy(),
                   "numpy": net.to_numpy(weights).forward(x)}
    options = ort.SessionOptions()
    options.log_severity_level = 3  # bn's num_batches_tracked is read by no node, which onnxruntime would log
    session = ort.InferenceSession(net.to_onnx(weights).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    outputs["onnx"] = session.run(None, {"input": x})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    for backend, y in outputs.items():
        assert y.shape == expected.shape, backend
        err = float(np.abs(y - expected).max()) / scale
        assert err < 2e-5, f"{backend}: {err:.2e}"


@needs("onnx")
@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_model_passes_the_checker_and_shape_inference(name):
    onnx = require("onnx")
    net = cnndsl.parse(NETWORKS[name])
    model = net.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in model.graph.value_info}
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=True)
    found = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
             for v in inferred.graph.value_info}
    for value, dims in declared.items():
        assert found.get(value) == dims, value
    ops = {node.op_type for node in model.graph.node}
    if name == "convnext":
        assert "LayerNormalization" in ops and model.opset_import[0].version == 17
    if name == "shufflenet":
        assert {"Slice", "InstanceNormalization", "Transpose", "Reshape"} <= ops
        assert "GroupNormalization" not in ops


# ---------------------------------------------------------------- PyTorch modules against hand-written torch


@needs("torch")
def test_torch_layers_are_the_hand_written_torch_ops():
    torch = require("torch")
    net = cnndsl.parse(body("ln eps 1e-5\ngn 4\nlayerscale 0.5\nshuffle 4\nchannels 3:11\nflatten\nln", "16x5x6"))
    weights = random_weights(net)
    model = net.to_torch(weights).eval()
    t = {name: torch.from_numpy(value) for name, value in weights.items()}
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 16, 5, 6)).astype(np.float32))
    with torch.no_grad():
        layer_norm = torch.nn.LayerNorm(16, eps=1e-5)
        layer_norm.load_state_dict({"weight": t["ln1.weight"], "bias": t["ln1.bias"]})
        expected = layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # over the channels at each position
        torch.testing.assert_close(model.ln1(x), expected)
        group_norm = torch.nn.GroupNorm(4, 16)
        group_norm.load_state_dict({"weight": t["gn1.weight"], "bias": t["gn1.bias"]})
        torch.testing.assert_close(model.gn1(x), group_norm(x))
        torch.testing.assert_close(model.layerscale1(x), x * t["layerscale1.layer_scale"])
        assert t["layerscale1.layer_scale"].shape == (16, 1, 1)
        torch.testing.assert_close(model.shuffle1(x), torch.channel_shuffle(x, 4))
        torch.testing.assert_close(model.shuffle1(x), x.view(2, 4, 4, 5, 6).transpose(1, 2).reshape(2, 16, 5, 6))
        torch.testing.assert_close(model.channels1(x), x[:, 3:11])
        vector = torch.nn.LayerNorm(8 * 5 * 6, eps=1e-6)
        vector.load_state_dict({"weight": t["ln2.weight"], "bias": t["ln2.bias"]})
        features = x[:, :8].flatten(1)
        torch.testing.assert_close(model.ln2(features), vector(features))  # on a vector: nn.LayerNorm itself
    assert type(model.ln2) is torch.nn.LayerNorm and type(model.gn1) is torch.nn.GroupNorm


def _cn_block(torch, dim: int):
    """torchvision's ConvNeXt CNBlock (stochastic depth left out), written out by hand."""
    nn = torch.nn

    class Permute(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return x.permute(*self.dims)

    class CNBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True), Permute([0, 2, 3, 1]),
                nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim, bias=True), nn.GELU(),
                nn.Linear(4 * dim, dim, bias=True), Permute([0, 3, 1, 2]))
            self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * 1e-6)

        def forward(self, x):
            return self.layer_scale * self.block(x) + x

    return CNBlock()


def _shuffle_unit(torch, c: int):
    """torchvision's ShuffleNetV2 InvertedResidual at stride 1, written out by hand."""
    nn = torch.nn
    b = c // 2

    class InvertedResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch2 = nn.Sequential(
                nn.Conv2d(b, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                nn.Conv2d(b, b, 3, 1, 1, bias=False, groups=b), nn.BatchNorm2d(b),
                nn.Conv2d(b, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))

        def forward(self, x):
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
            n, channels, h, w = out.shape  # torchvision's channel_shuffle(out, 2)
            return out.view(n, 2, channels // 2, h, w).transpose(1, 2).contiguous().view(n, channels, h, w)

    return InvertedResidual()


@needs("torch")
def test_convnext_block_is_torchvisions():
    torch = require("torch")
    net = cnndsl.parse(CONVNEXT.replace("input 3x32x32", "input 16x8x8").split("conv 4x4/4")[0] + "convnext(16)\n")
    hand = _cn_block(torch, 16)
    assert net.report.params == sum(p.numel() for p in hand.parameters()) == 16 * 49 + 16 + 32 + 16 * 64 + 64 \
        + 64 * 16 + 16 + 16
    weights = random_weights(net)
    t = {name: torch.from_numpy(value) for name, value in weights.items()}
    p = "convnext1."
    state = {"layer_scale": t[p + "layerscale1.layer_scale"],
             "block.0.weight": t[p + "conv1.weight"], "block.0.bias": t[p + "conv1.bias"],
             "block.2.weight": t[p + "ln1.weight"], "block.2.bias": t[p + "ln1.bias"],
             "block.3.weight": t[p + "conv2.weight"].flatten(1), "block.3.bias": t[p + "conv2.bias"],
             "block.5.weight": t[p + "conv3.weight"].flatten(1), "block.5.bias": t[p + "conv3.bias"]}
    hand.load_state_dict(state)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 16, 8, 8)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(net.to_torch(weights).eval()(x), hand.eval()(x), rtol=1e-5, atol=1e-5)


@needs("torch")
def test_shuffle_unit_is_torchvisions():
    torch = require("torch")
    net = cnndsl.parse(SHUFFLENET.replace("input 3x32x32", "input 24x8x8").split("conv 3x3/2")[0]
                       + "shuffle_unit(24)\n")
    hand = _shuffle_unit(torch, 24)
    ours = net.tensor_specs()
    theirs = hand.state_dict()
    assert [s.shape for s in ours] == [tuple(v.shape) for v in theirs.values()]
    assert net.report.params == sum(p.numel() for p in hand.parameters())
    weights = random_weights(net)
    hand.load_state_dict({key: torch.from_numpy(weights[spec.name]) for key, spec in zip(theirs, ours, strict=True)})
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 24, 8, 8)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(net.to_torch(weights).eval()(x), hand.eval()(x), rtol=1e-5, atol=1e-5)


@needs("torch")
def test_generated_torch_code_defines_only_the_helpers_it_uses():
    from cnndsl.backends import torch_codegen

    source = torch_codegen.generate(cnndsl.parse(SHUFFLENET))
    assert "class ChannelShuffle(nn.Module)" in source and "class Channels(nn.Module)" in source
    assert "LayerNorm2d" not in source and "LayerScale" not in source
    assert "self.shuffle_unit1 = " in source or "ShuffleUnit" in source
    source = torch_codegen.generate(cnndsl.parse(CONVNEXT))
    assert "class LayerNorm2d(nn.LayerNorm)" in source and "class LayerScale(nn.Module)" in source
    # the stem's LayerNorm2d; in the block's class (one for convnext(16) and convnext(32)) the scale's shape
    assert "= LayerNorm2d(16, eps=1e-06)" in source and "= LayerScale((c, 1, 1), 1e-06)" in source
    assert "= nn.LayerNorm(32, eps=1e-06)" not in source  # the head's ln is on a 32x1x1 map: LayerNorm2d
    assert "ChannelShuffle" not in source
    # a block called LayerNorm2d does not take the helper's name
    source = torch_codegen.generate(cnndsl.parse(body("block LayerNorm2d() { ln }\nLayerNorm2d")))
    assert source.count("class LayerNorm2d(") == 1


@needs("torch")
def test_generated_torch_files_pass_ruff_import_alone_and_trace(tmp_path):
    """The helper classes keep the generated file what every other one is: clean under the project's
    ruff settings and ruff's defaults, importable without cnndsl, traceable by torch.fx."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from cnndsl.backends import torch_codegen

    for name, text in NETWORKS.items():
        (tmp_path / f"{name}.py").write_text(torch_codegen.generate(cnndsl.parse(text)))
    script = (
        "import importlib.util, sys\n"
        "sys.modules['cnndsl'] = None\n"
        "import torch\n"
        "for path in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location('generated', path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    model = module.build().eval()\n"
        "    x = torch.randn(2, *model.input_shape)\n"
        "    assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x)), path\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, sorted(tmp_path.glob("*.py")))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[test]' (./install.sh test)"
    root = Path(__file__).resolve().parents[1]
    for config in (["--config", str(root / "pyproject.toml")],
                   ["--isolated", "--select", "E,F,W,I,B,UP", "--ignore", "E501"]):
        done = subprocess.run([ruff, "check", "--no-cache", *config, str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
