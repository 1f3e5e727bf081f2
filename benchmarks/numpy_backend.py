"""NumPy backend against PyTorch on the CPU, in the same run, on the same weights.

    python benchmarks/numpy_backend.py [--threads N] [--repeat R] [--resnet-batch B] [--resnet-size S]

Measures (median of R runs after a warm-up, NumPy and PyTorch alternating):
  - LeNet-5 training step, batch 64: forward (train mode), softmax cross-entropy gradient,
    backward, SGD update of every parameter;
  - ResNet-18 forward (evaluation mode), batch B at SxS (default 8 at 224x224).
and prints time per step and the ratio NumPy / PyTorch (targets: <= 2x and <= 3x).

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


def paired_medians(ours, theirs, repeat: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so a change in the machine's load (other
    jobs share it) hits both sides alike."""
    ours(), theirs()  # warm-up: allocations, BLAS thread start-up, torch's first-call dispatch
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((ours, times[0]), (theirs, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def lenet_step(repeat: int) -> tuple[float, float]:
    import torch

    net = cnndsl.load(EXAMPLES / "lenet5.cnn")
    weights = net.init_weights(seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 64)

    model = net.to_numpy(weights)
    lr = np.float32(0.01)

    def numpy_step():
        logits = model.forward(x, train=True)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(64), labels] -= 1  # d(mean cross-entropy)/d(logits), times the batch
        model.zero_grad()
        model.backward(p / 64)
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

    return paired_medians(numpy_step, torch_step, repeat)


def resnet_forward(repeat: int, batch: int, size: int) -> tuple[float, float]:
    import torch

    net = cnndsl.load(EXAMPLES / "resnet18.cnn")
    if size != 224:  # the file's `expect` lines are written for 224
        import dataclasses

        net = cnndsl.Net(dataclasses.replace(net.ir, input_shape=(3, size, size), expects=()))
    weights = net.init_weights(seed=0)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    model = net.to_numpy(weights)
    module = net.to_torch(weights).eval()
    tx = torch.from_numpy(x)

    def torch_forward():
        with torch.no_grad():
            module(tx)

    return paired_medians(lambda: model.forward(x), torch_forward, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--resnet-size", type=int, default=224)
    args = parser.parse_args(argv)

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
        ours, theirs = lenet_step(args.repeat)
        rows.append(("LeNet-5 train step, batch 64", ours, theirs, 2.0))
        ours, theirs = resnet_forward(max(args.repeat // 4, 3), args.resnet_batch, args.resnet_size)
        rows.append((f"ResNet-18 forward, batch {args.resnet_batch} at {args.resnet_size}", ours, theirs, 3.0))

    print(f"{'':40} {'numpy':>10} {'torch':>10} {'ratio':>7} {'target':>7}")
    ok = True
    for what, ours, theirs, target in rows:
        ratio = ours / theirs
        ok &= ratio <= target
        print(f"{what:40} {ours * 1e3:8.1f}ms {theirs * 1e3:8.1f}ms {ratio:6.2f}x {'<=' + str(target) + 'x':>7}"
              f"{'' if ratio <= target else '  MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
