"""Shape inference, and the one place where window arithmetic lives.

`window()` is the sliding-window rule (kernel, stride, dilation, padding, ceil mode) and
`same_padding()` is TensorFlow's `pad same` rule; the shape pass, the receptive-field pass and
every backend use the `LayerShape` this module computes (resolved pads, channels, groups) instead
of redoing the arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import ir
from ..errors import CnnDslError, ShapeError, Warnings

Shape = tuple[int, ...]


class Window(NamedTuple):
    """One axis of a sliding window, resolved."""

    size: int  # input size on this axis
    kernel: int  # effective kernel: dilation * (k - 1) + 1
    stride: int
    pad_begin: int
    pad_end: int
    out: int
    dropped: int  # real input rows/columns at the end that no window sees

    @property
    def overhang(self) -> int:
        """Rows past input + padding that the last window reaches: > 0 only where ceil mode adds a
        window. Padding the end by this much lets a floor-mode window give the same count."""
        return max((self.out - 1) * self.stride + self.kernel - (self.size + self.pad_begin + self.pad_end), 0)


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME: out = ceil(size / stride); the odd row/column of padding goes last."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def window(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
           ceil: bool = False) -> Window | None:
    """The output size of one axis, or None when the kernel is larger than the padded input."""
    k = effective_kernel(kernel, dilation)
    room = size + pad_begin + pad_end - k
    if room < 0:
        return None
    if ceil:
        out = -(-room // stride) + 1
        # As PyTorch and ONNX do: the last window must start inside the input or its leading padding.
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
    else:
        out = room // stride + 1
    covered = (out - 1) * stride + k  # rows of the padded input the windows reach
    unseen_padded = size + pad_begin + pad_end - covered
    # A kernel smaller than its stride skips rows everywhere by design (ResNet's 1x1/2 projection);
    # only windows that tile the input leave a real, one-sided remainder worth a warning.
    dropped = max(unseen_padded - pad_end, 0) if not ceil and k >= stride else 0
    return Window(size, k, stride, pad_begin, pad_end, out, dropped)


class LayerShape(NamedTuple):
    """What the shape pass knows of one node at the network's input size."""

    input: Shape
    output: Shape
    windows: tuple[Window, Window] | None = None  # conv / pool: height and width axes
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1
    projects: bool = False  # residual: the shortcut branch is used

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right), as F.pad's reversed order and ONNX's begin/end order need."""
        if self.windows is None:
            return (0, 0, 0, 0)
        h, w = self.windows
        return (h.pad_begin, h.pad_end, w.pad_begin, w.pad_end)


class Shapes(dict):
    """node name -> LayerShape, plus the warnings raised while inferring them."""

    def __init__(self):
        super().__init__()
        self.warnings = Warnings()

    def of(self, node: ir.Node) -> LayerShape:
        return self[node.name]


def fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def infer_shapes(network: ir.Network, input_shape: Shape | None = None) -> Shapes:
    """Every node's input and output shape at `input_shape` (the network's own by default)."""
    shapes = Shapes()
    try:
        _infer(network.body, tuple(input_shape or network.input_shape), shapes)
    except CnnDslError as err:
        raise err.with_source(network.source) from None
    return shapes


def active(node: ir.Node, shapes: Shapes) -> list[ir.Node]:
    """Nodes that take part in the computation, in order: a shortcut that does not project is skipped."""
    nodes: list[ir.Node] = []
    _collect_active(node, shapes, nodes)
    return nodes


def _collect_active(node: ir.Node, shapes: Shapes, nodes: list[ir.Node]) -> None:
    nodes.append(node)
    if isinstance(node, ir.Residual):
        _collect_active(node.body, shapes, nodes)
        if node.shortcut is not None and shapes.of(node).projects:
            _collect_active(node.shortcut, shapes, nodes)
        return
    for child in node.children():
        _collect_active(child, shapes, nodes)


def _error(node: ir.Node, message: str, hint: str | None = None, notes=()) -> ShapeError:
    return ShapeError(message, node.span, hint=hint, notes=notes, calls=node.calls)


def _need_spatial(node: ir.Node, shape: Shape, what: str) -> None:
    if len(shape) != 3:
        raise _error(node, f"{what} needs a CxHxW input, but its input is the vector {fmt(shape)}",
                     hint=f"move the {what} before 'flatten'/'fc', or remove the flatten")


def _windows(node, shape: Shape, kernel, stride, padding: ir.Padding, dilation=(1, 1), ceil=False):
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
            raise _error(node, f"kernel {fmt(kernel)}{dil} is larger than its padded input {fmt(padded)}",
                         notes=[f"input {fmt(shape)}, padding {padding}"],
                         hint="use a smaller kernel, add padding ('pad same'), or remove a downsampling "
                              "layer before this one")
        axes.append(w)
    return tuple(axes)


def _warn_dropped(node, windows, shape: Shape, shapes: Shapes) -> None:
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


def _infer(node: ir.Node, shape: Shape, shapes: Shapes) -> Shape:
    out = _RULES[type(node)](node, shape, shapes)
    if node.name not in shapes:
        shapes[node.name] = LayerShape(shape, out)
    return out


def _seq(node: ir.Seq, shape: Shape, shapes: Shapes) -> Shape:
    for item in node.items:
        shape = _infer(item, shape, shapes)
    return shape


def _pool(node: ir.Pool, shape: Shape, shapes: Shapes) -> Shape:
    _need_spatial(node, shape, "pool")
    for axis, (k, p) in enumerate(zip(node.kernel, (node.padding.top, node.padding.left), strict=True)):
        far = (node.padding.bottom, node.padding.right)[axis]
        if not node.padding.same and max(p, far) > k // 2:
            raise _error(node, f"pool padding {node.padding} is more than half the {fmt(node.kernel)} window",
                         hint=f"use at most 'pad {k // 2}' (a window of only padding has no value)")
    windows = _windows(node, shape, node.kernel, node.stride, node.padding, ceil=node.ceil)
    _warn_dropped(node, windows, shape, shapes)
    out = (shape[0], windows[0].out, windows[1].out)
    shapes[node.name] = LayerShape(shape, out, windows, shape[0], shape[0])
    return out


def _global_pool(node: ir.GlobalPool, shape: Shape, shapes: Shapes) -> Shape:
    _need_spatial(node, shape, "global pool")
    return (shape[0], 1, 1)


def _same_shape(node: ir.Node, shape: Shape, shapes: Shapes) -> Shape:
    return shape


def _conv(node: ir.Conv, shape: Shape, shapes: Shapes) -> Shape:
    _need_spatial(node, shape, "conv")
    c_in = shape[0]
    if node.depthwise:
        groups = c_in
        c_out = node.out_channels if node.out_channels is not None else c_in * node.multiplier
        if c_out % c_in:
            raise _error(node, f"a depthwise conv on {c_in} channels cannot give {c_out}: each input channel "
                               f"must get the same number of outputs",
                         notes=[f"input {fmt(shape)}"],
                         hint=f"use '-> {c_in * max(c_out // c_in, 1)}' or a multiplier like '-> 2x'")
    else:
        groups, c_out = node.groups, node.out_channels
        assert c_out is not None
        if c_in % groups or c_out % groups:
            bad = [f"{c} {what}" for c, what in ((c_in, "input"), (c_out, "output")) if c % groups]
            raise _error(node, f"groups{groups} does not divide the {' and '.join(bad)} channels",
                         notes=[f"input {fmt(shape)} -> {c_out} channels"],
                         hint=f"pick groups that divide both {c_in} and {c_out}, e.g. "
                              f"groups{math.gcd(c_in, c_out)}")
    windows = _windows(node, shape, node.kernel, node.stride, node.padding, node.dilation)
    _warn_dropped(node, windows, shape, shapes)
    out = (c_out, windows[0].out, windows[1].out)
    shapes[node.name] = LayerShape(shape, out, windows, c_in, c_out, groups)
    return out


def _residual(node: ir.Residual, shape: Shape, shapes: Shapes) -> Shape:
    body = _infer(node.body, shape, shapes)
    projects = node.always or body != shape
    if projects and node.shortcut is None:
        stride = ""
        if len(shape) == 3 and len(body) == 3 and body[1] and shape[1] != body[1]:
            stride = f"/{max(shape[1] // body[1], 1)}"
        suggestion = (f"shortcut {{ conv 1x1{stride} -> {body[0]} nobias; bn }}" if len(body) == 3
                      else f"shortcut {{ fc {body[0]} }}")
        raise _error(node, f"the residual body changes the shape from {fmt(shape)} to {fmt(body)}, "
                           f"so it cannot be added to its input",
                     hint=f"add a projection after the closing brace: '}} {suggestion}'")
    if projects:
        short = _infer(node.shortcut, shape, shapes)
        if short != body:
            raise _error(node, f"the shortcut gives {fmt(short)} but the residual body gives {fmt(body)}",
                         notes=[f"input {fmt(shape)}"],
                         hint=_shortcut_hint(shape, body))
    shapes[node.name] = LayerShape(shape, body, projects=projects)
    return body


def _shortcut_hint(shape: Shape, body: Shape) -> str:
    if len(body) != 3 or len(shape) != 3:
        return f"make the shortcut end in {fmt(body)}, e.g. 'fc {body[0]}'" if len(body) == 1 else \
            f"make the shortcut end in {fmt(body)}"
    stride = max(shape[1] // body[1], 1)
    return f"make the shortcut end in {fmt(body)}, e.g. 'conv 1x1{f'/{stride}' if stride > 1 else ''} -> {body[0]}'"


def _branches(node: ir.Concat | ir.Add, shape: Shape, shapes: Shapes) -> Shape:
    outs = [_infer(branch, shape, shapes) for branch in node.branches]
    listing = [f"branch {i} gives {fmt(o)}" for i, o in enumerate(outs, 1)]
    if isinstance(node, ir.Add):
        if len(set(outs)) > 1:
            raise _error(node, "add needs every branch to give the same shape", notes=listing,
                         hint="make the branches end in the same channels and size (a 1x1 conv can project)")
        return outs[0]
    ranks = {len(o) for o in outs}
    if len(ranks) > 1 or (ranks == {3} and len({o[1:] for o in outs}) > 1):
        raise _error(node, "concat joins branches on channels, so their height x width must agree", notes=listing,
                     hint="give every branch the same strides and 'pad' so the sizes match")
    return (sum(o[0] for o in outs),) + outs[0][1:]


# The shape rule of each node kind.
_RULES = {
    ir.Seq: _seq,
    ir.Conv: _conv,
    ir.Pool: _pool,
    ir.GlobalPool: _global_pool,
    ir.Linear: lambda node, shape, shapes: (node.out_features,),
    ir.Flatten: lambda node, shape, shapes: (math.prod(shape),),
    ir.Dropout: _same_shape,
    ir.Activation: _same_shape,
    ir.BatchNorm: _same_shape,
    ir.Residual: _residual,
    ir.Concat: _branches,
    ir.Add: _branches,
}
