"""Normalisation kinds: `bn`, `ln`, `gn`, and `layerscale` (ConvNeXt's per-channel factor)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Cost, Field, LayerShape, Pointwise, Shape, TensorSpec, fmt, n, node, number_text

if TYPE_CHECKING:
    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options


@node
class BatchNorm(Pointwise):
    """`bn [eps E] [momentum M]`: gamma and beta are parameters, the running statistics buffers."""

    key = "bn"
    statement = "bn"

    eps: float = 1e-5
    momentum: float = 0.1  # PyTorch convention: running = (1 - momentum) * running + momentum * batch

    @classmethod
    def build(cls, options: Options) -> BatchNorm:
        return cls(name=options.name("bn"), eps=options.number("eps", "eps", 1e-12, 1.0, 1e-5),
                   momentum=options.number("momentum", "momentum", 0.0, 1.0, 0.1), **options.common)

    def cost(self, shape: LayerShape) -> Cost:
        return Cost(2 * shape.input[0], 2 * shape.input[0], 0)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        channels = (shape.input[0],)
        return (self.spec("weight", channels, 1.0), self.spec("bias", channels, 0.0),
                self.spec("running_mean", channels, 0.0, False), self.spec("running_var", channels, 1.0, False),
                self.spec("num_batches_tracked", (), 0.0, False, "int64"))

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        cost, channels = self.cost(shape), shape.input[0]
        return (f"params: 2 * {channels} = {n(cost.params)} (gamma, beta)",
                f"buffers: 2 * {channels} = {n(cost.buffers)} (running mean and variance)")

    def text(self) -> str:
        words = ["bn"]
        if self.eps != 1e-5:
            words.append(f"eps {number_text(self.eps)}")
        if self.momentum != 0.1:
            words.append(f"momentum {number_text(self.momentum)}")
        return " ".join(words)


def _zero_macs() -> str:
    return "macs: 0 (torchvision's convention counts conv and fc only)"


@node
class AffineNorm(Pointwise):
    """A norm of the sample's own statistics with a weight (starting at 1) and a bias (at 0) per
    channel: 2·C parameters, no buffers, no MACs (`ln`, `gn`)."""

    def cost(self, shape: LayerShape) -> Cost:
        return Cost(2 * shape.input[0], 0, 0)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        channels = (shape.input[0],)
        return (self.spec("weight", channels, 1.0), self.spec("bias", channels, 0.0))


@node
class LayerNorm(AffineNorm):
    """`ln [eps E]`: layer norm over the channels at each position (ConvNeXt's LayerNorm2d: each pixel's
    C values normalised, then a per-channel weight and bias); over the features of a vector
    (`nn.LayerNorm`). The statistics are per sample and position, so the field is unchanged."""

    key = "ln"
    statement = "ln"

    eps: float = 1e-6  # ConvNeXt's (nn.LayerNorm's own default is 1e-5)

    @classmethod
    def build(cls, options: Options) -> LayerNorm:
        return cls(name=options.name("ln"), eps=options.number("eps", "eps", 1e-12, 1.0, 1e-6), **options.common)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        over = "the channels at each position" if len(shape.input) == 3 else "the features"
        return (f"normalised over {over}: {shape.input[0]} values, eps {number_text(self.eps)}",
                f"params: 2 * {shape.input[0]} = {n(self.cost(shape).params)} (weight, bias)", _zero_macs())

    def text(self) -> str:
        return "ln" if self.eps == 1e-6 else f"ln eps {number_text(self.eps)}"


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


@node
class GroupNorm(AffineNorm):
    """`gn G [eps E]`: PyTorch's GroupNorm(G, C): each sample's channels in G groups of C/G, each group
    normalised over its channels and positions, then a per-channel weight and bias.

    Its statistics span the whole image, so every later output depends on the whole input: `field`
    sets the pass's global context; the spatial figures stay those of a pointwise layer."""

    key = "gn"
    statement = "gn"

    def field(self, before: Field, fields: FieldPass) -> Field:
        fields.context = True
        return before

    groups: int
    eps: float = 1e-5  # PyTorch's

    @classmethod
    def build(cls, options: Options) -> GroupNorm:
        return cls(name=options.name("gn"), groups=options.integer("groups", "a group count"),
                   eps=options.number("eps", "eps", 1e-12, 1.0, 1e-5), **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        channels = shape[0]
        if channels % self.groups:
            divisors = _divisors(channels)
            below = max(d for d in divisors if d < self.groups) if self.groups > 1 else 1
            above = [d for d in divisors if d > self.groups]
            near = f"'gn {below}'" + (f" or 'gn {above[0]}'" if above else "")
            listed = ", ".join(map(str, divisors)) if len(divisors) <= 16 else None
            raise self.error(f"gn {self.groups} does not divide the {channels} channels of its input into groups",
                             notes=[f"input {fmt(shape)}"],
                             hint=f"use a group count that divides {channels}, e.g. {near}"
                                  + (f" (the divisors of {channels}: {listed})" if listed else ""))
        return LayerShape(shape, shape, in_channels=channels, out_channels=channels, groups=self.groups)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        channels = shape.input[0]
        spatial = "*".join(map(str, shape.input[1:]))
        group = f"{channels // self.groups}" + (f"*{spatial}" if spatial else "")
        return (f"{self.groups} groups of {channels // self.groups} channels, each normalised over {group} values, "
                f"eps {number_text(self.eps)}",
                f"params: 2 * {channels} = {n(self.cost(shape).params)} (weight, bias)", _zero_macs())

    def text(self) -> str:
        return f"gn {self.groups}" + ("" if self.eps == 1e-5 else f" eps {number_text(self.eps)}")


@node
class LayerScale(Pointwise):
    """`layerscale INIT`: a learnable factor per channel, initialised to INIT (ConvNeXt's `layer_scale`).

    Its tensor is `<name>.layer_scale`, what torchvision's ConvNeXt state_dict calls it, with its
    shape: (C, 1, 1) on a CxHxW input, so it broadcasts over H and W; (C,) on a vector."""

    key = "layerscale"
    statement = "layerscale"

    init: float

    @classmethod
    def build(cls, options: Options) -> LayerScale:
        return cls(name=options.name("layerscale"),
                   init=options.number("init", "a layer-scale initial value", -1e6, 1e6), **options.common)

    def cost(self, shape: LayerShape) -> Cost:
        return Cost(shape.input[0], 0, 0)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        dims = (shape.input[0], 1, 1) if len(shape.input) == 3 else (shape.input[0],)
        return (self.spec("layer_scale", dims, float(self.init)),)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        return (f"params: {shape.input[0]} (one factor per channel, starting at {number_text(self.init)})",
                _zero_macs())

    def text(self) -> str:
        return f"layerscale {number_text(self.init)}"
