"""Every row of `cnndsl.kinds.ACTIVATIONS` (so every activation added later too), on every backend:
the NumPy kernels against finite differences in float64, and PyTorch, NumPy and ONNX against the
independent reference (`tests/reference.py`, written from the formulas) on the same weights,
outputs and input gradients."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from extras import require
from test_runtime_gradients import check

import cnndsl
from cnndsl.backends import numpy_codegen, onnx_builder
from cnndsl.kinds import ACTIVATIONS
from cnndsl.runtime import kernels as K

ROWS = list(ACTIVATIONS.values())
ids = [fn.name for fn in ROWS]


def program(fn) -> cnndsl.Net:
    # conv weights x8 below spread the activation's input over about [-8, 8]: flat parts and kinks
    argument = " 0.3" if fn.default is not None else ""
    return cnndsl.parse(f"network t\ninput 3x5x4\nconv 1x1 -> 6; {fn.name}{argument}\nfc 7; {fn.name}{argument}")


def weights_and_input(net, seed: int = 3):
    weights = net.init_weights(seed)
    weights["conv1.weight"] = weights["conv1.weight"] * 8
    x = np.random.default_rng(seed).standard_normal((2, *net.ir.input_shape))
    return weights, x


@pytest.mark.parametrize("fn", ROWS, ids=ids)
def test_kernels_match_finite_differences(fn):
    forward, backward = getattr(K, f"{fn.kernel}_forward"), getattr(K, f"{fn.kernel}_backward")
    call = (lambda x: forward(x, 0.3)) if fn.default is not None else forward
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)) * 4
    x[np.abs(np.abs(x) - 3) < 1e-3] += 0.01  # off the kinks of the hard functions at +-3
    check(call, backward, {"x": x})


@pytest.mark.parametrize("fn", ROWS, ids=ids)
def test_numpy_matches_the_reference_forward_and_backward(fn):
    torch = require("torch")
    net = program(fn)
    weights, x = weights_and_input(net)
    model = numpy_codegen.build(net, weights, dtype=np.float64)
    y = model.forward(x, train=False)
    xt = torch.tensor(x, requires_grad=True)
    expected = reference.forward(net, {k: torch.tensor(np.asarray(v, np.float64)) for k, v in weights.items()}, xt)
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    expected.backward(torch.tensor(dy))
    np.testing.assert_allclose(model.backward(dy), xt.grad.numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fn", ROWS, ids=ids)
def test_torch_matches_the_reference_forward_and_backward(fn):
    torch = require("torch")
    net = program(fn)
    weights, x = weights_and_input(net)
    module = net.to_torch(weights).double().eval()
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    xr = torch.tensor(x, requires_grad=True)
    expected = reference.forward(net, {k: torch.tensor(np.asarray(v, np.float64)) for k, v in weights.items()}, xr)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    dy = torch.tensor(np.random.default_rng(5).standard_normal(tuple(y.shape)))
    y.backward(dy)
    expected.backward(dy)
    # PyTorch's hardsigmoid backward multiplies by 1/6 as a float32 constant, also in float64
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("fn", ROWS, ids=ids)
def test_onnx_matches_the_reference(fn, opset):
    onnx = require("onnx")
    ort = require("onnxruntime")
    net = program(fn)
    weights, x = weights_and_input(net)
    model = onnx_builder.build(net, weights, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(out, reference.evaluate(net, weights, x), rtol=1e-4, atol=1e-5)


def test_hardsigmoid_is_pytorchs():
    torch = require("torch")
    x = torch.linspace(-5, 5, 201, dtype=torch.float64)
    y, _ = K.hardsigmoid_forward(x.numpy())
    np.testing.assert_array_equal(y, torch.nn.functional.hardsigmoid(x).numpy())
