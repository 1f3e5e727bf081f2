"""Receptive field, jump (effective stride) and centre offset of the first output, per axis.

The forward recursion from Distill's "Computing Receptive Fields of CNNs": through a window of
effective size k, stride s and leading padding p,

    r += (k - 1) * j        start += ((k - 1) / 2 - p) * j        j *= s

`start` is the input coordinate of the centre of the first output. Across branches the field is
the largest per axis, and every branch must have the same jump and start, else the outputs are
misaligned and adding or concatenating them mixes different places of the image (an error).
A flatten, a global pool and an `fc` on a CxHxW input see their whole input: a window of HxW.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import ir
from ..errors import CnnDslError, ShapeError
from .shapes import Shapes


class Field(NamedTuple):
    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def through(self, kernel: tuple[int, int], stride: tuple[int, int], pad_begin: tuple[int, int]) -> Field:
        (r_h, r_w), (j_h, j_w), (s_h, s_w) = self
        (k_h, k_w), (p_h, p_w) = kernel, pad_begin
        return Field((r_h + (k_h - 1) * j_h, r_w + (k_w - 1) * j_w),
                     (j_h * stride[0], j_w * stride[1]),
                     (s_h + ((k_h - 1) / 2 - p_h) * j_h, s_w + ((k_w - 1) / 2 - p_w) * j_w))


INPUT_FIELD = Field((1, 1), (1, 1), (0.0, 0.0))


def receptive_fields(network: ir.Network, shapes: Shapes, inputs: dict[str, Field] | None = None
                     ) -> dict[str, Field]:
    """node name -> the Field of its output; with `inputs`, also fill it with the Field each node
    starts from (what `analyze --explain` shows as "rf: before -> after")."""
    fields: dict[str, Field] = {}
    try:
        _field(network.body, INPUT_FIELD, shapes, fields, inputs if inputs is not None else {})
    except CnnDslError as err:
        raise err.with_source(network.source) from None
    return fields


def _field(node: ir.Node, field: Field, shapes: Shapes, fields: dict[str, Field], inputs: dict[str, Field]
           ) -> Field:
    inputs[node.name] = field
    out = _through(node, field, shapes, fields, inputs)
    fields[node.name] = out
    return out


def _whole_input(field: Field, shape) -> Field:
    if len(shape) != 3:
        return field
    return field.through((shape[1], shape[2]), (1, 1), (0, 0))


def _through(node: ir.Node, field: Field, shapes: Shapes, fields: dict[str, Field], inputs: dict[str, Field]
             ) -> Field:
    return _RULES.get(type(node), _pointwise)(node, field, shapes, fields, inputs)


def _seq(node: ir.Seq, field: Field, shapes: Shapes, fields: dict[str, Field], inputs: dict[str, Field]) -> Field:
    for item in node.items:
        field = _field(item, field, shapes, fields, inputs)
    return field


def _window(node: ir.Conv | ir.Pool, field: Field, shapes: Shapes, fields, inputs) -> Field:
    h, w = shapes.of(node).windows
    return field.through((h.kernel, w.kernel), (h.stride, w.stride), (h.pad_begin, w.pad_begin))


def _whole(node: ir.Node, field: Field, shapes: Shapes, fields, inputs) -> Field:
    return _whole_input(field, shapes.of(node).input)


def _residual(node: ir.Residual, field: Field, shapes: Shapes, fields: dict[str, Field], inputs: dict[str, Field]
              ) -> Field:
    paths = [_field(node.body, field, shapes, fields, inputs)]
    if shapes.of(node).projects:
        paths.append(_field(node.shortcut, field, shapes, fields, inputs))
    else:
        paths.append(field)
    return _merge(node, paths)


def _branches(node: ir.Concat | ir.Add, field: Field, shapes: Shapes, fields: dict[str, Field],
              inputs: dict[str, Field]) -> Field:
    return _merge(node, [_field(b, field, shapes, fields, inputs) for b in node.branches])


def _pointwise(node: ir.Node, field: Field, shapes: Shapes, fields, inputs) -> Field:
    return field


def _merge(node: ir.Node, paths: list[Field]) -> Field:
    jumps = {p.jump for p in paths}
    starts = {p.start for p in paths}
    if len(jumps) > 1 or len(starts) > 1:
        listing = [f"branch {i}: jump {p.jump[0]}x{p.jump[1]}, first output centred at "
                   f"({p.start[0]:g}, {p.start[1]:g})" for i, p in enumerate(paths, 1)]
        raise ShapeError(f"the branches of this {node.kind} are misaligned: their outputs are centred on "
                         f"different input pixels", node.span, notes=listing, calls=node.calls,
                         hint="give every branch the same total stride and symmetric padding "
                              "(pad (k-1)/2 for a kxk kernel)")
    size = tuple(max(p.size[axis] for p in paths) for axis in range(2))
    return Field(size, paths[0].jump, paths[0].start)


# How each node kind changes the field; the rest (activations, batch norm, dropout) keep it.
_RULES = {
    ir.Seq: _seq,
    ir.Conv: _window,
    ir.Pool: _window,
    ir.GlobalPool: _whole,
    ir.Flatten: _whole,
    ir.Linear: _whole,
    ir.Residual: _residual,
    ir.Concat: _branches,
    ir.Add: _branches,
}
