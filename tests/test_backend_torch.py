"""The PyTorch backend: generated source, module structure, numerics against the independent
reference (tests/reference.py), `pad same`, hostile names, weights and the CLI."""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import reference
from extras import require

torch = require("torch")  # every test here needs it
F = torch.nn.functional

import cnndsl  # noqa: E402
from cnndsl import ir  # noqa: E402
from cnndsl.backends import torch_codegen  # noqa: E402
from cnndsl.errors import CnnDslError, WeightsError  # noqa: E402
from cnndsl.weights import save_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
REAL_RUN_MACS = 2.5e9  # above this an example's real forward at full size is a slow test

torch.set_num_threads(min(2, os.cpu_count() or 1))


def example_id(path: Path) -> str:
    return path.stem


def random_weights(net, seed: int = 1) -> dict[str, np.ndarray]:
    """Weights far from the defaults, so a swapped or ignored tensor shows in the output."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in net.tensor_specs():
        if spec.dtype == "int64":
            out[spec.name] = np.zeros(spec.shape, dtype=np.int64)
        elif spec.role in ("running_var", "std"):
            out[spec.name] = rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
        elif spec.role == "scale":
            out[spec.name] = np.array(0.75, dtype=np.float32)
        else:
            scale = 1 / math.sqrt(math.prod(spec.shape[1:])) if len(spec.shape) > 1 else 0.5
            out[spec.name] = rng.normal(0, scale, spec.shape).astype(np.float32)
    return out


EVERY_CONSTRUCT = """
network every_construct
input 3x13x11
preprocess { scale 0.5; standardize mean (0.1, 0.2, 0.3) std (0.9, 1.1, 1.3) }
conv 3x3/2 pad same -> 8; relu
conv 1x5 pad 0x2 -> 8 nobias; bn eps 1e-3 momentum .05; relu6
conv 3x3 dil2 pad2 groups4 -> 8; leaky .2
conv 3x3 pad1 depthwise -> 2x; elu 0.5
residual { conv 3x3 pad1 -> 16; bn; gelu; conv 3x3 pad1 -> 16 } shortcut { conv 1x1 -> 16 nobias }
residual { conv 3x3/2 pad1 -> 24; silu } shortcut { conv 1x1/2 -> 24; bn }
residual { hardswish } shortcut always { conv 1x1 -> 24 }
concat { branch {} branch { conv 1x1 -> 4; sigmoid } branch { pool avg 3x3/1 pad1; tanh } }
add { branch { conv 3x3 pad1 -> 52; relu } branch { conv 1x1 -> 52 } branch {} }
relu; relu
pool max 3x3/2 pad same
pool avg 3x3/2 pad1 ceil
fc 20; bn; relu
flatten
dropout .3
fc 10; softmax
"""

VECTOR = """
network vector
input 20
preprocess { standardize }
fc 16; bn momentum .2; relu
flatten
dropout .5
fc 8 nobias; leaky; fc 8; elu
add { branch { fc 8; tanh } branch { } }
fc 4; softmax
"""

POOLS = """
network pools
input 2x8x9
pool max 3x3/2 pad1 ceil
pool avg 2x3/2x1 ceil
conv 3x2/2x1 pad same dil 2x1 -> 4 nobias
concat { branch { pool max global } branch { pool avg global } }
"""


# A block's calls built by one class: DenseNet's layers on growing channels (in_c), MobileNetV2's inverted
# residuals with an expansion switched off by `x min(1, t-1)`, and loops over block parameters.
DENSE = """
block dense_layer(growth=8) {
  concat { branch {} branch { bn; relu; conv 1x1 -> 4*growth nobias; bn; relu; conv 3x3 pad1 -> growth nobias } }
}
block transition() { bn; relu; conv 1x1 -> in_c/2 nobias; pool avg 2/2 }
network dense_small
input 3x16x16
conv 3x3 pad1 -> 16 nobias
dense_layer x3; transition
dense_layer(growth=4) x2
bn; relu; pool avg global; fc 10
"""

MOBILE = """
block expansion(t) { conv 1x1 -> in_c*t nobias; bn; relu6 }
block inverted(c, t, s=1) {
  expansion(t) x min(1, t-1)
  conv 3x3/s pad1 depthwise nobias; bn; relu6
  conv 1x1 -> c nobias; bn
}
block inverted_res(c, t) { residual { inverted(c, t) } }
network mobile_small
input 3x16x16
conv 3x3/2 pad1 -> divisible(16*0.75, 8) nobias; bn; relu6
inverted(8, t=1)
inverted(12, t=6, s=2); inverted_res(12, t=6) x2
inverted(16, t=4)
pool avg global; fc 10
"""

# Calls that differ in structure: repeat counts from parameters (loops, and switches where the count is
# 0 or 1, which shift the names of later layers), shortcuts that project in some calls or iterations
# only, joins in a loop, `pad same` whose pads differ between iterations, a block calling a block.
LOOPS = """
block unit(c, s=1) {
  residual { conv 3x3/s pad1 -> c nobias; bn; relu; conv 3x3 pad1 -> c nobias; bn }
  shortcut { conv 1x1/s -> c nobias; bn }
  relu
}
block stage(c, n, s=2) {
  unit(c, s=s)
  unit(c) x n-1
}
block dense(k, n) {
  concat { branch {} branch { bn; relu; conv 3x3 pad1 -> k } } x n
}
block sep(c, s=1, pre=0) {
  conv 1x1 -> in_c*2 x pre
  conv 3x3/s pad same depthwise; bn; relu6
  relu x pre
  conv 1x1 -> c
}
block chain(c, n) {
  residual { conv 3x3 pad1 -> c; relu } shortcut { conv 1x1 -> c } x n
  pool max 3x3/2 pad same x n
}
network loops
input 3x33x33
conv 3x3 pad1 -> 8
stage(8, 1, s=1)
stage(16, 2)
dense(4, 2); dense(4, 3)
sep(24); sep(24, s=2, pre=1); sep(32, pre=1)
chain(32, 1); chain(16, 3)
pool avg global
fc 10
"""

# A block called on images and on vectors: BatchNorm2d or BatchNorm1d, fc on a flattened map or a vector
RANKS = """
block head(n) { fc n; bn; relu }
block norm() { bn; relu }
network ranks
input 4x6x6
norm
head(10); head(8)
norm
"""

BLOCK_PROGRAMS = {"dense": DENSE, "mobile": MOBILE, "loops": LOOPS, "ranks": RANKS}


@pytest.mark.parametrize("text", [EVERY_CONSTRUCT, VECTOR, POOLS, DENSE, MOBILE, LOOPS, RANKS],
                         ids=["every_construct", "vector", "pools", "dense", "mobile", "loops", "ranks"])
def test_forward_matches_independent_reference(text):
    net = cnndsl.parse(text)
    weights = random_weights(net)
    model = torch_codegen.build(net, weights).eval()
    # mostly negative, so padding a max pool with zeros instead of -inf would change the output
    x = torch.randn(3, *net.ir.input_shape, generator=torch.Generator().manual_seed(0)) - 1
    with torch.no_grad():
        got = model(x.clone())
    want = reference.forward(net, weights, x)
    assert tuple(got.shape) == (3, *net.analyze().output)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_every_construct_trains_and_leaves_the_input_alone():
    net = cnndsl.parse(EVERY_CONSTRUCT)
    model = torch_codegen.build(net, random_weights(net)).train()
    x = torch.randn(4, *net.ir.input_shape)
    before = x.clone()
    loss = model(x).square().sum()
    loss.backward()  # in-place activations must not break autograd
    assert torch.equal(x, before)
    assert all(p.grad is not None for p in model.parameters())
    assert int(model.state_dict()["bn1.num_batches_tracked"]) == 1


def test_gradients_match_the_reference():
    """Backward through in-place activations and residual adds gives the reference's gradients."""
    net = cnndsl.parse(EVERY_CONSTRUCT)
    weights = random_weights(net)
    model = torch_codegen.build(net, weights).eval()
    x = torch.randn(3, *net.ir.input_shape, generator=torch.Generator().manual_seed(2)) - 1
    target = torch.randn(3, 10, generator=torch.Generator().manual_seed(3))
    (model(x) * target).sum().backward()
    leaves = {k: torch.tensor(v, requires_grad=k in dict(model.named_parameters())) for k, v in weights.items()}
    (reference.forward(net, leaves, x) * target).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, leaves[name].grad, rtol=1e-3, atol=1e-5, msg=name)


