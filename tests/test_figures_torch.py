"""The published figures re-derived independently with hand-built torch modules: parameter counts,
MACs by forward hooks, receptive fields by gradients, and the window rule against torch's layers.

Every test here needs torch; the figures themselves are asserted without it in test_figures.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from extras import require
from hypothesis import given, settings
from hypothesis import strategies as st

torch = require("torch")
nn = torch.nn

import cnndsl  # noqa: E402
from cnndsl.analysis import window  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def report(name: str):
    return cnndsl.load(EXAMPLES / f"{name}.cnn").analyze()


def analyze(text: str, input_shape=None):
    return cnndsl.parse(text).analyze(input_shape)


def _before_global_pool(r):
    rows = list(r.layers)
    index = next(i for i, row in enumerate(rows) if row.op == "pool" and row.output[1:] == (1, 1))
    return rows[index - 1]

def _count_macs(model, x):
    """conv + fc multiply-accumulates by forward hooks, as torchvision counts them."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += output.numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return total[0], out


def _params(model):
    return sum(p.numel() for p in model.parameters())


def lenet_torch(pool=nn.MaxPool2d):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), pool(2, 2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), pool(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Dropout(0.5), nn.Linear(84, 10))


class Basic(nn.Module):
    def __init__(self, c_in, c, s):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 3, s, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.short = (nn.Sequential(nn.Conv2d(c_in, c, 1, s, bias=False), nn.BatchNorm2d(c))
                      if s != 1 or c_in != c else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def resnet18_torch():
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for c, s in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
        layers.append(Basic(c_in, c, s))
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def cifar_tiny_torch():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Basic(16, 16, 1), Basic(16, 32, 2), Basic(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10))


@pytest.mark.parametrize(("name", "build", "shape"), [
    ("lenet5", lenet_torch, (1, 1, 28, 28)),
    ("resnet18", resnet18_torch, (1, 3, 224, 224)),
    ("cifar_tiny", cifar_tiny_torch, (1, 3, 32, 32)),
])
def test_hand_built_torch_modules_agree(name, build, shape):
    torch.manual_seed(0)
    model = build().eval()
    macs, out = _count_macs(model, torch.zeros(shape))
    r = report(name)
    assert r.params == _params(model)
    assert r.macs == macs
    assert r.output == tuple(out.shape[1:])
    bn_buffers = sum(m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    pre = cnndsl.load(EXAMPLES / f"{name}.cnn").ir.preprocess
    assert r.buffers == bn_buffers + (0 if pre is None else 1 + 2 * shape[1] * pre.standardize)


def test_torchinfo_agrees_on_lenet_and_resnet18():
    torchinfo = require("torchinfo")
    for name, build, shape in [("lenet5", lenet_torch, (1, 1, 28, 28)), ("resnet18", resnet18_torch, (1, 3, 224, 224))]:
        stats = torchinfo.summary(build(), input_size=shape, verbose=0)
        assert stats.total_params == report(name).params


def inception_a_torch(c_in, pool_c):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.ModuleList([
                nn.Conv2d(c_in, 64, 1),
                nn.Sequential(nn.Conv2d(c_in, 48, 1), nn.Conv2d(48, 64, 5, padding=2)),
                nn.Sequential(nn.Conv2d(c_in, 64, 1), nn.Conv2d(64, 96, 3, padding=1), nn.Conv2d(96, 96, 3, padding=1)),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(c_in, pool_c, 1))])

        def forward(self, x):
            return torch.cat([b(x) for b in self.b], 1)

    return Block()


def test_inception_example_agrees_with_torch():
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(64, 80, 1), nn.ReLU(), nn.Conv2d(80, 192, 3), nn.ReLU(), nn.MaxPool2d(3, 2),
        inception_a_torch(192, 32), nn.ReLU(), inception_a_torch(256, 64), nn.ReLU(), inception_a_torch(288, 64),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(288, 1000)).eval()
    macs, out = _count_macs(model, torch.zeros(1, 3, 299, 299))
    r = report("inception")
    assert (r.params, r.macs, r.output) == (_params(model), macs, tuple(out.shape[1:]))


def _gradient_extent(model, shape, out_index):
    """Rows and columns of the input that reach output[0, 0, i, j], measured by a gradient."""
    for p in model.parameters():
        nn.init.constant_(p, 0.1)
    x = torch.ones(shape, requires_grad=True)
    out = model(x)
    out[(0, 0) + out_index].backward()
    nz = x.grad[0].abs().sum(0).nonzero()
    return (nz[:, 0].min().item(), nz[:, 0].max().item()), (nz[:, 1].min().item(), nz[:, 1].max().item())


def _predicted_extent(row, index, size):
    extent = []
    for axis in range(2):
        centre = row.offset[axis] + row.jump[axis] * index[axis]
        half = (row.rf[axis] - 1) / 2
        extent.append((max(int(centre - half), 0), min(int(centre + half), size[axis] - 1)))
    return tuple(extent)


