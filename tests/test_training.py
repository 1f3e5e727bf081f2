"""`cnndsl train`: runs, checkpoints, resume after SIGKILL, portable weights, distributed, accuracy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from extras import needs, require

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.training import checkpoint as ckpt
from cnndsl.training.loop import TrainOptions, train

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "examples" / "lenet5.cnn"
# The digits data set (the default `--data`) comes from scikit-learn, the `train` extra.
DIGITS = needs("sklearn")
TORCH = pytest.param("torch", marks=needs("torch"))

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")

# Batch norm, dropout, measured standardization and every augmentation: all that resume must replay.
TINY = """
network tiny
input 1x8x8
conv 3x3 pad1 -> 6 nobias; bn; relu
pool max 2/2
flatten
dropout .2
fc 10

preprocess {
  scale 2
  standardize
}
augment {
  flip horizontal
  rotate 10
  zoom .9 1.1
  skew .1
  crop 8 pad1
  brightness .1
  contrast .1
}
train {
  optimizer sgd lr .05 momentum .9 nesterov
  weight_decay 1e-3
  batch 32
  epochs 3
  schedule cosine
}
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return path


def _quiet(**kw) -> TrainOptions:
    return TrainOptions(progress=False, log=lambda line: None, **kw)


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.fspath(path))


@DIGITS
def test_cli_train_writes_a_run_folder(tiny, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(tiny), "--backend", "numpy", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"}
    assert lines[1]["loss"] < lines[0]["loss"]
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2 and state["config"]["backend"] == "numpy"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0002"]
    weights = _weights(out / "model.safetensors")
    assert set(weights) == {s.name for s in cnndsl.load(tiny).tensor_specs()}
    # standardize: per-channel mean/std of the training split after `scale 2`, stored with the model
    from cnndsl.training.data import load_data

    x = load_data("digits", (1, 8, 8)).x_train * 2
    np.testing.assert_allclose(weights["preprocess.mean"], [x.mean()], rtol=1e-5)
    np.testing.assert_allclose(weights["preprocess.std"], [x.std()], rtol=1e-5)
    assert float(weights["preprocess.scale"]) == 2.0
    assert _weights(out / "optimizer.safetensors")["step"] == 2 * 45  # 1,437 images / 32 per batch


@DIGITS
def test_a_second_run_into_the_same_folder_is_refused(tiny, tmp_path):
    net = cnndsl.load(tiny)
    train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "r")))
    with pytest.raises(CnnDslError, match="already holds a training run"):
        train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "r")))
    with pytest.raises(CnnDslError, match="holds no checkpoint"):
        train(net, _quiet(backend="numpy", resume=str(tmp_path / "nothing")))


def test_wrong_data_shape_is_a_clear_cli_error(tiny, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x_train=np.zeros((8, 3, 8, 8), np.float32), y_train=np.arange(8) % 2)
    result = CliRunner().invoke(main, ["train", str(tiny), "--backend", "numpy", "--data", str(data),
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "3x8x8" in result.output and "1x8x8" in result.output and "Traceback" not in result.output


@DIGITS
def test_too_few_outputs_for_the_classes_is_an_error(tmp_path):
    net = cnndsl.parse("network t\ninput 1x8x8\nflatten\nfc 3\n")
    with pytest.raises(CnnDslError, match="10 classes but the network outputs 3"):
        train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "r")))


@DIGITS
@pytest.mark.parametrize("backend", ["numpy", TORCH])
def test_resume_in_process_equals_an_uninterrupted_run_bit_for_bit(backend, tiny, tmp_path):
    """Stop after one epoch, resume with more epochs (a constant schedule: cosine depends on the total)."""
    other = "torch" if backend == "numpy" else "numpy"
    net = cnndsl.load(tiny)
    full = train(net, _quiet(backend=backend, schedule="constant", out=str(tmp_path / "full")))
    train(net, _quiet(backend=backend, schedule="constant", epochs=1, out=str(tmp_path / "part")))
    state = json.loads((tmp_path / "part" / "state.json").read_text())
    assert state["config"]["epochs"] == 1
    resumed = train(net, _quiet(epochs=3, resume=str(tmp_path / "part")))  # the run's backend
    assert resumed.epochs == 3
    with pytest.raises(CnnDslError, match=f"trained with --backend {backend}"):
        train(net, _quiet(backend=other, epochs=4, resume=str(tmp_path / "part")))
    with pytest.raises(CnnDslError, match="--lr 0.5 differs"):
        train(net, _quiet(lr=0.5, epochs=4, resume=str(tmp_path / "part")))
    for name, value in full.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)
    metrics = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3]


