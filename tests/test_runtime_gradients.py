"""Every runtime kernel's backward against central finite differences, in float64.

The loss is <y, r> for a fixed random r, so d(loss)/dy = r and each backward is checked on the
gradient it receives in a network. Inputs are random normals: no kink (relu at 0, a max-pool tie,
hardswish at +-3) lies within the finite-difference step.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import require

import cnndsl
from cnndsl.analysis.shapes import same_padding
from cnndsl.backends import numpy_codegen
from cnndsl.runtime import kernels as K

EPS = 1e-6
TOL = 1e-5


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    # The floor: a gradient that is exactly zero (a conv bias before a training-mode bn) has only
    # finite-difference round-off (~1e-10) to compare with, so it is checked absolutely, to 1e-8.
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric), 1e-3)
    return float(np.linalg.norm(analytic - numeric) / scale)


def numeric_grad(loss, array: np.ndarray, max_points: int | None = None, seed: int = 0) -> tuple[np.ndarray, list]:
    """Central differences of loss() w.r.t. `array` (changed in place and restored), at every
    element or at `max_points` random ones."""
    flat = array.reshape(-1)
    points = np.arange(flat.size)
    if max_points is not None and flat.size > max_points:
        points = np.random.default_rng(seed).choice(flat.size, max_points, replace=False)
    grad = np.zeros(points.size)
    for k, i in enumerate(points):
        old = flat[i]
        flat[i] = old + EPS
        plus = loss()
        flat[i] = old - EPS
        minus = loss()
        flat[i] = old
        grad[k] = (plus - minus) / (2 * EPS)
    return grad, points


def check(forward, backward, inputs: dict[str, np.ndarray], seed: int = 1) -> None:
    """forward(**inputs) -> (y, cache); backward(dy, cache) -> gradients in the order of `inputs`."""
    y, cache = forward(**inputs)
    r = np.random.default_rng(seed).standard_normal(y.shape)
    grads = backward(r, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    def loss():
        return float(np.sum(forward(**inputs)[0] * r))

    for (name, array), analytic in zip(inputs.items(), grads, strict=False):
        assert analytic.shape == array.shape, name
        numeric, points = numeric_grad(loss, array)
        err = rel_error(analytic.reshape(-1)[points], numeric)
        assert err < TOL, f"{name}: relative error {err:.2e}"


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- convolution

CONVS = {
    "3x3 pad1": dict(c=3, o=4, k=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=1),
    "3x3/2 pad same (asymmetric)": dict(c=3, o=4, k=(3, 3), stride=(2, 2),
                                        pads=(*same_padding(8, 3, 2), *same_padding(7, 3, 2)), dilation=(1, 1),
                                        groups=1),
    "4x4/2 pad same (odd total)": dict(c=2, o=3, k=(4, 4), stride=(2, 2),
                                       pads=(*same_padding(8, 4, 2), *same_padding(7, 4, 2)), dilation=(1, 1),
                                       groups=1),
    "dilation 2": dict(c=2, o=3, k=(3, 3), stride=(1, 1), pads=(2, 2, 2, 2), dilation=(2, 2), groups=1),
    "dilation 2x1 stride 2x1": dict(c=2, o=3, k=(3, 2), stride=(2, 1), pads=(1, 0, 0, 1), dilation=(2, 1), groups=1),
    "groups 2": dict(c=4, o=6, k=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=2),
    "depthwise": dict(c=4, o=4, k=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(1, 1), groups=4),
    "depthwise x2": dict(c=3, o=6, k=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=3),
    # The depthwise path's own geometry: stride phases, dilation, uneven pads, rows no window reaches.
    "depthwise 3x3/2 pad same x2": dict(c=3, o=6, k=(3, 3), stride=(2, 2),
                                        pads=(*same_padding(8, 3, 2), *same_padding(7, 3, 2)), dilation=(1, 1),
                                        groups=3),
    "depthwise 4x4/2 pad same (odd total)": dict(c=2, o=2, k=(4, 4), stride=(2, 2),
                                                 pads=(*same_padding(8, 4, 2), *same_padding(7, 4, 2)),
                                                 dilation=(1, 1), groups=2),
    "depthwise dilation 2 x2": dict(c=2, o=4, k=(3, 3), stride=(1, 1), pads=(2, 2, 2, 2), dilation=(2, 2), groups=2),
    "depthwise 3x2 dilation 2x1 stride 2x1 x2": dict(c=3, o=6, k=(3, 2), stride=(2, 1), pads=(1, 0, 0, 1),
                                                     dilation=(2, 1), groups=3),
    "depthwise 3x3/2 dilation 2 pad same": dict(c=2, o=2, k=(3, 3), stride=(2, 2),
                                                pads=(*same_padding(8, 3, 2, 2), *same_padding(7, 3, 2, 2)),
                                                dilation=(2, 2), groups=2),
    "depthwise 5x5/3, unseen tail": dict(c=2, o=2, k=(5, 5), stride=(3, 3), pads=(0, 0, 0, 0), dilation=(1, 1),
                                         groups=2),
    "1x1 pointwise": dict(c=5, o=3, k=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1),
    "1x1/2 drops rows": dict(c=3, o=5, k=(1, 1), stride=(2, 2), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1),
    "5x5 stride 3, unseen tail": dict(c=2, o=2, k=(5, 5), stride=(3, 3), pads=(0, 0, 0, 0), dilation=(1, 1),
                                      groups=1),
}


@pytest.mark.parametrize("case", CONVS, ids=list(CONVS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d(case, bias):
    p = CONVS[case]
    x = normal(2, p["c"], 8, 7)
    w = normal(p["o"], p["c"] // p["groups"], *p["k"], seed=1)
    b = normal(p["o"], seed=2) if bias else None

    def forward(x, w, b=None):
        return K.conv2d_forward(x, w, b, p["stride"], p["pads"], p["dilation"], p["groups"])

    inputs = {"x": x, "w": w} | ({"b": b} if bias else {})
    check(forward, lambda dy, cache: K.conv2d_backward(dy, cache), inputs)


def test_conv2d_backward_without_cached_columns_matches():
    """Inference drops the column matrix; backward rebuilds it and must give the same gradients."""
    x, w, b = normal(2, 3, 6, 6), normal(4, 3, 3, 3, seed=1), normal(4, seed=2)
    dy = normal(2, 4, 3, 3, seed=3)
    kept = K.conv2d_backward(dy, K.conv2d_forward(x, w, b, (2, 2), (1, 0, 1, 0), keep=True)[1])
    dropped = K.conv2d_backward(dy, K.conv2d_forward(x, w, b, (2, 2), (1, 0, 1, 0), keep=False)[1])
    for a, c in zip(kept, dropped, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-12)


DEPTHWISE = [case for case in CONVS if case.startswith("depthwise")]


@pytest.mark.parametrize("case", DEPTHWISE)
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "rebuilt"])
@pytest.mark.parametrize("images", [None, 1, 2], ids=["one block", "blocks of 1 image x 1 channel",
                                                      "blocks of 2 images x 1 channel"])
def test_depthwise_equals_one_convolution_per_channel(case, keep, images, monkeypatch):
    """The depthwise path against each input channel convolved on its own (a groups=1 conv, the
    im2col path) with its output channels' filters: outputs and all three gradients. Also in the
    blocks larger inputs are computed in (a block's column matrix is kept under _DEPTHWISE_BLOCK)."""
    p = CONVS[case]
    c, o = p["c"], p["o"]
    x, w, b = normal(3, c, 8, 7), normal(o, 1, *p["k"], seed=1), normal(o, seed=2)
    if images is not None:
        out = K._out_size((8, 7), p["k"], p["stride"], p["pads"], p["dilation"])
        plan = K._Depthwise.plan(x.shape, p["k"], p["stride"], p["pads"], p["dilation"], out)
        monkeypatch.setattr(K, "_DEPTHWISE_BLOCK", images * len(plan.taps) * plan.length)
        plan = K._Depthwise.plan(x.shape, p["k"], p["stride"], p["pads"], p["dilation"], out)
        assert (plan.images, plan.channels) == (images, 1)
    y, cache = K.conv2d_forward(x, w, b, p["stride"], p["pads"], p["dilation"], p["groups"], keep=keep)
    dy = normal(*y.shape, seed=3)
    dx, dw, db = K.conv2d_backward(dy, cache)
    m = o // c
    for ch in range(c):
        out = slice(ch * m, (ch + 1) * m)
        y1, cache1 = K.conv2d_forward(x[:, ch : ch + 1], w[out], b[out], p["stride"], p["pads"], p["dilation"])
        dx1, dw1, db1 = K.conv2d_backward(dy[:, out], cache1)
        np.testing.assert_allclose(y[:, out], y1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx[:, ch : ch + 1], dx1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw[out], dw1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(db[out], db1, rtol=1e-12, atol=1e-12)
    assert K.conv2d_backward(dy, cache, input_grad=False)[0] is None


# ---------------------------------------------------------------- pooling

POOLS = {
    "2/2": dict(k=(2, 2), s=(2, 2), pads=(0, 0, 0, 0), ceil=False, hw=(8, 6)),
    "3x3/2 pad1": dict(k=(3, 3), s=(2, 2), pads=(1, 1, 1, 1), ceil=False, hw=(7, 8)),
    "3x3/2 ceil": dict(k=(3, 3), s=(2, 2), pads=(0, 0, 0, 0), ceil=True, hw=(8, 6)),
    "3x3/2 pad1 ceil": dict(k=(3, 3), s=(2, 2), pads=(1, 1, 1, 1), ceil=True, hw=(6, 7)),
    "2x3/1x2 asymmetric pad": dict(k=(2, 3), s=(1, 2), pads=(0, 1, 1, 1), ceil=False, hw=(5, 7)),
    "3x3/3 ceil, overhang": dict(k=(3, 3), s=(3, 3), pads=(0, 0, 0, 0), ceil=True, hw=(7, 8)),
}


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOLS, ids=list(POOLS))
def test_pool2d(mode, case):
    p = POOLS[case]
    fwd, bwd = {"max": (K.max_pool2d_forward, K.max_pool2d_backward),
                "avg": (K.avg_pool2d_forward, K.avg_pool2d_backward)}[mode]
    check(lambda x: fwd(x, p["k"], p["s"], p["pads"], p["ceil"]), bwd, {"x": normal(2, 3, *p["hw"])})


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_global_pool(mode):
    fwd, bwd = {"max": (K.global_max_pool_forward, K.global_max_pool_backward),
                "avg": (K.global_avg_pool_forward, K.global_avg_pool_backward)}[mode]
    check(fwd, bwd, {"x": normal(2, 3, 5, 4)})


@pytest.mark.parametrize("kernel,stride,pads", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1))],
                         ids=["disjoint 2/2", "overlapping 3x3/2 pad1"])
