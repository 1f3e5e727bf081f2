"""Issue 15 item 3: examples/fcn_resnet50.cnn is torchvision's `fcn_resnet50(num_classes=21, aux_loss=False)`.

torchvision has no CPU wheel here, so the module below is written from its source instead, sharing no
code with cnndsl: models/resnet.py (Bottleneck, ResNet._make_layer with replace_stride_with_dilation=
[False, True, True]), models/_utils.py (IntermediateLayerGetter), models/segmentation/fcn.py (FCNHead,
_fcn_resnet) and models/segmentation/_utils.py (_SimpleSegmentationModel: the classifier's scores
resized to the input by F.interpolate, bilinear, align_corners=False). Checked here: parameters (and,
with the auxiliary head, torchvision's published 35,322,218), conv MACs by forward hooks at 520 (with
the auxiliary head, the published 152.717 G), the same outputs on the same weights (copied by name) at
3x64x64, torch, NumPy and onnxruntime agreeing there, and the receptive field, jump and offset of the
head's last conv and of the output measured by gradient on the generated torch module.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import reference
from extras import needs, require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

from test_dense_prediction import _outputs, _probe, field  # noqa: E402

import cnndsl  # noqa: E402

FCN = Path(__file__).resolve().parent.parent / "examples" / "fcn_resnet50.cnn"
SMALL = (3, 64, 64)
PARAMS = 32_957_013  # without the auxiliary classifier
AUX_PARAMS = (1024 * 9) * 256 + 2 * 256 + (256 + 1) * 21  # FCNHead(1024, 21): 2,365,205
PUBLISHED_PARAMS = 35_322_218  # FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["num_params"], with aux
PUBLISHED_GMACS = 152.717  # its meta["_ops"] at 520x520, with aux
HEAD = "fcn_head1.conv2"  # the head's last conv (the 1x1 classifier)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- torchvision's fcn_resnet50, written out


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups, bias=False,
                     dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, replace_stride_with_dilation=(False, False, False)):
        super().__init__()
        self.inplanes, self.dilation, self.groups, self.base_width = 64, 1, 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:  # the stride becomes dilation; the stage's first block keeps the previous dilation
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                             previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                     dilation=self.dilation))
        return nn.Sequential(*layers)


class IntermediateLayerGetter(nn.ModuleDict):
    """The model's children up to the last one asked for (avgpool and fc are dropped); returns their outputs."""

    def __init__(self, model, return_layers):
        orig_return_layers = dict(return_layers)
        return_layers = dict(return_layers)
        layers = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            return_layers.pop(name, None)
            if not return_layers:
                break
        super().__init__(layers)
        self.return_layers = orig_return_layers

    def forward(self, x):
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class FCNHead(nn.Sequential):
    def __init__(self, in_channels, channels):
        inter_channels = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(inter_channels), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(inter_channels, channels, 1))


class SimpleSegmentationModel(nn.Module):
    def __init__(self, backbone, classifier, aux_classifier=None):
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        result = OrderedDict()
        x = self.classifier(features["out"])
        result["out"] = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
        if self.aux_classifier is not None:
            x = self.aux_classifier(features["aux"])
            result["aux"] = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
        return result


def fcn_resnet50(num_classes=21, aux_loss=False):
    backbone = ResNet(replace_stride_with_dilation=(False, True, True))
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    backbone = IntermediateLayerGetter(backbone, return_layers)
    aux_classifier = FCNHead(1024, num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, FCNHead(2048, num_classes), aux_classifier)


STAGES = (3, 4, 6, 3)


def torchvision_name(name: str) -> str:
    """cnndsl's tensor name -> torchvision's: `bottleneck9.conv2.weight` -> `backbone.layer3.1.conv2.weight`,
    `bottleneck8.shortcut1.bn1.bias` -> `backbone.layer3.0.downsample.1.bias`, `fcn_head1.conv2.bias` ->
    `classifier.4.bias`, `bn1.weight` -> `backbone.bn1.weight`."""
    scope, *rest = name.split(".")
    if scope.startswith("bottleneck"):
        n = int(scope.removeprefix("bottleneck")) - 1
        stage = next(i for i in range(4) if n < sum(STAGES[:i + 1]))
        if rest[0] == "shortcut1":
            rest = [{"conv1": "downsample.0", "bn1": "downsample.1"}[rest[1]], *rest[2:]]
        return ".".join([f"backbone.layer{stage + 1}", str(n - sum(STAGES[:stage])), *rest])
    if scope == "fcn_head1":
        return ".".join(["classifier", {"conv1": "0", "bn1": "1", "conv2": "4"}[rest[0]], *rest[1:]])
    return f"backbone.{name}"