def test_receptive_field_by_gradient_lenet():
    # average pools route gradient everywhere (max pools only to the winner); the geometry is the same
    model = lenet_torch(nn.AvgPool2d)[:6]
    r = report("lenet5")
    for name, upto in (("conv2", 4), ("pool2", 6)):
        row = r.layer(name)
        for index in [(0, 0), (2, 3), (row.output[1] - 1, row.output[2] - 1)]:
            measured = _gradient_extent(model[:upto], (1, 1, 28, 28), index)
            assert measured == _predicted_extent(row, index, (28, 28)), (name, index)
    assert r.layer("conv2").rf == (14, 14)


def test_pad_same_centre_by_gradient():
    # TensorFlow's `pad same` on an even size pads only bottom/right: F.pad(0, 1, 0, 1) then a valid conv
    text = "input 1x16x16\nconv 3x3/2 pad same -> 1 nobias\nconv 3x3/2 pad same -> 1 nobias\n"
    r = analyze(text)
    convs = [row for row in r.layers if row.op == "conv"]
    assert convs[-1].offset == (3.0, 3.0)  # 1 + 2 * 1
    pad = nn.ZeroPad2d((0, 1, 0, 1))
    model = nn.Sequential(pad, nn.Conv2d(1, 1, 3, 2, bias=False), pad, nn.Conv2d(1, 1, 3, 2, bias=False))
    for index in [(0, 0), (1, 2), (3, 3)]:
        assert _gradient_extent(model, (1, 1, 16, 16), index) == _predicted_extent(convs[-1], index, (16, 16))
    assert tuple(model(torch.zeros(1, 1, 16, 16)).shape[2:]) == r.output[1:]


def test_receptive_field_by_gradient_through_residual_blocks():
    model = cifar_tiny_torch()[:6].eval()
    r = report("cifar_tiny")
    last = _before_global_pool(r)
    assert last.output == (64, 8, 8)
    for index in [(0, 0), (3, 4), (7, 7)]:
        measured = _gradient_extent(model, (1, 3, 32, 32), index)
        assert measured == _predicted_extent(last, index, (32, 32)), index


# ------------------------------------------------------------------ the window rule against torch


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 3),
       d=st.integers(1, 3), ceil=st.booleans(), op=st.sampled_from(["conv", "max", "avg"]))
def test_window_rule_matches_torch(size, k, s, p, d, ceil, op):
    if op != "conv" and (p > k // 2 or (op == "avg" and d > 1)):
        return  # torch refuses these pools, and so does cnndsl (pool padding over half the window)
    if op == "conv":
        ceil = False
    w = window(size, k, s, p, p, dilation=d, ceil=ceil)
    x = torch.zeros(1, 1, size, size)
    try:
        if op == "conv":
            y = torch.nn.functional.conv2d(x, torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d)
        elif op == "max":
            y = torch.nn.functional.max_pool2d(x, k, s, p, dilation=d, ceil_mode=ceil)
        else:
            y = torch.nn.functional.avg_pool2d(x, k, s, p, ceil_mode=ceil)
    except RuntimeError:
        assert w is None or w.out <= 0
        return
    assert w is not None and w.out == y.shape[-1]


def mobilenet_torch(same: bool):
    """MobileNet v1's conv stack; `same` pads as TensorFlow does (bottom/right only at stride 2 on even sizes)."""
    def conv(c_in, c_out, k, s, groups=1):
        if k == 1:
            return [nn.Conv2d(c_in, c_out, 1, bias=False)]
        if same and s == 2:
            return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c_in, c_out, 3, 2, groups=groups, bias=False)]
        return [nn.Conv2d(c_in, c_out, 3, s, 1, groups=groups, bias=False)]

    layers = conv(3, 32, 3, 2) + [nn.BatchNorm2d(32), nn.ReLU()]
    c_in = 32
    for c, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]:
        layers += conv(c_in, c_in, 3, s, groups=c_in) + [nn.BatchNorm2d(c_in), nn.ReLU()]
        layers += conv(c_in, c, 1, 1) + [nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "same"), [("mobilenet_v1", True), ("mobilenet_v1_sym", False)])
def test_mobilenet_receptive_field_by_gradient(name, same):
    model = mobilenet_torch(same).eval()
    last = [row for row in report(name).layers if row.op == "conv"][-1]
    head = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))
    assert _params(head) == report(name).params
    # the first output sees rows 0..188 with `pad same` (centre 31 + 157), rows 0..157 with pad1 (centre 0 + 157)
    assert _gradient_extent(model, (1, 3, 224, 224), (0, 0)) == _predicted_extent(last, (0, 0), (224, 224))
    assert _predicted_extent(last, (0, 0), (224, 224))[0] == ((0, 188) if same else (0, 157))
    # the first output's window, padding included: 315 wide, centred on `offset`
    assert last.offset[0] - (last.rf[0] - 1) / 2 == (-126 if same else -157)
