"""Training speed: seconds per epoch of `cnndsl train` with the NumPy and the PyTorch backend.

    python benchmarks/train.py [--net examples/lenet5.cnn] [--epochs 3] [--batch 16] [--repeats 2] [--threads N]

Both backends train the same network on the same data (scikit-learn's digits, 1,437 training
images fitted to the input) with the same settings, in this one process; an epoch's time covers
the training steps, augmentation and the evaluation on the 360 test images. The backends take
turns (`--repeats` rounds), so a burst of load from other processes hits both; the fastest and the
median epoch of each backend and the ratio of the fastest epochs (numpy / torch) are printed —
on a shared machine the fastest epoch is the least disturbed measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(net_path: str, backend: str, epochs: int, batch: int) -> dict:
    import cnndsl
    from cnndsl.training.loop import TrainOptions, train

    net = cnndsl.load(net_path)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(net, TrainOptions(backend=backend, epochs=epochs, batch=batch, optimizer="adamw", lr=0.002,
                                         weight_decay=0.05,
                                         schedule="cosine", out=f"{tmp}/run", progress=False, log=lambda s: None))
        total = time.perf_counter() - started
    seconds = [m["seconds"] for m in result.metrics]
    return {"backend": backend, "epochs": seconds, "total": total, "accuracy": result.test_accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default=str(ROOT / "examples" / "lenet5.cnn"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of numpy-then-torch runs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{Path(args.net).name} on digits, batch {args.batch}, {args.repeats} x {args.epochs} epochs per backend; "
          f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    runs: dict[str, list[dict]] = {"numpy": [], "torch": []}
    for _ in range(args.repeats):
        for backend in runs:
            runs[backend].append(run(args.net, backend, args.epochs, args.batch))
    print(f"{'backend':8} {'fastest s/epoch':>16} {'median s/epoch':>15} {'test acc':>9}")
    fastest = {}
    for backend, results in runs.items():
        seconds = [s for r in results for s in r["epochs"]]
        fastest[backend] = min(seconds)
        print(f"{backend:8} {min(seconds):16.3f} {statistics.median(seconds):15.3f} "
              f"{100 * results[-1]['accuracy']:8.2f}%")
    print(f"ratio numpy / torch (fastest epochs): {fastest['numpy'] / fastest['torch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
