"""The ONNX backend: built from the IR, checked by ONNX, and numerically the same network.

Three independent judges of the numbers: the shared reference (tests/reference.py, plain PyTorch
straight from the contract in docs/backends.md, no generated code involved),
onnx.reference.ReferenceEvaluator, and the PyTorch backend (`net.to_torch`). Only the tests that
use the reference or the torch backend need torch; every test here needs onnx and onnxruntime.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from extras import require
from reference import evaluate

onnx = require("onnx")
ort = require("onnxruntime")

import cnndsl  # noqa: E402
from cnndsl.backends import onnx_builder  # noqa: E402
from cnndsl.errors import CnnDslError, WeightsError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
ATOL, RTOL = 1e-4, 1e-3
SMALL = ("lenet5", "cifar_tiny")  # small enough for onnx.reference's pure-numpy kernels
BIG_MACS, BIG_PARAMS = 2e8, 2e7  # examples above either run at Cx64x64 (if their own input is larger)


# -- helpers ----------------------------------------------------------------------------------------


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # BN's num_batches_tracked is an initializer no node reads: ORT warns
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(model, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"input": x})[0]


def inputs(net, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *net.ir.input_shape)).astype(np.float32)


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


def check_against_reference(net, seed: int = 0, batches=(1, 4), weights=None):
    weights = weights if weights is not None else net.init_weights(seed)
    model = onnx_builder.build(net, weights)
    for batch in batches:
        x = inputs(net, batch)
        assert_close(run_ort(model, x), evaluate(net, weights, x))
    return model


def load_resized(path: Path, input_shape: tuple[int, ...]) -> cnndsl.Net:
    """`cnndsl.load(path, input_shape)` without the file's `expect` lines, written for its own size
    (`load` checks them at any size, so it refuses alexnet, vgg16, inception and resnet101 at 64x64)."""
    from cnndsl.errors import Source
    from cnndsl.expand import expand
    from cnndsl.parser import parse_program

    text = path.read_text(encoding="utf-8")
    source = Source(text, str(path))
    return cnndsl.Net(dataclasses.replace(expand(parse_program(text, source), source, input_shape), expects=()))


SIZES = {"unet": 188}  # U-Net's valid convs take 16k + 124 rows: 188 is the smallest (a 4x4 output)


def example_net(path: Path) -> cnndsl.Net:
    net = cnndsl.load(path)
    report = net.analyze()
    big = report.macs > BIG_MACS or report.params > BIG_PARAMS
    size = SIZES.get(path.stem, 64)
    if big and len(net.ir.input_shape) == 3 and min(net.ir.input_shape[1:]) > size:
        net = load_resized(path, (net.ir.input_shape[0], size, size))
    return net


@dataclasses.dataclass
class Example:
    net: cnndsl.Net
    weights: dict[str, np.ndarray]
    model: onnx.ModelProto
    session: ort.InferenceSession


def _example_param(path: Path):
    """Examples with over 40M parameters (alexnet, vgg16, resnet101) are marked slow."""
    heavy = cnndsl.load(path).analyze().params > 4e7
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if heavy else [])


@pytest.fixture(scope="module", params=[_example_param(p) for p in EXAMPLES])
def example(request) -> Example:
    """One example built once for all the tests below (pytest groups them by example)."""
    net = example_net(request.param)
    weights = net.init_weights(0)
    model = onnx_builder.build(net, weights)
    return Example(net, weights, model, session(model))


def prog(body: str, input_shape: str = "3x12x12", header: str = "") -> cnndsl.Net:
    return cnndsl.parse(f"{header}\nnetwork t\ninput {input_shape}\n{textwrap.dedent(body)}")


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


# -- every example ------------------------------------------------------------------------------------


def test_example_matches_reference(example):
    for batch in (1, 4):
        x = inputs(example.net, batch)
        expected = evaluate(example.net, example.weights, x, dtype=np.float32)  # float64 convs are slow
        assert_close(example.session.run(None, {"input": x})[0], expected)


def test_example_matches_torch_backend(example):
    torch = require("torch")

    module = example.net.to_torch(example.weights).eval()
    for batch in (1, 4):
        x = inputs(example.net, batch, seed=2)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        assert_close(example.session.run(None, {"input": x})[0], expected)


def test_example_passes_checker_and_shape_inference(example):
    net, model = example.net, example.model
    onnx.checker.check_model(model, full_check=True)
    declared = {v.name: v for v in model.graph.value_info}
    from cnndsl.analysis.shapes import active

    analysed = {node.name: net.shapes.of(node).output for node in active(net.ir.body, net.shapes)}
    # ONNX's own inference, without the shapes we declared, must find the same shapes
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(bare, strict_mode=True).graph.value_info}
    produced = {out for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    for name in produced - {"output"}:
        dims = [d.dim_param or d.dim_value for d in inferred[name].type.tensor_type.shape.dim]
        mine = [d.dim_param or d.dim_value for d in declared[name].type.tensor_type.shape.dim]
        assert dims == mine, name
        assert dims[0] == "batch" or name.startswith("preprocess/")  # mean/std reshaped for broadcasting
        if name in analysed:  # values named after their IR node carry its analysed output shape
            assert tuple(dims[1:]) == analysed[name], name
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["batch", *net.analyze().output]


@pytest.mark.parametrize("name", SMALL)
def test_reference_evaluator_agrees(name):
    from onnx.reference import ReferenceEvaluator

    net = cnndsl.load(ROOT / "examples" / f"{name}.cnn")
    weights = net.init_weights(3)
    model = onnx_builder.build(net, weights)
    x = inputs(net, 2)
    expected = evaluate(net, weights, x)
    assert_close(ReferenceEvaluator(model).run(None, {"input": x})[0], expected)
    assert_close(run_ort(model, x), expected)


# -- the model's names, metadata and weights ------------------------------------------------------------


def test_initializers_are_exactly_the_tensor_specs():
    net = cnndsl.load(ROOT / "examples" / "cifar_tiny.cnn")
    weights = net.init_weights(7)
    model = onnx_builder.build(net, weights)
    specs = [s for s in net.tensor_specs() if s.role != "num_batches_tracked"]  # read by no node: left out
    assert len(specs) < len(net.tensor_specs())
    assert [t.name for t in model.graph.initializer] == [s.name for s in specs]
    for tensor, spec in zip(model.graph.initializer, specs, strict=True):
        array = onnx.numpy_helper.to_array(tensor)
        assert array.shape == spec.shape and array.dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(array, weights[spec.name])
    assert not {i.name for i in model.graph.input} & {s.name for s in specs}  # not graph inputs


def test_model_metadata_and_producer():
    import hashlib

    path = ROOT / "examples" / "lenet5.cnn"
    net = cnndsl.load(path)
    model = onnx_builder.build(net)
    assert model.producer_name == "cnndsl"
    assert model.opset_import[0].version >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert props["cnndsl.network"] == "lenet5"
    assert props["cnndsl.version"] == cnndsl.__version__
    assert props["cnndsl.source_sha256"] == hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()
    assert b"cnndsl" in model.SerializeToString()[:4096]  # the output writer's "ours to overwrite" mark
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, 28, 28]


def test_node_names_and_doc_strings_point_at_the_source():
    net = prog("""
        block twice(c) {
          conv 3x3 pad1 -> c
          relu
        }
        conv 7x7/2 pad3 -> 4 nobias   # the stem
        twice(8); twice(6)
        fc 10
    """, "3x16x16")
    model = onnx_builder.build(net)
    nodes = {n.name: n for n in model.graph.node}
    assert len(nodes) == len(model.graph.node)  # unique
    # lines: 1 empty, 2 network, 3 input, 4 empty (dedent), 5-8 the block, 9 the stem, 10 the calls, 11 fc
    stem = nodes["conv1@line9"]
    assert stem.op_type == "Conv" and stem.output[0] == "conv1"
    assert stem.doc_string == "<string>:9: conv 7x7/2 pad3 -> 4 nobias"
    inner = nodes["twice2.conv1@line6"]  # inside the block, called from line 10
    assert inner.doc_string == ("<string>:6: conv 3x3 pad1 -> c\n"
                                "  in the block call at <string>:10: twice(6)")
    assert nodes["fc1@line11/flatten"].op_type == "Flatten" and nodes["fc1@line11"].op_type == "Gemm"
    assert all("@line" in n.name for n in model.graph.node if n.op_type != "Constant")


def test_weights_from_dict_and_safetensors(tmp_path):
    from cnndsl.weights import save_weights

    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = net.init_weights(11)
    path = tmp_path / "w.safetensors"
    save_weights(weights, path)
    x = inputs(net, 3)
    from_file = run_ort(onnx_builder.build(net, path), x)
    from_dict = run_ort(onnx_builder.build(net, weights), x)
    np.testing.assert_array_equal(from_file, from_dict)
    assert_close(from_dict, evaluate(net, weights, x))
    seeded = run_ort(onnx_builder.build(net, seed=11), x)  # the default is init_weights(net, seed)
    np.testing.assert_array_equal(seeded, from_dict)
    assert not np.allclose(seeded, run_ort(onnx_builder.build(net, seed=12), x))


def test_wrong_weights_are_a_clear_error():
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = net.init_weights(0)
    bad = dict(weights, **{"conv1.weight": np.zeros((6, 1, 3, 3), np.float32)})
    with pytest.raises(WeightsError, match=r"conv1\.weight.*\[6, 1, 3, 3\].*\[6, 1, 5, 5\]"):
        onnx_builder.build(net, bad)
    missing = {k: v for k, v in weights.items() if k != "fc3.bias"}
    with pytest.raises(WeightsError, match="fc3.bias"):
        onnx_builder.build(net, missing)


def test_unsupported_opset_is_refused():
    with pytest.raises(ValueError, match="opset 13"):
        onnx_builder.build(prog("relu"), opset=13)


def test_shape_errors_surface_before_building():
    with pytest.raises(CnnDslError, match="larger than its padded input"):
        onnx_builder.build(prog("conv 5x5 -> 4", "3x3x3"))


# -- every construct on its own ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (4, 2), (3, 3), (1, 2)])
def test_conv_pad_same_with_stride(size, kernel, stride):
    net = prog(f"conv {kernel}x{kernel}/{stride} pad same -> 4", f"2x{size}x{size}")
    model = check_against_reference(net)
    out = -(-size // stride)  # TensorFlow's SAME: ceil(size / stride), odd padding at the end
    total = max((out - 1) * stride + kernel - size, 0)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    pads = next(a for a in conv.attribute if a.name == "pads").ints
    assert list(pads) == [total // 2, total // 2, total - total // 2, total - total // 2]
    assert net.analyze().output == (4, out, out)


def test_conv_pad_same_matches_tensorflow_on_an_even_input():
    # stride 2 on an even size: no padding at the top/left, one row/column at the bottom/right
    torch = require("torch")
    net = prog("conv 3x3/2 pad same -> 2 nobias", "1x6x6")
    weights = net.init_weights(0)
    x = inputs(net, 1)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 0, 1)),
                                          torch.from_numpy(weights["conv1.weight"]), stride=2).numpy()
    assert_close(run_ort(onnx_builder.build(net, weights), x), expected)


def test_conv_options():
    check_against_reference(prog("""
        conv 3x3/2x1 dil2 pad2x1 -> 8 nobias
        conv 1x5 pad0x2 groups4 -> 12
        conv 3x3 pad1 depthwise -> 2x
        conv 3x3 depthwise nobias
        conv 3x3 dil3 pad same -> 6
    """, "4x15x13"))


def test_depthwise_multiplier_uses_groups_of_the_input_channels():
    net = prog("conv 3x3 pad1 depthwise -> 2x", "3x6x6")
    model = check_against_reference(net)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert {a.name: a.i for a in conv.attribute if a.name == "group"} == {"group": 3}
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).shape == (6, 1, 3, 3)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size, kernel, stride, pad", [
    (5, 2, 2, 1),   # ceil: the last window would start in the trailing padding, so it is dropped
    (6, 3, 2, 1),   # ceil adds a window running past input + padding
    (7, 3, 2, 1), (8, 3, 3, 1), (5, 2, 2, 0), (9, 3, 2, 0), (10, 4, 3, 2),
])
def test_ceil_pools_match_pytorch(mode, size, kernel, stride, pad):
    torch = require("torch")
    net = prog(f"pool {mode} {kernel}x{kernel}/{stride} pad{pad} ceil", f"2x{size}x{size}")
    x = inputs(net, 2)
    t = torch.from_numpy(x)
    if mode == "max":
        expected = torch.nn.functional.max_pool2d(t, kernel, stride, pad, ceil_mode=True)
    else:
        expected = torch.nn.functional.avg_pool2d(t, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
    model = onnx_builder.build(net)
    assert tuple(expected.shape[1:]) == net.analyze().output
    assert_close(run_ort(model, x), expected.numpy(), atol=1e-5, rtol=1e-5)
    from onnx.reference import ReferenceEvaluator

    assert_close(ReferenceEvaluator(model).run(None, {"input": x})[0], expected.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size", [7, 8])
def test_pools_floor_and_pad_same(mode, size):
    torch = require("torch")
    net = prog(f"pool {mode} 3x3/2 pad1; pool {mode} 2x2/2 pad same; pool {mode} 3x3 pad same ceil",
               f"3x{size}x{size}")
    check_against_reference(net)
    x = inputs(net, 1)
    first = onnx_builder.build(prog(f"pool {mode} 3x3/2 pad1", f"3x{size}x{size}"))
    pool = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    assert_close(run_ort(first, x), pool(torch.from_numpy(x), 3, 2, 1).numpy())


def test_global_pools_and_fc_on_spatial_input():
    model = check_against_reference(prog("""
        conv 3x3 -> 4
        concat { branch { pool max global } branch { pool avg global } }
        fc 5
    """, "2x7x9"))
    assert "GlobalMaxPool" in ops(model) and "GlobalAveragePool" in ops(model)
    fc_net = prog("conv 3x3 -> 4; fc 6 nobias", "2x5x6")
    model = check_against_reference(fc_net)
    assert ops(model)[-2:] == ["Flatten", "Gemm"]
    gemm = model.graph.node[-1]
    assert {a.name: a.i for a in gemm.attribute} == {"transB": 1}
    assert len(gemm.input) == 2  # nobias
    weight = next(t for t in model.graph.initializer if t.name == "fc1.weight")
    assert list(weight.dims) == [6, 4 * 3 * 4]


def test_flatten_of_a_vector_is_a_no_op_and_dropout_is_gone():
    model = check_against_reference(prog("flatten; dropout .3; fc 8; flatten; dropout .5; relu; flatten; fc 3",
                                         "2x3x3"))
    assert ops(model) == ["Flatten", "Gemm", "Relu", "Gemm"]
    assert "Dropout" not in ops(model)


def test_identity_network_still_has_an_output():
    model = check_against_reference(prog("dropout .5", "3"))
    assert ops(model) == ["Identity"]
    onnx.checker.check_model(model, full_check=True)


def test_batchnorm_on_images_and_vectors_uses_running_statistics():
    net = prog("conv 3x3 -> 4; bn eps 1e-3 momentum .01; fc 6; bn; relu", "2x5x5")
    weights = net.init_weights(0)
    rng = np.random.default_rng(5)
    for name in weights:
        if name.endswith(("running_mean", "bias")) and name.startswith("bn"):
            weights[name] = rng.standard_normal(weights[name].shape).astype(np.float32)
        if name.endswith(("running_var", "weight")) and name.startswith("bn"):
            weights[name] = rng.uniform(0.5, 2, weights[name].shape).astype(np.float32)
    model = check_against_reference(net, weights=weights)
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 2
    assert {a.name: round(a.f, 6) for a in bns[0].attribute} == {"epsilon": 0.001, "momentum": 0.99}
    # No initializer that no node reads (onnxruntime warned about each); the readers recreate them as 0.
    assert [t.name for t in model.graph.initializer if "num_batches_tracked" in t.name] == []
    read = onnx_builder.read_weights(model, net)
    assert list(read) == [s.name for s in net.tensor_specs()]
    assert read["bn1.num_batches_tracked"].dtype == np.int64 and int(read["bn2.num_batches_tracked"]) == 0
    np.testing.assert_array_equal(read["bn1.running_mean"], weights["bn1.running_mean"])
    assert net.to_numpy(onnx_builder.read_weights(model)).buffers["bn1.num_batches_tracked"] == 0


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("act", ["relu", "relu6", "leaky", "leaky .2", "elu", "elu .5", "sigmoid", "tanh",
                                 "gelu", "silu", "hardswish", "softmax"])
def test_activations(act, opset):
    net = prog(f"conv 1x1 -> 5; {act}", "3x4x4")
    weights = net.init_weights(0)
    weights["conv1.weight"] *= 8  # reach relu6's and hardswish's clipping points
    model = onnx_builder.build(net, weights, opset=opset, check=True)
    assert model.opset_import[0].version == opset
    x = inputs(net, 2)
    assert_close(run_ort(model, x), evaluate(net, weights, x))
    from onnx.reference import ReferenceEvaluator

    assert_close(ReferenceEvaluator(model).run(None, {"input": x})[0], evaluate(net, weights, x))
    if act == "gelu":
        assert ("Gelu" in ops(model)) == (opset >= 20) and ("Erf" in ops(model)) == (opset < 20)


def test_softmax_on_a_vector():
    model = check_against_reference(prog("fc 7; softmax", "5"))
    assert_close(run_ort(model, inputs(prog("fc 7", "5"), 3)).sum(1), np.ones(3), atol=1e-6)


def test_residual_identity_and_projection():
    net = prog("""
        block r(c, s=1) {
          residual { conv 3x3/s pad1 -> c; relu; conv 3x3 pad1 -> c } shortcut { conv 1x1/s -> c }
        }
        r(4); r(6, s=2)
        residual { conv 3x3 pad1 -> 6 } shortcut always { conv 1x1 -> 6; bn }
    """, "4x8x8")
    model = check_against_reference(net)
    names = {t.name for t in model.graph.initializer}
    assert "r1.shortcut1.conv1.weight" not in names  # identity shortcut: not computed, no tensors
    assert {"r2.shortcut1.conv1.weight", "shortcut1.conv1.weight"} <= names
    assert ops(model).count("Add") == 3


def test_concat_with_an_empty_branch_and_add_of_three():
    model = check_against_reference(prog("""
        concat { branch {} branch { conv 3x3 pad1 -> 2 } branch { pool avg 3x3/1 pad1 } }
        add { branch { conv 1x1 -> 4 } branch { conv 3x3 pad1 -> 4 } branch { relu; conv 1x1 -> 4 } }
        add { branch { sigmoid } }
    """, "3x6x6"))
    assert "Concat" in ops(model) and "Sum" in ops(model)


@pytest.mark.parametrize("input_shape", ["3x5x4", "3"])
def test_preprocess_standardize_with_given_mean_and_std(input_shape):
    net = prog("fc 2" if input_shape == "3" else "conv 1x1 -> 2", input_shape, header=textwrap.dedent("""
        preprocess {
          scale 1/255
          standardize mean (0.5, 0.25, 0.125) std (0.2, 0.4, 0.8)
        }"""))
    model = check_against_reference(net)
    assert ops(model)[:1] == ["Mul"] and {"Sub", "Div"} <= set(ops(model))
    # the same network without preprocessing, fed the standardized input by hand
    plain = prog("fc 2" if input_shape == "3" else "conv 1x1 -> 2", input_shape)
    weights = {k: v for k, v in net.init_weights(0).items() if not k.startswith("preprocess.")}
    x = inputs(net, 2) * 255
    shape = (1, 3, 1, 1) if input_shape != "3" else (1, 3)
    by_hand = (x / 255 - np.reshape([0.5, 0.25, 0.125], shape)) / np.reshape([0.2, 0.4, 0.8], shape)
    assert_close(run_ort(model, x), run_ort(onnx_builder.build(plain, weights), by_hand.astype(np.float32)))
    scale = next(t for t in model.graph.initializer if t.name == "preprocess.scale")
    assert onnx.numpy_helper.to_array(scale) == pytest.approx(1 / 255)


def test_preprocess_scale_only():
    net = prog("conv 1x1 -> 2", "3x4x4", header="preprocess { scale 2 }")
    model = check_against_reference(net)
    assert [t.name for t in model.graph.initializer][:1] == ["preprocess.scale"]
    assert "Sub" not in ops(model)


# -- saving and the command line ---------------------------------------------------------------------------


def test_save_with_external_data(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    model = onnx_builder.build(net)
    before = model.SerializeToString()
    path = tmp_path / "lenet.onnx"
    written = onnx_builder.save(model, path, external=True)
    assert written == [path, tmp_path / "lenet.onnx.data"]
    assert model.SerializeToString() == before  # the caller's model is left as it was
    assert path.stat().st_size < 20_000 < written[1].stat().st_size
    assert written[1].read_bytes()[:6] == b"cnndsl"
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    for a, b in zip(loaded.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = inputs(net, 2)
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], run_ort(model, x))


def test_save_refuses_foreign_files_and_inlines_small_models(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    model = onnx_builder.build(net)
    path = tmp_path / "m.onnx"
    assert onnx_builder.save(model, path, net=net) == [path]  # small: one file
    assert onnx.load(str(path)).graph.initializer[0].HasField("raw_data")
    onnx_builder.save(model, path, net=net)  # ours: overwritten
    foreign = tmp_path / "f.onnx.data"
    foreign.write_bytes(b"precious")
    with pytest.raises(CnnDslError, match="not written by cnndsl"):
        onnx_builder.save(model, tmp_path / "f.onnx", net=net, external=True)
    assert foreign.read_bytes() == b"precious" and not (tmp_path / "f.onnx").exists()
    onnx_builder.save(model, tmp_path / "f.onnx", net=net, external=True, force=True)
    assert foreign.read_bytes()[:6] == b"cnndsl"


def test_compile_to_onnx_never_imports_torch(tmp_path):
    out = tmp_path / "lenet.onnx"
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("cnndsl compile --target onnx imported " + name)

        sys.meta_path.insert(0, NoTorch())
        from cnndsl.cli import main
        try:
            main(["compile", {str(ROOT / "examples" / "cifar_tiny.cnn")!r}, "--target", "onnx",
                  "-o", {str(out)!r}, "--seed", "3"], standalone_mode=False)
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    net = cnndsl.load(ROOT / "examples" / "cifar_tiny.cnn")
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    x = inputs(net, 2)
    assert_close(run_ort(model, x), evaluate(net, net.init_weights(3), x))


def test_save_goes_external_past_the_size_limit(tmp_path, monkeypatch):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    model = onnx_builder.build(net)
    monkeypatch.setattr(onnx_builder, "EXTERNAL_DATA_THRESHOLD", onnx_builder.initializer_bytes(model) - 1)
    path = tmp_path / "m.onnx"
    assert onnx_builder.save(model, path, net=net) == [path, tmp_path / "m.onnx.data"]
    x = inputs(net, 1)
    np.testing.assert_array_equal(run_ort(onnx.load(str(path)), x), run_ort(model, x))


@pytest.mark.parametrize("opset", [17, 18, 20, 21])
def test_every_construct_at_every_opset(opset):
    net = prog("""
        conv 3x3/2 pad same -> 4; bn; relu6; pool avg 2x2/2 pad1 ceil; pool max 2x2/1 ceil
        concat { branch {} branch { conv 1x1 -> 2; gelu } }
        add { branch { silu } branch { hardswish } branch { leaky } }
        fc 5; bn; elu; softmax
    """, "3x9x9", header="preprocess { scale 2; standardize mean (0.1, 0.2, 0.3) std (1, 2, 3) }")
    weights = net.init_weights(4)
    model = onnx_builder.build(net, weights, opset=opset, check=True)
    x = inputs(net, 3)
    assert_close(run_ort(model, x), evaluate(net, weights, x))


def _layer(draw, st):
    kind = draw(st.sampled_from(["conv", "dwconv", "pool"]))
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    if kind == "pool":
        k = max(k, 2)
        pad = draw(st.sampled_from(["", " pad same"] + [f" pad{p}" for p in range(k // 2 + 1)]))
        mode, ceil = draw(st.sampled_from(["max", "avg"])), draw(st.sampled_from(["", " ceil"]))
        return f"pool {mode} {k}x{k}/{stride}{pad}{ceil}"
    pad = draw(st.sampled_from(["", " pad same", " pad1", " pad2x0"]))
    dil = draw(st.sampled_from(["", " dil2"]))
    if kind == "dwconv":
        return f"conv {k}x{k}/{stride}{dil}{pad} depthwise -> {draw(st.sampled_from(['1x', '2x']))}"
    return f"conv {k}x{draw(st.integers(1, 3))}/{stride}{dil}{pad} -> {draw(st.sampled_from([2, 4]))}"


def test_random_window_layers_match_the_reference():
    hypothesis = require("hypothesis")
    st = require("hypothesis.strategies")

    @st.composite
    def programs(draw):
        size = f"{draw(st.integers(1, 3))}x{draw(st.integers(4, 11))}x{draw(st.integers(4, 11))}"
        return size, "\n".join(_layer(draw, st) for _ in range(draw(st.integers(1, 3))))

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
    @hypothesis.given(programs())
    def check(program):
        size, body = program
        try:
            net = prog(body, size)
        except CnnDslError:
            hypothesis.assume(False)
        check_against_reference(net, batches=(2,))

    check()


@pytest.mark.parametrize("name", ["lenet5", "cifar_tiny", "mobilenet_v1"])
def test_serialize_decodes_to_the_built_model(name):
    net = cnndsl.load(ROOT / "examples" / f"{name}.cnn")
    weights = net.init_weights(2)
    data = onnx_builder.serialize(net, weights)
    model = onnx_builder.build(net, weights)
    assert onnx.load_model_from_string(data) == model
    assert b"cnndsl" in data[:4096]
    assert onnx.load_model_from_string(onnx_builder.serialize(net, seed=2)) == onnx_builder.build(net, seed=2)
    onnx.checker.check_model(data, full_check=True)


def test_write_small_and_past_the_size_limit(tmp_path, monkeypatch):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    small = tmp_path / "small.onnx"
    assert onnx_builder.write(net, small, seed=5) == [small]
    model = onnx_builder.build(net, seed=5)
    assert onnx.load(str(small)) == model
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not ours")
    with pytest.raises(CnnDslError, match="not written by cnndsl"):
        onnx_builder.write(net, foreign)
    monkeypatch.setattr(onnx_builder, "EXTERNAL_DATA_THRESHOLD", onnx_builder.initializer_bytes(model) // 2)
    with pytest.raises(ValueError, match="external data"):
        onnx_builder.serialize(net)
    big = tmp_path / "big.onnx"
    assert onnx_builder.write(net, big, seed=5) == [big, tmp_path / "big.onnx.data"]
    x = inputs(net, 2)
    np.testing.assert_array_equal(run_ort(onnx.load(str(big)), x), run_ort(model, x))


def test_compile_with_weights_from_the_command_line(tmp_path):
    from cnndsl.weights import save_weights

    lenet = ROOT / "examples" / "lenet5.cnn"
    net = cnndsl.load(lenet)
    weights = net.init_weights(9)
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_weights(weights, good)
    save_weights({k: v for k, v in weights.items() if k != "conv2.bias"}, bad)

    def compile_(weights_file: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cnndsl.cli", "compile", str(lenet), "--target", "onnx",
                               "-o", str(out), "--weights", str(weights_file)], capture_output=True, text=True,
                              timeout=120)

    done = compile_(good, tmp_path / "good.onnx")
    assert done.returncode == 0, done.stderr
    x = inputs(net, 2)
    assert_close(run_ort(onnx.load(str(tmp_path / "good.onnx")), x), evaluate(net, weights, x))
    failed = compile_(bad, tmp_path / "bad.onnx")
    assert failed.returncode == 1
    assert "error:" in failed.stderr and "conv2.bias" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "bad.onnx").exists()