def test_max_pool_ties_go_to_the_first_cell(kernel, stride, pads):
    """After a relu whole windows are 0: like PyTorch, only the first cell in scan order gets the gradient."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 3, 3] = 1.0
    y, cache = K.max_pool2d_forward(x, kernel, stride, pads)
    dx = K.max_pool2d_backward(np.ones_like(y), cache)
    torch = require("torch")
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, kernel, stride, (pads[0], pads[2])).sum().backward()
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_avg_pool_ceil_divisor_is_pytorch_rule():
    """A ceil-mode window running past input + padding divides by the part inside it."""
    x = np.ones((1, 1, 4, 4))
    y, _ = K.avg_pool2d_forward(x, (3, 3), (3, 3), (0, 0, 0, 0), ceil=True)
    # Windows cover rows 0-2 and 3 (one row inside): every output averages real ones only.
    np.testing.assert_allclose(y, np.ones((1, 1, 2, 2)))
    y, _ = K.avg_pool2d_forward(x, (3, 3), (2, 2), (1, 1, 1, 1), ceil=False)
    # count_include_pad: the corner window holds 4 ones and 5 padding zeros.
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)


# ---------------------------------------------------------------- fc, dropout, bn, preprocess


@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (3, 7)], ids=["CxHxW input", "vector input"])
def test_linear(shape):
    features = int(np.prod(shape[1:]))
    check(lambda x, w, b: K.linear_forward(x, w, b), K.linear_backward,
          {"x": normal(*shape), "w": normal(5, features, seed=1), "b": normal(5, seed=2)})


def test_dropout_is_inverted_and_differentiable():
    def forward(x):  # the same mask every call, as within one training step
        return K.dropout_forward(x, 0.4, np.random.default_rng(7), train=True)

    x = normal(4, 3, 5, 5)
    check(forward, K.dropout_backward, {"x": x})
    y, cache = forward(x)
    kept = cache["mask"] != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.6)
    assert 0.3 < 1 - kept.mean() < 0.5  # 300 draws at p = 0.4
    assert K.dropout_forward(x, 0.4, np.random.default_rng(7), train=False)[0] is x


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (6, 5)], ids=["BatchNorm2d", "BatchNorm1d"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_norm(shape, train):
    channels = shape[1]
    running = {"running_mean": normal(channels, seed=5), "running_var": np.abs(normal(channels, seed=6)) + 0.5,
               "num_batches_tracked": np.zeros((), np.int64)}

    def forward(x, gamma, beta):
        buffers = {k: v.copy() for k, v in running.items()}
        return K.batch_norm_forward(x, gamma, beta, **buffers, eps=1e-5, momentum=0.1, train=train)

    check(forward, K.batch_norm_backward,
          {"x": normal(*shape), "gamma": normal(channels, seed=1), "beta": normal(channels, seed=2)})


def test_batch_norm_running_statistics_follow_pytorch():
    x = normal(4, 3, 2, 2)
    mean, var, count = np.zeros(3), np.ones(3), np.zeros((), np.int64)
    K.batch_norm_forward(x, np.ones(3), np.zeros(3), mean, var, count, 1e-5, 0.1, train=True)
    np.testing.assert_allclose(mean, 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1))  # unbiased for the running update
    assert count == 1


def test_batch_norm_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        K.batch_norm_forward(normal(1, 3, 1, 1), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                             np.zeros((), np.int64), 1e-5, 0.1, train=True)


def test_preprocess_input_gradient():
    check(lambda x: K.preprocess_forward(x, np.array(1 / 255), np.array([0.4, 0.5]), np.array([0.2, 0.3])),
          K.preprocess_backward, {"x": normal(2, 2, 3, 3) * 100})


# ---------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": (K.relu_forward, K.relu_backward),
    "relu6": (K.relu6_forward, K.relu6_backward),
    "leaky": (lambda x: K.leaky_relu_forward(x, 0.1), K.leaky_relu_backward),
    "elu": (lambda x: K.elu_forward(x, 0.7), K.elu_backward),
    "sigmoid": (K.sigmoid_forward, K.sigmoid_backward),
    "tanh": (K.tanh_forward, K.tanh_backward),
    "gelu": (K.gelu_forward, K.gelu_backward),
    "silu": (K.silu_forward, K.silu_backward),
    "hardswish": (K.hardswish_forward, K.hardswish_backward),
    "softmax": (K.softmax_forward, K.softmax_backward),
}


@pytest.mark.parametrize("fn", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 6)], ids=["map", "vector"])
def test_activation(fn, shape):
    forward, backward = ACTIVATIONS[fn]
    # Spread over [-8, 8] so relu6's and hardswish's flat parts and kinks are all visited.
    check(forward, backward, {"x": normal(*shape) * 4})


def test_gelu_is_exact_erf_form():
    import math

    x = np.linspace(-5, 5, 101)
    expected = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(K.gelu_forward(x)[0], expected, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- whole models: fan-out and fan-in

MODELS = {
    "branches": """
