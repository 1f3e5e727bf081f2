"""Receptive field, jump (effective stride) and centre offset of the first output, per axis.

The forward recursion from Distill's "Computing Receptive Fields of CNNs" (`Field.through`); each
kind's rule (`Node.field`) says how it changes the field. Across branches the field is the largest
per axis, and every branch must have the same jump and start, else the outputs are misaligned and
adding or concatenating them mixes different places of the image (an error). A flatten, a global
pool and an `fc` on a CxHxW input see their whole input: a window of HxW.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import ir
from ..errors import CnnDslError
from ..kinds.base import INPUT_FIELD, Field
from .shapes import Shapes

__all__ = ["Field", "FieldPass", "INPUT_FIELD", "receptive_fields"]


class FieldPass:
    """The pass the kinds' field rules recurse through: records every node's output field, and
    the field it starts from (what `analyze --explain` shows as "rf: before -> after")."""

    def __init__(self, shapes: Shapes, inputs: dict[str, Field] | None = None):
        self.shapes = shapes
        self.fields: dict[str, Field] = {}
        self.inputs = inputs  # recorded only where asked for: `explain` wants them, `check` does not
        # After a squeeze-and-excitation gate or group norm's statistics, every output depends on the
        # whole input; the field stays what the spatial path sees. A kind's rule sets the flag, and
        # `global_context` collects the nodes whose output comes after such a layer.
        self.context = False
        self.global_context: set[str] = set()

    def field(self, node: ir.Node, before: Field) -> Field:
        if self.inputs is not None:
            self.inputs[node.name] = before
        out = self.fields[node.name] = node.field(before, self)
        if self.context:
            self.global_context.add(node.name)
        return out

    def fork(self, branches: Iterable[ir.Node], before: Field) -> list[Field]:
        """Each branch's field from `before`, each starting with the context of the fork; after them
        the context is global if any branch made it so."""
        start = after = self.context
        out = []
        for branch in branches:
            self.context = start
            out.append(self.field(branch, before))
            after = after or self.context
        self.context = after
        return out


def receptive_fields(network: ir.Network, shapes: Shapes, inputs: dict[str, Field] | None = None,
                     global_context: set[str] | None = None) -> dict[str, Field]:
    """node name -> the Field of its output; with `inputs`, also fill it with the Field each node
    starts from, and with `global_context` the names of the nodes after a gate or group norm."""
    fields = FieldPass(shapes, inputs)
    try:
        fields.field(network.body, INPUT_FIELD)
    except CnnDslError as err:
        raise err.with_source(network.source) from None
    if global_context is not None:
        global_context.update(fields.global_context)
    return fields.fields
