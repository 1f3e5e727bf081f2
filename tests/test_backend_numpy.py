"""The NumPy backend: generated source, the model interface, and parity with PyTorch.

Parity is micrograd's test: the same network and weights run in NumPy and in PyTorch autograd
(the shared reference, tests/reference.py, and the torch backend) must give the same outputs,
input gradients and parameter gradients. Only those tests need torch.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import reference
from extras import needs, require

import cnndsl
from cnndsl.backends import numpy_codegen
from cnndsl.errors import CnnDslError, Source

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.cnn"))
# Examples for 224x224 run at 64x64 with a batch of 2: the last stage is then 2x2, so a
# training-mode bn still averages 8 values per channel (at 1x1 it would see 2, and its output
# would be +-1 whatever the input: too ill-conditioned to compare in float32). The largest are slow.
SMALL = 64
SLOW = {"alexnet", "vgg16", "resnet101", "resnet50", "resnet34", "inception", "unet"}
SIZES = {"unet": 188}  # U-Net's valid convs take 16k + 124 rows: 188 is the smallest (a 4x4 output)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded BLAS and torch: on a shared 2-core machine, spinning BLAS threads make
    small matmuls ten times slower, and parity does not depend on threads."""
    try:
        import torch
    except ImportError:  # the torch-free tests still run
        torch = None
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
    else:
        with threadpool_limits(1):
            yield
    if torch:
        torch.set_num_threads(threads)


def load_resized(path: Path, size: int | None) -> cnndsl.Net:
    """The example at `size` x `size`. `cnndsl.load(path, input_shape)` also checks the file's
    `expect` lines, written for its own size, so the expectations are dropped here."""
    net = cnndsl.load(path)
    if size is None or len(net.ir.input_shape) != 3 or net.ir.input_shape[1] <= size:
        return net
    shape = (net.ir.input_shape[0], size, size)
    return cnndsl.Net(dataclasses.replace(net.ir, input_shape=shape, expects=()))


@functools.cache
def example(stem: str) -> cnndsl.Net:
    return load_resized(EXAMPLES / f"{stem}.cnn", SIZES.get(stem, SMALL))


def example_params():
    return [pytest.param(p.stem, marks=pytest.mark.slow) if p.stem in SLOW else p.stem for p in EXAMPLE_FILES]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    # The floor: a gradient that is zero but for rounding (a conv bias before a training-mode bn; a bn bias
    # before a conv and a training-mode bn, ~1e-13 of noise in float64) is compared absolutely, to 1e-11
    # at the 1e-7 tolerance.
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-4))


def pieces_of(model) -> dict:
    """The kinks a forward pass took: relu and relu6 masks, and max-pool winners as flat indices into the
    padded input. Rounding decides a relu input within ~1e-5 of 0 (or a near-tie in a pool)
    differently in float32 and float64, or in NumPy and PyTorch, and one such flip deep in a
    ResNet moves a gradient by 1e-2; a reference on the same pieces compares the arithmetic."""
    out = {}
    for layer in model.layers:
        if type(layer).__name__ == "ReLU":
            out[layer.name] = layer.cache["x"] > 0
        elif type(layer).__name__ == "ReLU6":  # kinks at 0 and 6: MobileNetV2 at 64x64 has one 3e-5 from 0
            x = layer.cache["x"]
            out[layer.name] = ((x > 0) & (x < 6), x >= 6)
        elif type(layer).__name__ == "MaxPool2d":
            c = layer.cache
            winners = cnndsl.runtime.kernels.max_pool2d_winners(c)
            oh, ow = winners.shape[2:]
            rows = np.arange(oh).reshape(oh, 1) * layer.stride[0] + winners // layer.kernel[1]
            cols = np.arange(ow).reshape(1, ow) * layer.stride[1] + winners % layer.kernel[1]
            out[layer.name] = (rows * c["xp"].shape[3] + cols, c["full"])
        elif type(layer).__name__ == "AdaptiveMaxPool2d":  # each window's winner, flat into its H x W image
            out[layer.name] = layer.cache["winner"]
    return out


def run_numpy(net, weights, x, dy, train, dtype):
    model = numpy_codegen.build(net, weights, dtype=dtype)
    y = model.forward(x.astype(dtype), train=train)
    dy = dy(y.shape)
    model.zero_grad()
    dx = model.backward(dy.astype(dtype))
    masks = {layer.name: layer.cache["mask"] for layer in model.layers
             if isinstance(layer, cnndsl.runtime.Dropout) and layer.cache is not None}
    return {"y": y, "dx": dx, "dy": dy, "grads": {n: g.copy() for n, g in model.grads.items()},
            "buffers": dict(model.buffers), "masks": masks, "pieces": pieces_of(model)}