def _kill_during_second_epoch(cmd: list[str], run: Path) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (run / "state.json").exists():
            if proc.poll() is not None:
                raise AssertionError(f"training ended early: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] < 3, "the run finished before it could be killed"


@DIGITS
@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=[pytest.mark.slow, needs("torch")])])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(backend, tiny, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cnndsl.cli", "train", str(tiny), "--backend", backend, "--out", str(run),
           "--no-progress"]
    _kill_during_second_epoch(cmd, run)
    result = subprocess.run([sys.executable, "-m", "cnndsl.cli", "train", str(tiny), "--backend", backend,
                             "--resume", str(run), "--no-progress"], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    reference = subprocess.run([sys.executable, "-m", "cnndsl.cli", "train", str(tiny), "--backend", backend,
                                "--out", str(tmp_path / "straight"), "--no-progress"], env=ENV, capture_output=True,
                               text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    ours, theirs = _weights(run / "model.safetensors"), _weights(tmp_path / "straight" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(_weights(run / "optimizer.safetensors")["conv1.weight.momentum_buffer"],
                               _weights(tmp_path / "straight" / "optimizer.safetensors")[
                                   "conv1.weight.momentum_buffer"], atol=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@DIGITS
def test_a_checkpoint_whose_files_disagree_is_refused(tiny, tmp_path):
    net = cnndsl.load(tiny)
    train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "a")))
    train(net, _quiet(backend="numpy", epochs=2, out=str(tmp_path / "b")))
    # a model file from another epoch in the checkpoint folder: caught by its epoch tag
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    target = tmp_path / "a" / state["checkpoint"] / "model.safetensors"
    target.unlink()
    shutil.copyfile(tmp_path / "b" / "model.safetensors", target)
    with pytest.raises(CnnDslError, match="belongs to epoch 2"):
        ckpt.load_checkpoint(tmp_path / "a")


@DIGITS
def test_an_unfinished_checkpoint_folder_does_not_count(tiny, tmp_path):
    """A kill after writing epoch 2's folder but before the switch: resume starts from epoch 1."""
    net = cnndsl.load(tiny)
    train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "a")))
    stray = tmp_path / "a" / "checkpoints" / "epoch-0002"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"half a file")
    state, _, _ = ckpt.load_checkpoint(tmp_path / "a")
    assert state["epoch"] == 1
    train(net, _quiet(backend="numpy", epochs=2, resume=str(tmp_path / "a")))
    assert json.loads((tmp_path / "a" / "state.json").read_text())["epoch"] == 2


@DIGITS
@needs("torch", "onnxruntime")
def test_numpy_trained_weights_predict_the_same_in_torch(tiny, tmp_path):
    import torch

    net = cnndsl.load(tiny)
    train(net, _quiet(backend="numpy", epochs=2, out=str(tmp_path / "r")))
    weights = tmp_path / "r" / "model.safetensors"
    from cnndsl.training.data import load_data

    x = load_data("digits", (1, 8, 8)).x_test[:64]
    ours = net.to_numpy(weights).forward(x, train=False)
    module = net.to_torch(weights).eval()
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    # the CLI compiles with the trained weights too
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "tiny.cnn"), "-t", "onnx", "--weights", str(weights),
                                       "-o", str(tmp_path / "t.onnx")])
    assert result.exit_code == 0, result.output
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "t.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(onnx_out, ours, rtol=1e-4, atol=1e-4)