def test_batchnorm_options_and_running_update():
    net = cnndsl.parse(VECTOR)
    model = torch_codegen.build(net)
    bn = model.get_submodule("bn1")
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.momentum == 0.2 and bn.eps == 1e-5
    every = torch_codegen.build(cnndsl.parse(EVERY_CONSTRUCT))
    bn = every.get_submodule("bn1")
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.momentum == 0.05 and bn.eps == 1e-3
    x = torch.randn(8, 20)
    model.train()(x)
    # running = (1 - momentum) * running + momentum * batch (unbiased variance); preprocess is the
    # identity with the initial mean 0 and std 1
    h = model.get_submodule("fc1")(x)
    torch.testing.assert_close(model.get_submodule("bn1").running_mean, 0.2 * h.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.get_submodule("bn1").running_var, 0.8 + 0.2 * h.var(0, unbiased=True),
                               rtol=1e-4, atol=1e-5)


def test_dropout_is_active_in_training_only():
    net = cnndsl.parse("network d\ninput 100\ndropout .5")
    model = torch_codegen.build(net)
    x = torch.ones(4, 100)
    assert torch.equal(model.eval()(x), x)
    y = model.train()(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0} and (y == 0).any()


# ---------------------------------------------------------------- pad same (TensorFlow's rule)

# REFERENCE-FIGURES.md: k=3, s=2: in 7 -> out 4, pads 1/1; in 8 -> out 4, pads 0/1;
# k=4, s=2: in 200 -> out 100, pads 1/1; in 201 -> out 101, pads 1/2.
TF_SAME = [(3, 7, 4, (1, 1)), (3, 8, 4, (0, 1)), (4, 200, 100, (1, 1)), (4, 201, 101, (1, 2))]


@pytest.mark.parametrize("kernel,size,out,pads", TF_SAME)
def test_pad_same_stride2_conv_matches_hand_padding(kernel, size, out, pads):
    other = 8 if size != 8 else 7  # a rectangular input: each axis follows its own rule
    other_pads = dict((s, p) for _, s, _, p in TF_SAME[:2])[other] if kernel == 3 else None
    width = other if kernel == 3 else size
    net = cnndsl.parse(f"network same\ninput 2x{size}x{width}\nconv {kernel}x{kernel}/2 pad same -> 3")
    conv = net.ir.body.items[0]
    assert net.shapes.of(conv).output[1] == out
    model = torch_codegen.build(net, random_weights(net)).eval()
    weights = model.state_dict()
    x = torch.randn(2, 2, size, width)
    wp = other_pads if other_pads is not None else pads
    want = F.conv2d(F.pad(x, (wp[0], wp[1], pads[0], pads[1])), weights["conv1.weight"], weights["conv1.bias"],
                    stride=2)
    with torch.no_grad():
        got = model(x)
    assert got.shape[2] == out
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pad_same_stride2_pool_matches_hand_padding(mode, size):
    net = cnndsl.parse(f"network same\ninput 3x{size}x{size}\npool {mode} 3x3/2 pad same")
    model = torch_codegen.build(net)
    x = torch.randn(2, 3, size, size) - 4  # negative: a max pool padding with zeros would show
    top, bottom = dict((s, p) for _, s, _, p in TF_SAME[:2])[size]
    if mode == "max":
        want = F.max_pool2d(F.pad(x, (top, bottom, top, bottom), value=-math.inf), 3, 2)
    else:  # the padding zeros count in the divisor
        want = F.avg_pool2d(F.pad(x, (top, bottom, top, bottom)), 3, 2)
    torch.testing.assert_close(model(x), want)
    source = torch_codegen.generate(net)
    assert ("F.pad" in source) == (top != bottom)  # symmetric pads stay in the layer itself


# ---------------------------------------------------------------- every example