def run_torch(net, weights, x, dy, train, masks, dtype, pieces=None):
    torch = require("torch")
    specs = {s.name: s for s in net.tensor_specs()}
    tensors = {name: torch.tensor(value if specs[name].dtype == "int64" else value.astype(dtype),
                                  requires_grad=specs[name].trainable) for name, value in weights.items()}
    masks = {name: m.astype(dtype) for name, m in masks.items() if m is not None}
    tx = torch.tensor(x.astype(dtype), requires_grad=True)
    ty = reference.forward(net, tensors, tx, train=train, masks=masks, pieces=pieces)
    ty.backward(torch.from_numpy(dy.astype(dtype)))
    return {"y": ty.detach().numpy(), "dx": tx.grad.numpy(),
            "grads": {name: t.grad.numpy() for name, t in tensors.items() if t.requires_grad},
            "buffers": {name: t.numpy() for name, t in tensors.items() if not t.requires_grad}}


def compare_with_torch(net: cnndsl.Net, batch: int = 2, train: bool = True, seed: int = 0, exact: bool = True):
    """NumPy against PyTorch autograd on the same weights, input and output gradient.

    float32, against PyTorch float64 on the same pieces: outputs to atol 1e-4, input and parameter
    gradients to relative 1e-3; where PyTorch's own float32 result is further than that from the
    float64 one (deep networks with training-mode bn: sums like dgamma = sum(dy * xhat) cancel to
    1e-5 of their terms), within twice PyTorch's own float32 error.
    float64 (`exact`): outputs and gradients to 1e-7 of plain PyTorch, which pins down the
    arithmetic itself.
    """
    weights = net.init_weights(seed=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, *net.ir.input_shape))
    noise = {}

    def dy(shape):
        if shape not in noise:
            noise[shape] = np.random.default_rng(seed + 2).standard_normal(shape)
        return noise[shape]

    ours = run_numpy(net, weights, x, dy, train, np.float32)
    # PyTorch on the kinks our float32 pass took (see pieces_of), in float32 and float64.
    theirs = run_torch(net, weights, x, ours["dy"], train, ours["masks"], np.float32, ours["pieces"])
    exact_ref = run_torch(net, weights, x, ours["dy"], train, ours["masks"], np.float64, ours["pieces"])

    err, torch_err = np.abs(ours["y"] - exact_ref["y"]).max(), np.abs(theirs["y"] - exact_ref["y"]).max()
    assert err < max(1e-4, 2 * torch_err), f"output: {err:.2e} (torch float32: {torch_err:.2e})"
    pairs = [("input", ours["dx"], theirs["dx"], exact_ref["dx"])]
    pairs += [(name, g, theirs["grads"][name], exact_ref["grads"][name]) for name, g in ours["grads"].items()]
    for name, mine, torch32, truth in pairs:
        tolerance = max(1e-3, 2 * rel(torch32, truth))
        message = f"{name}: {rel(mine, truth):.2e} (torch float32: {rel(torch32, truth):.2e})"
        assert rel(mine, truth) < tolerance, message
    for name, buffer in ours["buffers"].items():
        if name.endswith(("running_mean", "running_var")):
            truth = exact_ref["buffers"][name]
            assert rel(buffer, truth) < max(1e-4, 2 * rel(theirs["buffers"][name], truth)), name
        if name.endswith("num_batches_tracked"):
            assert buffer == int(train), name

    if exact:
        ours = run_numpy(net, weights, x, dy, train, np.float64)
        exact_ref = run_torch(net, weights, x, ours["dy"], train, ours["masks"], np.float64)
        np.testing.assert_allclose(ours["y"], exact_ref["y"], rtol=1e-7, atol=1e-9)
        assert rel(ours["dx"], exact_ref["dx"]) < 1e-7
        for name, g in ours["grads"].items():
            assert rel(g, exact_ref["grads"][name]) < 1e-7, name


@needs("torch")
@pytest.mark.parametrize("stem", example_params())
def test_example_matches_torch_autograd_in_training(stem):
    compare_with_torch(example(stem), train=True, exact=stem not in SLOW)


