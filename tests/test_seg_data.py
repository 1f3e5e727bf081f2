"""A segmenter's data (issue 16): the images/ + masks/ folder and augmentation that moves the label
maps with their images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from extras import needs, require

import cnndsl
from cnndsl import ir
from cnndsl.errors import CnnDslError
from cnndsl.training import augment as A
from cnndsl.training.data import load_data, load_mask_folder, make_shapes, resize_labels
from cnndsl.training.loop import TrainOptions, train

SEG = """
network seg
input 1x16x16
conv 3x3 pad1 -> 4 nobias; bn; relu
conv 1x1 -> 4
augment {
  flip horizontal
  flip vertical
  rotate 20
  zoom .8 1.2
  crop 12 pad2
  brightness .1
}
train {
  optimizer adam lr .01
  batch 8
  epochs 1
}
"""


def _label_image(n: int = 6, h: int = 16, w: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label maps and an image that *is* its label map (value k on class k): wherever bilinear
    sampling of the image meets a single class, the image's value names the label nearby."""
    _, y = make_shapes(n, 1, h, w, seed)
    return y[:, None].astype(np.float32), y


def test_a_flip_moves_every_label_with_its_pixel():
    x, y = _label_image()
    out, labels = A.augment_pair(x, y, ir.Augment(flip=("horizontal", "vertical")), np.random.default_rng(1))
    np.testing.assert_array_equal(labels, out[:, 0].astype(np.int64))  # per pixel, exactly
    assert not np.array_equal(labels, y)
    same = A.augment_batch(x, ir.Augment(flip=("horizontal", "vertical")), np.random.default_rng(1))
    np.testing.assert_array_equal(same, out)  # the same draws with or without label maps


@pytest.mark.parametrize("aug", [
    ir.Augment(rotate=90.0),
    ir.Augment(rotate=30.0, zoom=(0.7, 1.3), skew=0.2),
    ir.Augment(crop=16, crop_pad=3),  # a shift
    ir.Augment(crop=11, crop_pad=2),  # a crop resized back
], ids=["rotate90", "affine", "shift", "crop"])
def test_geometric_ops_sample_the_label_at_the_point_the_image_is_sampled(aug):
    x, y = _label_image(h=16, w=16)
    out, labels = A.augment_pair(x, y, aug, np.random.default_rng(4))
    value = out[:, 0]
    pure = np.abs(value - np.round(value)) < 1e-5  # pixels sampled inside one class
    assert pure.mean() > 0.75
    np.testing.assert_array_equal(labels[pure], np.round(value[pure]).astype(np.int64))
    assert labels.dtype == y.dtype and labels.shape == y.shape and set(np.unique(labels)) <= set(np.unique(y))
    np.testing.assert_array_equal(A.augment_batch(x, aug, np.random.default_rng(4)), out)


@needs("torch")
def test_affine_warps_match_torch_grid_sample_bilinear_for_images_and_nearest_for_labels():
    import torch

    rng = np.random.default_rng(2)
    x, y = _label_image(n=4, h=12, w=15)
    forward = A.affine_matrices(rng.uniform(-40, 40, 4), rng.uniform(0.7, 1.3, 4), rng.uniform(-0.3, 0.3, 4))
    sx, sy = A._source_points(forward, 12, 15)
    grid = torch.tensor(np.stack([sx / 14 * 2 - 1, sy / 11 * 2 - 1], -1).reshape(4, 12, 15, 2))
    def sample(values, mode):
        return torch.nn.functional.grid_sample(torch.tensor(values, dtype=torch.float64), grid, mode=mode,
                                               padding_mode="zeros", align_corners=True).numpy()[:, 0]
    np.testing.assert_allclose(A.warp_affine(x, forward)[:, 0], sample(x, "bilinear"), atol=1e-5)
    np.testing.assert_array_equal(A.warp_labels(y, forward), sample(y[:, None], "nearest").astype(np.int64))


def test_labels_from_outside_the_image_are_background():
    y = np.full((1, 8, 8), 2, np.int64)
    zoomed = A.warp_labels(y, A.affine_matrices(np.zeros(1), np.full(1, 0.5), np.zeros(1)))
    assert zoomed[0, 0, 0] == 0 and zoomed[0, 4, 4] == 2
    shifted = A.crop_with_padding(y, 8, 2, np.array([[0, 0]]))
    assert (shifted[0, :2] == 0).all() and (shifted[0, 2:, 2:] == 2).all()


@needs("torch")
def test_resize_labels_is_torch_nearest_exact():
    import torch

    y = np.random.default_rng(0).integers(0, 5, size=(2, 13, 17))
    for size in [(16, 16), (7, 9), (26, 34)]:
        expected = torch.nn.functional.interpolate(torch.tensor(y[:, None], dtype=torch.float64), size=size,
                                                   mode="nearest-exact")[:, 0].long().numpy()
        np.testing.assert_array_equal(resize_labels(y, *size), expected)


# ---- images/ + masks/ --------------------------------------------------------------------------