@pytest.mark.parametrize("path", EXAMPLES, ids=example_id)
def test_example_structure(path):
    """Parameter count, state_dict names/shapes/order and output shapes at the example's own size;
    built on the meta device, so even vgg16 costs no memory or time."""
    net = cnndsl.load(path)
    report = net.analyze()
    source = torch_codegen.generate(net)
    with torch.device("meta"):
        model = torch_codegen.load_source(source, str(path))["build"]().eval()
        outputs = [model(torch.empty(batch, *net.ir.input_shape)) for batch in (1, 3)]
    assert sum(p.numel() for p in model.parameters()) == report.params
    specs = net.tensor_specs()
    state = model.state_dict()
    assert list(state) == [s.name for s in specs]
    for spec in specs:
        assert tuple(state[spec.name].shape) == spec.shape, spec.name
        assert str(state[spec.name].dtype) == f"torch.{spec.dtype}", spec.name
    for batch, out in zip((1, 3), outputs, strict=True):
        assert tuple(out.shape) == (batch, *report.output)


def _real_run(path: Path, batches: tuple[int, ...]) -> None:
    net = cnndsl.load(path)
    report = net.analyze()
    model = torch_codegen.build(net).eval()
    init = net.init_weights(seed=0)
    state = model.state_dict()
    assert all(np.array_equal(state[name].numpy(), value) for name, value in init.items())
    with torch.no_grad():
        for batch in batches:
            out = model(torch.rand(batch, *net.ir.input_shape))
            assert tuple(out.shape) == (batch, *report.output)
            assert torch.isfinite(out).all()


def _macs(path: Path) -> float:
    try:
        return cnndsl.load(path).analyze().macs
    except CnnDslError:  # a broken example fails in its own tests, not at collection
        return 0


SMALL = [p for p in EXAMPLES if _macs(p) <= REAL_RUN_MACS]
LARGE = [p for p in EXAMPLES if p not in SMALL]


@pytest.mark.parametrize("path", SMALL, ids=example_id)
def test_example_runs(path):
    _real_run(path, (1, 3))


@pytest.mark.slow
@pytest.mark.parametrize("path", LARGE, ids=example_id)
def test_large_example_runs(path):
    _real_run(path, (1,))  # batch 3 is covered on the meta device by test_example_structure


# ---------------------------------------------------------------- the generated file


def test_generated_source_reads_like_hand_written_code():
    source = torch_codegen.generate(cnndsl.load(ROOT / "examples" / "lenet5.cnn"))
    assert source.startswith("# Generated by cnndsl")
    assert "class Lenet5(nn.Module):" in source
    assert "x = self.conv1(x)  # line 5: conv 5x5 pad2 -> 6" in source
    assert "self.conv1 = nn.Conv2d(1, 6, 5, padding=2)" in source
    assert "def build(weights: str | None = None) -> Lenet5:" in source
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in ([ast.alias(node.module)] if isinstance(node, ast.ImportFrom) else node.names)}
    assert imported == {"torch", "safetensors"}  # no import of cnndsl
    net = cnndsl.load(ROOT / "examples" / "resnet18.cnn")
    source = torch_codegen.generate(net)
    assert "        self.basic1 = Basic(64, 64)  # line 16: basic(64)\n        self.basic2 = Basic(64, 64)" in source
    assert torch_codegen.generate(net) == source  # deterministic


# ---------------------------------------------------------------- one class per block definition


def classes(source: str) -> list[str]:
    return [node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]


def test_resnet18_is_two_classes_and_each_call_builds_basic_with_its_values():
    source = torch_codegen.generate(cnndsl.load(ROOT / "examples" / "resnet18.cnn"))
    assert classes(source) == ["Basic", "Resnet18"]  # the projection is an nn.Sequential, as torchvision's
    assert "def __init__(self, in_channels: int, c: int, s: int = 1, project: bool = False) -> None:" in source
    # the definition's expressions, over the constructor's arguments; its statements as written in comments
    assert "self.conv1 = nn.Conv2d(in_channels, c, 3, stride=s, padding=1, bias=False)  # line 4: conv 3x3/s" in source
    assert "self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)  # line 5: conv 3x3 pad1 -> c nobias" in source
    assert "        if project:" in source and "self.shortcut1.conv1 = nn.Conv2d(in_channels, c, 1, stride=s" in source
    assert "        if self.shortcut1 is not None:" in source
    calls = [line.split("=", 1)[1].split("#")[0].strip() for line in source.splitlines() if "= Basic(" in line]
    assert calls == ["Basic(64, 64)", "Basic(64, 64)", "Basic(64, 128, s=2, project=True)", "Basic(128, 128)",
                     "Basic(128, 256, s=2, project=True)", "Basic(256, 256)", "Basic(256, 512, s=2, project=True)",
                     "Basic(512, 512)"]