@needs("torch")
@pytest.mark.parametrize("stem", ["lenet5", "resnet18", "mobilenet_v1", "cifar_tiny"])
def test_example_matches_torch_autograd_in_evaluation(stem):
    compare_with_torch(example(stem), train=False, seed=3)


ALL_OPS = """
network allops
input 4x12x11
preprocess {
  scale 1/255
  standardize mean (0.4, 0.5, 0.6, 0.3) std (0.2, 0.3, 0.25, 0.3)
}
conv 3x3/2 pad same -> 8; bn; relu
conv 3x3 dil2 pad2 -> 8 groups2; leaky .1
conv 3x3 pad1 depthwise -> 2x; elu
pool avg 3x3/2 pad1 ceil
concat {
  branch {}
  branch { conv 1x1 -> 4; gelu }
}
add {
  branch { conv 1x1 -> 6; silu }
  branch { conv 3x3 pad same -> 6; hardswish }
}
residual { conv 3x3 pad1 -> 6; tanh }
residual { conv 3x3/2 pad1 -> 8; bn } shortcut { conv 1x1/2 -> 8 }
pool max 3x3/2 pad1 ceil
relu6
fc 20; sigmoid; dropout .3; bn
fc 5; softmax
"""


VECTOR = """
network vec
input 6
preprocess { scale 0.5; standardize mean (1, 2, 3, 4, 5, 6) std (1, 2, 1, 2, 1, 2) }
fc 16; bn; gelu; dropout .25
residual { fc 16; elu .5 }
add { branch { fc 8; relu6 } branch { fc 8; leaky } }
concat { branch {} branch { fc 4 nobias; silu } }
flatten
fc 5; softmax
"""


