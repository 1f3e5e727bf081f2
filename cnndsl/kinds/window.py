"""Sliding-window kinds: `conv`, `pool`, `pool ... global` and `pool ... adaptive`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BadValueError
from .base import (
    Cost,
    Field,
    LayerShape,
    Node,
    Padding,
    Shape,
    TensorSpec,
    Window,
    adaptive_windows,
    effective_kernel,
    fmt,
    fraction,
    glued,
    groups_fix,
    n,
    node,
    pair_text,
    rational_text,
    same_padding,
    window,
    window_words,
)

if TYPE_CHECKING:
    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options


def _windows(node: Node, shape: Shape, kernel, stride, padding: Padding, dilation=(1, 1), ceil=False):
    _, height, width = shape
    if padding.same:
        pads = (*same_padding(height, kernel[0], stride[0], dilation[0]),
                *same_padding(width, kernel[1], stride[1], dilation[1]))
    else:
        pads = (padding.top, padding.bottom, padding.left, padding.right)
    axes = []
    for axis, size in enumerate((height, width)):
        w = window(size, kernel[axis], stride[axis], pads[2 * axis], pads[2 * axis + 1], dilation[axis], ceil)
        if w is None:
            k_eff = (effective_kernel(kernel[0], dilation[0]), effective_kernel(kernel[1], dilation[1]))
            padded = (height + pads[0] + pads[1], width + pads[2] + pads[3])
            dil = f" (dilated to {fmt(k_eff)})" if dilation != (1, 1) else ""
            raise node.error(f"kernel {fmt(kernel)}{dil} is larger than its padded input {fmt(padded)}",
                             notes=[f"input {fmt(shape)}, padding {padding}"],
                             hint="use a smaller kernel, add padding ('pad same'), or remove a downsampling "
                                  "layer before this one")
        axes.append(w)
    return tuple(axes)


def _warn_dropped(node: Node, windows: tuple[Window, Window], shape: Shape, shapes: Shapes) -> None:
    dropped = [w.dropped for w in windows]
    if any(dropped):
        axis = " and ".join(f"{d} {name}" for d, name in zip(dropped, ("row(s)", "column(s)"), strict=True) if d)
        h, w = windows
        shapes.warnings.warn(
            f"stride {h.stride}x{w.stride} leaves the last {axis} of the {fmt(shape)} input unseen",
            node.span,
            hint="pad so (size + padding - kernel) divides by the stride, e.g. 'pad same'; ignore this "
                 "if it is on purpose",
            calls=node.calls)


def _window_explain(shape: LayerShape, ceil: bool = False) -> tuple[str, ...]:
    rounding = "ceil" if ceil else "floor"
    return tuple(f"{axis}: {rounding}(({w.size} + {w.pad_begin} + {w.pad_end} - {w.kernel}) / {w.stride}) + 1 "
                 f"= {w.out}" for axis, w in zip(("height", "width"), shape.windows, strict=True))


def _window_field(before: Field, shape: LayerShape) -> Field:
    h, w = shape.windows
    return before.through((h.kernel, w.kernel), (h.stride, w.stride), (h.pad_begin, w.pad_begin), (h.out, w.out))


@node
class Conv(Node):
    """`conv KxK/S pad P dil D groups G -> C`, or depthwise (`groups` = input channels)."""

    key = "conv"
    statement = "conv"

    out_channels: int | None  # None for depthwise: input channels x multiplier
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding = Padding()
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    depthwise: bool = False
    multiplier: int = 1  # depthwise channel multiplier (`-> 2x`)
    bias: bool = True

    @classmethod
    def build(cls, options: Options) -> Conv:
        kernel = options.pair("kernel", "a kernel size")
        stride = options.pair("stride", "a stride", default=(1, 1))
        dilation = options.pair("dil", "a dilation", default=(1, 1))
        depthwise = "depthwise" in options
        out = options.integer("out", "an output channel count", default=None)
        multiplier = 1
        if "mult" in options:
            if not depthwise:
                raise options.error("a channel multiplier ('-> 2x') only applies to a depthwise conv", "mult",
                                    hint="add 'depthwise', or give a channel count: '-> 64'")
            if out is not None:
                raise options.error("give either '-> N' or '-> Nx', not both", "mult",
                                    hint="keep '-> Nx' (N output channels per input channel) or '-> N'")
            multiplier = options.integer("mult", "a channel multiplier")
        if out is None and not depthwise:
            raise options.error("conv needs an output channel count",
                                hint="add '-> C', e.g. 'conv 3x3 pad1 -> 64', or 'depthwise'")
        groups = 1
        if "groups" in options:
            if depthwise:
                raise options.error("'groups' and 'depthwise' do not go together: depthwise sets the groups",
                                    "groups", hint="keep one of them")
            groups = options.integer("groups", "groups")
        return cls(name=options.name("conv"), out_channels=out, kernel=kernel, stride=stride,
                   padding=options.padding(), dilation=dilation, groups=groups, depthwise=depthwise,
                   multiplier=multiplier, bias="nobias" not in options, **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        self.need_spatial(shape, "conv")
        c_in = shape[0]
        if self.depthwise:
            groups = c_in
            c_out = self.out_channels if self.out_channels is not None else c_in * self.multiplier
            if c_out % c_in:
                raise self.error(f"a depthwise conv on {c_in} channels cannot give {c_out}: each input channel "
                                 f"must get the same number of outputs",
                                 notes=[f"input {fmt(shape)}"],
                                 hint=f"use '-> {c_in * max(c_out // c_in, 1)}' or a multiplier like '-> 2x'")
        else:
            groups, c_out = self.groups, self.out_channels
            assert c_out is not None
            if c_in % groups or c_out % groups:
                bad = [f"{c} {what}" for c, what in ((c_in, "input"), (c_out, "output")) if c % groups]
                raise self.error(f"groups{groups} does not divide the {' and '.join(bad)} channels",
                                 notes=[f"input {fmt(shape)} -> {c_out} channels"],
                                 hint=groups_fix(groups, c_in, c_out))
        windows = _windows(self, shape, self.kernel, self.stride, self.padding, self.dilation)
        _warn_dropped(self, windows, shape, shapes)
        return LayerShape(shape, (c_out, windows[0].out, windows[1].out), windows, c_in, c_out, groups)

    def field(self, before: Field, fields: FieldPass) -> Field:
        return _window_field(before, fields.shapes.of(self))

    def fan_in(self, shape: LayerShape) -> int:
        return shape.in_channels // shape.groups * self.kernel[0] * self.kernel[1]

    def cost(self, shape: LayerShape) -> Cost:
        c_out, h, w = shape.output
        fan_in = self.fan_in(shape)
        return Cost((fan_in + self.bias) * c_out, 0, c_out * h * w * fan_in)

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        dims = (shape.out_channels, shape.in_channels // shape.groups, *self.kernel)
        return self.weight_and_bias(dims, self.fan_in(shape), shape.out_channels, self.bias)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        cost = self.cost(shape)
        kh, kw = self.kernel
        c_out, h, w = shape.output
        bias = " + 1" if self.bias else ""
        fan = f"{shape.in_channels}/{shape.groups}" if shape.groups > 1 else f"{shape.in_channels}"
        return _window_explain(shape) + (f"params: ({fan}*{kh}*{kw}{bias}) * {c_out} = {n(cost.params)}",
                                         f"macs: {c_out}*{h}*{w} * ({fan}*{kh}*{kw}) = {n(cost.macs)}")

    def text(self) -> str:
        words = window_words("conv", self.kernel, self.stride, self.padding)
        if self.dilation != (1, 1):
            words.append(glued("dil", self.dilation))
        if self.groups != 1:
            words.append(f"groups{self.groups}")
        if self.depthwise:
            words.append("depthwise")
        if self.out_channels is not None:
            words.append(f"-> {self.out_channels}")
        elif self.multiplier != 1:
            words.append(f"-> {self.multiplier}x")
        if not self.bias:
            words.append("nobias")
        return " ".join(w for w in words if w)


@node
class Pool(Node):
    """`pool max|avg KxK/S pad P [ceil]`."""

    key = "pool"
    statement = "pool"

    mode: str  # max | avg
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding = Padding()
    ceil: bool = False

    @classmethod
    def build(cls, options: Options) -> Node:
        mode = options.word("mode")
        if "adaptive" in options:
            return AdaptivePool.build(options)
        if "global" in options:
            for key in ("pad", "ceil"):
                if key in options:
                    raise options.error(f"a global pool takes no '{key}'", key, hint=f"remove '{key}'")
            return GlobalPool(name=options.name("pool"), mode=mode, **options.common)
        kernel = options.pair("kernel", "a pool size")
        stride = options.pair("stride", "a stride", default=kernel)
        return cls(name=options.name("pool"), mode=mode, kernel=kernel, stride=stride, padding=options.padding(),
                   ceil="ceil" in options, **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        self.need_spatial(shape, "pool")
        pad = self.padding
        for k, near, far in zip(self.kernel, (pad.top, pad.left), (pad.bottom, pad.right), strict=True):
            if not pad.same and max(near, far) > k // 2:
                raise self.error(f"pool padding {pad} is more than half the {fmt(self.kernel)} window",
                                 hint=f"use at most 'pad {k // 2}' (a window of only padding has no value)")
        windows = _windows(self, shape, self.kernel, self.stride, pad, ceil=self.ceil)
        _warn_dropped(self, windows, shape, shapes)
        return LayerShape(shape, (shape[0], windows[0].out, windows[1].out), windows, shape[0], shape[0])

    def field(self, before: Field, fields: FieldPass) -> Field:
        return _window_field(before, fields.shapes.of(self))

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        return _window_explain(shape, self.ceil)

    def text(self) -> str:
        words = [f"pool {self.mode} {pair_text(self.kernel)}/{pair_text(self.stride, '')}", self.padding.text()]
        if self.ceil:
            words.append("ceil")
        return " ".join(w for w in words if w)


@node
class GlobalPool(Node):
    """`pool max|avg global`: one value per channel."""

    key = "global_pool"

    mode: str  # max | avg

    @property
    def kind(self) -> str:
        return "pool"

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        self.need_spatial(shape, "global pool")
        return LayerShape(shape, (shape[0], 1, 1))

    def field(self, before: Field, fields: FieldPass) -> Field:
        return before.whole(fields.shapes.of(self).input)

    def text(self) -> str:
        return f"pool {self.mode} global"


@node
class AdaptivePool(Node):
    """`pool max|avg adaptive HxW`: PyTorch's adaptive pooling to a fixed output size (AlexNet's 6x6
    at any input size). Per axis, window i covers the input rows floor(i*in/out) up to, not
    including, ceil((i+1)*in/out) (`adaptive_windows`): even windows where out divides in, else
    windows one row apart in size that may overlap; an output larger than the input repeats rows."""

    key = "adaptive_pool"

    mode: str  # max | avg
    size: tuple[int, int]  # the output height and width

    _NO_OPTION = {"pad": "adaptive windows never reach into padding",
                  "ceil": "adaptive windows cover the input exactly",
                  "stride": "the windows follow from the input and output sizes"}

    @property
    def kind(self) -> str:
        return "pool"

    @classmethod
    def build(cls, options: Options) -> Node:
        for key, why in cls._NO_OPTION.items():
            if key in options:
                raise options.error(f"an adaptive pool takes no '{key}': {why}", key, hint=f"remove '{key}'")
        try:
            size = options.pair("kernel", "the output size of an adaptive pool")
        except BadValueError as err:
            if "at least" in err.message or "one size or HxW" in err.message:  # the kind's fix says more
                err.hint = "give the output height x width, e.g. 'pool avg adaptive 6x6' (1x1 is 'global')"
            raise
        return cls(name=options.name("pool"), mode=options.word("mode"), size=size, **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        self.need_spatial(shape, "adaptive pool")
        return LayerShape(shape, (shape[0], *self.size), in_channels=shape[0], out_channels=shape[0])

    def field(self, before: Field, fields: FieldPass) -> Field:
        _, height, width = fields.shapes.of(self).input
        return before.adaptive((height, width), self.size)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        lines = []
        for axis, what, size, out in zip(("height", "width"), ("rows", "columns"), shape.input[1:], self.size,
                                         strict=True):
            if size % out == 0:
                lines.append(f"{axis}: {size} -> {out}: windows of {size // out}, stride {size // out} "
                             f"({size} / {out})")
                continue
            sizes = sorted({end - begin for begin, end in adaptive_windows(size, out)})
            lines.append(f"{axis}: {size} -> {out}: window i is {what} floor(i*{size}/{out}) to "
                         f"ceil((i+1)*{size}/{out}) - 1: {' or '.join(map(str, sizes))} {what}, "
                         f"{rational_text(fraction(size, out))} apart on average")
        return tuple(lines)

    def text(self) -> str:
        return f"pool {self.mode} adaptive {pair_text(self.size)}"


__all__ = ["AdaptivePool", "Conv", "GlobalPool", "Pool"]
