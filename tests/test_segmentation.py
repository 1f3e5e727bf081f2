"""`cnndsl train` on a segmenter (issue 16): per-pixel cross-entropy, the `shapes` data set, mean IoU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from extras import needs

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.training.data import make_shapes
from cnndsl.training.loop import TrainOptions, train
from cnndsl.training.loss import cross_entropy, mean_iou

ROOT = Path(__file__).resolve().parent.parent
UNET_SHAPES = ROOT / "examples" / "unet_shapes.cnn"
TORCH = pytest.param("torch", marks=needs("torch"))

SEG = """
network seg
input 1x16x16
conv 3x3 pad1 -> 4 nobias; bn; relu
conv 3x3 pad1 -> 4; relu
conv 1x1 -> 4
train {
  optimizer sgd lr .05 momentum .9
  batch 8
  epochs 2
  schedule constant
}
"""


def _quiet(**kw) -> TrainOptions:
    return TrainOptions(progress=False, log=lambda line: None, **kw)


def _small_shapes(path: Path, n: int = 40) -> Path:
    x, y = make_shapes(n, 1, 16, 16, seed=3)
    np.savez(path, x=x, y=y)
    return path


def test_mean_iou_leaves_out_classes_absent_from_prediction_and_truth():
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    # class 0: 1/2, class 1: 2/3, classes 2 and 3 nowhere: left out
    assert mean_iou(pred, truth, 4) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert mean_iou(np.array([2]), np.array([3]), 4) == 0.0


def test_shapes_are_deterministic_and_hold_every_class():
    x, y = make_shapes(8, 3, 32, 40, seed=5)
    x2, y2 = make_shapes(8, 3, 32, 40, seed=5)
    assert x.shape == (8, 3, 32, 40) and x.dtype == np.float32 and y.shape == (8, 32, 40)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert set(np.unique(make_shapes(32, 1, 32, 32, seed=0)[1])) == {0, 1, 2, 3}
    assert not np.array_equal(make_shapes(8, 1, 32, 32, seed=6)[1], y[:, :32, :32])


@needs("torch")
def test_per_pixel_cross_entropy_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 3, 5))
    labels = rng.integers(0, 4, size=(2, 3, 5))
    rows = logits.transpose(0, 2, 3, 1).reshape(-1, 4)
    loss, grad = cross_entropy(rows, labels.reshape(-1), 0.1, 1 / labels.size)
    t = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=0.1)
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-9)
    np.testing.assert_allclose(grad.reshape(2, 3, 5, 4).transpose(0, 3, 1, 2), t.grad.numpy(), rtol=1e-9)


@needs("torch")
def test_torch_and_numpy_take_the_same_first_steps_on_label_maps(tmp_path):
    data = _small_shapes(tmp_path / "s.npz")
    net = cnndsl.parse(SEG)
    a = train(net, _quiet(backend="numpy", data=str(data), epochs=1, out=str(tmp_path / "n")))
    b = train(net, _quiet(backend="torch", data=str(data), epochs=1, out=str(tmp_path / "t")))
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], rtol=2e-3, atol=2e-4, err_msg=name)
    assert a.metrics[0]["miou"] == pytest.approx(b.metrics[0]["miou"], abs=0.02)


@pytest.mark.parametrize("backend", ["numpy", TORCH])
def test_segmenter_checkpoints_resume_and_metrics(backend, tmp_path):
    data = _small_shapes(tmp_path / "s.npz")
    net = cnndsl.parse(SEG)
    full = train(net, _quiet(backend=backend, data=str(data), out=str(tmp_path / "full")))
    train(net, _quiet(backend=backend, data=str(data), epochs=1, out=str(tmp_path / "part")))
    resumed = train(net, _quiet(epochs=2, resume=str(tmp_path / "part")))
    for name, value in full.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)
    lines = [json.loads(m) for m in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all(0 <= m["miou"] <= 1 and 0 <= m["val_acc"] <= 1 for m in lines)
    assert resumed.test_miou == lines[-1]["miou"]


def test_shapes_is_the_default_data_of_a_segmenter_and_on_the_progress_line(tmp_path):
    lines: list[str] = []
    net = cnndsl.parse(SEG.replace("epochs 2", "epochs 1"))
    result = train(net, TrainOptions(backend="numpy", out=str(tmp_path / "r"), progress=False, log=lines.append))
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["config"]["data"] == "shapes"
    assert state["classes"] == ["background", "circle", "square", "triangle"]
    assert "miou" in lines[0] and result.test_miou is not None


def test_segmenter_errors(tmp_path):
    three = cnndsl.parse(SEG.replace("conv 1x1 -> 4", "conv 1x1 -> 3"))
    with pytest.raises(CnnDslError, match="4 classes but the network outputs 3 channels"):
        train(three, _quiet(backend="numpy", out=str(tmp_path / "a")))
    shrinking = cnndsl.parse(SEG.replace("conv 3x3 pad1 -> 4; relu", "conv 3x3 -> 4; relu")
                             + "augment {\n  flip horizontal\n}\n")
    with pytest.raises(CnnDslError, match="output has its input's HxW; this one maps 1x16x16 to 4x14x14"):
        train(shrinking, _quiet(backend="numpy", out=str(tmp_path / "b")))
    labels = tmp_path / "c.npz"
    np.savez(labels, x_train=np.zeros((4, 1, 16, 16), np.float32), y_train=np.arange(4))
    with pytest.raises(CnnDslError, match="label"):
        train(cnndsl.parse(SEG), _quiet(backend="numpy", data=str(labels), out=str(tmp_path / "c")))
    bad = tmp_path / "d.npz"
    np.savez(bad, x=np.zeros((4, 1, 16, 16), np.float32), y=np.zeros((4, 8, 8), np.int64))
    with pytest.raises(CnnDslError, match="expected 4 label maps of 16x16"):
        train(cnndsl.parse(SEG), _quiet(backend="numpy", data=str(bad), out=str(tmp_path / "d")))


def test_cli_reports_mean_iou(tmp_path):
    net_file = tmp_path / "seg.cnn"
    net_file.write_text(SEG.replace("epochs 2", "epochs 1"))
    result = CliRunner().invoke(main, ["train", str(net_file), "--backend", "numpy", "--data",
                                       str(_small_shapes(tmp_path / "s.npz")), "--out", str(tmp_path / "r"),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "mean IoU" in result.output


def _acceptance(backend: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = train(cnndsl.load(UNET_SHAPES), _quiet(backend=backend, out=str(tmp_path / "run")))
    seconds = time.monotonic() - started
    print(f"{backend}: mean IoU {result.test_miou:.4f}, pixel accuracy {result.test_accuracy:.4f} in {seconds:.1f}s")
    assert result.test_miou >= 0.80


@needs("torch")
def test_unet_shapes_reaches_mean_iou_080_on_shapes_torch(tmp_path):
    _acceptance("torch", tmp_path)


@pytest.mark.slow
def test_unet_shapes_reaches_mean_iou_080_on_shapes_numpy(tmp_path):
    _acceptance("numpy", tmp_path)
