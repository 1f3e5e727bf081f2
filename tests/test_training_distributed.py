"""Data-parallel batch norm on CPU (issue 16): the global batch's statistics under torchrun/gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from extras import needs

import cnndsl
from cnndsl.training.data import make_shapes
from cnndsl.training.loop import TrainOptions, train

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
           MASTER_ADDR="127.0.0.1")

# Two batch norms (one with its own momentum), geometric augmentation, a segmenter: 40 images of
# 16x16 in global batches of 16 (shares of 8 and 8), the last batch of 8 too.
SEG_BN = """
network seg
input 1x16x16
conv 3x3 pad1 -> 4 nobias; bn; relu
conv 3x3 pad1 -> 4; bn momentum .3; relu
conv 1x1 -> 4
augment {
  flip horizontal
  rotate 10
  crop 16 pad2
}
train {
  optimizer sgd lr .05 momentum .9
  batch 16
  epochs 2
  schedule constant
}
"""


@needs("torch")
def test_global_batch_norm_in_one_process_is_pytorchs_batch_norm(tmp_path):
    """With one process the all-reduces are identities: forward, gradients and running statistics
    must be nn.BatchNorm's."""
    import torch
    import torch.distributed as dist

    from cnndsl.training.batchnorm import GlobalBatchNorm, use_global_batch_norm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for make, shape in ((lambda: torch.nn.BatchNorm2d(3, momentum=0.3), (5, 3, 4, 6)),
                            (lambda: torch.nn.BatchNorm1d(3), (7, 3))):
            torch.manual_seed(0)
            ours, theirs = torch.nn.Sequential(make()), torch.nn.Sequential(make())
            with torch.no_grad():
                for module in (ours[0], theirs[0]):
                    module.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
                    module.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            assert use_global_batch_norm(ours) == 1 and isinstance(ours[0], GlobalBatchNorm)
            for _ in range(2):
                x = torch.randn(shape, dtype=torch.float64).float() * 3 + 1
                xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
                grad = torch.randn(shape)
                ya, yb = ours(xa), theirs(xb)
                (ya * grad).sum().backward()
                (yb * grad).sum().backward()
                torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
                for a, b in ((ours[0].weight.grad, theirs[0].weight.grad), (ours[0].bias.grad, theirs[0].bias.grad)):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            for name, value in theirs.state_dict().items():
                torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-6, atol=1e-6)
            ours.eval()
            theirs.eval()
            torch.testing.assert_close(ours(x), theirs(x))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@needs("torch")
def test_two_processes_with_batch_norm_train_a_segmenter_like_one_process_with_the_whole_batch(tmp_path):
    """torchrun, 2 processes on CPU (gloo): weights and running statistics equal to 1e-5 those of one
    process on the same global batches (per-process statistics differ by 2e-4 to 8e-3 here)."""
    net_file = tmp_path / "seg.cnn"
    net_file.write_text(SEG_BN)
    x, y = make_shapes(40, 1, 16, 16, seed=3)
    np.savez(tmp_path / "s.npz", x=x, y=y)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cnndsl.cli",
           "train", str(net_file), "--data", str(tmp_path / "s.npz"), "--out", str(tmp_path / "ddp"), "--no-progress"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train(cnndsl.load(net_file), TrainOptions(backend="torch", data=str(tmp_path / "s.npz"),
                                                       out=str(tmp_path / "one"), progress=False, log=lambda _: None))
    from safetensors.numpy import load_file

    ddp = load_file(os.fspath(tmp_path / "ddp" / "model.safetensors"))
    assert set(ddp) == set(single.weights) and "bn2.running_var" in ddp
    for name, value in single.weights.items():
        np.testing.assert_allclose(ddp[name], value, rtol=0, atol=1e-5, err_msg=name)
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for ours, theirs in zip(lines, single.metrics, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["miou"] == pytest.approx(theirs["miou"], abs=1e-6)
