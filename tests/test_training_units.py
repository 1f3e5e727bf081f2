"""Training building blocks: augmentation, optimizers and schedules against torch, the loss, data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from extras import needs, require
from hypothesis import given, settings
from hypothesis import strategies as st

from cnndsl import ir
from cnndsl.errors import CnnDslError
from cnndsl.training import augment as A
from cnndsl.training import data as D
from cnndsl.training.loss import cross_entropy, nll_of_probabilities
from cnndsl.training.optim import Schedule, check_schedule, lr_at, numpy_optimizer, torch_optimizer


def _batch(seed=0, shape=(6, 3, 12, 10)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ---- augmentation ------------------------------------------------------------------------------

FULL = ir.Augment(flip=("horizontal", "vertical"), rotate=15, zoom=(0.9, 1.1), skew=0.1, crop=10, crop_pad=2,
                  brightness=0.2, contrast=0.2)


def test_augment_keeps_shape_and_dtype_and_is_deterministic_under_seed():
    x = _batch()
    a = A.augment_batch(x, FULL, np.random.default_rng(7))
    b = A.augment_batch(x, FULL, np.random.default_rng(7))
    c = A.augment_batch(x, FULL, np.random.default_rng(8))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, x)
    np.testing.assert_array_equal(x, _batch())  # the input is not modified


def test_flips_are_exact_mirror_images():
    x = _batch()
    mask = np.array([True, False, True, False, False, True])
    out = A.flip(x, mask, -1)
    np.testing.assert_array_equal(out[mask], x[mask][..., ::-1])
    np.testing.assert_array_equal(out[~mask], x[~mask])
    np.testing.assert_array_equal(A.flip(out, mask, -1), x)
    vertical = A.flip(x, mask, -2)
    np.testing.assert_array_equal(vertical[mask], x[mask][:, :, ::-1, :])
    # through augment_batch: every sample is either unchanged or mirrored exactly
    aug = ir.Augment(flip=("horizontal",))
    out = A.augment_batch(x, aug, np.random.default_rng(3))
    mirrored = [np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x, strict=True)]
    same = [np.array_equal(o, s) for o, s in zip(out, x, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and any(mirrored) and any(same)


def test_identity_affine_and_zero_rotation_change_nothing():
    x = _batch()
    eye = A.affine_matrices(np.zeros(6), np.ones(6), np.zeros(6))
    np.testing.assert_allclose(A.warp_affine(x, eye), x, atol=1e-6)


def test_rotation_by_90_degrees_moves_pixels_like_rot90():
    x = _batch(shape=(2, 1, 9, 9))
    out = A.warp_affine(x, A.affine_matrices(np.full(2, 90.0), np.ones(2), np.zeros(2)))
    # y axis points down: a +90 degree map sends (x, y) to (-y, x)
    expected = np.rot90(x, k=-1, axes=(2, 3))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zoom_out_fills_zeros_at_the_border():
    x = np.ones((1, 1, 10, 10), np.float32)
    out = A.warp_affine(x, A.affine_matrices(np.zeros(1), np.full(1, 0.5), np.zeros(1)))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 5, 5] == pytest.approx(1)


def test_crop_with_padding_matches_padded_slices():
    x = _batch(shape=(3, 2, 8, 8))
    offsets = np.array([[0, 0], [4, 4], [1, 3]])
    out = A.crop_with_padding(x, 8, 2, offsets)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i, (t, left) in enumerate(offsets):
        np.testing.assert_array_equal(out[i], padded[i, :, t:t + 8, left:left + 8])
    np.testing.assert_array_equal(out[0, :, :2], 0)
    smaller = A.crop_with_padding(x, 6, 0, np.array([[1, 1]] * 3))
    assert smaller.shape == x.shape  # resized back to the input size


def test_brightness_and_contrast_stay_in_their_ranges():
    x = _batch(shape=(50, 1, 4, 4)) + 0.5
    out = A.augment_batch(x, ir.Augment(brightness=0.2), np.random.default_rng(0), value_range=255.0)
    shift = (out - x).reshape(50, -1)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(16, 1), atol=1e-4)  # one shift per sample
    assert shift.min() >= -51 - 1e-3 and shift.max() <= 51 + 1e-3 and shift.max() - shift.min() > 40
    out = A.augment_batch(x, ir.Augment(contrast=0.3), np.random.default_rng(0))
    np.testing.assert_allclose(out.reshape(50, -1).mean(1), x.reshape(50, -1).mean(1), rtol=1e-5)
    spread = out.reshape(50, -1).std(1) / x.reshape(50, -1).std(1)
    assert spread.min() >= 0.7 - 1e-5 and spread.max() <= 1.3 + 1e-5


def test_augment_rejects_a_crop_larger_than_the_padded_input():
    with pytest.raises(CnnDslError, match="crop 40"):
        A.check_augment(ir.Augment(crop=40, crop_pad=4), (3, 28, 28))
    A.check_augment(ir.Augment(crop=32, crop_pad=2), (3, 28, 28))


# ---- optimizers against torch.optim ------------------------------------------------------------

OPTIMIZERS = [
    ir.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0),
    ir.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9),
    ir.TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True),
    ir.TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    ir.TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    ir.TrainConfig(optimizer="adam", lr=0.01),
    ir.TrainConfig(optimizer="adam", lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
    ir.TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1),
]


@pytest.mark.parametrize("config", OPTIMIZERS, ids=lambda c: f"{c.optimizer}-m{c.momentum}-n{c.nesterov}-"
                                                          f"wd{c.weight_decay}")
def test_numpy_optimizers_follow_torch_optim(config):
    torch = require("torch")
    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (4, 2, 3, 3), "conv1.bias": (4,), "bn1.weight": (4,), "fc1.weight": (5, 8)}
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    decay = {"conv1.weight", "fc1.weight"}
    tparams = [(n, torch.nn.Parameter(torch.from_numpy(p.copy()))) for n, p in params.items()]
    ours = numpy_optimizer(config, decay)
    theirs = torch_optimizer(config, tparams, decay)
    for step in range(6):
        grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        lr = config.lr * (1 - 0.1 * step)  # a changing lr, as a schedule sets it
        ours.step(params, grads, lr)
        for n, p in tparams:
            p.grad = torch.from_numpy(grads[n].copy())
        for group in theirs.param_groups:
            group["lr"] = lr
        theirs.step()
    for n, p in tparams:
        np.testing.assert_allclose(params[n], p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=n)


def test_weight_decay_skips_biases_and_batch_norm():
    config = ir.TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.5)
    params = {"conv1.weight": np.ones((2, 1, 1, 1), np.float32), "conv1.bias": np.ones(2, np.float32)}
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    numpy_optimizer(config, {"conv1.weight"}).step(params, grads, 1.0)
    np.testing.assert_allclose(params["conv1.weight"], 0.5)
    np.testing.assert_allclose(params["conv1.bias"], 1.0)


def test_optimizer_state_round_trips():
    config = ir.TrainConfig(optimizer="adam", lr=0.01)
    rng = np.random.default_rng(1)
    params = {"a.weight": rng.standard_normal((3, 3)).astype(np.float32)}
    first, second = numpy_optimizer(config, set()), numpy_optimizer(config, set())
    grads = [{"a.weight": rng.standard_normal((3, 3)).astype(np.float32)} for _ in range(4)]
    copy = {k: v.copy() for k, v in params.items()}
    for g in grads[:2]:
        first.step(params, g, 0.01)
        second.step(copy, g, 0.01)
    restored = numpy_optimizer(config, set())
    restored.load_state_arrays(first.state_arrays(), params)
    for g in grads[2:]:
        restored.step(params, g, 0.01)
        second.step(copy, g, 0.01)
    np.testing.assert_array_equal(params["a.weight"], copy["a.weight"])


# ---- schedules ---------------------------------------------------------------------------------

def _torch_lrs(make, steps, per_epoch=None):
    torch = require("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    out = []
    for step in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_epoch is None or (step + 1) % per_epoch == 0:
            sched.step()
    return out


def _ours(name, epochs, per_epoch, args=()):
    s = Schedule(name, 0.1, epochs, per_epoch, args)
    return [lr_at(s, e, i) for e in range(epochs) for i in range(per_epoch)]


def test_constant_schedule():
    assert _ours("constant", 3, 4) == [0.1] * 12


def test_step_schedule_matches_steplr():
    torch = require("torch")
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), 24, per_epoch=4)
    np.testing.assert_allclose(_ours("step", 6, 4, (2, 0.5)), expected, rtol=1e-12)
    assert _ours("step", 9, 1) == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3)  # defaults: epochs//3, 0.1


def test_cosine_schedule_matches_cosine_annealing_per_step():
    torch = require("torch")
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20), 20)
    np.testing.assert_allclose(_ours("cosine", 5, 4), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pct", [0.3, 0.25])
def test_onecycle_schedule_matches_onecyclelr(pct):
    torch = require("torch")
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=40, pct_start=pct, cycle_momentum=False), 40)
    args = () if pct == 0.3 else (pct,)
    np.testing.assert_allclose(_ours("onecycle", 8, 5, args), expected, rtol=1e-9, atol=1e-12)


def test_schedule_arguments_are_checked():
    check_schedule("step", (3, 0.5))
    with pytest.raises(CnnDslError, match="at most 2"):
        check_schedule("step", (3, 0.5, 1))
    with pytest.raises(CnnDslError, match="whole number"):
        check_schedule("step", (2.5,))
    with pytest.raises(CnnDslError) as err:
        check_schedule("step", (2.5, 0.5))
    assert err.value.hint.endswith("step 2 0.5")
    with pytest.raises(CnnDslError) as err:
        check_schedule("onecycle", (1.5,))
    assert "onecycle 0.3" in err.value.hint


# ---- loss ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_and_its_gradient_match_torch(smoothing):
    torch = require("torch")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 7)
    loss, grad = cross_entropy(logits, labels, smoothing)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.from_numpy(labels), label_smoothing=smoothing)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_nll_of_softmax_outputs_equals_cross_entropy_through_the_softmax():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 1, 2])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    loss, dprobs = nll_of_probabilities(probs, labels)
    expected_loss, dlogits = cross_entropy(logits, labels)
    assert loss == pytest.approx(expected_loss)
    # back through softmax: dz = p * (dp - sum(dp * p))
    dz = probs * (dprobs - (dprobs * probs).sum(1, keepdims=True))
    np.testing.assert_allclose(dz, dlogits, atol=1e-9)


# ---- data ---------------------------------------------------------------------------------------

def test_bilinear_resize_matches_torch_interpolate():
    torch = require("torch")
    x = _batch(shape=(2, 1, 8, 8))
    ours = D.resize_bilinear(x, 28, 28)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(28, 28), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-6)
    near = torch.nn.functional.interpolate(torch.from_numpy(x), size=(28, 28), mode="nearest")
    np.testing.assert_array_equal(D.resize_nearest(x, 28, 28), near.numpy())


@needs("sklearn")
def test_digits_are_resized_to_the_input_with_a_fixed_stratified_split():
    data = D.load_data("digits", (1, 28, 28))
    assert data.x_train.shape[1:] == (1, 28, 28) and data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_test) == 1797
    assert len(data.x_test) == pytest.approx(0.2 * 1797, abs=10)
    counts = np.bincount(data.y_test, minlength=10) / np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert counts.min() > 0.18 and counts.max() < 0.22  # stratified
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    # 8x8 -> 24x24 by repeating each pixel 3x3, centred in a 2-pixel border
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, _ = D.stratified_split(bunch.target, 0.2)
    np.testing.assert_allclose(data.x_train[:, 0, 2:26:3, 2:26:3], bunch.images[train] / 16, rtol=1e-6)
    np.testing.assert_array_equal(data.x_train[:, :, :2], 0)
    np.testing.assert_array_equal(data.x_train[:, :, :, 26:], 0)
    block = data.x_train[:, 0, 2:26, 2:26].reshape(-1, 8, 3, 8, 3)
    np.testing.assert_array_equal(block, block[:, :, :1, :, :1].repeat(3, 2).repeat(3, 4))
    again = D.load_data(None, (3, 16, 16))
    assert again.x_train.shape[1:] == (3, 16, 16)
    np.testing.assert_array_equal(again.y_test, data.y_test)  # the same split whatever the input
    np.testing.assert_array_equal(again.x_train[:, 0], again.x_train[:, 1])


@needs("sklearn")
def test_digits_for_a_vector_input_and_a_wrong_vector_input():
    assert D.load_data("digits", (64,)).x_train.shape[1:] == (64,)
    with pytest.raises(CnnDslError, match="1x8x8.*network input is 100"):
        D.load_data("digits", (100,))


def test_npz_with_a_wrong_input_shape_names_both_shapes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((10, 1, 16, 16), np.float32), y_train=np.arange(10) % 2)
    with pytest.raises(CnnDslError) as err:
        D.load_data(str(path), (1, 28, 28))
    assert "1x16x16" in str(err.value) and "1x28x28" in str(err.value)
    np.savez(path, x_train=np.zeros((10, 28, 28, 3), np.float32), y_train=np.arange(10) % 2)
    with pytest.raises(CnnDslError, match="NHWC"):
        D.load_data(str(path), (3, 28, 28))
    np.savez(path, x_train=np.zeros((10, 2, 28, 28), np.float32), y_train=np.arange(10) % 2)
    with pytest.raises(CnnDslError, match="2x28x28.*3x28x28"):
        D.load_data(str(path), (3, 28, 28))


def test_npz_with_and_without_a_test_part(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((40, 8, 8)), y_train=np.arange(40) % 4, x_test=rng.random((6, 8, 8)),
             y_test=np.arange(6) % 4)
    data = D.load_data(str(path), (1, 8, 8))
    assert (len(data.x_train), len(data.x_test)) == (40, 6) and data.num_classes == 4
    np.savez(path, x_train=rng.random((40, 1, 8, 8)), y_train=np.arange(40) % 4)
    data = D.load_data(str(path), (1, 8, 8))
    assert (len(data.x_train), len(data.x_test)) == (32, 8)
    with pytest.raises(CnnDslError, match="no array 'y_train'"):
        np.savez(path, x_train=rng.random((4, 1, 8, 8)))
        D.load_data(str(path), (1, 8, 8))


def test_labels_of_the_wrong_shape_get_a_fix_for_that_shape(tmp_path):
    path = tmp_path / "d.npz"
    fixes = {(10, 1): "y.reshape(-1)", (10, 2): "y.argmax(1)", (9,): "shape (10,)"}
    for shape, fix in fixes.items():
        np.savez(path, x_train=np.zeros((10, 1, 8, 8), np.float32), y_train=np.zeros(shape, np.int64))
        with pytest.raises(CnnDslError, match="expected 10 integer labels") as err:
            D.load_data(str(path), (1, 8, 8))
        assert fix in err.value.hint


@needs("PIL")
def test_image_folder_is_read_converted_and_split(tmp_path):
    from PIL import Image

    for label, value in (("cat", 30), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.new("RGB", (12, 9), (value, value, value + i)).save(tmp_path / label / f"{i}.png")
    data = D.load_data(str(tmp_path), (1, 6, 6))
    assert data.classes == ["cat", "dog"] and data.x_train.shape[1:] == (1, 6, 6)
    assert (len(data.x_train), len(data.x_test)) == (8, 2) and sorted(data.y_test) == [0, 1]
    assert abs(float(data.x_train[data.y_train == 1].mean()) - 200) < 2
    rgb = D.load_data(str(tmp_path), (3, 4, 5))
    assert rgb.x_train.shape[1:] == (3, 4, 5)
    with pytest.raises(CnnDslError, match="1xHxW or 3xHxW"):
        D.load_data(str(tmp_path), (2, 4, 4))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(CnnDslError, match="no data set"):
        D.load_data(str(tmp_path / "nope"), (1, 8, 8))
    assert math.isclose(len(D.stratified_split(np.arange(10) % 2, 0.2)[1]), 2)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(4, 12), w=st.integers(4, 12),
       rotate=st.floats(0, 180), skew=st.floats(0, 1), pad=st.integers(0, 3), seed=st.integers(0, 2**32 - 1),
       flips=st.sampled_from([(), ("horizontal",), ("vertical",), ("horizontal", "vertical")]))
def test_augment_keeps_any_batch_shape_finite_and_reproducible(n, c, h, w, rotate, skew, pad, seed, flips):
    crop = min(h, w)
    aug = ir.Augment(flip=flips, rotate=rotate, zoom=(0.8, 1.25), skew=skew, crop=crop, crop_pad=pad,
                     brightness=0.3, contrast=0.3)
    A.check_augment(aug, (c, h, w))
    x = np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)
    out = A.augment_batch(x, aug, np.random.default_rng(seed))
    assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, A.augment_batch(x, aug, np.random.default_rng(seed)))


# ---- the progress bar ----------------------------------------------------------------------------

def test_the_progress_bar_shows_no_loss_before_the_first_step():
    from rich.progress import TextColumn

    from cnndsl.training.loop import _Progress

    progress = _Progress(True, None)
    progress.start(1, 3, 10)
    try:
        def shown() -> str:
            task = progress.bar.tasks[0]
            return " ".join(str(c.render(task)) for c in progress.bar.columns if isinstance(c, TextColumn))

        assert shown() == "epoch 1/3 " and "nan" not in shown()
        progress.advance(0.25)
        assert shown() == "epoch 1/3 loss 0.2500"
    finally:
        progress.end("done")