@needs("torch")
@pytest.mark.parametrize("text", [ALL_OPS, VECTOR], ids=["images", "vectors"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_op_matches_torch_autograd(text, train):
    compare_with_torch(cnndsl.parse(text), batch=5, train=train)


# The depthwise kernel's own path (stride phases, flat rows): stride 2 with uneven `pad same`, an
# even kernel, dilation, a channel multiplier, unequal strides and dilations, rows no window reaches.
DEPTHWISE = """
network depthwise
input 4x31x29
conv 3x3/2 pad same depthwise -> 2x; bn; relu6
conv 3x3 dil2 pad2 depthwise; relu
conv 4x4/2 pad same depthwise nobias; bn; relu6
conv 3x5/(2, 1) dil (2, 1) pad same depthwise -> 16; relu
conv 3x3/3 depthwise -> 2x
flatten
fc 3
"""


@needs("torch")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_depthwise_convolutions_match_torch_autograd(train):
    compare_with_torch(cnndsl.parse(DEPTHWISE), batch=5, train=train)


# ---------------------------------------------------------------- the torch backend


@needs("torch")
@pytest.mark.parametrize("stem", example_params())
def test_forward_equals_torch_backend_eval(stem):
    torch = require("torch")
    net = example(stem)
    weights = net.init_weights(seed=0)
    x = np.random.default_rng(1).standard_normal((2, *net.ir.input_shape)).astype(np.float32)
    module = net.to_torch(weights).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.to_numpy(weights).forward(x), expected, atol=1e-4, rtol=1e-4)


@needs("torch")
@pytest.mark.parametrize("stem", [p for p in example_params() if isinstance(p, str)])
def test_training_step_equals_torch_backend_autograd(stem):
    """One training-mode step in float64 through the torch backend's module: outputs, input and
    parameter gradients and BN buffers agree to 1e-7 (dropout and droppath off on both sides: their
    masks are drawn by different generators, and the kernels are tested on their own)."""
    torch = require("torch")
    net = example(stem)
    weights = net.init_weights(seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *net.ir.input_shape))
    model = numpy_codegen.build(net, weights, dtype=np.float64)
    for layer in model.layers:
        if isinstance(layer, cnndsl.runtime.Dropout):  # DropPath too
            layer.p = 0.0
    module = net.to_torch(weights).double().train()
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout) or type(sub).__name__ == "DropPath":
            sub.eval()

    y = model.forward(x, train=True)
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    ty.backward(torch.from_numpy(dy))

    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-7, atol=1e-9)
    assert rel(dx, tx.grad.numpy()) < 1e-7
    torch_params = dict(module.named_parameters())
    assert list(torch_params) == list(model.params)
    for name, grad in model.grads.items():
        assert rel(grad, torch_params[name].grad.numpy()) < 1e-7, name
    torch_buffers = dict(module.named_buffers())
    for name, buffer in model.buffers.items():
        np.testing.assert_allclose(buffer, torch_buffers[name].numpy(), rtol=1e-7, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------- generated source


def test_generated_source_is_readable_python_over_numpy_and_the_runtime():
    net = cnndsl.load(EXAMPLES / "lenet5.cnn")
    source = numpy_codegen.generate(net)
    assert "cnndsl" in source.splitlines()[0]
    tree = ast.parse(source)
    imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imports |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imports == {"numpy", "cnndsl"}
    assert "from cnndsl import runtime as rt" in source
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert [c.name for c in classes] == ["Lenet5"]
    forward = next(f for f in classes[0].body if isinstance(f, ast.FunctionDef) and f.name == "forward")
    # One line per statement, in order, each carrying its .cnn line.
    lines = [line.strip() for line in ast.get_source_segment(source, forward).splitlines()]
    calls = [line for line in lines if line.startswith("x = self.") and "self.input" not in line]
    names = [line.split("self.")[1].split("(")[0] for line in calls]
    assert names == [n.name for n in net.ir.leaves()]
    assert "x = self.conv1(x, train)" in calls[0] and "# line 5: conv 5x5 pad2 -> 6" in calls[0]
    assert all("# line " in line for line in calls)


def test_generated_file_runs_standalone(tmp_path):
    """The written file, imported as a module, is the model build() returns."""
    net = cnndsl.parse(ALL_OPS)
    path = tmp_path / "allops_numpy.py"
    path.write_text(numpy_codegen.generate(net))
    spec = importlib.util.spec_from_file_location("allops_numpy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    standalone = module.Allops()
    built = numpy_codegen.build(net)
    standalone.load_state_dict(built.state_dict())
    x = np.random.default_rng(0).random((2, 4, 12, 11)).astype(np.float32) * 255
    np.testing.assert_array_equal(standalone.forward(x), built.forward(x))
    np.testing.assert_array_equal(standalone.backward(np.ones((2, 5))), built.backward(np.ones((2, 5))))


@pytest.mark.parametrize("text", ["ALL_OPS", "VECTOR", "resnet18"])
def test_generated_build_starts_from_the_shared_seeded_init(text, tmp_path):
    """The file's own build() (no cnndsl.weights, no IR) gives exactly net.init_weights(seed)."""
    net = example("resnet18") if text == "resnet18" else cnndsl.parse(globals()[text])
    namespace: dict = {}
    exec(compile(numpy_codegen.generate(net), "<test>", "exec"), namespace)
    for seed in (0, 5):
        state = namespace["build"](seed=seed).state_dict()
        expected = net.init_weights(seed=seed)
        assert list(state) == list(expected)
        for name, array in expected.items():
            np.testing.assert_array_equal(state[name], array, err_msg=name)
    model = numpy_codegen.build(net, net.init_weights(seed=9))
    model.save_safetensors(tmp_path / "w.safetensors")
    loaded = namespace["build"](tmp_path / "w.safetensors", dtype=np.float64).state_dict()
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_compile_writes_the_numpy_target(tmp_path):
    out = cnndsl.compile(EXAMPLES / "lenet5.cnn", target="numpy", out=tmp_path / "lenet5_numpy.py")
    assert out.read_text() == numpy_codegen.generate(cnndsl.load(EXAMPLES / "lenet5.cnn"))


@pytest.mark.parametrize("bad", ["x; import os", "a\nimport os", "1net", "net-2", ""])
def test_network_names_cannot_inject_code(bad):
    net = cnndsl.parse(ALL_OPS)
    evil = cnndsl.Net(dataclasses.replace(net.ir, name=bad))
    tree = ast.parse(numpy_codegen.generate(evil))  # the name only ever becomes a sanitised class name
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [a.name for n in imports for a in n.names] == ["numpy", "runtime"]
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)] == [numpy_codegen.class_name(bad)]


def test_layer_names_cannot_inject_code():
    net = cnndsl.load(EXAMPLES / "lenet5.cnn")
    conv = net.ir.body.items[0]
    evil_conv = dataclasses.replace(conv, name="conv1(x)\nimport os;")
    body = dataclasses.replace(net.ir.body, items=(evil_conv, *net.ir.body.items[1:]))
    with pytest.raises(CnnDslError):
        numpy_codegen.generate(cnndsl.Net(dataclasses.replace(net.ir, body=body)))


