"""Structure kinds: a sequence of statements (`Seq`: the network's body, a block call, a branch),
`residual`, and the joins `concat` and `add`. Their rules recurse through the passes they are
handed (`shapes.infer`, `fields.field`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .base import Field, LayerShape, Node, Shape, fmt, node, number_text, rational_text

if TYPE_CHECKING:
    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes


@node
class Seq(Node):
    """Statements in order. A block call (`block` set) or a branch body; the top-level body."""

    key = "seq"

    items: tuple[Node, ...]
    block: str | None = None
    args: tuple[tuple[str, int | float], ...] = ()

    def children(self) -> tuple[Node, ...]:
        return self.items

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        out = shape
        for item in self.items:
            out = shapes.infer(item, out)
        return LayerShape(shape, out)

    def field(self, before: Field, fields: FieldPass) -> Field:
        for item in self.items:
            before = fields.field(item, before)
        return before

    def text(self) -> str:
        """`basic(128, s=2)` for a block call, as the call binds its parameters; else what the
        sequence is (`branch`, `shortcut`, `body`, `network`)."""
        if self.block is not None:
            return f"{self.block}({', '.join(f'{k}={number_text(v)}' for k, v in self.args)})"
        return re.sub(r"\d+$", "", self.name.rsplit(".", 1)[-1]) or "network"


def _merge(node: Node, paths: list[Field]) -> Field:
    """Branches that join must see the same places: the same jump and first centre per axis, compared
    exactly (they are ints and Fractions)."""
    jumps = {p.jump for p in paths}
    starts = {p.start for p in paths}
    if len(jumps) > 1 or len(starts) > 1:
        listing = [f"branch {i}: jump {rational_text(p.jump[0])}x{rational_text(p.jump[1])}, first output "
                   f"centred at ({rational_text(p.start[0])}, {rational_text(p.start[1])})"
                   for i, p in enumerate(paths, 1)]
        raise node.error(f"the branches of this {node.kind} are misaligned: their outputs are centred on "
                         f"different input pixels", notes=listing,
                         hint="give every branch the same total stride and symmetric padding "
                              "(pad (k-1)/2 for a kxk kernel)")
    return Field.union(paths)


def _shortcut_hint(shape: Shape, body: Shape) -> str:
    if len(body) != 3 or len(shape) != 3:
        return f"make the shortcut end in {fmt(body)}, e.g. 'fc {body[0]}'" if len(body) == 1 else \
            f"make the shortcut end in {fmt(body)}"
    stride = max(shape[1] // body[1], 1)
    return f"make the shortcut end in {fmt(body)}, e.g. 'conv 1x1{f'/{stride}' if stride > 1 else ''} -> {body[0]}'"


@node
class Residual(Node):
    """body(x) + shortcut(x); the shortcut is the identity unless the body changes the shape
    (or `always`). Whether it projects is the shape pass's answer (`LayerShape.projects`)."""

    key = "residual"

    body: Seq
    shortcut: Seq | None
    always: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.body,) if self.shortcut is None else (self.body, self.shortcut)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        body = shapes.infer(self.body, shape)
        projects = self.always or body != shape
        if projects and self.shortcut is None:
            stride = ""
            if len(shape) == 3 and len(body) == 3 and body[1] and shape[1] != body[1]:
                stride = f"/{max(shape[1] // body[1], 1)}"
            suggestion = (f"shortcut {{ conv 1x1{stride} -> {body[0]} nobias; bn }}" if len(body) == 3
                          else f"shortcut {{ fc {body[0]} }}")
            raise self.error(f"the residual body changes the shape from {fmt(shape)} to {fmt(body)}, "
                             f"so it cannot be added to its input",
                             hint=f"add a projection after the closing brace: '}} {suggestion}'")
        if projects:
            short = shapes.infer(self.shortcut, shape)
            if short != body:
                raise self.error(f"the shortcut gives {fmt(short)} but the residual body gives {fmt(body)}",
                                 notes=[f"input {fmt(shape)}"], hint=_shortcut_hint(shape, body))
        return LayerShape(shape, body, projects=projects)

    def field(self, before: Field, fields: FieldPass) -> Field:
        projects = fields.shapes.of(self).projects
        paths = fields.fork((self.body, self.shortcut) if projects else (self.body,), before)
        if not projects:
            paths.append(before)  # the identity
        return _merge(self, paths)

    def text(self) -> str:
        return "residual"


