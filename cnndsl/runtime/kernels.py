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
never over pixels). Grouped convolutions are the same code with groups > 1.

Depthwise convolutions (groups = input channels, each output channel reading one input channel)
have K = kh*kw, so that way they are a kh*kw-fold copy of the whole input and a tiny matmul per
channel. They have a path of their own (`_Depthwise`), block by block of images and channels, each
block's buffers small enough for the CPU's cache: the block of the input is split by stride phase
(stride 1: one phase, the padded input itself) into flat rows of a fixed width, so that every
kernel tap reads one contiguous slice, offset by the tap's row and column; the kh*kw slices make the
block's column matrix, multiplied by its weights (a matmul per channel over all of the block's
images). An output row carries a few columns past its end (the phase's width minus the output's),
dropped when the block is written out. Backward makes the same columns again from x (training keeps
nothing else): the weight gradient multiplies them by the output gradient, and the input gradient
adds W^T dY back into the slices.

Max pooling is a running maximum over the kh*kw window cells (each a strided view, a whole-tensor
op), and its backward routes every gradient to the first maximal cell, as PyTorch does.

Window arithmetic (output sizes, ceil mode) is `cnndsl.analysis.shapes.window`, the one rule
the compiler and every backend share.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..analysis.shapes import window
from ..kinds.base import adaptive_windows

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
    if _depthwise(c, cg, groups):  # keeps nothing but x: backward makes its columns block by block again
        return _depthwise_forward(x, w, b, stride, pads, dilation, (oh, ow)), cache
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


