"""Kinds that see their whole input or pass it on: `fc`, `flatten`, `dropout`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .base import Cost, Field, LayerShape, Node, Pointwise, Shape, TensorSpec, n, node, number_text

if TYPE_CHECKING:
    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options


@node
class Linear(Node):
    """`fc N`: on a CxHxW input, the HxW convolution to N flattened (C*H*W inputs)."""

    key = "fc"
    statement = "fc"

    out_features: int
    bias: bool = True

    @classmethod
    def build(cls, options: Options) -> Linear:
        return cls(name=options.name("fc"), out_features=options.integer("out", "an output size"),
                   bias="nobias" not in options, **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        return LayerShape(shape, (self.out_features,))

    def field(self, before: Field, fields: FieldPass) -> Field:
        return before.whole(fields.shapes.of(self).input)

    def cost(self, shape: LayerShape) -> Cost:
        fan_in = math.prod(shape.input)
        return Cost((fan_in + self.bias) * self.out_features, 0, fan_in * self.out_features)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        fan_in = math.prod(shape.input)
        return self.weight_and_bias((self.out_features, fan_in), fan_in, self.out_features, self.bias)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        cost = self.cost(shape)
        shown = "*".join(map(str, shape.input))
        bias = " + 1" if self.bias else ""
        return (f"params: ({shown}{bias}) * {self.out_features} = {n(cost.params)}",
                f"macs: {shown} * {self.out_features} = {n(cost.macs)}")

    def text(self) -> str:
        return f"fc {self.out_features}" + ("" if self.bias else " nobias")


@node
class Flatten(Node):
    """`flatten`: CxHxW -> C*H*W."""

    key = "flatten"
    statement = "flatten"

    @classmethod
    def build(cls, options: Options) -> Flatten:
        return cls(name=options.name("flatten"), **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        return LayerShape(shape, (math.prod(shape),))

    def field(self, before: Field, fields: FieldPass) -> Field:
        return before.whole(fields.shapes.of(self).input)

    def text(self) -> str:
        return "flatten"


@node
class Dropout(Pointwise):
    """`dropout P`."""

    key = "dropout"
    statement = "dropout"

    p: float = 0.5

    @classmethod
    def build(cls, options: Options) -> Dropout:
        return cls(name=options.name("dropout"), p=options.number("p", "a dropout probability", 0.0, 0.999, 0.5),
                   **options.common)

    def text(self) -> str:
        return f"dropout {number_text(self.p)}"


@node
class DropPath(Pointwise):
    """`droppath P`: stochastic depth. In training it drops the whole residual body per sample with
    probability P and scales the kept ones by 1/(1 - P); in evaluation it is the identity. It is the
    last statement of a residual body (the expander checks where it stands)."""

    key = "droppath"
    statement = "droppath"

    p: float = 0.0

    @classmethod
    def build(cls, options: Options) -> DropPath:
        return cls(name=options.name("droppath"), p=options.number("p", "a drop-path probability", 0.0, 0.999),
                   **options.common)

    def explain(self, shape) -> tuple[str, ...]:
        return (f"training: each sample's residual body is dropped with probability {number_text(self.p)} and "
                f"kept ones are scaled by 1/(1 - {number_text(self.p)}); evaluation: identity; no parameters",)

    def text(self) -> str:
        return f"droppath {number_text(self.p)}"
