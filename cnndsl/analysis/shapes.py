"""Shape inference: every node's input and output shape at the network's input size.

The rules are the kinds' own (`Node.infer`, in `cnndsl.kinds`), as is the window arithmetic
(`window()`, and `same_padding()`, TensorFlow's `pad same`); the shape pass, the receptive-field
pass and every backend read the `LayerShape` computed here (resolved pads, channels, groups)
instead of redoing the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .. import ir
from ..errors import CnnDslError, LimitError, Warnings
from ..kinds.base import LayerShape, Shape, Window, effective_kernel, fmt, same_padding, window

__all__ = ["MAX_ELEMENTS", "LayerShape", "Shape", "Shapes", "Window", "active", "active_depths", "too_large",
           "effective_kernel", "fmt", "infer_shapes", "same_padding", "window"]

# The most values one tensor (an activation of one sample, or a layer's parameters) may hold: 2**40 is
# 4 TiB of float32, beyond any machine, and keeps every size exact in the backends' 64-bit integers.
MAX_ELEMENTS = 1 << 40


def too_large(values: int, what: str, node: ir.Node) -> LimitError:
    """The error for a tensor of more than MAX_ELEMENTS values (`what` says which)."""
    return LimitError(f"{what}: {values:,} values, over the limit of {MAX_ELEMENTS:,} (2**40) per tensor", node.span,
                      calls=node.calls, hint="use fewer channels or a smaller input")


class Shapes(dict):
    """node name -> LayerShape, plus the warnings raised while inferring them."""

    def __init__(self):
        super().__init__()
        self.warnings = Warnings()
        self.input: Shape | None = None  # the network input these shapes are at
        self.body: ir.Seq | None = None  # and the body they are of


    def of(self, node: ir.Node) -> LayerShape:
        return self[node.name]

    def infer(self, node: ir.Node, shape: Shape) -> Shape:
        """Apply `node`'s shape rule to `shape`, record the result, return the output shape."""
        known = self.get(node.name)
        if known is not None and known.input == shape:
            return known.output  # inferred as the node was built (names are unique)
        layer = node.infer(shape, self)
        values = math.prod(layer.output)
        if values > MAX_ELEMENTS:
            raise too_large(values, f"the output of {node.name} ({fmt(layer.output)})", node)
        if not node.children():
            values = node.cost(layer).params
            if values > MAX_ELEMENTS:
                raise too_large(values, f"the parameters of {node.name}", node)
        self[node.name] = layer
        return layer.output


def infer_shapes(network: ir.Network, input_shape: Shape | None = None) -> Shapes:
    """Every node's input and output shape at `input_shape` (the network's own by default)."""
    shape = tuple(input_shape or network.input_shape)
    known = network.shapes
    if isinstance(known, Shapes) and known.input == shape and known.body is network.body:
        return known  # computed while expanding
    shapes = Shapes()
    shapes.input, shapes.body = shape, network.body
    try:
        shapes.infer(network.body, shape)
    except CnnDslError as err:
        raise err.with_source(network.source) from None
    return shapes


def active(node: ir.Node, shapes: Shapes) -> list[ir.Node]:
    """Nodes that take part in the computation, in order: a shortcut that does not project is skipped."""
    out: list[ir.Node] = []
    pending = [node]  # a stack, the next node on top: deep networks need no recursion
    while pending:
        node = pending.pop()
        out.append(node)
        pending.extend(reversed(_active_children(node, shapes)))
    return out


def active_depths(node: ir.Node, shapes: Shapes, indents: Callable[[ir.Node], bool] = lambda node: False
                  ) -> list[tuple[ir.Node, int]]:
    """`active`, each node with its depth: how many nodes around it `indents` holds true of."""
    out: list[tuple[ir.Node, int]] = []
    pending = [(node, 0)]
    while pending:
        node, depth = pending.pop()
        out.append((node, depth))
        children = _active_children(node, shapes)
        if children:
            inner = depth + 1 if indents(node) else depth
            pending.extend([(child, inner) for child in reversed(children)])
    return out


def _active_children(node: ir.Node, shapes: Shapes) -> tuple[ir.Node, ...]:
    if type(node) is ir.Residual and node.shortcut is not None and not shapes[node.name].projects:
        return (node.body,)
    return node.children()