network branches
input 4x9x8
preprocess { scale 1/4; standardize mean (0.1, 0.2, 0.3, 0.4) std (0.9, 1.1, 1.2, 0.8) }
conv 3x3/2 pad same -> 8; bn; relu6
conv 3x3 dil2 pad2 -> 8 groups2; leaky .1
conv 3x3 pad1 depthwise -> 2x; elu
pool avg 3x3/2 pad1 ceil
concat {
  branch {}
  branch { conv 1x1 -> 4; gelu }
  branch { pool max 3x3/1 pad1; conv 1x1 -> 2; silu }
}
add {
  branch { conv 1x1 -> 6; hardswish }
  branch { conv 3x3 pad1 -> 6; tanh }
}
residual { conv 3x3 pad1 -> 6; sigmoid }
pool max 2/2 ceil
fc 12; bn; dropout .3
fc 5; softmax
""",
    "residual_projection": """
network proj
input 3x8x8
conv 3x3 pad1 -> 4 nobias; bn; relu
residual {
  conv 3x3/2 pad1 -> 6 nobias; bn; relu
  conv 3x3 pad1 -> 6 nobias; bn
} shortcut {
  conv 1x1/2 -> 6 nobias; bn
}
relu
residual { conv 3x3 pad1 -> 6; bn } shortcut always { conv 1x1 -> 6 }
pool max global
fc 3
""",
}


@pytest.mark.parametrize("text", MODELS.values(), ids=list(MODELS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_generated_model_gradients(text, train):
    """Through the generated forward/backward: forks sum their gradients, joins share them."""
    net = cnndsl.parse(text)
    weights = net.init_weights(seed=3)
    model = numpy_codegen.build(net, weights, dtype=np.float64)
    x = normal(3, *net.ir.input_shape, seed=4)

    def forward():
        model.seed(0)  # the same dropout masks on every call
        return model.forward(x, train=train)

    y = forward()
    r = np.random.default_rng(5).standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(r)

    def loss():
        return float(np.sum(forward() * r))

    numeric, points = numeric_grad(loss, x, max_points=40)
    assert rel_error(dx.reshape(-1)[points], numeric) < TOL, "input"
    for name, param in model.params.items():
        numeric, points = numeric_grad(loss, param, max_points=12)
        err = rel_error(model.grads[name].reshape(-1)[points], numeric)
        assert err < TOL, f"{name}: relative error {err:.2e}"


def test_gradients_accumulate_until_zero_grad():
    net = cnndsl.parse(MODELS["residual_projection"])
    model = numpy_codegen.build(net, dtype=np.float64)
    x = normal(2, 3, 8, 8)
    model.backward(np.ones_like(model.forward(x, train=True)))
    once = {k: v.copy() for k, v in model.grads.items()}
    model.backward(np.ones_like(model.forward(x, train=True)))
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-6, atol=1e-12)
    model.zero_grad()
    assert all(not g.any() for g in model.grads.values())
