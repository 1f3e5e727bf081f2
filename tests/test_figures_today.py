"""Issue 14's classifiers re-derived with hand-built torch modules, written from torchvision's source
(models/efficientnet.py, mobilenetv3.py, shufflenetv2.py, convnext.py, ops/misc.py): parameters
and conv+fc MACs against the published figures and against cnndsl's analysis of the examples, and
EfficientNet-B0's spatial receptive field measured by a gradient.

torchvision has no CPU wheel here, so these modules stand in for it; they share no code with cnndsl.
"""

from __future__ import annotations

import pytest
from extras import require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

from test_figures_torch import EXAMPLES, _count_macs, _params  # noqa: E402

import cnndsl  # noqa: E402

# torchvision's published figures: parameters (the weights' `num_params`) and conv+fc MACs at 224
PUBLISHED = {
    "efficientnet_b0": (5_288_548, 385_814_752),
    "mobilenet_v3_small": (2_542_856, 56_510_400),
    "shufflenet_v2_x1_0": (2_278_604, 144_907_992),
    "convnext_tiny": (28_589_128, 4_455_531_264),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def report(name: str):
    return cnndsl.load(EXAMPLES / f"{name}.cnn").report


def last_feature_map(r):
    """The row before the head's global pool (the last one: gates have global pools of their own)."""
    rows = list(r.layers)
    index = max(i for i, row in enumerate(rows) if row.op == "pool" and row.output[1:] == (1, 1))
    return rows[index - 1]


def conv_bn(c_in, c_out, k, s=1, groups=1, act=nn.ReLU, eps=1e-5):
    """ops.misc.Conv2dNormActivation: a conv without bias (padding (k-1)//2), batch norm, activation."""
    layers = [nn.Conv2d(c_in, c_out, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out, eps=eps)]
    return nn.Sequential(*layers, *([act()] if act else []))


def make_divisible(v, divisor=8):
    """models._utils._make_divisible."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcitation(nn.Module):
    """ops.misc.SqueezeExcitation. `hold` detaches the gate (held constant) to measure the spatial field."""

    hold = False

    def __init__(self, c, squeeze, act=nn.ReLU, scale_act=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = act(), scale_act()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return (scale.detach() if self.hold else scale) * x


class Residual(nn.Module):
    """The blocks' `result = block(input); if use_res_connect: result += input` (stochastic depth is
    the identity in evaluation)."""

    def __init__(self, layers, res):
        super().__init__()
        self.block, self.res = nn.Sequential(*layers), res

    def forward(self, x):
        return self.block(x) + x if self.res else self.block(x)


# ------------------------------------------------------------------ EfficientNet-B0


def mbconv(c_in, c, t, k, s):
    e = make_divisible(c_in * t)
    layers = [conv_bn(c_in, e, 1, act=nn.SiLU)] if e != c_in else []
    layers += [conv_bn(e, e, k, s, groups=e, act=nn.SiLU), SqueezeExcitation(e, max(1, c_in // 4), nn.SiLU),
               conv_bn(e, c, 1, act=None)]
    return Residual(layers, s == 1 and c_in == c)


def efficientnet_b0():
    features, c_in = [conv_bn(3, 32, 3, 2, act=nn.SiLU)], 32
    for t, k, s, c, n in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            features.append(mbconv(c_in, c, t, k, s if i == 0 else 1))
            c_in = c
    features.append(conv_bn(320, 1280, 1, act=nn.SiLU))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, 1000))


# ------------------------------------------------------------------ MobileNetV3-Small


def bneck(c_in, k, e, c, se, hs, s):
    act = nn.Hardswish if hs else nn.ReLU
    layers = [conv_bn(c_in, e, 1, act=act, eps=1e-3)] if e != c_in else []
    layers.append(conv_bn(e, e, k, s, groups=e, act=act, eps=1e-3))
    if se:
        layers.append(SqueezeExcitation(e, make_divisible(e // 4), nn.ReLU, nn.Hardsigmoid))
    layers.append(conv_bn(e, c, 1, act=None, eps=1e-3))
    return Residual(layers, s == 1 and c_in == c)


def mobilenet_v3_small():
    features, c_in = [conv_bn(3, 16, 3, 2, act=nn.Hardswish, eps=1e-3)], 16
    for k, e, c, se, hs, s in [(3, 16, 16, 1, 0, 2), (3, 72, 24, 0, 0, 2), (3, 88, 24, 0, 0, 1),
                               (5, 96, 40, 1, 1, 2), (5, 240, 40, 1, 1, 1), (5, 240, 40, 1, 1, 1),
                               (5, 120, 48, 1, 1, 1), (5, 144, 48, 1, 1, 1), (5, 288, 96, 1, 1, 2),
                               (5, 576, 96, 1, 1, 1), (5, 576, 96, 1, 1, 1)]:
        features.append(bneck(c_in, k, e, c, se, hs, s))
        c_in = c
    features.append(conv_bn(96, 576, 1, act=nn.Hardswish, eps=1e-3))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000))


# ------------------------------------------------------------------ ShuffleNetV2 x1.0


class ShuffleUnit(nn.Module):
    """shufflenetv2.InvertedResidual: split (stride 1) or two branches (stride 2), concat, shuffle 2."""

    def __init__(self, c_in, c, s):
        super().__init__()
        b, self.s = c // 2, s

        def dw(ch):
            return [nn.Conv2d(ch, ch, 3, s, 1, groups=ch, bias=False), nn.BatchNorm2d(ch)]

        self.branch1 = nn.Sequential(*dw(c_in), *conv_bn(c_in, b, 1)) if s > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(*conv_bn(c_in if s > 1 else b, b, 1), *dw(b), *conv_bn(b, b, 1))

    def forward(self, x):
        if self.s == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        n, c, h, w = out.shape  # channel_shuffle(out, 2)
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def shufflenet_v2_x1_0():
    layers, c_in = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for c, n in [(116, 4), (232, 8), (464, 4)]:
        layers += [ShuffleUnit(c_in, c, 2)] + [ShuffleUnit(c, c, 1) for _ in range(n - 1)]
        c_in = c
    layers.append(conv_bn(464, 1024, 1))
    # x.mean([2, 3]) in torchvision: the same global average
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))


# ------------------------------------------------------------------ ConvNeXt-Tiny


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute(0, 2, 3, 1), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute(0, 3, 1, 2))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x  # stochastic depth: the identity in evaluation


def convnext_tiny():
    layers = [nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6)]
    for dim, out, n in [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]:
        layers += [CNBlock(dim) for _ in range(n)]
        if out:
            layers += [LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, out, 2, 2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), LayerNorm2d(768, eps=1e-6), nn.Flatten(1),
                         nn.Linear(768, 1000))


# ------------------------------------------------------------------ the figures


@pytest.mark.parametrize(("name", "build"), [
    ("efficientnet_b0", efficientnet_b0),
    ("mobilenet_v3_small", mobilenet_v3_small),
    ("shufflenet_v2_x1_0", shufflenet_v2_x1_0),
    ("convnext_tiny", convnext_tiny),
])
def test_parameters_and_macs_match_published_and_cnndsl(name, build):
    torch.manual_seed(0)
    model = build().eval()
    pool_input = []
    pool = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)][-1]  # the head's
    pool.register_forward_pre_hook(lambda module, args: pool_input.append(tuple(args[0].shape[1:])))
    macs, out = _count_macs(model, torch.zeros(1, 3, 224, 224))
    r = report(name)
    assert (_params(model), macs) == PUBLISHED[name]
    assert (r.params, r.macs) == PUBLISHED[name]
    assert tuple(out.shape) == (1, 1000) and r.output == (1000,)
    assert last_feature_map(r).output == pool_input[-1]  # the last feature map, e.g. 1280x7x7


# ------------------------------------------------------------------ EfficientNet-B0's spatial field


def _last_spatial_row():
    r = report("efficientnet_b0")
    row = last_feature_map(r)
    assert row.output == (1280, 7, 7) and row.name.startswith("silu"), row
    return row


def _positive_weights(model):
    """Random weights, all positive and scaled by 1/fan-in: with a positive input every activation's
    input is positive, so SiLU's slope is never zero and no sum of gradient paths can cancel."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.uniform_(0, 2 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.uniform_(0, 0.1)


