"""`mul` (with the Cx1x1 gate of squeeze-and-excitation) and `droppath` (stochastic depth), issue 14:
shapes, parameters, errors, the NumPy kernels against finite differences, and every backend against
the independent reference (`tests/reference.py`) on the same weights, in training too."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from extras import require
from test_backend_numpy import compare_with_torch
from test_runtime_gradients import check

import cnndsl
from cnndsl import ir
from cnndsl.backends import numpy_codegen, onnx_builder
from cnndsl.errors import CnnDslError
from cnndsl.runtime import kernels as K

SE_NET = """
network se_net
input 6x7x7
block se(c, r=2) {
  mul {
    branch {}
    branch { pool avg global; conv 1x1 -> c/r; relu; conv 1x1 -> c; hardsigmoid }
  }
}
block unit(c, p) {
  residual { conv 3x3 pad1 depthwise; conv 1x1 -> c; se(c); droppath p }
}
conv 3x3 pad1 -> 8; bn
unit(8, 0.5) x2
mul { branch { conv 1x1 -> 8 } branch { conv 3x3 pad1 -> 8; sigmoid } branch { pool max global } }
pool avg global
fc 5
"""


def test_gate_shapes_parameters_and_macs():
    net = cnndsl.parse(SE_NET)
    rows = {row.name: row for row in net.report.layers}
    gate = net.shapes["unit1.se1.mul1.branch2"]
    assert gate.output == (8, 1, 1) and net.shapes["unit1.se1.mul1"].output == (8, 7, 7)
    # se(8): 8*4+4 + 4*8+8 = 76 parameters; the product itself has none and no MACs
    assert rows["unit1.se1.mul1"].params == 0 and rows["unit1.se1.mul1"].macs == 0
    assert sum(r.params for r in rows.values() if r.name.startswith("unit1.se1.")) == 76


@pytest.mark.parametrize("text, message, fix", [
    ("input 8x4x4\nmul { branch {} branch { pool avg global; conv 1x1 -> 4 } }",
     "mul multiplies branches of the same shape", "end every branch in 8 channels"),
    ("input 8x4x4\nmul { branch {} branch { pool max 2 } }", "mul multiplies branches", "make every branch give 8x4x4"),
    ("input 8x4x4\ndroppath 0.1", "droppath must be the last statement of a residual body",
     "residual { ...; droppath 0.1 }"),
    ("input 8x4x4\nresidual { droppath 0.1; relu }", "droppath must be the last statement", "move it to the end"),
    ("input 8x4x4\nresidual { relu; droppath 0.1; droppath 0.2 }", "droppath must be the last", "one per body"),
    ("input 8x4x4\nblock b() { droppath 0.1; relu }\nresidual { b }", "droppath must be the last", "move it"),
    ("input 8x4x4\nresidual { relu; droppath 1 }", "a drop-path probability must be between 0 and 0.999", ""),
])
def test_errors_say_where_and_how_to_fix(text, message, fix):
    with pytest.raises(CnnDslError) as err:
        cnndsl.parse(text)
    assert message in str(err.value) and fix in str(err.value)
    assert ":2:" in str(err.value) or ":3:" in str(err.value)


def test_droppath_may_end_a_block_that_ends_the_body():
    net = cnndsl.parse("input 8x4x4\nblock b(p) { relu; droppath p }\nresidual { conv 1x1 -> 8; b(0) }\n")
    assert [n.p for n in net.ir.walk() if isinstance(n, ir.DropPath)] == [0.0]


def test_mul_kernel_matches_finite_differences():
    full, gate, other = np.random.default_rng(0).standard_normal((3, 2, 3, 4, 4))
    gate = gate[:, :, :1, :1]

    def forward(a, g, b):
        return K.mul_forward([a, g, b]), None

    check(forward, lambda dy, _: tuple(K.mul_backward(dy, [full, gate, other])), {"a": full, "g": gate, "b": other})


def test_droppath_kernel_drops_whole_samples_and_scales():
    x = np.ones((4000, 2, 3, 3))
    y, cache = K.droppath_forward(x, 0.25, np.random.default_rng(0), train=True)
    per_sample = y.reshape(4000, -1)
    assert set(np.unique(per_sample)) == {0.0, 1 / 0.75}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is kept or dropped whole
    assert abs((per_sample[:, 0] > 0).mean() - 0.75) < 0.03
    np.testing.assert_array_equal(K.dropout_backward(np.ones_like(x), cache), y)
    assert K.droppath_forward(x, 0.25, np.random.default_rng(0), train=False)[0] is x


def test_numpy_matches_the_reference_in_training_with_the_same_masks():
    compare_with_torch(cnndsl.parse(SE_NET), batch=4, train=True)


def test_numpy_matches_the_reference_in_evaluation():
    compare_with_torch(cnndsl.parse(SE_NET), batch=3, train=False)


def test_onnx_matches_the_reference():
    onnx, ort = require("onnx"), require("onnxruntime")
    net = cnndsl.parse(SE_NET)
    weights = net.init_weights(4)
    x = np.random.default_rng(4).standard_normal((2, *net.ir.input_shape))
    model = onnx_builder.build(net, weights)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(out, reference.evaluate(net, weights, x), rtol=1e-4, atol=1e-5)
    assert not [n for n in model.graph.node if "droppath" in n.name]  # the identity in inference


def test_numpy_model_is_deterministic_per_seed():
    net = cnndsl.parse(SE_NET)
    x = np.random.default_rng(0).standard_normal((8, *net.ir.input_shape)).astype(np.float32)
    first, second = numpy_codegen.build(net), numpy_codegen.build(net)
    first.seed(3)
    second.seed(3)
    np.testing.assert_array_equal(first.forward(x, train=True), second.forward(x, train=True))


def test_torch_matches_the_reference_in_evaluation_and_drops_whole_samples_in_training():
    torch = require("torch")
    net = cnndsl.parse(SE_NET)
    weights = net.init_weights(5)
    x = np.random.default_rng(5).standard_normal((3, *net.ir.input_shape))
    module = net.to_torch(weights).double().eval()
    tensors = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in weights.items()}
    expected = reference.forward(net, tensors, torch.tensor(x))
    torch.testing.assert_close(module(torch.tensor(x)), expected, rtol=1e-10, atol=1e-12)
    # training: a droppath keeps or drops each sample's body whole, scaled by 1/(1 - p)
    droppath = next(m for name, m in module.named_modules() if name.endswith("droppath1"))
    droppath.train()
    torch.manual_seed(0)
    y = droppath(torch.ones(4000, 2, 3, 3, dtype=torch.float64)).reshape(4000, -1)
    assert set(y.unique().tolist()) == {0.0, 2.0} and bool((y == y[:, :1]).all())
    assert abs(float((y[:, 0] > 0).double().mean()) - 0.5) < 0.03
