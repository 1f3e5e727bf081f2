"""Kinds that go back up (dense prediction): `upsample` (nearest or bilinear resizing) and `deconv`
(PyTorch's ConvTranspose2d).

Both make the jump a fraction of an input pixel and may make the rows an output sees depend on its
position. Each rule therefore says, per axis, which input positions output o reads, `lo(o)..hi(o)`,
a pattern that repeats every `period` outputs moved `shift` inputs on, and the affine centre of
output o, `centre + o * ratio` in input positions; `resampled` composes that with the field before
(`Field`'s exact `Spans`), as `Field.through` does for a window:

    upsample (nearest):   lo = hi = floor(o * in/out)                       (PyTorch's nearest rule)
    upsample (bilinear):  src = (o + 1/2) * in/out - 1/2; lo = floor(src), hi = ceil(src)
    deconv K/S pad P:     lo = ceil((o + P - K + 1) / S), hi = floor((o + P) / S)

with affine centres (o + 1/2) * in/out - 1/2 (bilinear, and nearest by a whole factor; nearest by
in/out = p/q in lowest terms: o * p/q - (q - 1)/(2q), the mean of the rows it reads) and
(o + P - (K - 1)/2) / S. The border (PyTorch
clamps a source row below 0 to row 0) is treated as padding is everywhere in the field: the field
is what an interior output sees, continued past the edges.
"""

from __future__ import annotations

from math import gcd
from typing import TYPE_CHECKING

