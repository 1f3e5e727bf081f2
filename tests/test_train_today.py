"""Today's classifiers train (issue 14): 3x32x32 variants of MobileNetV3, EfficientNet, ShuffleNetV2
and ConvNeXt — gates, hardswish, group and layer norm, layer scale, stochastic depth, channel split
and shuffle — run `cnndsl train` on both backends. Without stochastic depth (whose masks each
backend draws from its own generator) the two backends take the same steps from the same start."""

from __future__ import annotations

import numpy as np
import pytest
from extras import needs

import cnndsl
from cnndsl.training.loop import TrainOptions, train

TORCH = pytest.param("torch", marks=needs("torch"))

BLOCKS = """
block se(squeeze) {
  mul { branch {} branch { pool avg global; conv 1x1 -> squeeze; relu; conv 1x1 -> in_c; hardsigmoid } }
}
block bneck(e, c, s=1) {
  conv 1x1 -> e nobias; bn; hardswish
  conv 3x3/s pad1 depthwise nobias; bn; hardswish
  se(divisible(e//4, 8))
  conv 1x1 -> c nobias; bn
}
block mbconv(c, p) {
  residual { conv 1x1 -> 4*in_c nobias; gn 4; silu; conv 3x3 pad1 depthwise nobias; gn 4; silu
             se(max(1, in_c//4)); conv 1x1 -> c nobias; bn; droppath p }
}
block unit(c=in_c) {
  concat {
    branch { channels :c/2 }
    branch { channels c/2:; conv 1x1 -> c/2 nobias; bn; relu
             conv 3x3 pad1 depthwise nobias; bn; conv 1x1 -> c/2 nobias; bn; relu }
  }
  shuffle 2
}
block convnext(c, p) {
  residual { conv 7x7 pad3 depthwise; ln; conv 1x1 -> 4*c; gelu; conv 1x1 -> c; layerscale 1e-6; droppath p }
}
"""

NETS = {
    "mobilenet_v3": "conv 3x3/2 pad1 -> 16 nobias; bn; hardswish\nbneck(32, 16, s=2)\nresidual { bneck(48, 16) }",
    "efficientnet": "conv 3x3/2 pad1 -> 16 nobias; bn; silu\nmbconv(16, P)\nmbconv(16, P)",
    "shufflenet": "conv 3x3/2 pad1 -> 16 nobias; bn; relu\nunit x2",
    "convnext": "conv 4x4/4 -> 16; ln\nconvnext(16, P) x2",
}


def network(name: str, p: float) -> cnndsl.Net:
    body = NETS[name].replace("P", repr(p))
    return cnndsl.parse(f"network {name}\ninput 3x32x32\n{BLOCKS}\n{body}\npool avg global\nfc 4\n"
                        "train {\n  optimizer adam lr 0.005\n  batch 16\n  val_split 0.25\n}\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """80 images whose class is the channel (or none) that is brightest: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    x = rng.normal(0, 0.5, (80, 3, 32, 32)).astype(np.float32)
    for index, label in enumerate(y):
        if label < 3:
            x[index, label] += 1.0
    path = tmp_path_factory.mktemp("data") / "colours.npz"
    np.savez(path, x_train=x, y_train=y.astype(np.int64))
    return str(path)


def _train(net, data, backend, out, epochs, **options):
    return train(net, TrainOptions(backend=backend, data=data, epochs=epochs, out=str(out), progress=False,
                                   log=lambda line: None, **options))


@pytest.mark.parametrize("backend", ["numpy", TORCH])
@pytest.mark.parametrize("name", sorted(NETS))
def test_trains_with_stochastic_depth(name, backend, data, tmp_path):
    result = _train(network(name, 0.2), data, backend, tmp_path / "run", epochs=3)
    losses = [m["loss"] for m in result.metrics]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert result.test_accuracy > 0.5, result.metrics[-1]


@needs("torch")
@pytest.mark.parametrize("name", sorted(NETS))
def test_both_backends_take_the_same_first_steps(name, data, tmp_path):
    # SGD, not Adam: a bias whose gradient is zero up to rounding (bn before conv before bn) would take
    # full Adam steps of the rounding noise's random sign.
    net = network(name, 0.0)
    a = _train(net, data, "numpy", tmp_path / "n", epochs=1, optimizer="sgd", lr=0.05)
    b = _train(net, data, "torch", tmp_path / "t", epochs=1, optimizer="sgd", lr=0.05)
    for tensor in a.weights:
        np.testing.assert_allclose(a.weights[tensor], b.weights[tensor], rtol=2e-3, atol=2e-4, err_msg=tensor)
