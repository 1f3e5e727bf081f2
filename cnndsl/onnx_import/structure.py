"""Pass (c): the layer graph -> a tree of statements, by its series-parallel structure.

Every join (Add, Mul, Concat of data) has a fork: the nearest value that every path from the
network's input to the join passes through (the lowest common ancestor of its inputs in the
dominator tree). Each of its inputs is then a branch from the fork, decomposed the same way,
walking back from the join; a layer that two branches would both need makes the graph not
series-parallel, which the language (whose branches all read one value) cannot write.

Joins become the language's constructs: an add with the identity as one branch is `residual`;
an add of two branches that changes the shape is `residual { longer } shortcut { shorter }`;
other adds `add`, products `mul`, concats `concat` (`concat crop` where branches end in centred
spatial slices).
"""

from __future__ import annotations

from .. import ir
from ..errors import CnnDslError, Source
from .graph import OnnxGraph
from .layers import Branching, Crop, Item, Join, Layer, leaves


def decompose(layers: list[Layer], output: str, graph: OnnxGraph) -> tuple[Item, ...]:
    producer = {layer.output: layer for layer in layers}
    idom: dict[str, str | None] = {graph.input: None}
    depth: dict[str, int] = {graph.input: 0}

    def lca(a: str, b: str) -> str:
        while a != b:
            if depth[a] < depth[b]:
                a, b = b, a
            a = idom[a]  # type: ignore[assignment]
        return a

    def fork_of(layer: Layer) -> str:
        fork = layer.inputs[0]
        for value in layer.inputs[1:]:
            fork = lca(fork, value)
        return fork

    for layer in layers:  # topological order
        missing = [v for v in layer.inputs if v not in depth]
        if missing:
            raise graph.error(layer.origin, f"it reads {missing[0]}, which does not come from the network's input")
        parent = fork_of(layer) if len(layer.inputs) > 1 else layer.inputs[0]
        idom[layer.output] = parent
        depth[layer.output] = depth[parent] + 1

    used: set[int] = set()

    def build(source: str, value: str) -> list[Item]:
        items: list[Item] = []
        while value != source:
            layer = producer.get(value)
            if layer is None:
                raise CnnDslError(f"the value {value} is read before anything computes it",
                                  source=Source("", graph.path),
                                  hint="check the model with onnx.checker.check_model: its nodes must be in order")
            if id(layer) in used:
                raise graph.error(layer.origin, "its output is read by more than one branch of a later join, so the "
                                                "graph is not series-parallel; cnndsl's branches all start from one "
                                                "value and join once (residual, concat, add, mul)")
            used.add(id(layer))
            if not isinstance(layer.node, Join):
                items.append(layer)
                value = layer.inputs[0]
                continue
            fork = fork_of(layer)
            branches = [tuple(build(fork, v)) for v in layer.inputs]
            items.append(_construct(layer, branches, graph, graph.shape(fork)))
            value = fork
        items.reverse()
        return items

    return simplify(tuple(build(graph.input, output)))


def simplify(items: tuple[Item, ...]) -> tuple[Item, ...]:
    """A `flatten` right before an `fc` goes: `fc` flattens a CxHxW input itself (`pool avg global; fc
    1000`, as people write it), with the same weights, parameters and MACs."""
    out: list[Item] = []
    for index, item in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        if isinstance(item, Layer) and isinstance(item.node, ir.Flatten) and isinstance(following, Layer) and \
                isinstance(following.node, ir.Linear):
            continue
        if isinstance(item, Branching):
            item = Branching(item.kind, tuple(simplify(b) for b in item.branches),
                             simplify(item.shortcut) if item.shortcut is not None else None, item.always,
                             item.in_shape, item.out_shape)
        out.append(item)
    return tuple(out)


def _construct(layer: Layer, branches: list[tuple[Item, ...]], graph: OnnxGraph, shape) -> Branching:
    kind = layer.node.kind  # type: ignore[union-attr]
    out = layer.out_shape
    if kind == "add" and len(branches) == 2:
        empty = [i for i, b in enumerate(branches) if not b]
        if empty and len(empty) == 1:
            return Branching("residual", (branches[1 - empty[0]],), None, False, shape, out)
        if not empty and tuple(out) != tuple(shape):
            size = [sum(1 for _ in leaves(b)) for b in branches]
            body = 0 if size[0] >= size[1] else 1
            return Branching("residual", (branches[body],), branches[1 - body], False, shape, out)
    if kind == "concat":
        crops = [b[-1].node if b and isinstance(b[-1], Layer) and isinstance(b[-1].node, Crop) else None
                 for b in branches]
        if any(crops):
            height, width = out[1], out[2]
            for branch, crop in zip(branches, crops, strict=True):
                h, w = branch[-1].in_shape[1:] if crop else (branch[-1].out_shape[1:] if branch else shape[1:])
                expected = ((h - height) // 2, (h - height) - (h - height) // 2,
                            (w - width) // 2, (w - width) - (w - width) // 2)
                got = (crop.top, crop.bottom, crop.left, crop.right) if crop else (0, 0, 0, 0)
                if got != expected:
                    raise graph.error(branch[-1].origin if branch else layer.origin,
                                      "a crop that is not the centre of the branch (cnndsl's 'concat crop' keeps "
                                      "the centre, (H - h) // 2 rows from the top)")
            branches = [b[:-1] if crop else b for b, crop in zip(branches, crops, strict=True)]
            return Branching("concat crop", tuple(branches), None, False, shape, out)
    for branch in branches:
        for item in branch:
            if isinstance(item, Layer) and isinstance(item.node, Crop):
                raise graph.error(item.origin, "a crop of height and width that does not end a concat's branch")
    return Branching(kind, tuple(branches), None, False, shape, out)
