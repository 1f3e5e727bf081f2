"""Layer kernels: a forward and a backward function per op, vectorised NumPy, NCHW.

Every `*_forward` returns `(y, cache)` and its `*_backward(dy, cache)` returns the input
gradient first, then the parameter gradients. Backward functions never write into `dy` or into
anything they received, so one gradient array may safely feed several branches.

Convolution is im2col + one matmul: a strided view (`sliding_window_view`) of the padded input is
copied once into a (groups, C/groups*kh*kw, N*OH*OW) column matrix and multiplied by the
(groups, O/groups, C/groups*kh*kw) weight matrix. Backpropagation reuses the same two matrices:
the weight gradient is the correlation of the input columns with the output gradient (one
matmul), and the input gradient is the transposed convolution with the flipped kernel, computed
as `W^T @ dY` followed by col2im, a scatter-add over the kh*kw kernel taps (a loop over taps,
never over pixels). Depthwise and grouped convolutions are the same code with groups > 1.

Max pooling is a running maximum over the kh*kw window cells (each a strided view, a whole-tensor
op), and its backward routes every gradient to the first maximal cell, as PyTorch does.

Window arithmetic (output sizes, ceil mode) is `cnndsl.analysis.shapes.window`, the one rule
the compiler and every backend share.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..analysis.shapes import window

Pads = tuple[int, int, int, int]  # (top, bottom, left, right), as LayerShape.pads
Pair = tuple[int, int]
Cache = dict[str, Any]

try:  # exact erf, vectorised; scipy is optional
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - exercised only without scipy
    _erf_scalar = np.frompyfunc(math.erf, 1, 1)

    def _erf(x: np.ndarray) -> np.ndarray:
        # math.erf is accurate to about an ulp: slower than scipy, but right in float64 gradient checks.
        return _erf_scalar(x).astype(x.dtype)


# ---------------------------------------------------------------- sliding windows


def _pad(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair, out: Pair) -> np.ndarray:
    """A (N, C, OH, OW, kh, kw) strided view of the padded input: no copy."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out
    view = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return view[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


def _col2im(cols: np.ndarray, padded_hw: Pair, kernel: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """The adjoint of `_windows`: sum (C, N, kh, kw, OH, OW) columns back into a (C, N, Hp, Wp) image."""
    c, n, kh, kw, oh, ow = cols.shape
    (sh, sw), (dh, dw) = stride, dilation
    out = np.zeros((c, n, *padded_hw), dtype=cols.dtype)
    for i in range(kh):  # one strided add per kernel tap; each covers every pixel at once
        for j in range(kw):
            out[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw] += cols[
                :, :, i, j
            ]
    return out


def _axes(x_hw: Pair, kernel: Pair, stride: Pair, pads: Pads, dilation: Pair = (1, 1), ceil: bool = False):
    """Both axes' windows, by the shape pass's one rule."""
    axes = []
    for axis in range(2):
        w = window(x_hw[axis], kernel[axis], stride[axis], pads[2 * axis], pads[2 * axis + 1], dilation[axis], ceil)
        if w is None:
            raise ValueError(f"kernel {kernel} is larger than the padded input {x_hw} (pads {pads})")
        axes.append(w)
    return axes


def _out_size(x_hw: Pair, kernel: Pair, stride: Pair, pads: Pads, dilation: Pair = (1, 1), ceil: bool = False):
    return tuple(w.out for w in _axes(x_hw, kernel, stride, pads, dilation, ceil))


def _pool_geometry(x_hw: Pair, kernel: Pair, stride: Pair, pads: Pads, ceil: bool) -> tuple[Pair, Pads]:
    """The output size, and `pads` grown at the end so the last ceil-mode window fits in the array."""
    h, w = _axes(x_hw, kernel, stride, pads, ceil=ceil)
    top, bottom, left, right = pads
    return (h.out, w.out), (top, bottom + h.overhang, left, right + w.overhang)


def _crop(xp: np.ndarray, pads: Pads, hw: Pair) -> np.ndarray:
    return xp[..., pads[0] : pads[0] + hw[0], pads[2] : pads[2] + hw[1]]


# ---------------------------------------------------------------- convolution


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair = (1, 1),
                   pads: Pads = (0, 0, 0, 0), dilation: Pair = (1, 1), groups: int = 1,
                   keep: bool = True) -> tuple[np.ndarray, Cache]:
    """Cross-correlation as PyTorch's conv2d, with explicit (possibly asymmetric) padding.

    `keep=False` drops the column matrix from the cache (inference); backward then rebuilds it.
    """
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = _out_size((h, wd), (kh, kw), stride, pads, dilation)
    cache = {"x": x, "w": w, "cols": None, "has_bias": b is not None, "stride": stride, "pads": pads,
             "dilation": dilation, "groups": groups, "out": (oh, ow)}
    if (kh, kw) == (1, 1) and stride == (1, 1) and not any(pads) and groups == 1:
        # A pointwise conv is a matmul on the input as it lies, image by image: no column
        # matrix to copy, and the (N, O, H*W) result is already NCHW.
        y = np.matmul(w.reshape(o, c), x.reshape(n, c, h * wd)).reshape(n, o, h, wd)
        if b is not None:
            y += b.reshape(o, 1, 1)
        return y, cache
    cols = _im2col(x, (kh, kw), stride, pads, dilation, groups, (oh, ow))
    # One matmul for all groups, all images and all pixels: (G, O/G, K) @ (G, K, N*OH*OW).
    y = np.matmul(w.reshape(groups, o // groups, cg * kh * kw), cols)
    out = np.empty((n, o, oh, ow), dtype=y.dtype)
    y = y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    if b is not None:
        np.add(y, b.reshape(o, 1, 1), out=out)
    else:
        np.copyto(out, y)
    if keep:
        cache["cols"] = cols
    return out, cache


def _im2col(x, kernel, stride, pads, dilation, groups, out):
    n, c = x.shape[:2]
    view = _windows(_pad(x, pads), kernel, stride, dilation, out)  # N, C, OH, OW, kh, kw
    # The only copy of the input: channels and taps first so each group's K rows are contiguous.
    return view.transpose(1, 4, 5, 0, 2, 3).reshape(groups, (c // groups) * kernel[0] * kernel[1], n * out[0] * out[1])


def conv2d_backward(dy: np.ndarray, cache: Cache,
                    input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db); dx is None without `input_grad` (the network's input needs none)."""
    x, w, groups = cache["x"], cache["w"], cache["groups"]
    stride, pads, dilation, (oh, ow) = cache["stride"], cache["pads"], cache["dilation"], cache["out"]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = cache["cols"]
    if cols is None:
        cols = _im2col(x, (kh, kw), stride, pads, dilation, groups, (oh, ow))
    dyg = dy.transpose(1, 0, 2, 3).reshape(groups, o // groups, n * oh * ow)
    # Weight gradient: the correlation of the input (as columns) with the output gradient.
    # (cols @ dY^T)^T rather than dY @ cols^T: the same product, and BLAS runs it faster this way round.
    dw = np.matmul(cols, dyg.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(w.shape)
    db = dy.sum(axis=(0, 2, 3)) if cache["has_bias"] else None
    if not input_grad:
        return None, dw, db
    # Input gradient: the transposed convolution, W^T @ dY then col2im (the flipped-kernel conv).
    dcols = np.matmul(w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1), dyg)
    dcols = dcols.reshape(c, kh, kw, n, oh, ow).transpose(0, 3, 1, 2, 4, 5)
    padded = (h + pads[0] + pads[1], wd + pads[2] + pads[3])
    dxp = _col2im(dcols, padded, (kh, kw), stride, dilation)
    dx = np.ascontiguousarray(_crop(dxp, pads, (h, wd)).transpose(1, 0, 2, 3))
    return dx, dw, db


# ---------------------------------------------------------------- pooling


def _taps(xp: np.ndarray, kernel: Pair, stride: Pair, out: Pair):
    """The kh*kw strided views of the padded input, one per window cell (no copies), in scan order."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    for i in range(kh):
        for j in range(kw):
            yield (i, j), xp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]


def max_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, pads: Pads = (0, 0, 0, 0),
                       ceil: bool = False) -> tuple[np.ndarray, Cache]:
    """Max pooling; padding is -inf, so a padded cell never wins.

    A running maximum over the kh*kw window cells (a loop over cells, each a whole-tensor op):
    cheaper than copying every window out and calling argmax on rows of 4 or 9."""
    n, c, h, wd = x.shape
    out, full = _pool_geometry((h, wd), kernel, stride, pads, ceil)
    xp = _pad(x, full, -np.inf)
    y = None
    for _, tap in _taps(xp, kernel, stride, out):
        y = tap.copy() if y is None else np.maximum(y, tap, out=y)
    return y, {"xp": xp, "y": y, "x_shape": x.shape, "full": full, "kernel": kernel, "stride": stride}


def max_pool2d_winners(cache: Cache) -> np.ndarray:
    """Index (i * kw + j) of the cell that won each window: the first maximum in scan order, as
    PyTorch picks it. Backward routes the gradient there."""
    xp, y, kernel, stride = cache["xp"], cache["y"], cache["kernel"], cache["stride"]
    winner = np.full(y.shape, -1, dtype=np.int64)
    for (i, j), tap in _taps(xp, kernel, stride, y.shape[2:]):
        winner[(winner < 0) & (tap == y)] = i * kernel[1] + j
    return winner


def max_pool2d_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """Route each output gradient to the input cell that won its window (argmax routing)."""
    xp, y, kernel, stride = cache["xp"], cache["y"], cache["kernel"], cache["stride"]
    (h, wd), (oh, ow) = cache["x_shape"][2:], y.shape[2:]
    # Windows that tile the padded input exactly (2/2 on an even size) write each cell once.
    disjoint = kernel == stride and xp.shape[2:] == (oh * kernel[0], ow * kernel[1])
    dxp = np.empty(xp.shape, dtype=dy.dtype) if disjoint else np.zeros(xp.shape, dtype=dy.dtype)
    won = np.empty(y.shape, dtype=bool)
    open_ = np.ones(y.shape, dtype=bool)  # windows whose winner is still to be found
    part = None if disjoint else np.empty(y.shape, dtype=dy.dtype)
    for (i, j), tap in _taps(xp, kernel, stride, (oh, ow)):
        np.equal(tap, y, out=won)
        won &= open_
        open_ ^= won  # won is a subset of open_
        target = dxp[:, :, i : i + (oh - 1) * stride[0] + 1 : stride[0], j : j + (ow - 1) * stride[1] + 1 : stride[1]]
        if disjoint:
            np.multiply(dy, won, out=target)
        else:  # overlapping windows (3x3/2) may pick the same cell: their gradients add up
            np.multiply(dy, won, out=part)
            target += part
    return np.ascontiguousarray(_crop(dxp, cache["full"], (h, wd)))


def _avg_divisor(x_hw: Pair, kernel: Pair, stride: Pair, pads: Pads, out: Pair, dtype) -> np.ndarray:
    """Cells of each window inside input + padding (PyTorch's count_include_pad, ceil overhang excluded)."""
    counts = []
    for axis in range(2):
        limit = x_hw[axis] + pads[2 * axis] + pads[2 * axis + 1]
        start = np.arange(out[axis]) * stride[axis]
        counts.append(np.minimum(start + kernel[axis], limit) - start)
    return np.outer(counts[0], counts[1]).astype(dtype)


def avg_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, pads: Pads = (0, 0, 0, 0),
                       ceil: bool = False) -> tuple[np.ndarray, Cache]:
    n, c, h, wd = x.shape
    out, full = _pool_geometry((h, wd), kernel, stride, pads, ceil)
    xp = _pad(x, full)
    divisor = _avg_divisor((h, wd), kernel, stride, pads, out, x.dtype)
    y = _windows(xp, kernel, stride, (1, 1), out).sum(axis=(4, 5)) / divisor
    return y, {"x_shape": x.shape, "padded": xp.shape[2:], "full": full, "kernel": kernel, "stride": stride,
               "divisor": divisor}


def avg_pool2d_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    n, c, h, wd = cache["x_shape"]
    (kh, kw) = cache["kernel"]
    g = (dy / cache["divisor"]).transpose(1, 0, 2, 3)  # C, N, OH, OW: the layout _col2im takes
    cols = np.broadcast_to(g[:, :, None, None], (c, n, kh, kw, *g.shape[2:]))
    dxp = _col2im(cols, cache["padded"], cache["kernel"], cache["stride"], (1, 1))
    return np.ascontiguousarray(_crop(dxp, cache["full"], (h, wd)).transpose(1, 0, 2, 3))


def global_avg_pool_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    return x.mean(axis=(2, 3), keepdims=True), {"x_shape": x.shape}


def global_avg_pool_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    n, c, h, w = cache["x_shape"]
    return np.broadcast_to(dy / (h * w), (n, c, h, w)).copy()


def global_max_pool_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    arg = flat.argmax(axis=2)  # the first maximum, as max_pool2d over the whole image
    return np.take_along_axis(flat, arg[..., None], axis=2).reshape(n, c, 1, 1), {"x_shape": x.shape, "arg": arg}


def global_max_pool_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    n, c, h, w = cache["x_shape"]
    dx = np.zeros((n, c, h * w), dtype=dy.dtype)
    np.put_along_axis(dx, cache["arg"][..., None], dy.reshape(n, c, 1), axis=2)
    return dx.reshape(n, c, h, w)


# ---------------------------------------------------------------- fully connected, flatten, dropout


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, Cache]:
    """fc: flattens a CxHxW input in C,H,W order first."""
    flat = x.reshape(x.shape[0], -1)
    y = flat @ w.T
    if b is not None:
        y += b
    return y, {"x": flat, "x_shape": x.shape, "w": w, "has_bias": b is not None}


def linear_backward(dy: np.ndarray, cache: Cache,
                    input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    dx = (dy @ cache["w"]).reshape(cache["x_shape"]) if input_grad else None
    dw = dy.T @ cache["x"]
    db = dy.sum(axis=0) if cache["has_bias"] else None
    return dx, dw, db


def dropout_forward(x: np.ndarray, p: float, rng: np.random.Generator, train: bool) -> tuple[np.ndarray, Cache]:
    """Inverted dropout: kept activations are scaled by 1/(1-p) in training, so evaluation is the identity."""
    if not train or p == 0.0:
        return x, {"mask": None}
    if p >= 1.0:
        mask = np.zeros(x.shape, dtype=x.dtype)
    else:
        mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, {"mask": mask}


def dropout_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    return dy if cache["mask"] is None else dy * cache["mask"]


def droppath_forward(x: np.ndarray, p: float, rng: np.random.Generator, train: bool) -> tuple[np.ndarray, Cache]:
    """Stochastic depth: in training each sample is kept with probability 1 - p and scaled by
    1/(1 - p) (torchvision's `stochastic_depth`, mode "row"); the mask's backward is dropout's."""
    if not train or p == 0.0:
        return x, {"mask": None}
    keep = 1.0 - p
    mask = (rng.random((x.shape[0],) + (1,) * (x.ndim - 1)) < keep).astype(x.dtype) / x.dtype.type(keep)
    return x * mask, {"mask": mask}


def mul_forward(xs: list[np.ndarray]) -> np.ndarray:
    """The elementwise product of the branches; a Nx C x1x1 gate broadcasts over HxW."""
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


def mul_backward(dy: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
    """d/dx_i of the product: dy times the other factors, summed over HxW for a broadcast gate."""
    grads = []
    for i, x in enumerate(xs):
        g = dy
        for j, other in enumerate(xs):
            if j != i:
                g = g * other
        grads.append(g.sum(axis=(2, 3), keepdims=True) if g.shape != x.shape else g)
    return grads


# ---------------------------------------------------------------- batch normalisation


def _bn_axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduction axes and the shape that broadcasts a per-channel vector: BatchNorm2d or BatchNorm1d."""
    if x.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    return (0,), (1, -1)


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, num_batches_tracked: np.ndarray, eps: float, momentum: float,
                       train: bool) -> tuple[np.ndarray, Cache]:
    """PyTorch's BatchNorm. In training the running buffers are updated in place (mean, unbiased
    variance, num_batches_tracked += 1); in evaluation they normalise."""
    axes, shape = _bn_axes(x)
    if train:
        count = x.size // x.shape[1]
        if count < 2:  # as PyTorch: one value per channel has no variance to normalise by
            raise ValueError(f"batch norm in training needs more than 1 value per channel, got input {x.shape}")
        # Statistics accumulated in float64 (as PyTorch's CPU kernel does): a float32 sum over
        # N*H*W values loses digits that every normalised output then carries.
        mean = x.mean(axis=axes, dtype=np.float64)
        centred = x - mean.reshape(shape).astype(x.dtype)
        var = np.mean(centred * centred, axis=axes, dtype=np.float64)  # biased: what normalises the batch
        unbiased = var * (count / (count - 1))
        running_mean *= 1.0 - momentum
        running_mean += (momentum * mean).astype(running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += (momentum * unbiased).astype(running_var.dtype)
        num_batches_tracked += 1
    else:
        mean, var = running_mean, running_var
        centred = x - mean.reshape(shape)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centred * inv_std.reshape(shape).astype(x.dtype, copy=False)
    y = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return y, {"xhat": xhat, "inv_std": inv_std.astype(x.dtype, copy=False), "gamma": gamma, "train": train}


def batch_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta). In training the batch statistics depend on x, which adds the two mean terms."""
    xhat, inv_std, gamma = cache["xhat"], cache["inv_std"], cache["gamma"]
    axes, shape = _bn_axes(dy)
    # Accumulated in float64: these sums cancel heavily (xhat has zero mean), and float32
    # accumulation over N*H*W terms would lose digits that the input gradient then needs.
    dbeta = dy.sum(axis=axes, dtype=np.float64).astype(dy.dtype)
    dgamma = np.einsum("ncij,ncij->c" if dy.ndim == 4 else "nc,nc->c", dy, xhat, dtype=np.float64).astype(dy.dtype)
    scale = (gamma * inv_std).reshape(shape)
    if not cache["train"]:
        return dy * scale, dgamma, dbeta
    count = dy.size // dy.shape[1]
    dx = scale * (dy - (dbeta / count).reshape(shape) - xhat * (dgamma / count).reshape(shape))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- activations
# Each forward caches what its derivative needs; derivatives at kinks follow PyTorch's choices.


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    return np.maximum(x, 0), {"x": x}


def relu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    return dy * (cache["x"] > 0)


def relu6_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    return np.clip(x, 0, 6), {"x": x}


def relu6_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    x = cache["x"]
    return dy * ((x > 0) & (x < 6))


def leaky_relu_forward(x: np.ndarray, alpha: float = 0.01) -> tuple[np.ndarray, Cache]:
    return np.where(x > 0, x, x * x.dtype.type(alpha)), {"x": x, "alpha": alpha}


def leaky_relu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    return np.where(cache["x"] > 0, dy, dy * dy.dtype.type(cache["alpha"]))


def elu_forward(x: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, Cache]:
    a = x.dtype.type(alpha)
    neg = a * np.expm1(np.minimum(x, 0))  # minimum: no overflow warning from exp of large positives
    return np.where(x > 0, x, neg), {"x": x, "neg": neg, "alpha": alpha}


def elu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    a = dy.dtype.type(cache["alpha"])
    return np.where(cache["x"] > 0, dy, dy * (cache["neg"] + a))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of -|x| only, so neither tail overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    y = _sigmoid(x)
    return y, {"y": y}


def sigmoid_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    y = cache["y"]
    return dy * y * (1 - y)


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    y = np.tanh(x)
    return y, {"y": y}


def tanh_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    y = cache["y"]
    return dy * (1 - y * y)


_SQRT1_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Exact GELU, x * Phi(x), with Phi from erf (PyTorch's default approximate='none')."""
    cdf = (0.5 * (1 + _erf(x * _SQRT1_2))).astype(x.dtype, copy=False)
    return x * cdf, {"x": x, "cdf": cdf}


def gelu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    x = cache["x"]
    pdf = (np.exp(-0.5 * x * x) * _INV_SQRT_2PI).astype(x.dtype, copy=False)
    return dy * (cache["cdf"] + x * pdf)


def silu_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    s = _sigmoid(x)
    return x * s, {"x": x, "s": s}


def silu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    x, s = cache["x"], cache["s"]
    return dy * (s * (1 + x * (1 - s)))


def hardswish_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    return x * np.clip(x + 3, 0, 6) / 6, {"x": x}


def hardswish_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    x = cache["x"]
    # PyTorch: 0 for x <= -3, (2x + 3) / 6 for -3 < x < 3, 1 for x >= 3.
    slope = np.where(x <= -3, 0, np.where(x < 3, (2 * x + 3) / 6, 1)).astype(x.dtype, copy=False)
    return dy * slope


def hardsigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    return np.clip(x + 3, 0, 6) / 6, {"x": x}


def hardsigmoid_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    x = cache["x"]
    # PyTorch: 1/6 strictly inside (-3, 3), 0 outside and at the corners.
    return dy * ((x > -3) & (x < 3)).astype(x.dtype, copy=False) / 6


def softmax_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Softmax over dim 1 (classes of a vector, channels of a CxHxW map)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    return y, {"y": y}


def softmax_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    y = cache["y"]
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- layer and group norm, layer scale
# Statistics are biased (as PyTorch's) and accumulated in float64, as in batch_norm_forward.


def _per_channel(x: np.ndarray) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel vector over x (N x C x H x W, or N x C)."""
    return (1, -1) + (1,) * (x.ndim - 2)


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis, keepdims=True, dtype=np.float64).astype(x.dtype, copy=False)


def _standardise(x: np.ndarray, axis: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(x - mean) / sqrt(var + eps) over `axis`, and 1 / sqrt(var + eps) (keepdims)."""
    centred = x - _mean(x, axis)
    var = np.mean(centred * centred, axis=axis, keepdims=True, dtype=np.float64)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
    return centred * inv_std, inv_std


def _affine_grads(dy: np.ndarray, xhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dgamma, dbeta) of y = xhat * gamma[c] + beta[c], summed over the batch and positions."""
    axes = (0, *range(2, dy.ndim))
    dgamma = np.sum(dy * xhat, axis=axes, dtype=np.float64).astype(dy.dtype)
    return dgamma, dy.sum(axis=axes, dtype=np.float64).astype(dy.dtype)


def _standardise_backward(g: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray, axis: int) -> np.ndarray:
    """d(loss)/dx of xhat = standardise(x) over `axis`, given g = d(loss)/d(xhat)."""
    return inv_std * (g - _mean(g, axis) - xhat * _mean(g * xhat, axis))


def layer_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, Cache]:
    """Layer norm over axis 1: the C channels at each position (ConvNeXt's LayerNorm2d) or a vector's
    features (nn.LayerNorm), then a per-channel weight and bias."""
    xhat, inv_std = _standardise(x, 1, eps)
    shape = _per_channel(x)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), {"xhat": xhat, "inv_std": inv_std, "gamma": gamma}


def layer_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta)."""
    xhat = cache["xhat"]
    dgamma, dbeta = _affine_grads(dy, xhat)
    dx = _standardise_backward(dy * cache["gamma"].reshape(_per_channel(dy)), xhat, cache["inv_std"], 1)
    return dx, dgamma, dbeta


def group_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int,
                       eps: float) -> tuple[np.ndarray, Cache]:
    """PyTorch's GroupNorm: each sample's channels in `groups` consecutive groups, each group standardised
    over its channels and positions, then a per-channel weight and bias."""
    xhat, inv_std = _standardise(x.reshape(x.shape[0], groups, -1), 2, eps)
    xhat = xhat.reshape(x.shape)
    shape = _per_channel(x)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), {"xhat": xhat, "inv_std": inv_std, "gamma": gamma,
                                                               "groups": groups}


def group_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta)."""
    xhat, groups = cache["xhat"], cache["groups"]
    dgamma, dbeta = _affine_grads(dy, xhat)
    g = (dy * cache["gamma"].reshape(_per_channel(dy))).reshape(dy.shape[0], groups, -1)
    dx = _standardise_backward(g, xhat.reshape(g.shape), cache["inv_std"], 2)
    return dx.reshape(dy.shape), dgamma, dbeta


def layer_scale_forward(x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, Cache]:
    """x times a per-channel factor: `scale` is (C, 1, 1) on images, (C,) on vectors, so it broadcasts."""
    return x * scale, {"x": x, "scale": scale}


def layer_scale_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dscale)."""
    x, scale = cache["x"], cache["scale"]
    dscale = np.sum(dy * x, axis=(0, *range(2, dy.ndim)), dtype=np.float64).astype(dy.dtype)
    return dy * scale, dscale.reshape(scale.shape)


# ---------------------------------------------------------------- channel operations


def channel_shuffle_forward(x: np.ndarray, groups: int) -> tuple[np.ndarray, Cache]:
    """ShuffleNet's shuffle: the C channels viewed as groups x C/groups, transposed, flattened (output
    channel j * groups + g is input channel g * C/groups + j), as torch.channel_shuffle."""
    n, c = x.shape[:2]
    y = x.reshape(n, groups, c // groups, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)
    return y, {"groups": groups}


def channel_shuffle_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """The inverse permutation, which is the shuffle with C/groups groups."""
    return channel_shuffle_forward(dy, dy.shape[1] // cache["groups"])[0]


def channel_slice_forward(x: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, Cache]:
    """Channels start..stop-1 (a view of x)."""
    return x[:, start:stop], {"x_shape": x.shape, "start": start, "stop": stop}


def channel_slice_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """The gradient in the kept channels, zero in the others."""
    dx = np.zeros(cache["x_shape"], dtype=dy.dtype)
    dx[:, cache["start"]:cache["stop"]] = dy
    return dx


# ---------------------------------------------------------------- joins and preprocessing


def concat_forward(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs, axis=1)


def concat_backward(dy: np.ndarray, channels: tuple[int, ...]) -> list[np.ndarray]:
    """Split the gradient of a channel concat back into its branches (views, never written to)."""
    return np.split(dy, np.cumsum(channels)[:-1], axis=1)


def preprocess_forward(x: np.ndarray, scale: np.ndarray, mean: np.ndarray | None,
                       std: np.ndarray | None) -> tuple[np.ndarray, Cache]:
    """x * scale, then (x - mean[c]) / std[c]; the buffers get no gradient, the input does."""
    y = x * scale
    if mean is not None:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (y - mean.reshape(shape)) / std.reshape(shape)
    return y, {"scale": scale, "std": std, "ndim": x.ndim}


def preprocess_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    dx = dy * cache["scale"]
    if cache["std"] is not None:
        dx = dx / cache["std"].reshape((1, -1) + (1,) * (cache["ndim"] - 2))
    return dx
