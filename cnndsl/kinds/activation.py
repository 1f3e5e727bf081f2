"""Activations: one table (`ACTIVATIONS`) that the grammar's keywords, the analysis and every
backend read, and the one IR kind, `Activation`, whose `fn` names a row of it.

Each row says how the function is written in each backend: the `torch.nn` module, the NumPy
runtime's kernels (`cnndsl.runtime.kernels.<kernel>_forward` / `_backward`; the runtime makes a
layer class of each row), and the ONNX nodes, as a recipe over a small graph writer `g`
(`g("Op", *inputs, **attributes)` appends a node and returns its output; `g.const(v)`, `g.opset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .base import Pointwise, node, number_text

if TYPE_CHECKING:
    from ..expand import Options


class ActivationFn(NamedTuple):
    name: str  # the statement (`relu`)
    formula: str  # what it computes, for the docs and `--explain`
    torch: str  # the torch.nn module
    numpy: str  # the NumPy runtime's layer class
    kernel: str  # the NumPy runtime's kernels: kernels.<kernel>_forward / _backward
    onnx: Callable[..., Any]  # (g, x, argument) -> the ONNX value of the result
    default: float | None = None  # the default of its one argument, for those that take one
    inplace: bool = False  # torch may run it in place: its backward needs only its own output


def _gelu_onnx(g, x, _):
    if g.opset >= 20:
        return g("Gelu", x, approximate="none")
    # exact gelu below opset 20: x * 0.5 * (1 + erf(x / sqrt(2)))
    erf = g("Erf", g("Div", x, g.const(math.sqrt(2.0))))
    return g("Mul", g("Mul", x, g.const(0.5)), g("Add", erf, g.const(1.0)))


ACTIVATIONS: dict[str, ActivationFn] = {fn.name: fn for fn in (
    ActivationFn("relu", "max(x, 0)", "nn.ReLU", "ReLU", "relu", lambda g, x, a: g("Relu", x), inplace=True),
    ActivationFn("relu6", "min(max(x, 0), 6)", "nn.ReLU6", "ReLU6", "relu6",
                 lambda g, x, a: g("Clip", x, g.const(0.0), g.const(6.0)), inplace=True),
    ActivationFn("leaky", "max(x, 0) + slope * min(x, 0)", "nn.LeakyReLU", "LeakyReLU", "leaky_relu",
                 lambda g, x, a: g("LeakyRelu", x, alpha=float(a)), default=0.01),
    ActivationFn("elu", "x if x > 0 else alpha * (exp(x) - 1)", "nn.ELU", "ELU", "elu",
                 lambda g, x, a: g("Elu", x, alpha=float(a)), default=1.0),
    ActivationFn("sigmoid", "1 / (1 + exp(-x))", "nn.Sigmoid", "Sigmoid", "sigmoid",
                 lambda g, x, a: g("Sigmoid", x)),
    ActivationFn("tanh", "tanh(x)", "nn.Tanh", "Tanh", "tanh", lambda g, x, a: g("Tanh", x)),
    ActivationFn("gelu", "x * Phi(x), exact (erf)", "nn.GELU", "GELU", "gelu", _gelu_onnx),
    ActivationFn("silu", "x * sigmoid(x)", "nn.SiLU", "SiLU", "silu", lambda g, x, a: g("Mul", x, g("Sigmoid", x))),
    # ONNX HardSwish is x * max(0, min(1, x/6 + 1/2)) = x * relu6(x + 3) / 6
    ActivationFn("hardswish", "x * relu6(x + 3) / 6", "nn.Hardswish", "Hardswish", "hardswish",
                 lambda g, x, a: g("HardSwish", x)),
    # ONNX HardSigmoid is max(0, min(1, alpha * x + beta)); alpha 1/6, beta 1/2 is relu6(x + 3) / 6
    ActivationFn("hardsigmoid", "relu6(x + 3) / 6", "nn.Hardsigmoid", "Hardsigmoid", "hardsigmoid",
                 lambda g, x, a: g("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5)),
    ActivationFn("softmax", "softmax over the channels", "nn.Softmax", "Softmax", "softmax",
                 lambda g, x, a: g("Softmax", x, axis=1)),
)}


@node
class Activation(Pointwise):
    """`relu`, `leaky 0.1`, ...: an elementwise function, a row of `ACTIVATIONS`."""

    key = "activation"
    statement = "act"

    fn: str  # a key of ACTIVATIONS
    alpha: float | None = None  # its argument (leaky slope, elu alpha), where it takes one

    @property
    def kind(self) -> str:
        return self.fn

    @property
    def function(self) -> ActivationFn:
        return ACTIVATIONS[self.fn]

    @property
    def argument(self) -> float | None:
        """The argument in effect: the one written, else the function's default."""
        return self.alpha if self.alpha is not None else self.function.default

    @classmethod
    def build(cls, options: Options) -> Activation:
        fn = options.word("kind")
        alpha = ACTIVATIONS[fn].default
        if "alpha" in options:
            if alpha is None:
                takers = " and ".join(f"'{f.name}'" for f in ACTIVATIONS.values() if f.default is not None)
                raise options.error(f"{fn} takes no parameter", "alpha",
                                    hint=f"write '{fn}' alone; {takers} take a slope/alpha")
            alpha = options.number("alpha", f"the {fn} parameter", 0.0, 100.0)
        return cls(name=options.name(fn), fn=fn, alpha=alpha, **options.common)

    def text(self) -> str:
        default = self.function.default
        if self.alpha is None or self.alpha == default:
            return self.fn
        return f"{self.fn} {number_text(self.alpha)}"