from .base import (
    Cost,
    Field,
    LayerShape,
    Node,
    Padding,
    Shape,
    Spans,
    TensorSpec,
    exact,
    fmt,
    fraction,
    glued,
    groups_fix,
    n,
    node,
    pair_text,
    window_words,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options

_NO_MACS = "params: 0, macs: 0 (torchvision's convention counts conv and fc only)"
MODES = ("nearest", "bilinear")


def resampled(before: Field, rules: tuple[tuple, tuple], counts: tuple[int, int]) -> Field:
    """The field after a layer whose output o reads input positions lo(o)..hi(o) on each axis.

    `rules[axis]` is (period, shift, lo, hi, ratio, centre): lo(o + period) = lo(o) + shift (hi too),
    the jump is multiplied by `ratio` and output 0's affine centre is `centre` input positions from
    the input's position 0. `counts` are the output sizes (they bound where `rf` is taken)."""

    def rule(axis: int):
        period, shift, lo, hi, ratio, centre = rules[axis]
        spans = before.axis_spans(axis)
        reps = spans.period // gcd(spans.period, shift)  # `reps` patterns move whole periods of `spans`
        length = period * reps
        first = tuple(spans.at(lo(o))[0] for o in range(length))
        last = tuple(spans.at(hi(o))[1] for o in range(length))
        jump = before.jump[axis]
        return (Spans(length, first, last, spans.shift * (shift * reps // spans.period), counts[axis]),
                exact(jump * ratio), exact(before.start[axis] + jump * centre))

    return before._per_axis(rule)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def interpolation_rule(size: int, out: int, mode: str) -> tuple:
    """Axis rule (see `resampled`) of resizing `size` positions to `out`, PyTorch's align_corners=False."""
    ratio = fraction(size, out)
    p, q = ratio.numerator, ratio.denominator
    if mode == "nearest":
        def lo(o: int) -> int:
            return o * p // q

        # the mean over a period of the rows read, floor(o * p/q), is o * p/q - (q - 1)/(2q): for a whole
        # factor f (p = 1) that is (o + 1/2)/f - 1/2, as for bilinear
        return (q, p, lo, lo, ratio, fraction(1 - q, 2 * q))

    def low(o: int) -> int:  # floor(src), src = ((2o + 1) p - q) / 2q
        return ((2 * o + 1) * p - q) // (2 * q)

    def high(o: int) -> int:  # ceil(src): the same row where src is whole (its neighbour's weight is 0)
        return _ceil_div((2 * o + 1) * p - q, 2 * q)

    return (q, p, low, high, ratio, fraction(p - q, 2 * q))


def transposed_rule(kernel: int, stride: int, pad: int) -> tuple:
    """Axis rule (see `resampled`) of a transposed convolution: output o = i * stride + k - pad."""
    def lo(o: int) -> int:
        return _ceil_div(o + pad - kernel + 1, stride)

    def hi(o: int) -> int:
        return (o + pad) // stride

    return (stride, 1, lo, hi, fraction(1, stride), fraction(2 * pad - kernel + 1, 2 * stride))


def _rules(make: Callable[[int], tuple]) -> tuple[tuple, tuple]:
    return (make(0), make(1))


# ---------------------------------------------------------------- upsample


@node
class Upsample(Node):
    """`upsample Nx [nearest|bilinear]`, `upsample to HxW`, `upsample to input`: resize HxW by a whole
    factor or to a size (`to input`: the network input's HxW), as PyTorch's `F.interpolate` with
    `align_corners=False`. Nearest by default."""

    key = "upsample"
    statement = "upsample"

    mode: str = "nearest"  # nearest | bilinear
    factor: int | None = None  # `upsample 2x`
    size: tuple[int, int] | None = None  # `upsample to HxW`
    to_input: bool = False  # `upsample to input`: the network input's HxW, known to the shape pass

    @classmethod
    def build(cls, options: Options) -> Upsample:
        mode = options.word("mode") if "mode" in options else "nearest"
        if "factor" in options:
            return cls(name=options.name("upsample"), mode=mode,
                       factor=options.integer("factor", "an upsample factor"), **options.common)
        if options.word("to") == "input":
            return cls(name=options.name("upsample"), mode=mode, to_input=True, **options.common)
        return cls(name=options.name("upsample"), mode=mode, size=options.pair("to", "an upsample size"),
                   **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        if len(shape) != 3:
            what = "bilinear interpolation" if self.mode == "bilinear" else "upsample"
            raise self.error(f"{what} needs a CxHxW input, but its input is the vector {fmt(shape)}: there are "
                             f"no rows or columns to {'interpolate between' if self.mode == 'bilinear' else 'repeat'}",
                             hint="move the upsample before 'flatten'/'fc', or remove the flatten")
        c, h, w = shape
        if self.factor is not None:
            out = (h * self.factor, w * self.factor)
        elif self.to_input:
            network = shapes.input
            if network is None or len(network) != 3:
                raise self.error(f"'upsample to input' needs a CxHxW network input, but the input is "
                                 f"{fmt(network) if network else 'unknown'}",
                                 hint="give the size: 'upsample to HxW'")
            out = (network[1], network[2])
        else:
            out = self.size
        return LayerShape(shape, (c, *out), in_channels=c, out_channels=c)

    def field(self, before: Field, fields: FieldPass) -> Field:
        shape = fields.shapes.of(self)
        sizes, outs = shape.input[1:], shape.output[1:]
        return resampled(before, _rules(lambda axis: interpolation_rule(sizes[axis], outs[axis], self.mode)), outs)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        lines = []
        for axis, name in enumerate(("height", "width")):
            size, out = shape.input[1 + axis], shape.output[1 + axis]
            if self.factor is not None:
                lines.append(f"{name}: {size} * {self.factor} = {out}")
            else:
                lines.append(f"{name}: {size} -> {out}" + (" (the network input's)" if self.to_input else ""))
        how = ("output row o reads input row floor(o * in/out)" if self.mode == "nearest" else
               "output row o interpolates input rows around (o + 0.5) * in/out - 0.5 (align_corners=False)")
        return (*lines, how, _NO_MACS)

    def text(self) -> str:
        if self.factor is not None:
            words = [f"upsample {self.factor}x"]
        elif self.to_input:
            words = ["upsample to input"]
        else:
            words = [f"upsample to {pair_text(self.size)}"]
        if self.mode != "nearest":
            words.append(self.mode)
        return " ".join(words)


# ---------------------------------------------------------------- deconv


@node
class Deconv(Node):
    """`deconv KxK/S [pad P] [outpad P] [groups G] [nobias] -> C`: the transposed convolution, PyTorch's
    `ConvTranspose2d`; the output is (in - 1) * S - 2P + K + outpad on each axis."""

    key = "deconv"
    statement = "deconv"

    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding = Padding()
    outpad: tuple[int, int] = (0, 0)
    groups: int = 1
    bias: bool = True

    @classmethod
    def build(cls, options: Options) -> Deconv:
        kernel = options.pair("kernel", "a kernel size")
        stride = options.pair("stride", "a stride", default=(1, 1))
        padding = options.padding()
        if padding.same:
            k, s = kernel[0], stride[0]
            pad = max(-(-(k - s) // 2), 0)  # 2P - outpad = K - S gives in * S exactly
            fix = f"pad {pad}" + (f" outpad {2 * pad - (k - s)}" if 2 * pad != k - s else "")
            raise options.error("a deconv takes its padding as numbers: 'pad same' is a rule for a convolution's "
                                "input, and a transposed conv's output size is (in - 1) * S - 2P + K + outpad",
                                "pad", hint=f"for an output of in * S, write '{fix}'")
        outpad = options.pair("outpad", "an output padding", default=(0, 0), minimum=0)
        for axis, (extra, s) in enumerate(zip(outpad, stride, strict=True)):
            if extra >= s:
                what = ("height", "width")[axis] if outpad[0] != outpad[1] or stride[0] != stride[1] else ""
                raise options.error(
                    f"outpad {extra} must be smaller than the stride {s}{f' ({what})' if what else ''}: the extra "
                    f"rows at the end are part of one stride step (PyTorch's rule: outpad < stride or dilation, and "
                    f"a deconv has dilation 1)", "outpad",
                    hint=(f"use at most 'outpad {s - 1}', or a larger stride" if s > 1 else
                          "leave 'outpad' out (with stride 1 there is no room for it), or use a larger stride"))
        if "out" not in options:
            raise options.error("deconv needs an output channel count",
                                hint="add '-> C', e.g. 'deconv 2x2/2 -> 64'")
        return cls(name=options.name("deconv"), out_channels=options.integer("out", "an output channel count"),
                   kernel=kernel, stride=stride, padding=padding, outpad=outpad,
                   groups=options.integer("groups", "groups", default=1), bias="nobias" not in options,
                   **options.common)

    @property
    def pads(self) -> tuple[int, int]:
        """(height, width) padding, each removed from both ends of the full transposed output."""
        return (self.padding.top, self.padding.left)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        self.need_spatial(shape, "deconv")
        c_in, groups, c_out = shape[0], self.groups, self.out_channels
        if c_in % groups or c_out % groups:
            bad = [f"{c} {what}" for c, what in ((c_in, "input"), (c_out, "output")) if c % groups]
            raise self.error(f"groups{groups} does not divide the {' and '.join(bad)} channels",
                             notes=[f"input {fmt(shape)} -> {c_out} channels"],
                             hint=groups_fix(groups, c_in, c_out))
        out = []
        for axis in range(2):
            size, k, s, p, extra = shape[1 + axis], self.kernel[axis], self.stride[axis], self.pads[axis], \
                self.outpad[axis]
            value = (size - 1) * s - 2 * p + k + extra
            if value < 1:
                most = ((size - 1) * s + k + extra - 1) // 2
                raise self.error(f"deconv gives an output {('height', 'width')[axis]} of {value}: "
                                 f"({size} - 1) * {s} - 2 * {p} + {k} + {extra} = {value}, the padding removes more "
                                 f"than the transposed conv makes", notes=[f"input {fmt(shape)}"],
                                 hint=f"use at most 'pad {most}'")
            out.append(value)
        return LayerShape(shape, (c_out, *out), in_channels=c_in, out_channels=c_out, groups=groups)

    def field(self, before: Field, fields: FieldPass) -> Field:
        outs = fields.shapes.of(self).output[1:]
        return resampled(before, _rules(lambda axis: transposed_rule(self.kernel[axis], self.stride[axis],
                                                                     self.pads[axis])), outs)

    def fan_in(self, shape: LayerShape) -> int:
        """PyTorch's fan-in of a ConvTranspose2d weight (C_in, C/G, kh, kw): C/G * kh * kw."""
        return shape.out_channels // shape.groups * self.kernel[0] * self.kernel[1]

    def cost(self, shape: LayerShape) -> Cost:
        c_in, h, w = shape.input
        taps = self.kernel[0] * self.kernel[1]
        params = c_in // shape.groups * taps * shape.out_channels + (shape.out_channels if self.bias else 0)
        # as fvcore counts a transposed conv: every input pixel meets K*K*C/G weights
        return Cost(params, 0, c_in * taps * (shape.out_channels // shape.groups) * h * w)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        dims = (shape.in_channels, shape.out_channels // shape.groups, *self.kernel)  # ConvTranspose2d's layout
        return self.weight_and_bias(dims, self.fan_in(shape), shape.out_channels, self.bias)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        cost = self.cost(shape)
        (kh, kw), c_in, c_out = self.kernel, shape.in_channels, shape.out_channels
        lines = [f"{name}: ({shape.input[1 + axis]} - 1) * {self.stride[axis]} - 2 * {self.pads[axis]} + "
                 f"{self.kernel[axis]} + {self.outpad[axis]} = {shape.output[1 + axis]}"
                 for axis, name in enumerate(("height", "width"))]
        fan = f"{c_in}/{shape.groups}" if shape.groups > 1 else f"{c_in}"
        per = f"({c_out}/{shape.groups})" if shape.groups > 1 else f"{c_out}"
        bias = f" + {c_out}" if self.bias else ""
        _, h, w = shape.input
        return (*lines, f"params: ({fan}*{kh}*{kw}) * {c_out}{bias} = {n(cost.params)}",
                f"macs: {c_in}*{kh}*{kw} * {per} * {h}*{w} = {n(cost.macs)} (every input pixel, as fvcore counts)")

    def text(self) -> str:
        words = window_words("deconv", self.kernel, self.stride, self.padding)
        if self.outpad != (0, 0):
            words.append(glued("outpad", self.outpad))
        if self.groups != 1:
            words.append(f"groups{self.groups}")
        words.append(f"-> {self.out_channels}")
        if not self.bias:
            words.append("nobias")
        return " ".join(w for w in words if w)


__all__ = ["Deconv", "Upsample", "interpolation_rule", "resampled", "transposed_rule"]