def conv2d_backward(dy: np.ndarray, cache: Cache, input_grad: bool = True,
                    weight_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(dx, dw, db); dx is None without `input_grad` (the network's input needs none), dw and db
    without `weight_grad` (an input-gradient probe, such as the effective receptive field)."""
    x, w, groups = cache["x"], cache["w"], cache["groups"]
    stride, pads, dilation, (oh, ow) = cache["stride"], cache["pads"], cache["dilation"], cache["out"]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = cache["cols"]
    if _depthwise(c, cg, groups):
        return _depthwise_backward(dy, x, w, cache["has_bias"], stride, pads, dilation, input_grad, weight_grad)
    dyg = dy.transpose(1, 0, 2, 3).reshape(groups, o // groups, n * oh * ow)
    dw = db = None
    if weight_grad:
        if cols is None:
            cols = _im2col(x, (kh, kw), stride, pads, dilation, groups, (oh, ow))
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


# ---------------------------------------------------------------- depthwise convolution

# Elements of one block's column matrix (2 MiB in float32): larger blocks mean fewer and longer
# matmuls; 2^17-2^20 were within 10-20% of each other on MobileNet's layers, 2^16 slower.
_DEPTHWISE_BLOCK = 1 << 19
# Images of fewer outputs (oh * width) than this are stored image-minor: faster below 2x2 outputs
# per image at batch 32, slower from 8x9 up.
_DEPTHWISE_MINOR = 32


def _depthwise(c: int, cg: int, groups: int) -> bool:
    """Every group is one input channel (and any number of output channels: a channel multiplier)."""
    return groups > 1 and groups == c and cg == 1


def _phase_axis(size: int, pad: int, stride: int, phase: int, rows: int) -> tuple[int, int, int]:
    """Where one stride phase of a padded axis meets the input: (first, end, index) such that rows
    first..end-1 of the phase are the input's index, index + stride, ..."""
    first = max(0, -(-(pad - phase) // stride))
    index = first * stride + phase - pad
    end = min(rows, first + max(0, -(-(size - index) // stride)))
    return first, max(first, end), index


class _Depthwise(NamedTuple):
    """How one depthwise convolution is computed: its flat-row layout and its blocks.

    Tap (i, j) of output (r, q) reads padded row r*sh + i*dh, column q*sw + j*dw: row r + i*dh // sh
    of phase (i*dh % sh, j*dw % sw), column q + j*dw // sw. A block's phases are (phases, channels,
    images, rows * width), `width` columns per row, so output (r, q) is flat position r*width + q of
    a (channels, images, length) array, and tap k reads phase `taps[k][0]` from offset `taps[k][1]`
    on. Every buffer of a block fits in the cache, and only the output (and in backward the input
    gradient) is as large as the layer's tensors.

    Small images (`minor`: fewer than _DEPTHWISE_MINOR outputs, all images in one block) are
    stored image-minor, (..., positions, images): a tap's slice is then one run of length * images
    numbers, not images runs of a few. `view` gives every buffer as (..., images, positions)."""

    stride: Pair
    rows: int
    width: int
    length: int  # oh * width: an image's outputs, with a row's columns past ow
    taps: list[tuple[int, int]]  # (phase, offset) per tap, in (i, j) order
    spans: list[tuple[tuple[int, int, int], tuple[int, int, int]]]  # per phase, _phase_axis of both axes
    images: int  # per block
    channels: int  # per block
    minor: bool  # block buffers are stored (..., positions, images)

    @classmethod
    def plan(cls, x_shape: tuple[int, ...], kernel: Pair, stride: Pair, pads: Pads, dilation: Pair, out: Pair):
        (n, c, h, wd), (kh, kw), (sh, sw), (dh, dw), (oh, ow) = x_shape, kernel, stride, dilation, out
        rows = oh + (kh - 1) * dh // sh + 1  # one spare row: the last tap's slice runs width - ow past the end
        width = ow + (kw - 1) * dw // sw
        taps = [((i * dh % sh) * sw + j * dw % sw, (i * dh // sh) * width + j * dw // sw)
                for i in range(kh) for j in range(kw)]
        spans = [(_phase_axis(h, pads[0], sh, a, rows), _phase_axis(wd, pads[2], sw, b, width))
                 for a in range(sh) for b in range(sw)]
        # As many images per block as fit first, then channels: a block makes one matmul per
        # channel, so small images are many to a matmul.
        per_image = kh * kw * oh * width
        images = min(n, max(1, _DEPTHWISE_BLOCK // per_image))
        channels = min(c, max(1, _DEPTHWISE_BLOCK // (per_image * images)))
        minor = images == n and oh * width < _DEPTHWISE_MINOR
        return cls(stride, rows, width, oh * width, taps, spans, images, channels, minor)

    def blocks(self, n: int, c: int):
        for c0 in range(0, c, self.channels):
            for i0 in range(0, n, self.images):
                yield slice(c0, min(c, c0 + self.channels)), slice(i0, min(n, i0 + self.images))

    def buffer(self, lead: tuple[int, ...], positions: tuple[int, ...], dtype, zero: bool = False) -> np.ndarray:
        """A block buffer in storage order: (*lead, images, *positions), or (*lead, *positions, images)."""
        shape = (*lead, *positions, self.images) if self.minor else (*lead, self.images, *positions)
        return (np.zeros if zero else np.empty)(shape, dtype=dtype)

    def view(self, buffer: np.ndarray, positions: int) -> np.ndarray:
        """A buffer as (*lead, images, *positions), whatever its storage order."""
        return np.moveaxis(buffer, -1, -1 - positions) if self.minor else buffer

    def phase_views(self, image: np.ndarray, phases: np.ndarray):
        """Pairs (input view, phase view) where each phase meets the input: of an (images, channels,
        H, W) array and a (phases, channels, images, rows, width) one."""
        sh, sw = self.stride
        for q, ((r0, r1, y0), (c0, c1, x0)) in enumerate(self.spans):
            if r1 > r0 and c1 > c0:
                yield (image[:, :, y0 : y0 + (r1 - r0 - 1) * sh + 1 : sh,
                             x0 : x0 + (c1 - c0 - 1) * sw + 1 : sw].transpose(1, 0, 2, 3),
                       phases[q, :, :, r0:r1, c0:c1])

    def tap_slices(self, phases: np.ndarray):
        """(tap, the (channels, images, length) slice of a phases block it reads), per tap."""
        flat = phases.reshape(*phases.shape[:3], self.rows * self.width)  # a view in either order
        for k, (q, offset) in enumerate(self.taps):
            yield k, flat[q, :, :, offset : offset + self.length]

    def columns(self, x: np.ndarray, channels: slice, images: slice, phases: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
        """The block's (channels, taps, images * length) column matrix, in storage order: the block
        of x split into phases (in `phases`, whose cells outside the input stay zero), then one
        slice per tap. (Image-minor, every block has all the images.)"""
        cb, ni = channels.stop - channels.start, images.stop - images.start
        block = self.view(phases, 2)[:, :cb, :ni]
        for source, target in self.phase_views(x[images, channels], block):
            target[...] = source
        part = cols[:cb] if self.minor else cols[:cb, :, :ni]
        view = self.view(part, 1)
        for k, tap in self.tap_slices(block):
            view[:, k] = tap
        return part.reshape(cb, len(self.taps), ni * self.length)

    def crop(self, block: np.ndarray, ni: int, ow: int) -> np.ndarray:
        """(channels, m, images * length) matmul rows, in storage order, as (images, channels * m, oh, ow)."""
        positions = (self.length // self.width, self.width)
        shape = (-1, *positions, ni) if self.minor else (-1, ni, *positions)
        return self.view(block.reshape(shape), 2)[..., :ow].transpose(1, 0, 2, 3)


def _depthwise_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, pads: Pads,
                       dilation: Pair, out: Pair) -> np.ndarray:
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    m = o // c
    plan = _Depthwise.plan(x.shape, (kh, kw), stride, pads, dilation, out)
    phases = plan.buffer((stride[0] * stride[1], plan.channels), (plan.rows, plan.width), x.dtype, zero=True)
    cols = plan.buffer((plan.channels, kh * kw), (plan.length,), x.dtype)
    wm = w.reshape(c, m, kh * kw)  # output channel c*m + k is input channel c's k-th filter
    y = np.empty((n, o, *out), dtype=np.result_type(x, w))
    for channels, images in plan.blocks(n, c):
        block = np.matmul(wm[channels], plan.columns(x, channels, images, phases, cols))
        rows = plan.crop(block, images.stop - images.start, out[1])
        target = y[images, channels.start * m : channels.stop * m]
        if b is not None:
            np.add(rows, b[channels.start * m : channels.stop * m].reshape(-1, 1, 1), out=target)
        else:
            target[...] = rows
    return y


def _depthwise_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, has_bias: bool, stride: Pair, pads: Pads,
                        dilation: Pair, input_grad: bool, weight_grad: bool = True
                        ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    m, taps = o // c, kh * kw
    plan = _Depthwise.plan(x.shape, (kh, kw), stride, pads, dilation, (oh, ow))
    phases = plan.buffer((stride[0] * stride[1], plan.channels), (plan.rows, plan.width), x.dtype, zero=True)
    cols = plan.buffer((plan.channels, taps), (plan.length,), x.dtype)
    # dY in the forward's layout, zero in the columns past each row's end: those add nothing.
    rows = plan.buffer((plan.channels * m,), (oh, plan.width), dy.dtype, zero=True)
    wt = np.ascontiguousarray(w.reshape(c, m, taps).transpose(0, 2, 1))
    dw = np.zeros((c, m, taps), dtype=np.result_type(dy, x))
    dx = np.zeros(x.shape, dtype=dy.dtype) if input_grad else None  # cells no window reaches stay zero
    dphases = np.empty_like(phases) if input_grad else None
    for channels, images in plan.blocks(n, c):
        cb, ni = channels.stop - channels.start, images.stop - images.start
        part = plan.columns(x, channels, images, phases, cols)
        g = rows[: cb * m] if plan.minor else rows[: cb * m, :ni]
        plan.view(g, 2)[..., :ow] = dy[images, channels.start * m : channels.stop * m].transpose(1, 0, 2, 3)
        g = g.reshape(cb, m, ni * plan.length)
        if weight_grad:
            dw[channels] += np.matmul(g, part.transpose(0, 2, 1))
        if not input_grad:
            continue
        # W^T dY (for one filter per channel, a product by the weights), added back into the slices
        # the taps read.
        if m == 1:
            np.multiply(wt[channels], g, out=part)
        else:
            np.matmul(wt[channels], g, out=part)
        part = plan.view(part.reshape(cb, taps, *((plan.length, ni) if plan.minor else (ni, plan.length))), 1)
        block = plan.view(dphases, 2)[:, :cb, :ni]
        block[...] = 0
        for k, tap in plan.tap_slices(block):
            tap += part[:, k]
        for target, source in plan.phase_views(dx[images, channels], block):
            target[...] = source  # the phases are disjoint: each input cell is in one
    if not weight_grad:
        return dx, None, None
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw.reshape(w.shape), db


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


# Adaptive pools (`pool avg|max adaptive HxW`) separate by axis: a window is a rectangle of rows x
# columns, its mean the mean over its rows of the means over its columns, its max likewise. The
# windows are PyTorch's (`adaptive_windows`), uneven and overlapping ones included.


def _adaptive_matrix(size: int, out: int, dtype) -> np.ndarray:
    """(out, size): row i averages window i of an axis."""
    m = np.zeros((out, size), dtype=dtype)
    for i, (begin, end) in enumerate(adaptive_windows(size, out)):
        m[i, begin:end] = 1.0 / (end - begin)
    return m


def adaptive_avg_pool2d_forward(x: np.ndarray, out: Pair) -> tuple[np.ndarray, Cache]:
    """PyTorch's AdaptiveAvgPool2d: y = A_h @ x @ A_w^T, A averaging each window of an axis."""
    rows, cols = _adaptive_matrix(x.shape[2], out[0], x.dtype), _adaptive_matrix(x.shape[3], out[1], x.dtype)
    return np.matmul(np.matmul(rows, x), cols.T), {"rows": rows, "cols": cols}


def adaptive_avg_pool2d_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """The adjoint: dx = A_h^T @ dy @ A_w (each window's gradient spread evenly over it; overlaps add)."""
    return np.matmul(np.matmul(cache["rows"].T.astype(dy.dtype), dy), cache["cols"].astype(dy.dtype))


def adaptive_max_pool2d_forward(x: np.ndarray, out: Pair) -> tuple[np.ndarray, Cache]:
    """PyTorch's AdaptiveMaxPool2d. The maximum of each window's columns per row first, then of those
    over its rows, each keeping the first maximal index: the winner is the first maximum of the window
    in row-major order, the cell PyTorch routes the gradient to."""
    n, c, h, w = x.shape
    wide = np.empty((n, c, h, out[1]), dtype=x.dtype)
    wide_arg = np.empty((n, c, h, out[1]), dtype=np.int64)
    for j, (begin, end) in enumerate(adaptive_windows(w, out[1])):
        arg = x[..., begin:end].argmax(axis=3)
        wide_arg[..., j] = arg + begin
        wide[..., j] = np.take_along_axis(x[..., begin:end], arg[..., None], axis=3)[..., 0]
    y = np.empty((n, c, *out), dtype=x.dtype)
    rows = np.empty((n, c, *out), dtype=np.int64)
    for i, (begin, end) in enumerate(adaptive_windows(h, out[0])):
        arg = wide[:, :, begin:end].argmax(axis=2)
        rows[:, :, i] = arg + begin
        y[:, :, i] = np.take_along_axis(wide[:, :, begin:end], arg[:, :, None], axis=2)[:, :, 0]
    cols = np.take_along_axis(wide_arg, rows, axis=2)
    return y, {"x_shape": x.shape, "winner": rows * w + cols}  # flat index into each H x W image


def adaptive_max_pool2d_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """Each output's gradient to its window's winner; windows that share a winner add up."""
    n, c, h, w = cache["x_shape"]
    image = np.arange(n * c).reshape(n, c, 1, 1) * (h * w)
    dx = np.bincount((image + cache["winner"]).ravel(), weights=dy.ravel(), minlength=n * c * h * w)
    return dx.astype(dy.dtype, copy=False).reshape(n, c, h, w)


# ---------------------------------------------------------------- fully connected, flatten, dropout


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, Cache]:
    """fc: flattens a CxHxW input in C,H,W order first."""
    flat = x.reshape(x.shape[0], -1)
    y = flat @ w.T
    if b is not None:
        y += b
    return y, {"x": flat, "x_shape": x.shape, "w": w, "has_bias": b is not None}


def linear_backward(dy: np.ndarray, cache: Cache, input_grad: bool = True,
                    weight_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    dx = (dy @ cache["w"]).reshape(cache["x_shape"]) if input_grad else None
    if not weight_grad:
        return dx, None, None
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
    if not train:
        # y = x * scale + shift, the running statistics folded into one per-channel scale and shift
        # as PyTorch's CPU kernel does: two passes over x instead of four. Backward, if it is asked
        # for, computes xhat from x.
        inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype, copy=False)
        scale = gamma * inv_std
        y = x * scale.reshape(shape)
        y += (beta - running_mean * scale).reshape(shape)
        return y, {"x": x, "mean": running_mean.astype(x.dtype), "inv_std": inv_std, "gamma": gamma, "train": train}
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
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centred * inv_std.reshape(shape).astype(x.dtype, copy=False)
    y = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return y, {"xhat": xhat, "inv_std": inv_std.astype(x.dtype, copy=False), "gamma": gamma, "train": train}


def batch_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta). In training the batch statistics depend on x, which adds the two mean terms."""
    inv_std, gamma = cache["inv_std"], cache["gamma"]
    axes, shape = _bn_axes(dy)
    if "xhat" in cache:
        xhat = cache["xhat"]
    else:  # evaluation kept x
        xhat = (cache["x"] - cache["mean"].reshape(shape)) * inv_std.reshape(shape)
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


# ---------------------------------------------------------------- going back up: resampling, transposed conv, crop


def _source_scale(size: int, out: int, factor: int | None, dtype: Any) -> Any:
    """PyTorch's step from output to input positions (align_corners=False), in the arithmetic its CPU
    kernels use for `dtype` (float32 for float32 tensors): 1/factor where a factor was given, else in/out."""
    t = np.dtype(dtype).type
    return t(1.0 / factor) if factor else t(size) / t(out)


def nearest_indices(size: int, out: int, factor: int | None, dtype: Any) -> np.ndarray:
    """PyTorch's nearest rule: output o reads input min(floor(o * scale), size - 1)."""
    if out == size:
        return np.arange(out)
    if out == 2 * size:  # PyTorch's exact shortcut for a factor of 2
        return np.arange(out) >> 1
    positions = np.arange(out).astype(dtype) * _source_scale(size, out, factor, dtype)
    return np.minimum(np.floor(positions).astype(np.int64), size - 1)


def linear_indices(size: int, out: int, factor: int | None, dtype: Any):
    """PyTorch's linear rule (align_corners=False): output o reads the inputs around
    src = (o + 0.5) * scale - 0.5 (below 0: 0), i0 = floor(src) with weight 1 - l, i0 + 1 (the last
    input at the end) with weight l = src - i0. Returns (i0, i1, w0, w1)."""
    if out == size:
        index = np.arange(out)
        return index, index, np.ones(out, dtype), np.zeros(out, dtype)
    t = np.dtype(dtype).type
    src = _source_scale(size, out, factor, dtype) * (np.arange(out).astype(dtype) + t(0.5)) - t(0.5)
    src = np.maximum(src, t(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    w1 = np.clip(src - i0.astype(dtype), t(0), t(1)).astype(dtype)
    return i0, i0 + (i0 < size - 1), (t(1) - w1).astype(dtype), w1


def _take(x: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    return x[:, :, index] if axis == 2 else x[:, :, :, index]


def _weighted(x: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    return x * (weight.reshape(-1, 1) if axis == 2 else weight)


def _put(g: np.ndarray, index: np.ndarray, size: int, axis: int) -> np.ndarray:
    """The adjoint of `_take` for a nondecreasing `index`: each input position sums the slices that read it."""
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    shape = list(g.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=g.dtype)
    sums = np.add.reduceat(g, starts, axis=axis)
    if axis == 2:
        out[:, :, index[starts]] = sums
    else:
        out[:, :, :, index[starts]] = sums
    return out


def _axis_plan(size: int, out: int, factor: int | None, mode: str, dtype: Any):
    if mode == "nearest":
        return (nearest_indices(size, out, factor, dtype),)
    return linear_indices(size, out, factor, dtype)


def upsample_forward(x: np.ndarray, out: Pair, mode: str = "nearest", factor: int | None = None
                     ) -> tuple[np.ndarray, Cache]:
    """`upsample`: F.interpolate(x, size=out or scale_factor=factor, mode, align_corners=False). Nearest
    takes one input row and column per output; bilinear blends two of each, rows first, then columns."""
    plans = [_axis_plan(x.shape[2 + axis], out[axis], factor, mode, x.dtype) for axis in range(2)]
    y = x
    for axis, plan in zip((2, 3), plans, strict=True):
        if len(plan) == 1:
            y = _take(y, plan[0], axis)
        else:
            i0, i1, w0, w1 = plan
            y = _weighted(_take(y, i0, axis), w0, axis) + _weighted(_take(y, i1, axis), w1, axis)
    return y, {"plans": plans, "hw": x.shape[2:]}


def upsample_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    g = dy
    for axis, plan, size in zip((3, 2), reversed(cache["plans"]), reversed(cache["hw"]), strict=True):
        if len(plan) == 1:
            g = _put(g, plan[0], size, axis)
        else:
            i0, i1, w0, w1 = plan
            g = _put(_weighted(g, w0, axis), i0, size, axis) + _put(_weighted(g, w1, axis), i1, size, axis)
    return g


def conv_transpose2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair = (1, 1),
                             pads: Pair = (0, 0), outpad: Pair = (0, 0), groups: int = 1) -> tuple[np.ndarray, Cache]:
    """PyTorch's conv_transpose2d, weights (C_in, C_out/groups, kh, kw): every input pixel adds its
    weighted kernel at i * stride (W^T @ X, then col2im over the kh*kw taps), into the full output of
    (in - 1) * stride + k + outpad rows, of which `pads` rows are dropped at each end."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    o = og * groups
    full = ((h - 1) * stride[0] + kh + outpad[0], (wd - 1) * stride[1] + kw + outpad[1])
    oh, ow = full[0] - 2 * pads[0], full[1] - 2 * pads[1]
    xg = x.transpose(1, 0, 2, 3).reshape(groups, c // groups, n * h * wd)
    cols = np.matmul(w.reshape(groups, c // groups, og * kh * kw).transpose(0, 2, 1), xg)
    cols = cols.reshape(o, kh, kw, n, h, wd).transpose(0, 3, 1, 2, 4, 5)
    y = _col2im(cols, full, (kh, kw), stride, (1, 1))[:, :, pads[0]:pads[0] + oh, pads[1]:pads[1] + ow]
    y = np.ascontiguousarray(y.transpose(1, 0, 2, 3))
    if b is not None:
        y += b.reshape(o, 1, 1)
    return y, {"x": x, "w": w, "has_bias": b is not None, "stride": stride, "pads": pads, "groups": groups}


def conv_transpose2d_backward(dy: np.ndarray, cache: Cache, input_grad: bool = True, weight_grad: bool = True
                              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(dx, dw, db). The output gradient, padded back to the full output, is read in kh x kw windows at
    i * stride (im2col): dx = W @ cols is the strided convolution, dw = X @ cols^T."""
    x, w, groups, stride, (ph, pw) = cache["x"], cache["w"], cache["groups"], cache["stride"], cache["pads"]
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cols = _im2col(dy, (kh, kw), stride, (ph, ph, pw, pw), (1, 1), groups, (h, wd))  # (G, og*kh*kw, N*H*W)
    dw = db = None
    if weight_grad:
        xg = x.transpose(1, 0, 2, 3).reshape(groups, c // groups, n * h * wd)
        dw = np.matmul(xg, cols.transpose(0, 2, 1)).reshape(w.shape)
        db = dy.sum(axis=(0, 2, 3)) if cache["has_bias"] else None
    if not input_grad:
        return None, dw, db
    dx = np.matmul(w.reshape(groups, c // groups, og * kh * kw), cols)
    return np.ascontiguousarray(dx.reshape(c, n, h, wd).transpose(1, 0, 2, 3)), dw, db


def crop_forward(x: np.ndarray, pads: Pads) -> np.ndarray:
    """`concat crop`: drop (top, bottom, left, right) rows and columns (a view of x)."""
    top, bottom, left, right = pads
    return x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]


def crop_backward(dy: np.ndarray, pads: Pads) -> np.ndarray:
    """The gradient of a crop: zeros where the rows and columns were dropped."""
    return _pad(dy, pads)