def test_source_text_cannot_escape_its_comment():
    net = cnndsl.parse(ALL_OPS)
    evil = cnndsl.Net(dataclasses.replace(net.ir, source=Source(net.source.text, "x\rimport os\x00\u2028y")))
    source = numpy_codegen.generate(evil)
    compile(source, "<test>", "exec")
    assert "\nimport os" not in source.replace("\r", "\n") and "\x00" not in source


@pytest.mark.parametrize("name,cls", [("lenet5", "Lenet5"), ("my_net_v2", "MyNetV2"), ("_x", "X")])
def test_class_names(name, cls):
    assert numpy_codegen.class_name(name) == cls


# ---------------------------------------------------------------- the model interface


def test_tensors_use_tensor_spec_names_shapes_and_order():
    net = cnndsl.parse(ALL_OPS)
    model = net.to_numpy()
    specs = net.tensor_specs()
    state = model.state_dict()
    assert list(state) == [s.name for s in specs]
    assert list(model.params) == list(model.grads) == [s.name for s in specs if s.trainable]
    assert list(model.buffers) == [s.name for s in specs if not s.trainable]
    for s in specs:
        assert state[s.name].shape == s.shape, s.name
        assert state[s.name].dtype == np.dtype(s.dtype) or not s.trainable and s.role != "num_batches_tracked"
    for name, array in net.init_weights(seed=0).items():  # build(net) starts from the shared seeded init
        np.testing.assert_array_equal(state[name], array, err_msg=name)


def test_safetensors_round_trip_and_dtype(tmp_path):
    net = cnndsl.parse(ALL_OPS)
    model = numpy_codegen.build(net, net.init_weights(seed=7))
    model.forward(np.random.default_rng(0).random((4, 4, 12, 11)) * 255, train=True)  # move the BN buffers
    path = tmp_path / "w.safetensors"
    model.save_safetensors(path)
    other = numpy_codegen.build(net, path, dtype=np.float64)
    assert other.params["conv1.weight"].dtype == np.float64
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value, err_msg=name)
    assert other.buffers["bn1.num_batches_tracked"] == 1
    fresh = numpy_codegen.build(net)
    fresh.load_safetensors(path)
    np.testing.assert_array_equal(fresh.params["fc2.weight"], model.params["fc2.weight"])
    with pytest.raises(KeyError):
        fresh.load_state_dict({"conv1.weight": model.params["conv1.weight"]})


def test_params_are_updated_in_place_by_an_optimizer():
    """SGD with momentum on model.params (in place) changes what the layers compute: LeNet learns
    to tell ten noisy templates apart without torch."""
    net = cnndsl.load(EXAMPLES / "lenet5.cnn")
    model = net.to_numpy()
    rng = np.random.default_rng(0)
    templates = rng.standard_normal((10, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    x = templates[labels] + 0.5 * rng.standard_normal((64, 1, 28, 28)).astype(np.float32)

    def loss_and_grad(train):
        logits = model.forward(x, train=train)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(64), labels]).mean()
        p[np.arange(64), labels] -= 1  # d(mean cross-entropy)/d(logits) * 64
        return loss, p / 64

    before = loss_and_grad(False)[0]
    velocity = {name: np.zeros_like(p) for name, p in model.params.items()}
    for _ in range(20):
        model.zero_grad()
        model.backward(loss_and_grad(True)[1])
        for name, param in model.params.items():
            velocity[name] = 0.9 * velocity[name] + model.grads[name]
            param -= 0.05 * velocity[name]
    assert loss_and_grad(False)[0] < 0.8 * before


@pytest.mark.parametrize("text", [ALL_OPS, (EXAMPLES / "lenet5.cnn").read_text()], ids=["allops", "lenet5"])
def test_backward_without_input_gradient_gives_the_same_parameter_gradients(text):
    net = cnndsl.parse(text)
    model = net.to_numpy()
    x = np.random.default_rng(0).random((3, *net.ir.input_shape)).astype(np.float32)
    y = model.forward(x, train=True)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    model.zero_grad()
    assert model.backward(dy).shape == x.shape
    full = {name: g.copy() for name, g in model.grads.items()}
    model.zero_grad()
    assert model.backward(dy, input_grad=False) is None
    for name, g in model.grads.items():
        np.testing.assert_array_equal(g, full[name], err_msg=name)


def test_input_shape_is_checked():
    model = cnndsl.load(EXAMPLES / "lenet5.cnn").to_numpy()
    with pytest.raises(ValueError, match="1, 28, 28"):
        model.forward(np.zeros((2, 1, 32, 32)))
