"""NumPy backend against PyTorch on the CPU, in the same run, on the same weights.

    python benchmarks/numpy_backend.py [--threads N] [--repeat R] [--resnet-batch B] [--resnet-size S]
                                       [--mobilenet-batch B] [--mobilenet-size S]
                                       [--train-net STEM] [--train-batch B] [--unet-batch B] [--only NAME ...]

Measures (NumPy and PyTorch alternating, after a warm-up):
  - LeNet-5 training step, batch 64: forward (train mode), softmax cross-entropy gradient,
    backward, SGD update of every parameter (R runs);
  - ResNet-18 forward (evaluation mode), batch B at SxS (default 8 at 224x224; R/4 runs);
  - MobileNetV2 forward (evaluation mode), batch B at SxS (default 8 at 224x224; R/4 runs);
  - a MobileNet training step at 3x32x32 as LeNet's, batch B (default 32; R/2 runs): on
    `examples/mobilenet_v3_small.cnn` when the torch backend builds it, else (or with
    `--train-net mobilenet_v2`) on MobileNetV2;
  - the small U-Net's training step (`examples/unet_small.cnn`, 1x64x64, a class per pixel, the mean
    cross-entropy over pixels), batch B (default 8; R/2 runs);
and prints the median time per step of each, the ratio NumPy / PyTorch of the medians and of the
fastest runs, and the target (LeNet <= 2x, ResNet-18 <= 3x, the MobileNets and the U-Net <= 2x).
`--only` picks rows by name (lenet, resnet, mobilenet, train, unet).

BLAS and torch run with the same thread count (`--threads`, default: the cores this process may
use). OpenBLAS's worker threads spin while they wait; on a machine whose cores are busy with
other work that makes small matmuls many times slower, so a single thread is often the fair and
the faster choice (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import cnndsl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


Times = tuple[list[float], list[float]]  # seconds per run: NumPy's, PyTorch's


def paired_runs(ours, theirs, repeat: int) -> Times:
    """Times of two functions run alternately, so a change in the machine's load (other jobs share
    it) hits both sides alike."""
    ours(), theirs()  # warm-up: allocations, BLAS thread start-up, torch's first-call dispatch
    times: Times = ([], [])
    for _ in range(repeat):
        for fn, out in ((ours, times[0]), (theirs, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def resized(stem: str, size: int) -> cnndsl.Net:
    """An example at 3 x size x size (its `expect` lines, written for its own input, are not checked)."""
    return cnndsl.load(EXAMPLES / f"{stem}.cnn", (3, size, size))


def lenet_step(repeat: int) -> Times:
    return train_step(cnndsl.load(EXAMPLES / "lenet5.cnn"), 64, repeat)


def train_step(net: cnndsl.Net, batch: int, repeat: int) -> Times:
    """One SGD step on a random batch: forward in training mode, mean cross-entropy (over the pixels too,
    for a network that scores every pixel), backward, update."""
    import torch

    weights = net.init_weights(seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *net.ir.input_shape)).astype(np.float32)
    classes = net.report.output[0]
    labels = rng.integers(0, classes, (batch, *net.report.output[1:]))  # a class per pixel for a U-Net

    model = net.to_numpy(weights)
    lr = np.float32(0.01)

    def numpy_step():
        logits = model.forward(x, train=True)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        # d(mean cross-entropy)/d(logits), times the number of terms (samples, or samples x pixels)
        np.put_along_axis(p, labels[:, None], np.take_along_axis(p, labels[:, None], 1) - 1, 1)
        model.zero_grad()
        model.backward(p / labels.size)
        for name, param in model.params.items():
            param -= lr * model.grads[name]

    module = net.to_torch(weights).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    tx, tlabels = torch.from_numpy(x), torch.from_numpy(labels)

    def torch_step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(tx), tlabels)
        loss.backward()
        optimizer.step()

    return paired_runs(numpy_step, torch_step, repeat)


def forward(net: cnndsl.Net, batch: int, repeat: int) -> Times:
    """Evaluation-mode forward of a random batch (torch under `no_grad`)."""
    import torch

    weights = net.init_weights(seed=0)
    x = np.random.default_rng(0).standard_normal((batch, *net.ir.input_shape)).astype(np.float32)
    model = net.to_numpy(weights)
    module = net.to_torch(weights).eval()
    tx = torch.from_numpy(x)

    def torch_forward():
        with torch.no_grad():
            module(tx)

    return paired_runs(lambda: model.forward(x), torch_forward, repeat)


def torch_builds(stem: str) -> str | None:
    """None if the torch backend builds the example, else why not."""
    try:
        resized(stem, 32).to_torch()
    except Exception as err:  # noqa: BLE001 - any failure means: measure the fallback network
        return f"{type(err).__name__}: {err}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--resnet-size", type=int, default=224)
    parser.add_argument("--mobilenet-batch", type=int, default=8)
    parser.add_argument("--mobilenet-size", type=int, default=224)
    parser.add_argument("--train-net", default="mobilenet_v3_small",
                        help="the example whose 3x32x32 training step is timed (default: mobilenet_v3_small, "
                        "or mobilenet_v2 where the torch backend cannot build it)")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--unet-batch", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=("lenet", "resnet", "mobilenet", "train", "unet"),
                        default=("lenet", "resnet", "mobilenet", "train", "unet"))
    args = parser.parse_args(argv)
    train_net = args.train_net
    if "train" in args.only and (problem := torch_builds(train_net)):
        print(f"{train_net}: the torch backend cannot build it ({problem}); timing mobilenet_v2's training step")
        train_net = "mobilenet_v2"

    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        blas = ", ".join(f"{i['internal_api']} {i.get('version', '')} ({i.get('architecture', '?')})"
                         for i in threadpool_info() if i["user_api"] == "blas")
        print(f"numpy {np.__version__} [{blas}], torch {torch.__version__}, {args.threads} thread(s), "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
              f"load average {os.getloadavg()[0]:.1f}")
        rows = []
        if "lenet" in args.only:
            rows.append(("LeNet-5 train step, batch 64", lenet_step(args.repeat), 2.0))
        if "resnet" in args.only:
            times = forward(resized("resnet18", args.resnet_size), args.resnet_batch, max(args.repeat // 4, 3))
            rows.append((f"ResNet-18 forward, batch {args.resnet_batch} at {args.resnet_size}", times, 3.0))
        if "mobilenet" in args.only:
            times = forward(resized("mobilenet_v2", args.mobilenet_size), args.mobilenet_batch,
                            max(args.repeat // 4, 3))
            rows.append((f"MobileNetV2 forward, batch {args.mobilenet_batch} at {args.mobilenet_size}", times, 2.0))
        if "train" in args.only:
            times = train_step(resized(train_net, 32), args.train_batch, max(args.repeat // 2, 3))
            rows.append((f"{train_net} train step, batch {args.train_batch} at 32", times, 2.0))
        if "unet" in args.only:
            times = train_step(cnndsl.load(EXAMPLES / "unet_small.cnn"), args.unet_batch, max(args.repeat // 2, 3))
            rows.append((f"small U-Net train step, batch {args.unet_batch} at 64", times, 2.0))

    print(f"{'':44} {'numpy':>10} {'torch':>10} {'ratio':>7} {'fastest':>10} {'target':>7}")
    print(f"{'':44} {'(median)':>10} {'(median)':>10} {'':>7} {'runs':>10}")
    ok = True
    for what, (ours, theirs), target in rows:
        ratio = statistics.median(ours) / statistics.median(theirs)
        ok &= ratio <= target
        print(f"{what:44} {statistics.median(ours) * 1e3:8.1f}ms {statistics.median(theirs) * 1e3:8.1f}ms "
              f"{ratio:6.2f}x {min(ours) / min(theirs):9.2f}x {'<=' + str(target) + 'x':>7}"
              f"{'' if ratio <= target else '  MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