@pytest.mark.parametrize("name,want", [
    ("dense", ["DenseLayer", "Transition", "DenseSmall"]),
    ("mobile", ["Expansion", "Inverted", "InvertedRes", "MobileSmall"]),
    ("loops", ["Unit", "Stage", "Dense", "Sep", "Chain", "Loops"]),
    ("ranks", ["Norm", "Head", "Ranks"]),
])
def test_a_block_whose_calls_differ_is_one_class(name, want):
    """Input channels differing from call to call (in_c), switches, loops: still one class per definition,
    whose state_dict and output are the network's (test_forward_matches_independent_reference)."""
    net = cnndsl.parse(BLOCK_PROGRAMS[name])
    source = torch_codegen.generate(net)
    assert classes(source) == want
    model = torch_codegen.build(net)
    assert list(model.state_dict()) == [s.name for s in net.tensor_specs()]
    if name == "dense":  # DenseNet's layer on 16, 24, 32 channels; the transition halves what enters it
        assert "def __init__(self, in_channels: int, growth: int = 8) -> None:" in source
        assert "nn.Conv2d(in_channels, 4 * growth, 1, bias=False)" in source
        assert "nn.Conv2d(in_channels, in_channels // 2, 1, bias=False)" in source
        assert [type(model.get_submodule(f"dense_layer{i}")).__name__ for i in range(1, 6)] == ["DenseLayer"] * 5
        assert "self.dense_layer3 = DenseLayer(32)" in source and "DenseLayer(24, growth=4)" in source
    if name == "mobile":  # the expansion is a module or None, and the channels after it follow
        assert "self.expansion1 = Expansion(in_channels, t)" in source and "self.expansion1 = None" in source
        assert "channels = in_channels * t" in source
        assert "nn.Conv2d(channels, channels, 3, stride=s, padding=1, groups=channels, bias=False)" in source
        assert model.get_submodule("inverted1").expansion1 is None
        assert isinstance(model.get_submodule("inverted2").expansion1, torch.nn.Module)
    if name == "loops":
        # whether unit1 projects differs between stage's calls: stage takes it and passes it on
        assert "self.unit1 = Unit(in_channels, c, s=s, project=unit1_project)" in source
        assert "self.stage2 = Stage(8, 16, 2, unit1_project=True)" in source
        assert "for i in range(self.num_concat):" in source and 'getattr(self, f"concat{i + 1}")' in source
        assert "if project[i]:" in source  # a residual in a loop projecting in its first iteration only
        assert "project=(True, False, False)" in source
        assert "self.pool_pads[i]" in source  # `pad same` amounts per iteration, each call's own
        assert 'getattr(self, f"conv{self.pre + 2}")' in source  # named after a switched-off layer or not
    if name == "ranks":  # the module each call needs, chosen by an argument; forward the same for both
        assert "if bn1_spatial:" in source and "self.norm1 = Norm(4, bn1_spatial=True)" in source
        assert "if self.fc1_spatial:" in source  # on a map, fc flattens it first


@pytest.mark.parametrize("path", [ROOT / "examples" / "inception.cnn", ROOT / "examples" / "mobilenet_v1.cnn",
                                  ROOT / "examples" / "cifar_tiny.cnn"], ids=example_id)