def _field_along(features, axis, units=(16, 17)):
    """The input lines (rows for axis 0, columns for axis 1) with a nonzero gradient from units
    16 and 17 of the last map along `axis`, through the unit's centre across it: a strip 1024 long
    along `axis` and 64 across (centres at 32 * index, so the unit at index 1 across sits on line 32)."""
    shape = [64, 64]
    shape[axis] = 1024
    x = torch.ones(1, 3, *shape, dtype=torch.float64, requires_grad=True)
    out = features(x)
    assert tuple(out.shape[2:]) == (shape[0] // 32, shape[1] // 32)
    lines = []
    for i in units:
        index = [1, 1]
        index[axis] = i
        (grad,) = torch.autograd.grad(out[(0, 0, *index)], x, retain_graph=True)
        g = grad[0].abs().sum(0)
        assert bool((g.sum(1 - axis) != 0).eq(g.select(1 - axis, 32) != 0).all())  # no line wider than the centre's
        lines.append(g.select(1 - axis, 32).nonzero().flatten().tolist())
    return lines


def test_efficientnet_b0_spatial_field_by_gradient():
    # Method. The field, 851 pixels, is wider than a 224 input, so it is measured where it fits: each
    # axis on its own strip, 1024 pixels along the axis and 64 across (each layer's window is a
    # rectangle, so the field is the product of its row and column extents, and an axis can be
    # measured on a strip at 1/16 of the cost of a 1024x1024 input). Along the axis the last map has
    # 32 units; unit 16 is centred on pixel 512 and its field, 87..937, lies inside the strip, so
    # padding clips nothing; unit 17's field, 32 further on, gives the jump. The squeeze-and-
    # excitation gates are detached (`hold`: the gate held constant); live, their global average pool
    # would reach every pixel (global context). Batch norm is in eval mode (fixed statistics), float64
    # keeps the tiny gradients at the edge of the field from underflowing, and the weights are random
    # but all positive, with an all-ones input: every activation's input is positive, so the SiLUs stay
    # (no identity trick) with a slope that is never zero, no sum of gradient paths can cancel, and a
    # pixel has a nonzero gradient exactly when the unit depends on it.
    row = _last_spatial_row()
    assert (row.rf, row.jump, row.offset) == ((851, 851), (32, 32), (0, 0))
    features = efficientnet_b0()[0].double().eval()
    _positive_weights(features)
    for m in features.modules():
        if isinstance(m, SqueezeExcitation):
            m.hold = True
    for axis in range(2):
        centre = row.offset[axis] + row.jump[axis] * 16
        half = (row.rf[axis] - 1) // 2
        assert (centre, centre - half, centre + half) == (512, 87, 937)
        lines, next_lines = _field_along(features, axis)
        assert len(lines) == 851
        assert lines == list(range(centre - half, centre + half + 1)), axis
        assert next_lines == [line + row.jump[axis] for line in lines], axis  # the measured jump: 32


def test_efficientnet_global_context():
    # With the gates live, a unit of the first block with a gate (7x7 field without it) reaches the
    # whole 224x224 input through the gate's global pool: the field is global context.
    stem_and_block = efficientnet_b0()[0][:2].double().eval()
    _positive_weights(stem_and_block)
    x = torch.ones(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    stem_and_block(x)[0, 0, 56, 56].backward()
    assert bool((x.grad[0].abs().sum(0) != 0).all())
    for m in stem_and_block.modules():
        if isinstance(m, SqueezeExcitation):
            m.hold = True
    x.grad = None
    stem_and_block(x)[0, 0, 56, 56].backward()
    assert int((x.grad[0].abs().sum(0) != 0).sum()) == 7 * 7
    # cnndsl reports it on the last spatial layer (the lead is adding `global_context`)
    row = _last_spatial_row()
    assert row.global_context is True
    assert row.to_json()["global_context"] is True