@DIGITS
@needs("torch")
def test_torch_and_numpy_take_the_same_first_steps(tmp_path):
    """Same init, data order and augmentation: without dropout the two backends train alike."""
    text = TINY.replace("dropout .2\n", "")
    net = cnndsl.parse(text)
    a = train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "n")))
    b = train(net, _quiet(backend="torch", epochs=1, out=str(tmp_path / "t")))
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], rtol=2e-3, atol=2e-4, err_msg=name)


DDP_NET = """
network ddp
input 1x8x8
conv 3x3 pad1 -> 4; relu
pool max 2/2
flatten
fc 10
train {
  optimizer sgd lr .05 momentum .9
  weight_decay 1e-3
  batch 64
  epochs 2
}
"""


@pytest.mark.slow
@needs("torch")
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tmp_path):
    net_file = tmp_path / "ddp.cnn"
    net_file.write_text(DDP_NET)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    x = rng.random((300, 1, 8, 8), dtype=np.float32)
    np.savez(data, x_train=x, y_train=(x.reshape(300, -1).sum(1) * 7).astype(np.int64) % 10,
             x_test=x[:20], y_test=np.zeros(20, np.int64))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cnndsl.cli",
           "train", str(net_file), "--data", str(data), "--out", str(tmp_path / "ddp"), "--no-progress"]
    env = dict(ENV, MASTER_ADDR="127.0.0.1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train(cnndsl.load(net_file), _quiet(backend="torch", data=str(data), out=str(tmp_path / "one")))
    ddp = _weights(tmp_path / "ddp" / "model.safetensors")
    assert json.loads((tmp_path / "ddp" / "state.json").read_text())["config"]["world_size"] == 2
    for name, value in single.weights.items():
        np.testing.assert_allclose(ddp[name], value, rtol=0, atol=1e-5, err_msg=name)
    first = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(single.metrics[0]["loss"], rel=1e-5)



@DIGITS
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", TORCH])
def test_lenet5_reaches_97_percent_on_digits(backend, tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cnndsl.cli", "train", str(LENET), "--data", "digits",
                             "--backend", backend, "--out", str(tmp_path / "run"), "--no-progress"],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 15
    print(f"{backend}: test accuracy {metrics[-1]['val_acc']:.4f} in {time.monotonic() - started:.1f}s")
    assert metrics[-1]["val_acc"] >= 0.97


@DIGITS
@needs("torch")
def test_a_last_batch_of_one_is_left_out_with_batch_norm_and_no_test_split_is_allowed(tmp_path):
    text = "network v\ninput 1x8x8\nflatten\nfc 16; bn; relu\nfc 10\ntrain {\n  val_split 0\n}\n"
    net = cnndsl.parse(text)
    result = train(net, _quiet(backend="torch", epochs=1, batch=4, out=str(tmp_path / "r")))  # 1,797 = 449 * 4 + 1
    assert result.test_accuracy is None and result.metrics[0]["val_acc"] is None
    assert _weights(tmp_path / "r" / "optimizer.safetensors")["step"] == 449
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text())["val_acc"] is None


@DIGITS
def test_resume_repairs_top_level_files_left_behind_by_a_kill_after_the_switch(tiny, tmp_path):
    from safetensors import safe_open

    net = cnndsl.load(tiny)
    train(net, _quiet(backend="numpy", epochs=1, out=str(tmp_path / "a")))
    train(net, _quiet(backend="numpy", epochs=2, out=str(tmp_path / "b")))
    old = tmp_path / "a" / "model.safetensors"  # epoch 1
    (tmp_path / "b" / "model.safetensors").unlink()
    shutil.copyfile(old, tmp_path / "b" / "model.safetensors")
    state, model, _ = ckpt.load_checkpoint(tmp_path / "b")
    assert state["epoch"] == 2
    with safe_open(str(tmp_path / "b" / "model.safetensors"), framework="numpy") as handle:
        assert handle.metadata()["epoch"] == "2"
        np.testing.assert_array_equal(handle.get_tensor("fc1.weight"), model["fc1.weight"])