def test_generated_file_passes_ruff(tmp_path, path):
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[test]' (./install.sh test)"
    sources = {"example.py": torch_codegen.generate(cnndsl.load(path)),
               "every.py": torch_codegen.generate(cnndsl.parse(EVERY_CONSTRUCT)),
               "vector.py": torch_codegen.generate(cnndsl.parse(VECTOR)),
               **{f"{name}.py": torch_codegen.generate(cnndsl.parse(text)) for name, text in BLOCK_PROGRAMS.items()}}
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    # the project's settings, and ruff's defaults (88 columns aside) as a user's project may have them
    configs = (["--config", str(ROOT / "pyproject.toml")],
               ["--isolated", "--select", "E,F,W,I,B,UP", "--ignore", "E501"])
    for config in configs:
        done = subprocess.run([ruff, "check", "--no-cache", *config, str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


STANDALONE = textwrap.dedent("""
    import importlib.util, sys
    sys.modules["cnndsl"] = None  # any import of cnndsl now fails
    import torch
    spec = importlib.util.spec_from_file_location("generated", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *model.input_shape))
    assert not any(name.startswith("cnndsl") for name in sys.modules if sys.modules[name] is not None)
    print(tuple(out.shape), sum(p.numel() for p in model.parameters()))
""")


def test_generated_file_imports_standalone(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "cifar_tiny.cnn")
    path = tmp_path / "cifar_net.py"
    path.write_text(torch_codegen.generate(net))
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(path)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(2,", "10)", str(net.analyze().params)]


HOSTILE = """
block class(c) { conv 3x3 pad1 -> c; relu }
block None(c) { class(c) }
block torch(c) { residual { None(c) } shortcut { conv 1x1 -> c } }
block self(c) { concat { branch { torch(c) } branch { } } }
block F(c) { self(c) }
block nn(c) { F(c); bn }
block build(c) { nn(c) }
block __init__(c) { build(c) }
block __mangled(c) { __init__(c) }
block x(c) { __mangled(c) }
block Torch(c) { x(c) }
block attrs(training, forward=1, in_channels=1) { conv 1x1 -> 4 x training; conv 1x1 -> 4 x forward; conv 1x1 -> 4 }

network F
input 3x8x8
conv 3x3 pad1 -> 4\r; relu
Torch(4)
__mangled(8)
attrs(1); attrs(0, forward=0, in_channels=2)
fc 3
"""


def test_hostile_names_cannot_inject_or_shadow(tmp_path):
    net = cnndsl.parse(HOSTILE)
    source = torch_codegen.generate(net)
    assert "\r" not in source
    compile(source, "hostile", "exec")
    # no class may take a name the file needs, nor a keyword
    for taken in ("class F(", "class nn(", "class torch(", "class build(", "class None(", "class self("):
        assert taken not in source
    assert "class F_1(nn.Module):\n    \"\"\"Network F:" in source  # the network keeps the first choice
    model = torch_codegen.build(net, random_weights(net)).eval()
    assert list(model.state_dict()) == [s.name for s in net.tensor_specs()]
    assert any(name.startswith("__mangled1.") for name in model.state_dict())  # not Python-mangled
    # parameters named after nn.Module's attributes: forward reads them as self.training_1, never self.training
    assert "self.training_1 = training" in source and "self.training =" not in source
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.forward(net, random_weights(net), x), rtol=1e-4, atol=1e-5)
    path = tmp_path / "hostile.py"
    path.write_text(source)
    ruff = shutil.which("ruff")
    if ruff is not None:
        done = subprocess.run([ruff, "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(path)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_class_names_are_sanitised():
    assert torch_codegen.class_name("resnet_18") == "Resnet18"
    assert torch_codegen.class_name("__init__") == "Init"
    assert torch_codegen.class_name("_") == "Net"
    namespace = torch_codegen._Namespace()
    assert [namespace.create(n) for n in ("F", "None", "print", "torch", "F", "a-b", "9")] == [
        "F_1", "None_1", "print_1", "torch_1", "F_2", "a_b", "_9"]


def test_hand_built_ir_with_an_unusable_name_is_refused():
    net = cnndsl.parse("network n\ninput 3x4x4\nconv 1x1 -> 2")
    conv = net.ir.body.items[0]
    bad = ir.Conv(name="conv 1; import os", span=conv.span, out_channels=2, kernel=(1, 1))
    object.__setattr__(net.ir.body, "items", (bad,))
    net.shapes[bad.name] = net.shapes.of(conv)
    with pytest.raises(ValueError, match="cannot name a PyTorch module"):
        torch_codegen.generate(net)


# ---------------------------------------------------------------- weights


def test_weights_dict_path_and_default(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = random_weights(net, seed=3)
    path = tmp_path / "w.safetensors"
    save_weights(weights, path)
    from_dict = torch_codegen.build(net, weights).state_dict()
    from_file = net.to_torch(path).state_dict()
    for name, value in weights.items():
        assert np.array_equal(from_dict[name].numpy(), value)
        assert np.array_equal(from_file[name].numpy(), value)
    default = torch_codegen.build(net).state_dict()
    assert all(np.array_equal(default[k].numpy(), v) for k, v in net.init_weights(seed=0).items())


def test_weights_mismatch_names_tensor_and_both_shapes(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = net.init_weights()
    weights["fc1.weight"] = np.zeros((120, 401), dtype=np.float32)
    with pytest.raises(WeightsError) as err:
        torch_codegen.build(net, weights)
    message = str(err.value)
    assert "fc1.weight" in message and "[120, 401]" in message and "[120, 400]" in message
    path = tmp_path / "bad.safetensors"
    save_weights(weights, path)
    with pytest.raises(WeightsError, match="fc1.weight"):
        torch_codegen.generate(net, weights=path)
    del weights["fc1.weight"]
    with pytest.raises(WeightsError, match="missing: fc1.weight"):
        torch_codegen.build(net, weights)


# ---------------------------------------------------------------- the command line


def _cnndsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnndsl.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_compile_torch(tmp_path):
    out = tmp_path / "lenet.py"
    done = _cnndsl("compile", str(ROOT / "examples" / "lenet5.cnn"), "--target", "torch", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    assert out.read_text() == torch_codegen.generate(net)
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["(2,", "10)", "61706"], done.stderr
    # compiling again replaces our own file; a file cnndsl did not write is left alone
    assert _cnndsl("compile", str(ROOT / "examples" / "lenet5.cnn"), "-t", "torch", "-o", str(out),
                   cwd=tmp_path).returncode == 0
    mine = tmp_path / "mine.py"
    mine.write_text("print('mine')\n")
    done = _cnndsl("compile", str(ROOT / "examples" / "lenet5.cnn"), "-t", "torch", "-o", str(mine), cwd=tmp_path)
    assert done.returncode == 1 and "not written by cnndsl" in done.stderr
    assert mine.read_text() == "print('mine')\n"


def test_cli_compile_torch_checks_weights(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = net.init_weights()
    weights["fc1.weight"] = np.zeros((120, 401), dtype=np.float32)
    save_weights(weights, tmp_path / "bad.safetensors")
    done = _cnndsl("compile", str(ROOT / "examples" / "lenet5.cnn"), "-t", "torch", "-o", str(tmp_path / "n.py"),
                   "--weights", str(tmp_path / "bad.safetensors"), cwd=tmp_path)
    assert done.returncode == 1 and "fc1.weight" in done.stderr


def test_generate_refuses_a_network_that_fails_its_checks():
    with pytest.raises(CnnDslError):
        torch_codegen.generate(cnndsl.parse("network n\ninput 3x8x8\nconv 3x3 -> 4\nexpect params < 10"))


def test_built_module_traces_with_fx_and_shows_its_source():
    import inspect

    net = cnndsl.parse(EVERY_CONSTRUCT)
    model = torch_codegen.build(net, random_weights(net)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *net.ir.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    assert "x = self.conv1(x)  # line 5: conv 3x3/2 pad same -> 8" in inspect.getsource(type(model))


def test_compiled_with_weights_the_file_builds_the_trained_model(tmp_path):
    """`cnndsl compile --target torch --weights W` makes W the generated build()'s default."""
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    weights = net.init_weights(seed=7)
    save_weights(weights, tmp_path / "w.safetensors")
    out = tmp_path / "lenet_weighted.py"
    done = subprocess.run([sys.executable, "-m", "cnndsl.cli", "compile", str(ROOT / "examples" / "lenet5.cnn"),
                           "--target", "torch", "--weights", str(tmp_path / "w.safetensors"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spec = importlib.util.spec_from_file_location("lenet_weighted", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), weights[name])
    with pytest.raises(RuntimeError, match="size mismatch"):  # strict, by name and shape
        broken = dict(weights)
        broken["fc3.weight"] = np.zeros((10, 85), dtype=np.float32)
        save_weights(broken, tmp_path / "bad.safetensors")
        module.build(str(tmp_path / "bad.safetensors"))
