"""Parameters, buffers and MACs, and the table of tensors every backend creates.

The figures are the kinds' own rules (`Node.cost`, `Node.tensors`). `tensor_specs` is the contract
between backends: the PyTorch `state_dict()`, the NumPy model's `params`/buffers and the ONNX
initializers all use exactly these names, shapes and layouts, so a safetensors file moves between
them unchanged; each spec also says how the tensor starts (`cnndsl.weights.init_weights`).

MACs follow torchvision's convention: multiply-accumulates of conv and fc layers only.
BatchNorm's gamma and beta are parameters; its running statistics are buffers.
"""

from __future__ import annotations

from .. import ir
from ..kinds.base import ZERO, Cost, TensorSpec
from .shapes import Shapes, active

__all__ = ["ZERO", "Cost", "TensorSpec", "tensor_specs"]


def tensor_specs(network: ir.Network, shapes: Shapes) -> list[TensorSpec]:
    """Every tensor of the network in registration order, preprocessing buffers first."""
    specs = []
    pre = network.preprocess
    if pre is not None:
        channels = network.input_shape[0]
        scale = pre.scale if pre.scale is not None else 1.0
        specs.append(TensorSpec("preprocess.scale", (), "scale", "preprocess", False, init=float(scale)))
        if pre.standardize:
            mean = tuple(pre.mean) if pre.mean is not None else 0.0
            std = tuple(pre.std) if pre.std is not None else 1.0
            specs.append(TensorSpec("preprocess.mean", (channels,), "mean", "preprocess", False, init=mean))
            specs.append(TensorSpec("preprocess.std", (channels,), "std", "preprocess", False, init=std))
    for node in active(network.body, shapes):
        specs.extend(node.tensors(shapes.of(node)))
    return specs