def _save(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> None:
    Image = require("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if mode:
        image = image.convert(mode)
    if palette:
        image = image.convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        image.putdata(array.reshape(-1).tolist())
    image.save(path)


def _folder(root: Path, n: int = 10, size: int = 16, palette_every: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_shapes(n, 1, size, size, seed=7)
    pixels = np.clip(x[:, 0] * 200 + 30, 0, 255).astype(np.uint8)
    for i in range(n):
        _save(root / "images" / f"im{i:02d}.png", pixels[i])
        _save(root / "masks" / f"im{i:02d}.png", y[i], palette=i % palette_every == 0)
    return pixels, y


def test_mask_folder_reads_images_and_palette_or_gray_masks_matched_by_name(tmp_path):
    pixels, y = _folder(tmp_path)
    data = load_data(str(tmp_path), (1, 16, 16), 0.2, classes=4)
    assert len(data.x_train) == 8 and len(data.x_test) == 2 and data.source == str(tmp_path)
    x_all = np.concatenate([data.x_train, data.x_test])
    y_all = np.concatenate([data.y_train, data.y_test])
    order = np.argsort([np.flatnonzero((pixels.astype(np.float32) == x[0]).all((1, 2)))[0] for x in x_all])
    np.testing.assert_array_equal(x_all[order][:, 0], pixels.astype(np.float32))
    np.testing.assert_array_equal(y_all[order], y)
    # a 3-channel network gets the gray image in every channel; a smaller input resizes both
    rgb = load_mask_folder(tmp_path, (3, 8, 8), 0.0, 4)
    assert rgb.x_train.shape == (10, 3, 8, 8) and np.array_equal(rgb.x_train[:, 0], rgb.x_train[:, 2])
    np.testing.assert_array_equal(rgb.y_train, resize_labels(y, 8, 8))


def test_a_segmenter_trains_on_a_mask_folder_with_geometric_augmentation(tmp_path):
    _folder(tmp_path / "data", n=24)
    net = cnndsl.parse(SEG)
    result = train(net, TrainOptions(backend="numpy", data=str(tmp_path / "data"), out=str(tmp_path / "run"),
                                     progress=False, log=lambda line: None))
    assert result.metrics[0]["miou"] is not None and np.isfinite(result.metrics[0]["loss"])


def _error(root: Path, shape=(1, 16, 16), classes: int | None = 4) -> CnnDslError:
    with pytest.raises(CnnDslError) as info:
        load_data(str(root), shape, 0.2, classes=classes)
    assert info.value.hint, info.value
    return info.value


def test_mask_folder_errors_name_the_file_and_a_fix(tmp_path):
    _folder(tmp_path / "a", n=3)
    (tmp_path / "a" / "masks" / "im01.png").unlink()
    error = _error(tmp_path / "a")
    assert "image" in str(error) and "im01.png has no mask" in str(error) and "masks/im01.png" in error.hint

    _folder(tmp_path / "b", n=3)
    _save(tmp_path / "b" / "masks" / "im02.png", np.zeros((16, 12)))
    error = _error(tmp_path / "b")
    assert "im02.png is 12x16 but its image" in str(error) and "16x16" in str(error)

    _folder(tmp_path / "c", n=3)
    _save(tmp_path / "c" / "masks" / "im00.png", np.full((16, 16), 7))
    error = _error(tmp_path / "c")
    assert "im00.png holds label 7 but the network outputs 4 classes" in str(error) and "0..3" in error.hint

    _folder(tmp_path / "d", n=3)
    _save(tmp_path / "d" / "masks" / "im00.png", np.where(np.eye(16) > 0, 255, 0))
    assert "black and white" in _error(tmp_path / "d").hint

    _folder(tmp_path / "e", n=3)
    _save(tmp_path / "e" / "images" / "im01.png", np.zeros((16, 16)), mode="RGB")
    error = _error(tmp_path / "e")
    assert "im01.png has 3 channels but the network input is 1x16x16" in str(error)
    assert "grayscale" in error.hint and "3x16x16" in error.hint

    _folder(tmp_path / "f", n=3)
    _save(tmp_path / "f" / "masks" / "im01.png", np.zeros((16, 16)), mode="RGB")
    error = _error(tmp_path / "f")
    assert "im01.png is a RGB image with 3 channels" in str(error) and "palette" in error.hint

    (tmp_path / "g" / "images").mkdir(parents=True)
    assert "has no masks/ folder" in str(_error(tmp_path / "g"))

    _folder(tmp_path / "h", n=2)
    _save(tmp_path / "h" / "masks" / "extra.png", np.zeros((16, 16)))
    assert "extra.png has no image" in str(_error(tmp_path / "h"))


def test_a_segmenter_given_a_class_folder_is_told_the_layout(tmp_path):
    _save(tmp_path / "cats" / "a.png", np.zeros((16, 16)))
    _save(tmp_path / "dogs" / "b.png", np.zeros((16, 16)))
    with pytest.raises(CnnDslError, match="has no images/ folder") as info:
        train(cnndsl.parse(SEG), TrainOptions(backend="numpy", data=str(tmp_path), out=str(tmp_path / "run"),
                                              progress=False, log=lambda line: None))
    assert "DIR/masks/<name>.png" in info.value.hint
