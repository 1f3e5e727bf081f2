"""Training data: scikit-learn's bundled digits, an image folder, or a .npz file.

Everything here is numpy (Pillow for image folders): arrays come out as float32 NCHW in the
network's input shape, labels as int64, and the split into a training and a test part is
stratified and fixed (seeded with `SPLIT_SEED`, not with the training seed), so every run of
every backend is measured on the same test images.

Data are given to the model raw: the model's own `preprocess` (scale, standardize) runs inside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CnnDslError

SPLIT_SEED = 0  # the test split never depends on the training seed
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Dataset:
    x_train: np.ndarray  # float32 (N, *input_shape)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _fmt(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize NCHW images with bilinear interpolation, half-pixel centres (PyTorch's
    `align_corners=False`, OpenCV's INTER_LINEAR), edges clamped."""
    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x.copy()

    def axis(size_in: int, size_out: int):
        pos = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
        pos = np.clip(pos, 0, size_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, (pos - lo)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    src = x.astype(np.float64, copy=False)
    top = src[:, :, y0, :] * (1 - fy)[:, None] + src[:, :, y1, :] * fy[:, None]
    out = top[:, :, :, x0] * (1 - fx) + top[:, :, :, x1] * fx
    return out.astype(x.dtype, copy=False)


def resize_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize NCHW images by nearest neighbour (PyTorch's `nearest`: floor(i * in / out))."""
    n, c, h, w = x.shape
    ys = np.minimum((np.arange(height) * h) // height, h - 1)
    xs = np.minimum((np.arange(width) * w) // width, w - 1)
    return x[:, :, ys][:, :, :, xs]


def resize_labels(y: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (N, H, W) label maps by nearest neighbour with half-pixel centres (PyTorch's
    `nearest-exact`: floor((i + 1/2) * in / out)), the points `resize_bilinear` centres on."""
    h, w = y.shape[-2:]
    ys = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return y[..., ys, :][..., xs]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): within every class, a seeded permutation; round(n * fraction) of
    its samples (at least one when the class has two or more) go to the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * test_fraction))
        if test_fraction > 0 and k == 0 and len(idx) > 1:
            k = 1
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _fit_channels(x: np.ndarray, channels: int, what: str, input_shape) -> np.ndarray:
    """Grayscale images feed a network of any channel count (replicated); otherwise they must match."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    raise CnnDslError(f"{what} has {x.shape[1]} channels ({_fmt(x.shape[1:])}) but the network input is "
                      f"{_fmt(input_shape)}",
                      hint="give images with the network's channel count, or change the network's `input`")


def fit_digits(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """8x8 digits to HxW: each pixel repeated k x k times, k = min(H // 8, W // 8) (exact nearest
    upsampling by a whole factor), then zero-padded equally on both sides to HxW (an odd extra row
    or column at the bottom/right), so the digit sits centred in a dark border as in MNIST.
    An input smaller than 8x8 gets a bilinear downsampling instead."""
    k = min(height // 8, width // 8)
    if k < 1:
        return resize_bilinear(images, height, width)
    big = images.repeat(k, axis=2).repeat(k, axis=3)
    dh, dw = height - 8 * k, width - 8 * k
    return np.pad(big, ((0, 0), (0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)))


def load_digits_data(input_shape: tuple[int, ...], test_fraction: float) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline), pixel values 0..16 mapped to
    [0, 1], fitted to the network's HxW by `fit_digits` (grayscale replicated to its channels);
    a vector input of 64 takes the flattened 8x8 images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - the `train` extra installs it
        raise CnnDslError("the digits data set needs scikit-learn",
                          hint="pip install 'cnndsl[train]' or give --data DIR|FILE.npz") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    if len(input_shape) == 1:
        if input_shape[0] != 64:
            raise CnnDslError(f"the digits data are 1x8x8 images (64 values) but the network input is "
                              f"{_fmt(input_shape)}", hint="use input 1x8x8 (or larger) or 64, or give --data")
        x = images.reshape(len(images), 64)
    else:
        c, h, w = input_shape
        x = _fit_channels(fit_digits(images, h, w), c, "the digits data", input_shape)
    train, test = stratified_split(labels, test_fraction)
    return Dataset(np.ascontiguousarray(x[train]), labels[train], np.ascontiguousarray(x[test]), labels[test],
                   [str(i) for i in range(10)], "digits")


def load_folder(path: Path, input_shape: tuple[int, ...], test_fraction: float) -> Dataset:
    """One sub-folder per class (sorted names are the class indices); every image read with
    Pillow, converted to L (1 channel) or RGB (3), resized bilinearly to the input HxW; pixel
    values 0..255 as float32 (put `scale 1/255` in `preprocess`)."""
    from PIL import Image, UnidentifiedImageError

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise CnnDslError(f"an image folder feeds a 1xHxW or 3xHxW input, the network input is {_fmt(input_shape)}",
                          hint="use --data FILE.npz for other inputs")
    c, h, w = input_shape
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise CnnDslError(f"{path} needs one sub-folder per class (found {len(classes)})",
                          hint="lay images out as DIR/<class name>/<image>.png")
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                    array = np.asarray(image, dtype=np.float32)
            except (UnidentifiedImageError, OSError) as err:
                raise CnnDslError(f"cannot read image {file}: {err}", hint="remove or fix the file") from None
            images.append(array[None] if c == 1 else array.transpose(2, 0, 1))
            labels.append(index)
    if not images:
        raise CnnDslError(f"no images in {path}", hint=f"supported: {', '.join(IMAGE_SUFFIXES)}")
    x = np.stack(images).astype(np.float32)
    y = np.asarray(labels, dtype=np.int64)
    train, test = stratified_split(y, test_fraction)
    return Dataset(x[train], y[train], x[test], y[test], classes, os.fspath(path))


def _check_array(x: np.ndarray, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    x = np.asarray(x)
    if len(input_shape) == 3 and x.ndim == 3 and input_shape[0] == 1:
        x = x[:, None]  # (N, H, W) grayscale
    if tuple(x.shape[1:]) != tuple(input_shape):
        hint = "store images as N x C x H x W (NCHW)"
        if len(input_shape) == 3 and x.ndim == 4 and tuple(x.shape[1:]) == (input_shape[1], input_shape[2],
                                                                             input_shape[0]):
            hint = "the array looks NHWC; transpose it to NCHW: x.transpose(0, 3, 1, 2)"
        raise CnnDslError(f"{what} holds samples of shape {_fmt(x.shape[1:])} but the network input is "
                          f"{_fmt(input_shape)}", hint=hint)
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        hint = f"store one integer class index per image: an array of shape ({n},)"
        if y.ndim == 2 and len(y) == n:
            hint = "flatten it: y.reshape(-1)" if y.shape[1] == 1 else "if its rows are one-hot, store y.argmax(1)"
        raise CnnDslError(f"{what} has shape {_fmt(y.shape)}, expected {n} integer labels", hint=hint)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise CnnDslError(f"{what} holds non-integer labels", hint="labels are class indices 0..K-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise CnnDslError(f"{what} holds a negative label ({int(y.min())})", hint="labels are class indices 0..K-1")
    return y


def load_npz(path: Path, input_shape: tuple[int, ...], test_fraction: float) -> Dataset:
    """`x_train`, `y_train` and optionally `x_test`, `y_test`: float or integer arrays in NCHW
    (N, H, W accepted for one channel), integer labels; without a test part, the stratified split."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise CnnDslError(f"cannot read {path}: {err}", hint="give an .npz written by numpy.savez") from None
    if "x" in arrays and "y" in arrays and "x_train" not in arrays:
        return load_segmentation_npz(path, arrays, input_shape, test_fraction)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise CnnDslError(f"{path} has no array '{key}' (it has: {', '.join(arrays) or 'none'})",
                              hint="save x_train, y_train[, x_test, y_test] with numpy.savez")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise CnnDslError(f"{path} has only one of x_test and y_test", hint="give both or neither")
    x = _check_array(arrays["x_train"], input_shape, f"{path}: x_train")
    y = _labels(arrays["y_train"], len(x), f"{path}: y_train")
    if "x_test" in arrays:
        x_test = _check_array(arrays["x_test"], input_shape, f"{path}: x_test")
        y_test = _labels(arrays["y_test"], len(x_test), f"{path}: y_test")
        x_train, y_train = x, y
    else:
        train, test = stratified_split(y, test_fraction)
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    k = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(x_train, y_train, x_test, y_test, [str(i) for i in range(k)], os.fspath(path))


def load_data(spec: str | None, input_shape: tuple[int, ...], test_fraction: float = 0.2, seed: int = 0,
              classes: int | None = None) -> Dataset:
    """`spec`: None or 'digits', 'shapes' (generated from `seed`), a folder, or a .npz file.
    `classes`: a segmenter's output channels (its folder is images/ + masks/, labels below it)."""
    if spec == "shapes":
        return load_shapes(tuple(input_shape), test_fraction, seed)
    if spec is None or spec == "digits":
        return load_digits_data(tuple(input_shape), test_fraction)
    path = Path(spec)
    if path.is_dir():
        if classes is not None or all((path / name).is_dir() for name in MASK_FOLDERS):
            return load_mask_folder(path, tuple(input_shape), test_fraction, classes)
        return load_folder(path, tuple(input_shape), test_fraction)
    if path.suffix.lower() == ".npz":
        if not path.exists():
            raise CnnDslError(f"no data file {spec}", hint="check the path")
        return load_npz(path, tuple(input_shape), test_fraction)
    if not path.exists():
        raise CnnDslError(f"no data set '{spec}'", hint="give digits, shapes, a folder with one sub-folder per class, "
                                                        "or a .npz file with x_train, y_train[, x_test, y_test]")
    raise CnnDslError(f"cannot read {spec} as training data", hint="give digits, an image folder or a .npz file")


# ---- segmentation: per-pixel labels ---------------------------------------------------------------

SHAPES_TRAIN, SHAPES_TEST = 512, 128  # images of the embedded `shapes` set
SHAPES_CLASSES = ["background", "circle", "square", "triangle"]


def make_shapes(n: int, channels: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (float32 N x C x H x W) and label maps (int64 N x H x W), a pure function of the
    arguments: on Gaussian noise (std 0.15 around 0) one to three filled shapes, each a circle
    (class 1), an axis-aligned square (2) or an upward triangle (3) of size s ~ U(H/10, H/5)
    (radius, half side, half height) at a random centre, filled with a brightness ~ U(0.6, 1),
    later shapes drawn over earlier ones; every channel gets the same picture with its own noise."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 16]))
    size = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x = np.zeros((n, height, width), dtype=np.float64)
    y = np.zeros((n, height, width), dtype=np.int64)
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            kind = int(rng.integers(1, 4))
            s = rng.uniform(size / 10, size / 5)
            cy, cx = rng.uniform(s, height - s), rng.uniform(s, width - s)
            value = rng.uniform(0.6, 1.0)
            dy, dx = yy - cy, xx - cx
            if kind == 1:
                inside = dy ** 2 + dx ** 2 <= s ** 2
            elif kind == 2:
                inside = (np.abs(dy) <= 0.85 * s) & (np.abs(dx) <= 0.85 * s)
            else:  # apex at cy - s, base at cy + s, half width s at the base
                inside = (dy >= -s) & (dy <= s) & (np.abs(dx) <= (dy + s) / 2)
            x[i][inside] = value
            y[i][inside] = kind
    images = x[:, None] + rng.normal(0.0, 0.15, size=(n, max(channels, 1), height, width))
    return images.astype(np.float32), y


def _check_segmentation_input(input_shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise CnnDslError(f"{what} feeds a CxHxW input, the network input is {_fmt(input_shape)}",
                          hint="declare an image input such as `input 1x64x64`; a vector input trains on --data "
                               "digits or FILE.npz with x_train, y_train")
    c, h, w = (int(d) for d in input_shape)
    return c, h, w


def load_shapes(input_shape: tuple[int, ...], test_fraction: float, seed: int) -> Dataset:
    """The embedded segmentation set: SHAPES_TRAIN + SHAPES_TEST images from `make_shapes` at the
    network's input size and channel count, generated from `seed`; `test_fraction` 0 keeps all
    for training."""
    c, h, w = _check_segmentation_input(input_shape, "the shapes data set")
    total = SHAPES_TRAIN + SHAPES_TEST
    x, y = make_shapes(total, c, h, w, seed)
    k = int(round(total * test_fraction))
    cut = total - k
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:], list(SHAPES_CLASSES), "shapes")


def load_segmentation_npz(path: Path, arrays: dict[str, np.ndarray], input_shape: tuple[int, ...],
                          test_fraction: float) -> Dataset:
    """`x` (N x C x H x W, or N x H x W for one channel) and `y` (N x H x W integer label maps);
    round(test_fraction * N) images, chosen by a permutation seeded with SPLIT_SEED, are the test part."""
    _check_segmentation_input(input_shape, f"{path}")
    x = _check_array(arrays["x"], input_shape, f"{path}: x")
    y = np.asarray(arrays["y"])
    if y.shape != (len(x),) + tuple(input_shape[1:]):
        raise CnnDslError(f"{path}: y has shape {_fmt(y.shape)}, expected {len(x)} label maps of "
                          f"{_fmt(input_shape[1:])}", hint="store one integer class index per pixel: N x H x W")
    y = _labels(y.reshape(-1), y.size, f"{path}: y").reshape(y.shape)
    return _split_label_maps(x, y, test_fraction, os.fspath(path))


def _split_label_maps(x: np.ndarray, y: np.ndarray, test_fraction: float, source: str) -> Dataset:
    """round(test_fraction * N) images, chosen by a permutation seeded with SPLIT_SEED, are the test part."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    k = int(round(len(x) * test_fraction))
    test, train = np.sort(order[:k]), np.sort(order[k:])
    classes = int(y.max(initial=0)) + 1
    return Dataset(x[train], y[train], x[test], y[test], [str(i) for i in range(classes)], source)


MASK_FOLDERS = ("images", "masks")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")


def _image_bands(image) -> np.ndarray:
    """A Pillow image as float32 (bands, H, W): palette images as their colours, 16-bit and
    32-bit integer images with their values, bilevel as 0/255."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _mask_labels(image, file: Path) -> np.ndarray:
    """A mask as int64 (H, W) class indices: a palette PNG's indices, or a one-channel image's values."""
    if image.mode in ("P", "L", "1", "I") or image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.int64)  # a palette image's array is its indices
    raise CnnDslError(f"mask {file} is a {image.mode} image with {len(image.getbands())} channels; a mask holds "
                      "one class index per pixel",
                      hint="save it as a one-channel (L) or palette (P) PNG whose values are the class indices "
                           "0..K-1 (map each colour to its index)")


def _read(file: Path, what: str, read):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            return image.size, read(image)
    except (UnidentifiedImageError, OSError) as err:
        raise CnnDslError(f"cannot read {what} {file}: {err}", hint="remove or fix the file") from None


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in IMAGE_SUFFIXES or file.name.startswith("."):
            continue
        if file.stem in files:
            raise CnnDslError(f"{files[file.stem]} and {file} have the same name; images and masks are matched "
                              "by name", hint="keep one file per name in each folder")
        files[file.stem] = file
    return files


def load_mask_folder(path: Path, input_shape: tuple[int, ...], test_fraction: float,
                     classes: int | None = None) -> Dataset:
    """A segmentation folder: `images/<name>.<ext>` and `masks/<name>.png`, matched by file name
    without the suffix; a mask is an HxW map of class indices (a one-channel PNG's values or a
    palette PNG's indices) of its image's size. Images are read with their values (0..255 for
    8-bit), a grayscale image copied to every channel of the input, and resized to the input's
    HxW bilinearly (`resize_bilinear`), masks by nearest neighbour at the same points
    (`resize_labels`). `classes` (the network's output channels) bounds the labels; the test part
    as for `load_segmentation_npz`."""
    c, h, w = _check_segmentation_input(input_shape, f"the image folder {path}")
    layout = "lay it out as DIR/images/<name>.png and DIR/masks/<name>.png (one class index per pixel)"
    for name in MASK_FOLDERS:
        if not (path / name).is_dir():
            raise CnnDslError(f"{path} has no {name}/ folder: a segmenter's image folder holds images/ and masks/",
                              hint=layout)
    images, masks = _by_stem(path / "images"), _by_stem(path / "masks")
    if not images:
        raise CnnDslError(f"no images in {path / 'images'}", hint=f"supported: {', '.join(IMAGE_SUFFIXES)}")
    for stem, mask in masks.items():
        if stem not in images:
            raise CnnDslError(f"mask {mask} has no image (no {path / 'images' / stem}.*)",
                              hint="add its image or remove the mask")
    xs, ys = [], []
    for stem, file in images.items():
        mask = masks.get(stem)
        if mask is None:
            raise CnnDslError(f"image {file} has no mask (no {path / 'masks' / stem}.png)",
                              hint=f"add {path / 'masks' / stem}.png (an HxW map of class indices) or remove "
                                   "the image")
        if mask.suffix.lower() in LOSSY_SUFFIXES:
            raise CnnDslError(f"mask {mask} is lossily compressed, which changes class indices",
                              hint="save masks as PNG")
        size, x = _read(file, "image", _image_bands)
        mask_size, y = _read(mask, "mask", lambda image, mask=mask: _mask_labels(image, mask))
        if mask_size != size:
            raise CnnDslError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {file} is "
                              f"{size[0]}x{size[1]} (width x height)",
                              hint="a mask has its image's size: one class index per pixel")
        if len(x) == 1 and c > 1:
            x = np.repeat(x, c, axis=0)
        elif len(x) != c:
            kind = {1: "grayscale (L)", 3: "RGB", 4: "RGBA"}.get(c, f"{c}-channel")
            raise CnnDslError(f"image {file} has {len(x)} channels but the network input is {_fmt(input_shape)}",
                              hint=f"save the images as {kind}, or change the network's input to "
                                   f"{len(x)}x{h}x{w}")
        top = int(y.max(initial=0))
        if classes is not None and top >= classes:
            hint = f"class indices run 0..{classes - 1}: fix the mask, or give the network {top + 1} output channels"
            if top == 255 and set(np.unique(y).tolist()) <= {0, 255}:
                hint = "the mask looks black and white (0 and 255): store the class indices (0 and 1)"
            raise CnnDslError(f"mask {mask} holds label {top} but the network outputs {classes} classes", hint=hint)
        xs.append(resize_bilinear(x[None], h, w)[0])
        ys.append(resize_labels(y, h, w))
    return _split_label_maps(np.stack(xs).astype(np.float32), np.stack(ys), test_fraction, os.fspath(path))