def weights_for(net: cnndsl.Net, seed: int = 0) -> dict[str, np.ndarray]:
    """cnndsl's initialisation, with batch norms that are not the identity (random affine and statistics),
    mild enough that the 55 convs' signal neither vanishes nor overflows."""
    rng = np.random.default_rng(seed)
    weights = net.init_weights(seed)
    for spec in net.tensor_specs():
        if spec.role == "running_var" or (spec.role == "weight" and len(spec.shape) == 1):
            weights[spec.name] = rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
        elif spec.role == "running_mean" or (spec.role == "bias" and ".bn" in f".{spec.name}"):
            weights[spec.name] = (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
    return weights


def conv_macs(model, x):
    """Conv and linear multiply-accumulates by forward hooks (torchvision's convention; there is no
    transposed conv here), and the model's output."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            total[0] += output.numel() * module.kernel_size[0] * module.kernel_size[1] * module.in_channels \
                // module.groups
        else:
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return total[0], out


# ---------------------------------------------------------------- parameters and MACs


def test_parameters_are_torchvisions():
    with torch.device("meta"):
        model, with_aux = fcn_resnet50(), fcn_resnet50(aux_loss=True)
    r = cnndsl.load(FCN).analyze()
    assert r.params == sum(p.numel() for p in model.parameters()) == PARAMS
    assert AUX_PARAMS == 2_365_205
    assert r.params + AUX_PARAMS == sum(p.numel() for p in with_aux.parameters()) == PUBLISHED_PARAMS
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert r.buffers == sum(2 * m.num_features for m in bn)  # running mean and variance (and a counter each)
    # The same tensors under the two naming schemes, with the same shapes.
    state = model.state_dict()
    specs = {torchvision_name(s.name): s.shape for s in cnndsl.load(FCN).tensor_specs()}
    assert specs == {name: tuple(t.shape) for name, t in state.items()}


@pytest.mark.parametrize("size", [520, 64])
def test_macs_are_the_hooks_count(size):
    """Conv MACs by forward hooks on the hand-built module (on the meta device: shapes only) equal
    cnndsl's; at 520 with the auxiliary head they are torchvision's published 152.717 G."""
    net = cnndsl.load(FCN, input_shape=(3, size, size))
    with torch.device("meta"):
        macs, out = conv_macs(fcn_resnet50(), torch.empty(1, 3, size, size))
        aux_macs, _ = conv_macs(fcn_resnet50(aux_loss=True), torch.empty(1, 3, size, size))
    r = net.analyze()
    assert r.macs == macs
    assert r.output == tuple(out["out"].shape[1:]) == (21, size, size)
    if size == 520:
        assert r.macs == 142_725_772_800
        assert aux_macs - macs == (1024 * 9 * 256 + 256 * 21) * 65 * 65  # the aux head at 65x65
        assert round(aux_macs / 1e9, 3) == PUBLISHED_GMACS


def test_dilation_follows_torchvisions_rule():
    """Stage 3's first block has dilation 1 and a stride-1 projection, the rest 2; stage 4's first 2, the rest 4."""
    net = cnndsl.load(FCN)
    with torch.device("meta"):
        model = fcn_resnet50()
    ours = {torchvision_name(f"{row.name}.weight"): (row.node.dilation, row.node.stride)
            for row in net.analyze().layers if row.op == "conv"}
    theirs = {f"{name}.weight": (m.dilation, m.stride) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d)}
    assert ours == theirs
    assert theirs["backbone.layer3.0.conv2.weight"] == ((1, 1), (1, 1))
    assert theirs["backbone.layer3.0.downsample.0.weight"][1] == (1, 1)
    assert theirs["backbone.layer4.0.conv2.weight"][0] == (2, 2)
    assert theirs["backbone.layer4.2.conv2.weight"][0] == (4, 4)


# ---------------------------------------------------------------- the same numbers


def test_same_outputs_as_the_hand_built_module():
    """Weights copied by name into the hand-built module; at 3x64x64 `upsample to input` gives 21x64x64."""
    net = cnndsl.load(FCN, input_shape=SMALL)
    weights = weights_for(net)
    model = fcn_resnet50().eval()
    state = {torchvision_name(name): torch.from_numpy(np.asarray(value)) for name, value in weights.items()}
    model.load_state_dict(state, strict=True)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, *SMALL)).astype(np.float32))
    with torch.no_grad():
        expected = model(x)["out"]
        generated = net.to_torch(weights).eval()(x)
    assert generated.shape == expected.shape == (2, 21, 64, 64)
    scale = float(expected.abs().max())
    assert scale > 1e-3  # the signal survives the 55 convs
    assert float((generated - expected).abs().max()) < 1e-5 * scale


@needs("onnx", "onnxruntime")
def test_torch_numpy_and_onnx_agree():
    """At 3x64x64, against the float64 reference: torch, NumPy and onnxruntime (opsets 17 and 18: the
    resize to the input's size is lowered differently)."""
    net = cnndsl.load(FCN, input_shape=SMALL)
    weights = weights_for(net, seed=3)
    x = np.random.default_rng(2).standard_normal((2, *SMALL)).astype(np.float32)
    expected = reference.evaluate(net, weights, x)
    scale = float(np.abs(expected).max())
    outputs = _outputs(net, weights, x)
    assert set(outputs) == {"torch", "numpy", "onnx17", "onnx18"}
    for backend, y in outputs.items():
        assert y.shape == expected.shape == (2, 21, 64, 64), backend
        err = float(np.abs(y - expected).max()) / scale
        assert err < 1e-4, f"{backend}: {err:.2e}"


# ---------------------------------------------------------------- fields against the gradient
#
# The head's last conv sees 443 input rows, 8 apart: far more than the 64x64 input the modules run at,
# where every one of its 8x8 outputs reads the whole image. So the field is measured twice:
# - exactly, at 3x464x464, where a pair of neighbouring outputs reads only real pixels (output o is
#   centred on row 8o: 29 and 30 read rows 11 to 461): the generated module with each conv replaced by
#   a one-channel conv of the same kernel, stride, padding and dilation on the sum of its input's
#   channels and each batch norm by the identity (test_dense_prediction._probe, `light`: the same
#   field at a fraction of the cost), measured extent and step against cnndsl's rf, jump and offset at
#   3x64x64 (none of the three depends on the input size here: no adaptive pool, and the resize comes
#   after the head);
# - clipped to the image: at 3x64x64 on the whole generated module (every channel, positive weights),
#   where [8o - 221, 8o + 221] cut to [0, 63] is the whole image, and with the one-channel convs at
#   3x256x256, where the cut field is a part of the image that moves with the output.


def _light(model):
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return _probe(torch, model, light=True)


def _extents(model, shape, positions, layer=None):
    """For each (i, j): the first and last input row and column that output[b, :, i, j] of `layer` (the
    network's output if None) depends on, one sample per position."""
    captured = []
    if layer is not None:
        model.get_submodule(layer).register_forward_hook(lambda module, inputs, output: captured.append(output))
    x = torch.ones(len(positions), *shape, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y = captured[0] if layer is not None else y
    sum(y[b, :, i, j].sum() for b, (i, j) in enumerate(positions)).backward()
    out = []
    for grad in x.grad:
        g = grad.abs().sum(0)
        rows, cols = (g.sum(1) > 0).nonzero()[:, 0], (g.sum(0) > 0).nonzero()[:, 0]
        out.append(((int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))))
    return out


def test_head_field_is_the_measured_one():
    row = cnndsl.load(FCN, input_shape=SMALL).analyze().layer(HEAD)
    assert (row.rf, row.jump, row.offset) == ((443, 443), (8, 8), (0, 0))
    big = cnndsl.load(FCN, input_shape=(3, 464, 464))
    r_big = big.analyze().layer(HEAD)
    assert (r_big.rf, r_big.jump, r_big.offset) == (row.rf, row.jump, row.offset)
    half = (row.rf[0] - 1) // 2
    o = r_big.output[1] // 2  # 29 of 58
    assert o * 8 - half >= 0 and (o + 1) * 8 + half <= 463  # both outputs read real rows only
    model = _light(big.to_torch())
    measured = _extents(model, big.ir.input_shape, [(o, o), (o + 1, o + 1)], HEAD)
    for axis in range(2):
        (a0, b0), (a1, b1) = measured[0][axis], measured[1][axis]
        assert b0 - a0 + 1 == b1 - a1 + 1 == row.rf[axis]
        assert a1 - a0 == row.jump[axis]
        assert Fraction(a0 + b0, 2) == row.offset[axis] + row.jump[axis] * o


def _clipped(row, position, size):
    """The rows and columns cnndsl predicts for output `position` of `row`, cut to an image of `size`."""
    extent = []
    for axis, o in enumerate(position):
        centre, half = row.offset[axis] + row.jump[axis] * o, Fraction(row.rf[axis] - 1, 2)
        extent.append((max(math.floor(centre - half), 0), min(math.ceil(centre + half), size[axis] - 1)))
    return tuple(extent)


def test_head_field_clipped_to_the_image():
    """At 3x64x64 the whole module (every channel) reads the whole image from each output; at 3x256x256 (light)
    the clipped field is a part of it: output 0 reads rows 0 to 221, output 31 rows 27 to 255."""
    net = cnndsl.load(FCN, input_shape=SMALL)
    row = net.analyze().layer(HEAD)
    positions = [(0, 0), (7, 3)]
    measured = _extents(_probe(torch, net.to_torch(), light=False), SMALL, positions, HEAD)
    assert measured == [_clipped(row, p, SMALL[1:]) for p in positions] == [((0, 63), (0, 63))] * 2
    net = cnndsl.load(FCN, input_shape=(3, 256, 256))
    row = net.analyze().layer(HEAD)
    positions = [(0, 31), (31, 16), (5, 27)]
    measured = _extents(_light(net.to_torch()), net.ir.input_shape, positions, HEAD)
    assert measured == [_clipped(row, p, (256, 256)) for p in positions]
    assert measured[0] == ((0, 221), (27, 255))


def test_output_field_is_the_measured_one():
    """After the bilinear resize by 8 the rows an output reads repeat every 8 outputs: measured over a period
    (and one more) of outputs at 3x464x464, each output's rows, rf 451 (the largest), jump 1 and offset
    -3.5 (the mean centre over the period) equal cnndsl's."""
    net = cnndsl.load(FCN, input_shape=(3, 464, 464))
    r = net.analyze()
    assert (r.rf, r.jump, r.offset) == ((451, 451), (1, 1), (Fraction(-7, 2),) * 2)
    assert (r.rf, r.jump, r.offset) == tuple(getattr(cnndsl.load(FCN, input_shape=SMALL).analyze(), k)
                                             for k in ("rf", "jump", "offset"))
    f = field(net)
    period = f.axis_spans(0).period
    assert period == 8
    start = next(o for o in range(200, 464) if f.span(0, o)[0] >= 0)
    assert f.span(0, start + period)[1] <= 463
    model = _light(net.to_torch())
    measured = _extents(model, net.ir.input_shape, [(start + k, start + k) for k in range(period + 1)])
    for axis in range(2):
        spans = [m[axis] for m in measured]
        assert spans == [f.span(axis, start + k) for k in range(period + 1)]
        assert f.size[axis] == max(b - a + 1 for a, b in spans[:period]) == 451
        assert f.jump[axis] == Fraction(spans[period][0] - spans[0][0], period)
        centres = sum(Fraction(a + b, 2) for a, b in spans[:period]) / period
        assert centres == f.start[axis] + f.jump[axis] * (start + Fraction(period - 1, 2))
