"""Data augmentation, once, in numpy, for every backend.

`augment_batch(x, aug, rng)` takes a float32 NCHW batch of raw (not yet preprocessed) images and
returns a new one; every random number comes from `rng`, so a batch is a pure function of the
generator's state. The ops run in a fixed order, each drawing its numbers for the whole batch:

1. `flip horizontal|vertical`: each sample mirrored with probability 1/2 (per direction).
2. `rotate D`, `zoom A B`, `skew S`: one affine map per sample about the image centre,
   angle ~ U(-D, D) degrees, scale ~ U(A, B) (> 1 enlarges), shear ~ U(-S, S) (x += shear * y);
   sampled bilinearly, zeros outside the image.
3. `crop N padP`: zero-pad P pixels on every side, cut a random NxN window; if N differs from the
   input size the window is resized (bilinear) back to it.
4. `brightness B`: add d * R, d ~ U(-B, B), R the value range of the training data (max - min:
   1 for the digits, 255 for 8-bit images), so it means the same on 0..1 and 0..255 data.
5. `contrast C`: (x - m) * f + m, f ~ U(1 - C, 1 + C), m the sample's mean over all pixels.

Values are not clipped.

A segmenter's label maps go through `augment_pair` with their images: the same draws move both,
the flips exactly, the affine map and the crop sampling the label map by nearest neighbour
(half-pixel centres, PyTorch's `nearest-exact`) at the very points where the image is sampled;
label 0 (background) where the image gets zeros from outside. Brightness and contrast leave the
labels alone.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import CnnDslError
from .data import resize_bilinear, resize_labels


def flip(x: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Mirror the samples where `mask` is true along `axis` (-1 horizontal, -2 vertical)."""
    out = x.copy()
    out[mask] = np.flip(x[mask], axis=axis)
    return out


def affine_matrices(angles_deg: np.ndarray, scales: np.ndarray, shears: np.ndarray) -> np.ndarray:
    """(B, 2, 2) forward maps A = R(angle) @ Shear(shear) @ scale, acting on (x, y) about the centre."""
    t = np.deg2rad(angles_deg)
    cos, sin = np.cos(t), np.sin(t)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear = np.zeros_like(rot)
    shear[:, 0, 0] = 1
    shear[:, 0, 1] = shears
    shear[:, 1, 1] = 1
    return rot @ shear * scales[:, None, None]


def _source_points(forward: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples the input under per-sample forward maps (B, 2, 2) about the
    image centre: (x, y) = A^-1 p, each (B, H*W) in pixel coordinates."""
    inv = np.linalg.inv(forward.astype(np.float64))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()])  # (2, HW) as (x, y)
    src = inv @ grid  # (B, 2, HW)
    return src[:, 0] + cx, src[:, 1] + cy


def warp_affine(x: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Apply per-sample forward maps (B, 2, 2) about the image centre: output pixel p takes the
    input at A^-1 p, bilinearly; zeros outside."""
    b, c, h, w = x.shape
    sx, sy = _source_points(forward, h, w)
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = x.reshape(b, c, h * w).astype(np.float64)
    out = np.zeros((b, c, h * w))
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index = np.where(inside, yy * w + xx, 0)
        values = np.take_along_axis(flat, np.broadcast_to(index[:, None], (b, c, h * w)), axis=2)
        out += values * (weight * inside)[:, None]
    return out.reshape(b, c, h, w).astype(x.dtype)


def warp_labels(y: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """`warp_affine` for (B, H, W) label maps: each output pixel takes the label nearest to the
    point the image samples (ties rounded up), 0 (background) outside."""
    b, h, w = y.shape
    sx, sy = _source_points(forward, h, w)
    xx, yy = np.floor(sx + 0.5).astype(np.int64), np.floor(sy + 0.5).astype(np.int64)
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    index = np.where(inside, yy * w + xx, 0)
    out = np.take_along_axis(y.reshape(b, h * w), index, axis=1)
    return np.where(inside, out, 0).reshape(b, h, w).astype(y.dtype)


def crop_with_padding(x: np.ndarray, size: int, pad: int, offsets: np.ndarray) -> np.ndarray:
    """Zero-pad `pad` pixels, cut size x size at `offsets` (B, 2) = (top, left), resize back:
    bilinearly for NCHW images, by nearest neighbour for (B, H, W) label maps (padding label 0)."""
    h, w = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)])
    out = np.empty(x.shape[:-2] + (size, size), dtype=x.dtype)
    for i, (top, left) in enumerate(offsets):
        out[i] = padded[i, ..., top:top + size, left:left + size]
    if (size, size) == (h, w):
        return out
    return resize_bilinear(out, h, w) if x.ndim == 4 else resize_labels(out, h, w)


