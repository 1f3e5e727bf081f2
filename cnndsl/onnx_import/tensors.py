"""Pass (f): the recognised weights under cnndsl's tensor names.

The names come from cnndsl itself: the printed program is parsed, and its layers, walked in
statement order (a residual's shortcut only where the shape pass says it is built), are paired
with the recognised layers in the same order. Each pair must print the same statement, so a
mistake in folding or printing is caught here rather than in a wrong weight file; each layer's
`tensors()` then names and shapes its tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import ir
from ..weights import check_weights
from .layers import Item, Layer, leaves


def built_leaves(node: ir.Node, shapes) -> Iterator[ir.Node]:
    """The layers the network builds, in statement order (an unused shortcut builds nothing)."""
    if isinstance(node, ir.Residual):
        yield from built_leaves(node.body, shapes)
        if node.shortcut is not None and shapes.of(node).projects:
            yield from built_leaves(node.shortcut, shapes)
        return
    children = node.children()
    if not children and not isinstance(node, ir.Seq):
        yield node
        return
    for child in children:
        yield from built_leaves(child, shapes)


def name_weights(net, body: tuple[Item, ...], preprocess: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = net.shapes
    mine: list[Layer] = list(leaves(body))
    theirs = list(built_leaves(net.ir.body, shapes))
    if len(mine) != len(theirs):
        raise RuntimeError(f"the printed program builds {len(theirs)} layers, the model has {len(mine)}")
    tensors: dict[str, np.ndarray] = {}
    for layer, node in zip(mine, theirs, strict=True):
        if type(layer.node) is not type(node) or layer.node.text() != node.text():
            raise RuntimeError(f"the printed program has '{node.text()}' where the model has '{layer.node.text()}'")
        for spec in node.tensors(shapes.of(node)):
            if spec.role == "num_batches_tracked":
                tensors[spec.name] = np.zeros((), np.int64)
                continue
            array = np.asarray(layer.weights[spec.role])
            tensors[spec.name] = np.ascontiguousarray(array.reshape(spec.shape).astype(spec.dtype, copy=False))
    for spec in net.tensor_specs():
        if spec.node == "preprocess":
            tensors[spec.name] = np.asarray(preprocess[spec.role], np.float32).reshape(spec.shape)
    ordered = {spec.name: tensors[spec.name] for spec in net.tensor_specs()}
    return check_weights(net, ordered, origin="the imported weights")
