"""The shared reference (tests/reference.py) itself: a rule for every IR node class, and its
hand-written pools, activations and batch norm agree with PyTorch's own where PyTorch has them."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from extras import needs, require

import cnndsl
from cnndsl import ir


def _node_classes(cls: type) -> set[type]:
    """The classes of the nodes an IR can hold: the subclasses of `cls` that have none themselves."""
    subs = cls.__subclasses__()
    return set().union(*map(_node_classes, subs)) if subs else {cls}


def test_reference_has_a_rule_per_kind():
    """Every IR node class the compiler can produce has its rule; a new kind is added there once."""
    missing = sorted(cls.__name__ for cls in _node_classes(ir.Node) if cls not in reference.RULES)
    assert not missing, f"tests/reference.py has no rule for {', '.join(missing)}: add one to RULES"
    missing = sorted(set(ir.ACTIVATIONS) - set(reference.ACTIVATIONS))
    assert not missing, f"tests/reference.py has no activation {', '.join(missing)}: add it to ACTIVATIONS"


def _net(body: str, shape: str) -> cnndsl.Net:
    return cnndsl.parse(f"network r\ninput {shape}\n{body}\n")


CEIL_POOLS = [  # size, kernel, stride, pad: windows running past the input, or starting in the padding
    (5, 2, 2, 1), (6, 3, 2, 1), (7, 3, 2, 1), (8, 3, 3, 1), (5, 2, 2, 0), (9, 3, 2, 0), (10, 4, 3, 2), (7, 3, 3, 0),
]


@needs("torch")
@pytest.mark.parametrize("ceil", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("size", "kernel", "stride", "pad"), CEIL_POOLS)
def test_pools_cut_the_windows_pytorch_does(size, kernel, stride, pad, mode, ceil):
    torch = require("torch")
    net = _net(f"pool {mode} {kernel}x{kernel}/{stride} pad{pad}{' ceil' if ceil else ''}", f"2x{size}x{size + 1}")
    x = torch.randn(3, 2, size, size + 1, dtype=torch.float64, requires_grad=True)
    got = reference.forward(net, {}, x)
    pool = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    want = pool(x, kernel, stride, pad, ceil_mode=ceil)
    assert tuple(got.shape[1:]) == net.analyze().output == tuple(want.shape[1:])
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    (grad,) = torch.autograd.grad(got, x, dy)
    (expected,) = torch.autograd.grad(want, x, dy)
    torch.testing.assert_close(grad, expected)


@needs("torch")
def test_max_pool_ties_give_the_gradient_to_the_first_cell():
    torch = require("torch")
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    for body in ("pool max 3x3/2 pad1", "pool max global"):
        (grad,) = torch.autograd.grad(reference.forward(_net(body, "1x4x4"), {}, x).sum(), x)
        (expected,) = torch.autograd.grad(torch.nn.functional.max_pool2d(x, 3 if "3x3" in body else 4,
                                                                          2 if "3x3" in body else 4,
                                                                          1 if "3x3" in body else 0).sum(), x)
        torch.testing.assert_close(grad, expected)


@needs("torch")
@pytest.mark.parametrize("act", [*ir.ACTIVATIONS, "leaky .2", "elu .5"])
def test_activations_are_pytorchs(act):
    torch = require("torch")
    F = torch.nn.functional
    fn, _, arg = act.partition(" ")
    alpha = float(arg) if arg else {"leaky": 0.01, "elu": 1.0}.get(fn)
    theirs = {"relu": F.relu, "relu6": F.relu6, "leaky": lambda v: F.leaky_relu(v, alpha),
              "elu": lambda v: F.elu(v, alpha), "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu,
              "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
              "softmax": lambda v: F.softmax(v, dim=1)}[fn]  # a new activation: add PyTorch's here too
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 5).requires_grad_()
    got, want = reference.forward(_net(act, "3x5x5"), {}, x), theirs(x)
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(want, x, dy)[0])


@needs("torch")
@pytest.mark.parametrize("shape", ["3x4x5", "3"], ids=["BatchNorm2d", "BatchNorm1d"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_norm_is_pytorchs(shape, train):
    torch = require("torch")
    net = _net("bn eps 1e-3 momentum .2", shape)
    rng = np.random.default_rng(0)
    tensors = {"bn1.weight": rng.standard_normal(3), "bn1.bias": rng.standard_normal(3),
               "bn1.running_mean": rng.standard_normal(3), "bn1.running_var": rng.uniform(0.5, 2, 3),
               "bn1.num_batches_tracked": np.zeros((), np.int64)}
    ours = {k: torch.tensor(v) for k, v in tensors.items()}
    theirs = {k: torch.tensor(v) for k, v in tensors.items()}
    x = torch.randn(6, *net.ir.input_shape, dtype=torch.float64)
    got = reference.forward(net, ours, x, train=train)
    want = torch.nn.functional.batch_norm(x, theirs["bn1.running_mean"], theirs["bn1.running_var"],
                                          theirs["bn1.weight"], theirs["bn1.bias"], train, 0.2, 1e-3)
    torch.testing.assert_close(got, want)
    for name in ("bn1.running_mean", "bn1.running_var"):
        torch.testing.assert_close(ours[name], theirs[name], msg=name)
    assert int(ours["bn1.num_batches_tracked"]) == int(train)


def test_windows_along_follows_the_documented_ceil_rule():
    # 5 rows + pad 1 each side, kernel 2, stride 2: ceil would give 4 windows, the 4th starting in the padding
    assert reference.windows_along(7, 1, 2, 2, ceil=True) == 3
    assert reference.windows_along(7, 1, 2, 2, ceil=False) == 3
    assert reference.windows_along(8, 1, 3, 2, ceil=True) == 4  # the last one runs past input + padding
    assert reference.windows_along(8, 1, 3, 2, ceil=False) == 3