@node
class Join(Node):
    """Branches that all read the node's input and whose outputs are joined (`concat`, `add`)."""

    branches: tuple[Seq, ...]

    def children(self) -> tuple[Node, ...]:
        return self.branches

    def field(self, before: Field, fields: FieldPass) -> Field:
        return _merge(self, fields.fork(self.branches, before))

    def text(self) -> str:
        return self.key


@node
class Concat(Join):
    """`concat { branch {...} ... }`: the branches' outputs joined on channels."""

    key = "concat"

    crop: bool = False  # `concat crop`: larger branches are centre-cropped to the smallest HxW (U-Net)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        outs = [shapes.infer(branch, shape) for branch in self.branches]
        if self.crop:
            return LayerShape(shape, self._cropped(outs))
        ranks = {len(o) for o in outs}
        if len(ranks) > 1 or (ranks == {3} and len({o[1:] for o in outs}) > 1):
            raise self.error("concat joins branches on channels, so their height x width must agree",
                             notes=_listing(outs),
                             hint="give every branch the same strides and 'pad' so the sizes match")
        return LayerShape(shape, (sum(o[0] for o in outs),) + outs[0][1:])

    def _cropped(self, outs: list[Shape]) -> Shape:
        if any(len(o) != 3 for o in outs):
            raise self.error("concat crop crops the height and width of its branches, so every branch must give "
                             "a CxHxW map", notes=_listing(outs),
                             hint="move 'flatten'/'fc' after the concat, or write a plain 'concat'")
        height, width = min(o[1] for o in outs), min(o[2] for o in outs)
        for index, o in enumerate(outs, 1):
            odd = [f"{o[1 + axis] - size} {name}" for axis, (size, name) in
                   enumerate(((height, "rows"), (width, "columns"))) if (o[1 + axis] - size) % 2]
            if odd:
                raise self.error(
                    f"concat crop: branch {index} gives {fmt(o)} and the smallest is {height}x{width}; an odd "
                    f"difference ({' and '.join(odd)}) cannot be cropped evenly from both sides, so the centres "
                    f"of the cropped branch and of the smallest would be half a pixel apart",
                    notes=_listing(outs),
                    hint="change the input size or a padding so every branch's height and width differ from the "
                         "smallest by an even number (a valid 3x3 conv takes 2 rows, a 2x2/2 deconv doubles)")
        return (sum(o[0] for o in outs), height, width)

    def crops(self, shapes: Shapes) -> list[tuple[int, int, int, int]]:
        """Per branch, the (top, bottom, left, right) rows and columns `concat crop` removes: the larger
        branches' centre, top/left offset (H - h) // 2 (all zeros without `crop`)."""
        _, height, width = shapes.of(self).output
        out = []
        for branch in self.branches:
            _, h, w = shapes.of(branch).output
            out.append(((h - height) // 2, (h - height) - (h - height) // 2,
                        (w - width) // 2, (w - width) - (w - width) // 2))
        return out

    def field(self, before: Field, fields: FieldPass) -> Field:
        if not self.crop:
            return super().field(before, fields)
        out = fields.shapes.of(self).output[1:]
        paths = []
        for field, (top, _, left, _) in zip(fields.fork(self.branches, before), self.crops(fields.shapes),
                                            strict=True):
            # cropping is a 1x1 window whose padding is negative: output o is the branch's o + top
            paths.append(field.through((1, 1), (1, 1), (-top, -left), out))
        _check_cropped(self, paths)
        return _merge(self, paths)

    def text(self) -> str:
        return "concat crop" if self.crop else "concat"


def _check_cropped(node: Node, paths: list[Field]) -> None:
    """Cropped branches must agree exactly on where their outputs are centred; say by how much they differ."""
    first = paths[0]
    for index, path in enumerate(paths[1:], 2):
        if path.jump != first.jump:
            raise node.error(f"the branches of this concat crop are misaligned: branch {index} steps "
                             f"{rational_text(path.jump[0])}x{rational_text(path.jump[1])} input pixels per output "
                             f"and branch 1 {rational_text(first.jump[0])}x{rational_text(first.jump[1])}",
                             notes=_centres(paths),
                             hint="give every branch the same total stride: each pool or stride down must be "
                                  "matched by an upsample or deconv up")
        if path.start != first.start:
            words = (("rows lower", "rows higher"), ("columns further right", "columns further left"))
            moved = [f"{rational_text(abs(b - a))} input {words[axis][b < a]}"
                     for axis, (a, b) in enumerate(zip(first.start, path.start, strict=True)) if a != b]
            raise node.error(f"the branches of this concat crop are misaligned after cropping: branch {index}'s "
                             f"outputs are centred {' and '.join(moved)} than branch 1's",
                             notes=_centres(paths),
                             hint="pad symmetrically ((k-1)/2 for a kxk conv) or not at all, and make every size "
                                  "difference between the branches even")


def _centres(paths: list[Field]) -> list[str]:
    return [f"branch {i}: jump {rational_text(p.jump[0])}x{rational_text(p.jump[1])}, first output centred at "
            f"({rational_text(p.start[0])}, {rational_text(p.start[1])}) after cropping"
            for i, p in enumerate(paths, 1)]


@node
class Add(Join):
    """`add { branch {...} ... }`: the branches' outputs summed."""

    key = "add"

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        outs = [shapes.infer(branch, shape) for branch in self.branches]
        if len(set(outs)) > 1:
            raise self.error("add needs every branch to give the same shape", notes=_listing(outs),
                             hint="make the branches end in the same channels and size (a 1x1 conv can project)")
        return LayerShape(shape, outs[0])


@node
class Mul(Join):
    """`mul { branch {...} ... }`: the branches' outputs multiplied elementwise. A `Cx1x1` branch
    beside a larger one is a *gate*: it broadcasts over HxW (squeeze-and-excitation), the only
    broadcast the language has."""

    key = "mul"

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        outs = [shapes.infer(branch, shape) for branch in self.branches]
        full = max(outs, key=lambda o: (len(o), o[1] * o[2] if len(o) == 3 else 0))
        gates = [o for o in outs if is_gate(o, full)]
        if any(o != full for o in outs if o not in gates) or any(g[0] != full[0] for g in gates):
            channels = [o for o in outs if o[0] != full[0]]
            if len(full) == 3 and channels and all(len(o) == 3 for o in outs):
                hint = (f"end every branch in {full[0]} channels, e.g. 'conv 1x1 -> {full[0]}' at the end of "
                        f"the gate")
            else:
                hint = f"make every branch give {fmt(full)}"
                if len(full) == 3:
                    hint += f", or a {full[0]}x1x1 gate (e.g. 'pool avg global; conv 1x1 -> {full[0]}; sigmoid')"
            raise self.error("mul multiplies branches of the same shape, or a Cx1x1 gate with a CxHxW branch of "
                             "the same channels", notes=_listing(outs), hint=hint)
        return LayerShape(shape, full)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        return (f"elementwise product of {len(self.branches)} branches giving {fmt(shape.output)} "
                f"(a Cx1x1 gate broadcasts over HxW): no parameters, and no MACs by torchvision's "
                f"convention (conv and fc only)",)

    def field(self, before: Field, fields: FieldPass) -> Field:
        # A gate's value is held constant for the spatial field (the figure people quote for
        # EfficientNet), and its path is exempt from the alignment check: it has no positions.
        # After a gate every output depends on the whole input: the context is global from here on.
        out = fields.shapes.of(self).output
        gates = [is_gate(fields.shapes.of(branch).output, out) for branch in self.branches]
        paths = [field for field, gate in zip(fields.fork(self.branches, before), gates, strict=True) if not gate]
        fields.context = fields.context or any(gates)
        return _merge(self, paths)


def is_gate(branch: Shape, output: Shape) -> bool:
    """A `Cx1x1` branch of a `mul` whose output is larger: it broadcasts over HxW."""
    return len(branch) == 3 and len(output) == 3 and branch[1:] == (1, 1) and output[1:] != (1, 1)


def _listing(outs: list[Shape]) -> list[str]:
    return [f"branch {i} gives {fmt(o)}" for i, o in enumerate(outs, 1)]
