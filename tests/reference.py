"""The reference every backend is checked against: a network run straight from its IR in plain PyTorch.

Written from the contract in docs/backends.md, not from any backend: no generated code, no
cnndsl.runtime kernel, no torch.nn module, no PyTorch pooling (windows are cut with `unfold`, so
the ceil-mode and padding rules are the documented ones, not PyTorch's by construction).
Activations and batch norm are their formulas. Shapes and pads come from the shape pass, as every
backend's do. PyTorch is here for its arithmetic and autograd: parity tests compare gradients too.

One rule per IR node class, in `RULES`; a new layer kind is added here once (a new activation in
`ACTIVATIONS`), and every backend's parity tests check it. `test_reference_has_a_rule_per_kind`
fails naming a node class without one.

    forward(net, tensors, x, train=..., masks=..., pieces=...)  -> torch tensor, differentiable
    evaluate(net, weights, x, dtype=np.float64)                 -> NumPy array, evaluation mode

Importing this module does not import torch; the first call does, through `extras.require`, so a
test that uses the reference is skipped (or fails under CI) when torch is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from extras import require

from cnndsl import ir

torch: Any = None  # imported on first use
F: Any = None

# Defaults of the activations' argument, as docs/backends.md states them (not read from cnndsl).
DEFAULT_ALPHA = {"leaky": 0.01, "elu": 1.0}


def _import_torch() -> None:
    global torch, F
    if torch is None:
        torch = require("torch")
        F = torch.nn.functional


# ------------------------------------------------------------------ one pass over the IR

Rule = Callable[["Pass", Any, Any], Any]
RULES: dict[type, Rule] = {}


def rule(*kinds: type) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for kind in kinds:
            RULES[kind] = fn
        return fn

    return register


class Pass:
    """The state of one forward pass: the tensors, the mode, and optional fixed choices.

    `masks` {dropout name: array} are the dropout masks (scaled by 1/(1-p)) to apply in training.
    `pieces` fixes the branch each kink takes, as the NumPy backend's pass took it: {relu name:
    0/1 mask of its positive inputs}, {relu6 name: (0/1 mask of inputs in (0, 6), 0/1 mask of
    inputs >= 6)}, {max pool name: (flat indices of each window's winner
    into the padded input, (top, bottom, left, right))} and {adaptive max pool name: flat indices of
    each window's winner into its H x W image}. Then rounding cannot make the two
    implementations take different sides of a kink, and the comparison is of the arithmetic."""

    def __init__(self, net, tensors: Mapping[str, Any], train: bool, masks, pieces):
        self.shapes = net.shapes
        self.tensors = tensors
        self.train = train
        self.masks = masks or {}
        self.pieces = pieces or {}

    def __call__(self, node, x):
        try:
            fn = RULES[type(node)]
        except KeyError:
            raise NotImplementedError(f"tests/reference.py has no rule for {type(node).__name__}: add one") from None
        return fn(self, node, x)

    def tensor(self, node, role: str):
        """`<node name>.<role>`, or None where the node has no such tensor (a conv without bias)."""
        return self.tensors.get(f"{node.name}.{role}")


@rule(ir.Seq)
def _seq(run: Pass, node: ir.Seq, x):
    for item in node.items:
        x = run(item, x)
    return x


@rule(ir.Residual)
def _residual(run: Pass, node: ir.Residual, x):
    shortcut = run(node.shortcut, x) if run.shapes.of(node).projects else x
    return run(node.body, x) + shortcut


@rule(ir.Concat)
def _concat(run: Pass, node: ir.Concat, x):
    outs = [run(branch, x) for branch in node.branches]
    if node.crop:  # every branch to the smallest height and width, its centre: offset (H - h) // 2
        height, width = min(y.shape[2] for y in outs), min(y.shape[3] for y in outs)
        outs = [y[:, :, (y.shape[2] - height) // 2:][:, :, :height, (y.shape[3] - width) // 2:][..., :width]
                for y in outs]
    return torch.cat(outs, dim=1)


@rule(ir.Add)
def _add(run: Pass, node: ir.Add, x):
    return sum(run(branch, x) for branch in node.branches)


@rule(ir.Mul)
def _mul(run: Pass, node: ir.Mul, x):
    product = None
    for branch in node.branches:  # a Cx1x1 gate broadcasts over HxW
        y = run(branch, x)
        product = y if product is None else product * y
    return product


@rule(ir.Conv)
def _conv(run: Pass, node: ir.Conv, x):
    shape = run.shapes.of(node)
    top, bottom, left, right = shape.pads
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, run.tensor(node, "weight"), run.tensor(node, "bias"), node.stride, 0, node.dilation,
                    shape.groups)


def windows_along(size: int, trailing_pad: int, kernel: int, stride: int, ceil: bool) -> int:
    """How many windows fit along an axis of the padded input (`size` includes the padding).
    Ceil mode adds a last, partial window, but never one starting in the trailing padding."""
    if not ceil:
        return (size - kernel) // stride + 1
    count = -(-(size - kernel) // stride) + 1
    if (count - 1) * stride >= size - trailing_pad:
        count -= 1
    return count


@rule(ir.Pool)
def _pool(run: Pass, node: ir.Pool, x):
    if node.name in run.pieces:  # the winners the NumPy backend chose
        index, (top, bottom, left, right) = run.pieces[node.name]
        flat = F.pad(x, (left, right, top, bottom), value=-math.inf).flatten(2)
        index = torch.from_numpy(index)
        return torch.gather(flat, 2, index.flatten(2)).view(index.shape)
    top, bottom, left, right = run.shapes.of(node).pads
    fill = -math.inf if node.mode == "max" else 0.0  # max pools never pick padding; avg counts its zeros
    x = F.pad(x, (left, right, top, bottom), value=fill)
    (kh, kw), (sh, sw) = node.kernel, node.stride
    height, width = x.shape[2:]
    oh = windows_along(height, bottom, kh, sh, node.ceil)
    ow = windows_along(width, right, kw, sw, node.ceil)
    # a ceil-mode window may run past input + padding: extend with the fill, and divide by the part inside
    x = F.pad(x, (0, max((ow - 1) * sw + kw - width, 0), 0, max((oh - 1) * sh + kh - height, 0)), value=fill)
    cells = x.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :oh, :ow].flatten(4)  # N, C, oh, ow, kh*kw
    if node.mode == "max":  # a tie goes to the first cell in scan order (its gradient too), as in PyTorch
        return cells.gather(4, cells.argmax(4, keepdim=True)).squeeze(4)
    rows = torch.tensor([min(i * sh + kh, height) - i * sh for i in range(oh)], dtype=x.dtype)
    cols = torch.tensor([min(j * sw + kw, width) - j * sw for j in range(ow)], dtype=x.dtype)
    return cells.sum(4) / (rows[:, None] * cols[None, :])


@rule(ir.GlobalPool)
def _global_pool(run: Pass, node: ir.GlobalPool, x):
    if node.mode == "avg":
        return x.mean(dim=(2, 3), keepdim=True)
    flat = x.flatten(2)
    return flat.gather(2, flat.argmax(2, keepdim=True)).unsqueeze(3)  # the first maximum takes the gradient


@rule(ir.AdaptivePool)
def _adaptive_pool(run: Pass, node: ir.AdaptivePool, x):
    """Window i of `out` over `size` rows: rows floor(i*size/out) up to, not including,
    ceil((i+1)*size/out) (docs/language.md), per axis; each window cut out by slicing."""
    height, width = x.shape[2:]
    rows = [(i * height // node.size[0], -(-(i + 1) * height // node.size[0])) for i in range(node.size[0])]
    cols = [(j * width // node.size[1], -(-(j + 1) * width // node.size[1])) for j in range(node.size[1])]
    if node.name in run.pieces:  # the winners the NumPy backend chose: flat indices into each H x W image
        index = torch.from_numpy(run.pieces[node.name])
        return torch.gather(x.flatten(2), 2, index.flatten(2)).view(index.shape)
    out = []
    for top, bottom in rows:
        line = []
        for left, right in cols:
            cells = x[:, :, top:bottom, left:right].flatten(2)
            # max: a tie goes to the window's first maximum in row-major order (its gradient too), as in PyTorch
            line.append(cells.mean(2) if node.mode == "avg" else cells.gather(2, cells.argmax(2, keepdim=True))[..., 0])
        out.append(torch.stack(line, dim=2))
    return torch.stack(out, dim=2)


@rule(ir.Linear)
def _linear(run: Pass, node: ir.Linear, x):
    y = x.flatten(1) @ run.tensor(node, "weight").T  # a CxHxW input flattens in C, H, W order
    bias = run.tensor(node, "bias")
    return y if bias is None else y + bias


@rule(ir.Flatten)
def _flatten(run: Pass, node: ir.Flatten, x):
    return x.flatten(1)


@rule(ir.Dropout)
def _dropout(run: Pass, node: ir.Dropout, x):
    mask = run.masks.get(node.name)
    if not run.train or mask is None:  # identity in evaluation (and in training without a given mask)
        return x
    return x * torch.as_tensor(mask, dtype=x.dtype)


@rule(ir.DropPath)
def _drop_path(run: Pass, node: ir.DropPath, x):
    mask = run.masks.get(node.name)  # N x 1 x 1 x 1 (or N x 1): a whole sample kept, scaled, or dropped
    if not run.train or mask is None:
        return x
    return x * torch.as_tensor(mask, dtype=x.dtype)


@rule(ir.BatchNorm)
def _batch_norm(run: Pass, node: ir.BatchNorm, x):
    view = (1, -1) + (1,) * (x.dim() - 2)  # BatchNorm1d on a vector, BatchNorm2d on a feature map
    mean, var = run.tensor(node, "running_mean"), run.tensor(node, "running_var")
    if run.train:
        dims = (0, *range(2, x.dim()))
        count = x.numel() // x.shape[1]
        batch_mean, batch_var = x.mean(dims), x.var(dims, correction=0)
        with torch.no_grad():  # the running statistics take the unbiased variance
            mean.mul_(1 - node.momentum).add_(node.momentum * batch_mean)
            var.mul_(1 - node.momentum).add_(node.momentum * batch_var * count / (count - 1))
            tracked = run.tensor(node, "num_batches_tracked")
            if tracked is not None:
                tracked.add_(1)
        mean, var = batch_mean, batch_var
    normal = (x - mean.view(view)) / torch.sqrt(var.view(view) + node.eps)
    return normal * run.tensor(node, "weight").view(view) + run.tensor(node, "bias").view(view)


def _standardised(x, dims: tuple[int, ...], eps: float):
    """(x - mean) / sqrt(var + eps) over `dims`, with the biased variance."""
    mean = x.mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(dims, keepdim=True, correction=0) + eps)


def _affine(run: Pass, node, normal):
    view = (1, -1) + (1,) * (normal.dim() - 2)  # a weight and a bias per channel
    return normal * run.tensor(node, "weight").view(view) + run.tensor(node, "bias").view(view)


@rule(ir.LayerNorm)
def _layer_norm(run: Pass, node: ir.LayerNorm, x):
    return _affine(run, node, _standardised(x, (1,), node.eps))  # over the channels at each position


@rule(ir.GroupNorm)
def _group_norm(run: Pass, node: ir.GroupNorm, x):
    grouped = x.reshape(x.shape[0], node.groups, -1)  # consecutive channels form a group, with their positions
    return _affine(run, node, _standardised(grouped, (2,), node.eps).reshape(x.shape))


def _source(size: int, out: int, factor: int | None, dtype, offset: float):
    """Output positions o = 0..out-1 as input positions (o + offset) * scale - offset, scale = in/out
    (1/factor for `Nx`) rounded to the tensor's float type, the arithmetic PyTorch does in it."""
    if factor:
        scale = torch.tensor(1.0 / factor, dtype=torch.float64).to(dtype)
    else:
        scale = torch.tensor(size, dtype=dtype) / torch.tensor(out, dtype=dtype)
    return (torch.arange(out, dtype=dtype) + offset) * scale - offset


def _resize_axis(x, axis: int, out: int, factor: int | None, mode: str):
    size = x.shape[axis]
    if out == size:
        return x
    if mode == "nearest":  # output o is input floor(o * scale), the last row at most (o // 2 for twice the size)
        if out == 2 * size:
            return x.index_select(axis, torch.arange(out) // 2)
        return x.index_select(axis, _source(size, out, factor, x.dtype, 0.0).floor().long().clamp(max=size - 1))
    # bilinear, align_corners=False: (o + 0.5) * scale - 0.5, below 0 clamped to 0; between rows i0 and i0 + 1
    src = _source(size, out, factor, x.dtype, 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=size - 1)
    w1 = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    view = [1] * x.dim()
    view[axis] = out
    return x.index_select(axis, i0) * (1 - w1).view(view) + x.index_select(axis, i1) * w1.view(view)


@rule(ir.Upsample)
def _upsample(run: Pass, node: ir.Upsample, x):
    out = run.shapes.of(node).output[1:]
    return _resize_axis(_resize_axis(x, 2, out[0], node.factor, node.mode), 3, out[1], node.factor, node.mode)


@rule(ir.Deconv)
def _deconv(run: Pass, node: ir.Deconv, x):
    # The transposed convolution as a convolution: the input spread out by the stride (S - 1 zeros between
    # pixels), padded by K - 1 - P (and outpad at the end), convolved with the kernel flipped and its
    # channel axes swapped per group.
    shape = run.shapes.of(node)
    (sh, sw), (kh, kw), (ph, pw), (eh, ew), g = node.stride, node.kernel, node.pads, node.outpad, shape.groups
    n, c, h, w = x.shape
    spread = x.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    spread[:, :, ::sh, ::sw] = x
    pads = (kw - 1 - pw, kw - 1 - pw + ew, kh - 1 - ph, kh - 1 - ph + eh)
    spread = F.pad(spread, tuple(max(p, 0) for p in pads))
    top, left = max(-pads[2], 0), max(-pads[0], 0)  # padding larger than K - 1 crops instead
    spread = spread[:, :, top:spread.shape[2] - max(-pads[3], 0), left:spread.shape[3] - max(-pads[1], 0)]
    weight = run.tensor(node, "weight")  # (C_in, C_out/g, kh, kw)
    weight = weight.view(g, c // g, -1, kh, kw).transpose(1, 2).reshape(-1, c // g, kh, kw).flip(2, 3)
    return F.conv2d(spread, weight, run.tensor(node, "bias"), groups=g)


@rule(ir.LayerScale)
def _layer_scale(run: Pass, node: ir.LayerScale, x):
    return x * run.tensor(node, "layer_scale")  # (C, 1, 1) on images, (C,) on vectors


@rule(ir.Shuffle)
def _shuffle(run: Pass, node: ir.Shuffle, x):
    per = x.shape[1] // node.groups  # output channel j * G + g is input channel g * C/G + j
    return x[:, [g * per + j for j in range(per) for g in range(node.groups)]]


@rule(ir.Channels)
def _channels(run: Pass, node: ir.Channels, x):
    start = 0 if node.start is None else node.start
    return x[:, start:x.shape[1] if node.stop is None else node.stop]


def _relu6(x):  # flat (zero gradient) at both ends, as PyTorch's hardtanh
    return torch.where(x <= 0, 0.0, torch.where(x >= 6, 6.0, x))


ACTIVATIONS: dict[str, Callable[[Any, float | None], Any]] = {  # fn -> f(x, alpha), from their formulas
    "relu": lambda x, a: torch.where(x > 0, x, 0.0),
    "relu6": lambda x, a: _relu6(x),
    "leaky": lambda x, a: torch.where(x > 0, x, a * x),
    "elu": lambda x, a: torch.where(x > 0, x, a * torch.expm1(x.clamp(max=0))),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "gelu": lambda x, a: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),  # exact, not the tanh approximation
    "silu": lambda x, a: x * torch.sigmoid(x),
    "hardswish": lambda x, a: x * _relu6(x + 3) / 6,
    "hardsigmoid": lambda x, a: _relu6(x + 3) / 6,
    "softmax": lambda x, a: _softmax(x),
}


def _softmax(x):  # over dim 1, the channels or features
    e = torch.exp(x - x.amax(dim=1, keepdim=True).detach())
    return e / e.sum(dim=1, keepdim=True)


@rule(ir.Activation)
def _activation(run: Pass, node: ir.Activation, x):
    if node.name in run.pieces:  # the relu (relu6) masks the NumPy backend's pass took
        piece = run.pieces[node.name]
        if isinstance(piece, tuple):  # relu6: x inside (0, 6), 6 above it
            inside, above = (torch.from_numpy(mask).to(x.dtype) for mask in piece)
            return x * inside + 6 * above
        return x * torch.from_numpy(piece).to(x.dtype)
    try:
        fn = ACTIVATIONS[node.fn]
    except KeyError:
        raise NotImplementedError(f"tests/reference.py has no activation {node.fn!r}: add it to ACTIVATIONS") \
            from None
    return fn(x, node.alpha if node.alpha is not None else DEFAULT_ALPHA.get(node.fn))


# ------------------------------------------------------------------ entry points


def _preprocess(net, tensors, x):
    pre = net.ir.preprocess
    if pre is None:
        return x
    x = x * tensors["preprocess.scale"]
    if pre.standardize:
        view = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - tensors["preprocess.mean"].view(view)) / tensors["preprocess.std"].view(view)
    return x


def forward(net, tensors: Mapping[str, Any], x, *, train: bool = False, masks=None, pieces=None):
    """`net` on the batch `x` (a torch tensor) with `tensors` {name: torch tensor or array}.

    Torch tensors are used as given (leaves with requires_grad collect gradients; in training the
    batch norm buffers among them are updated in place); arrays are copied, floating ones to x's
    dtype. See `Pass` for `masks` and `pieces`."""
    _import_torch()
    tensors = {name: value if isinstance(value, torch.Tensor) else _tensor(value, x.dtype)
               for name, value in tensors.items()}
    return Pass(net, tensors, train, masks, pieces)(net.ir.body, _preprocess(net, tensors, x))


def evaluate(net, weights: Mapping[str, Any], x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The evaluation-mode output for the NumPy batch `x`, computed in `dtype` (float64 unless told)."""
    _import_torch()
    with torch.no_grad():
        return forward(net, weights, torch.from_numpy(np.asarray(x, dtype=dtype))).numpy()


def _tensor(value, dtype):
    array = np.asarray(value)
    tensor = torch.tensor(array)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor
