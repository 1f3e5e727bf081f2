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
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import CnnDslError
from .data import resize_bilinear


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


def warp_affine(x: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Apply per-sample forward maps (B, 2, 2) about the image centre: output pixel p takes the
    input at A^-1 p, bilinearly; zeros outside."""
    b, c, h, w = x.shape
    inv = np.linalg.inv(forward.astype(np.float64))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()])  # (2, HW) as (x, y)
    src = inv @ grid  # (B, 2, HW)
    sx, sy = src[:, 0] + cx, src[:, 1] + cy
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


def crop_with_padding(x: np.ndarray, size: int, pad: int, offsets: np.ndarray) -> np.ndarray:
    """Zero-pad `pad` pixels, cut size x size at `offsets` (B, 2) = (top, left), resize back."""
    b, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty((b, c, size, size), dtype=x.dtype)
    for i, (top, left) in enumerate(offsets):
        out[i] = padded[i, :, top:top + size, left:left + size]
    return out if (size, size) == (h, w) else resize_bilinear(out, h, w)


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


def _active(aug: ir.Augment) -> bool:
    return bool(aug.flip or aug.rotate or aug.zoom or aug.skew or aug.crop is not None
                or aug.brightness or aug.contrast)


def augment_batch(x: np.ndarray, aug: ir.Augment | None, rng: np.random.Generator,
                  value_range: float = 1.0) -> np.ndarray:
    """A randomly transformed copy of the float32 NCHW batch `x` (see the module doc)."""
    if aug is None or not _active(aug) or len(x) == 0:
        return x
    b, c, h, w = x.shape
    out = x
    for direction in aug.flip:
        mask = rng.random(b) < 0.5
        out = flip(out, mask, -1 if direction == "horizontal" else -2)
    if aug.rotate or aug.zoom or aug.skew:
        angles = rng.uniform(-aug.rotate, aug.rotate, b) if aug.rotate else np.zeros(b)
        scales = rng.uniform(aug.zoom[0], aug.zoom[1], b) if aug.zoom else np.ones(b)
        shears = rng.uniform(-aug.skew, aug.skew, b) if aug.skew else np.zeros(b)
        out = warp_affine(out, affine_matrices(angles, scales, shears))
    if aug.crop is not None:
        offsets = np.stack([rng.integers(0, h + 2 * aug.crop_pad - aug.crop + 1, b),
                            rng.integers(0, w + 2 * aug.crop_pad - aug.crop + 1, b)], 1)
        out = crop_with_padding(out, aug.crop, aug.crop_pad, offsets)
    if aug.brightness:
        shifts = (rng.uniform(-aug.brightness, aug.brightness, b) * value_range).astype(np.float32)
        out = out + shifts[:, None, None, None]
    if aug.contrast:
        factors = rng.uniform(1 - aug.contrast, 1 + aug.contrast, b).astype(np.float32)
        means = out.reshape(b, -1).mean(1)[:, None, None, None]
        out = (out - means) * factors[:, None, None, None] + means
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ = ["augment_batch", "check_augment", "flip", "warp_affine", "affine_matrices", "crop_with_padding"]