def check_augment(aug: ir.Augment | None, input_shape: tuple[int, ...]) -> None:
    """Raise CnnDslError if `aug` cannot apply to inputs of `input_shape`."""
    if aug is None or not _active(aug):
        return
    if len(input_shape) != 3:
        raise CnnDslError(f"augment needs image inputs (CxHxW); the network input is "
                          f"{'x'.join(map(str, input_shape))}", aug.span, hint="remove the augment section")
    _, h, w = input_shape
    if aug.crop is not None and (aug.crop > h + 2 * aug.crop_pad or aug.crop > w + 2 * aug.crop_pad):
        raise CnnDslError(f"crop {aug.crop} with padding {aug.crop_pad} does not fit a {h}x{w} input", aug.span,
                          hint=f"use a crop of at most {min(h, w) + 2 * aug.crop_pad}")


def geometric(aug: ir.Augment | None) -> bool:
    """True when `aug` moves pixels (flip, rotate, zoom, skew, crop), not only their values."""
    return aug is not None and bool(aug.flip or aug.rotate or aug.zoom or aug.skew or aug.crop is not None)


def _active(aug: ir.Augment) -> bool:
    return geometric(aug) or bool(aug.brightness or aug.contrast)


def augment_batch(x: np.ndarray, aug: ir.Augment | None, rng: np.random.Generator,
                  value_range: float = 1.0) -> np.ndarray:
    """A randomly transformed copy of the float32 NCHW batch `x` (see the module doc)."""
    return augment_pair(x, None, aug, rng, value_range)[0]


def augment_pair(x: np.ndarray, labels: np.ndarray | None, aug: ir.Augment | None, rng: np.random.Generator,
                 value_range: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """`augment_batch` of `x` and, moved with it, its (B, H, W) label maps (None: images only);
    the random draws are the same either way."""
    if aug is None or not _active(aug) or len(x) == 0:
        return x, labels
    b, c, h, w = x.shape
    out = x
    for direction in aug.flip:
        mask = rng.random(b) < 0.5
        axis = -1 if direction == "horizontal" else -2
        out = flip(out, mask, axis)
        labels = None if labels is None else flip(labels, mask, axis)
    if aug.rotate or aug.zoom or aug.skew:
        angles = rng.uniform(-aug.rotate, aug.rotate, b) if aug.rotate else np.zeros(b)
        scales = rng.uniform(aug.zoom[0], aug.zoom[1], b) if aug.zoom else np.ones(b)
        shears = rng.uniform(-aug.skew, aug.skew, b) if aug.skew else np.zeros(b)
        forward = affine_matrices(angles, scales, shears)
        out = warp_affine(out, forward)
        labels = None if labels is None else warp_labels(labels, forward)
    if aug.crop is not None:
        offsets = np.stack([rng.integers(0, h + 2 * aug.crop_pad - aug.crop + 1, b),
                            rng.integers(0, w + 2 * aug.crop_pad - aug.crop + 1, b)], 1)
        out = crop_with_padding(out, aug.crop, aug.crop_pad, offsets)
        labels = None if labels is None else crop_with_padding(labels, aug.crop, aug.crop_pad, offsets)
    if aug.brightness:
        shifts = (rng.uniform(-aug.brightness, aug.brightness, b) * value_range).astype(np.float32)
        out = out + shifts[:, None, None, None]
    if aug.contrast:
        factors = rng.uniform(1 - aug.contrast, 1 + aug.contrast, b).astype(np.float32)
        means = out.reshape(b, -1).mean(1)[:, None, None, None]
        out = (out - means) * factors[:, None, None, None] + means
    return np.ascontiguousarray(out, dtype=np.float32), labels


__all__ = ["affine_matrices", "augment_batch", "augment_pair", "check_augment", "crop_with_padding", "flip",
           "geometric", "warp_affine", "warp_labels"]
