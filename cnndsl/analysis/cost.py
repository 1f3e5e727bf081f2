"""Parameters, buffers and MACs, and the table of tensors every backend creates.

`tensor_specs` is the contract between backends: the PyTorch `state_dict()`, the NumPy model's
`params`/buffers and the ONNX initializers all use exactly these names, shapes and layouts, so a
safetensors file moves between them unchanged.

MACs follow torchvision's convention: multiply-accumulates of conv and fc layers only.
BatchNorm's gamma and beta are parameters; its running statistics are buffers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import ir
from .shapes import LayerShape, Shapes, active


class TensorSpec(NamedTuple):
    name: str  # "<node name>.<role>", e.g. "basic3.shortcut1.conv1.weight"
    shape: tuple[int, ...]
    role: str  # weight | bias | running_mean | running_var | num_batches_tracked | scale | mean | std
    node: str
    trainable: bool
    dtype: str = "float32"


class Cost(NamedTuple):
    params: int
    buffers: int
    macs: int


ZERO = Cost(0, 0, 0)


def _n(value: int) -> str:
    return f"{value:,}"


def node_tensors(node: ir.Node, shape: LayerShape) -> list[TensorSpec]:
    """The tensors one node owns, in the order PyTorch registers them."""

    def spec(role, dims, trainable=True, dtype="float32"):
        return TensorSpec(f"{node.name}.{role}", tuple(dims), role, node.name, trainable, dtype)

    if isinstance(node, ir.Conv):
        kh, kw = node.kernel
        out = [spec("weight", (shape.out_channels, shape.in_channels // shape.groups, kh, kw))]
        return out + ([spec("bias", (shape.out_channels,))] if node.bias else [])
    if isinstance(node, ir.Linear):
        out = [spec("weight", (node.out_features, math.prod(shape.input)))]
        return out + ([spec("bias", (node.out_features,))] if node.bias else [])
    if isinstance(node, ir.BatchNorm):
        channels = shape.input[0]
        return [spec("weight", (channels,)), spec("bias", (channels,)),
                spec("running_mean", (channels,), False), spec("running_var", (channels,), False),
                spec("num_batches_tracked", (), False, "int64")]
    return []


def tensor_specs(network: ir.Network, shapes: Shapes) -> list[TensorSpec]:
    """Every tensor of the network in registration order, preprocessing buffers first."""
    specs = []
    pre = network.preprocess
    if pre is not None:
        channels = network.input_shape[0]
        specs.append(TensorSpec("preprocess.scale", (), "scale", "preprocess", False))
        if pre.standardize:
            specs.append(TensorSpec("preprocess.mean", (channels,), "mean", "preprocess", False))
            specs.append(TensorSpec("preprocess.std", (channels,), "std", "preprocess", False))
    for node in active(network.body, shapes):
        specs.extend(node_tensors(node, shapes.of(node)))
    return specs


def node_cost(node: ir.Node, shape: LayerShape) -> Cost:
    if isinstance(node, ir.Conv):
        fan_in = shape.in_channels // shape.groups * node.kernel[0] * node.kernel[1]
        c_out, h, w = shape.output
        return Cost((fan_in + node.bias) * c_out, 0, c_out * h * w * fan_in)
    if isinstance(node, ir.Linear):
        fan_in = math.prod(shape.input)
        return Cost((fan_in + node.bias) * node.out_features, 0, fan_in * node.out_features)
    if isinstance(node, ir.BatchNorm):
        return Cost(2 * shape.input[0], 2 * shape.input[0], 0)
    return ZERO


def explain_cost(node: ir.Node, shape: LayerShape) -> tuple[str, ...]:
    """`node_cost`'s figures with the arithmetic that gives them (`analyze --explain`)."""
    cost = node_cost(node, shape)
    bias = " + 1" if getattr(node, "bias", False) else ""
    if isinstance(node, ir.Conv):
        kh, kw = node.kernel
        c_out, h, w = shape.output
        fan = f"{shape.in_channels}/{shape.groups}" if shape.groups > 1 else f"{shape.in_channels}"
        return (f"params: ({fan}*{kh}*{kw}{bias}) * {c_out} = {_n(cost.params)}",
                f"macs: {c_out}*{h}*{w} * ({fan}*{kh}*{kw}) = {_n(cost.macs)}")
    if isinstance(node, ir.Linear):
        shown = "*".join(map(str, shape.input))
        return (f"params: ({shown}{bias}) * {node.out_features} = {_n(cost.params)}",
                f"macs: {shown} * {node.out_features} = {_n(cost.macs)}")
    if isinstance(node, ir.BatchNorm):
        channels = shape.input[0]
        return (f"params: 2 * {channels} = {_n(cost.params)} (gamma, beta)",
                f"buffers: 2 * {channels} = {_n(cost.buffers)} (running mean and variance)")
    return ()
