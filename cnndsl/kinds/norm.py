"""Normalisation kinds: `bn`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Cost, LayerShape, Pointwise, TensorSpec, n, node, number_text

if TYPE_CHECKING:
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
