"""The effective receptive field of ResNet-50 at 224x224: cnndsl's NumPy probe against PyTorch autograd.

    python benchmarks/erf.py [--net resnet50] [--size 224] [--samples 1] [--every K] [--threads 1]

Both sides compute, for the same layers, weights (cnndsl's seeded initialisation) and inputs, the
mean absolute input gradient of each layer's centre unit (`cnndsl.analysis.erf.effective_fields`).
PyTorch is what a user would write instead: forward hooks on the layers' modules, one forward with
`x.requires_grad_()`, then one `torch.autograd.grad(unit, x, retain_graph=True)` per layer (no
parameter gradients: autograd computes only what `x` needs). Layers: every K-th spatial layer that
is a module (a residual's sum is not one, so PyTorch has no hook for it), in order; K=1 is all of
them. BLAS and torch run `--threads` threads (default 1, as in docs/performance.md).

Prints each side's time, the ratio NumPy / PyTorch, the time per layer, and the largest difference
between the two sides' gradient maps (relative to the map's largest value) and whether every ERF
size agrees.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import cnndsl
from cnndsl.analysis.erf import centred_extent, effective_fields

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def torch_fields(net: cnndsl.Net, weights: dict, names: list[str], units: dict, samples: int, seed: int):
    import torch

    model = net.to_torch(weights).eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # a hooked output must not be overwritten by the next relu
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, out):
            outputs[name] = out
            return out.clone()  # the network goes on with a copy: a residual's `x += skip` must not change it
        return hook

    for name in names:
        modules[name].register_forward_hook(keep(name))
    x = np.random.default_rng(seed).standard_normal((samples, *net.report.input)).astype(np.float32)
    x = torch.from_numpy(x).requires_grad_()
    model(x)
    maps = {}
    for name in names:
        h, w = units[name]
        (grad,) = torch.autograd.grad(outputs[name][:, :, h, w].sum(), x, retain_graph=True)
        maps[name] = grad.abs().sum(1).mean(0).numpy()
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="time every K-th layer (1: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    net = cnndsl.load(EXAMPLES / f"{args.net}.cnn", (3, args.size, args.size))
    report = net.report
    model_names = {name for name, _ in net.to_torch().named_modules()}
    names = [row.name for row in report.layers if len(row.output) == 3 and row.name in model_names][::args.every]
    weights = net.init_weights(args.seed)
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        ours = effective_fields(net, samples=args.samples, seed=args.seed, weights=weights, layers=names)
        numpy_time = time.perf_counter() - start
        start = time.perf_counter()
        theirs = torch_fields(net, weights, names, {n: f.unit for n, f in ours.items()}, args.samples, args.seed)
        torch_time = time.perf_counter() - start
    worst = max(float(np.abs(ours[n].gradient - theirs[n]).max() / max(theirs[n].max(), 1e-30)) for n in names)
    agree = all(ours[n].size == (centred_extent(theirs[n].sum(1), ours[n].centre[0]),
                                 centred_extent(theirs[n].sum(0), ours[n].centre[1])) for n in names)
    print(f"{args.net} at 3x{args.size}x{args.size}: {len(names)} layers, {args.samples} sample(s), "
          f"{args.threads} thread(s)")
    print(f"  numpy (cnndsl)   {numpy_time:8.1f} s  ({numpy_time / len(names):.2f} s per layer)")
    print(f"  torch (autograd) {torch_time:8.1f} s  ({torch_time / len(names):.2f} s per layer)")
    print(f"  ratio numpy / torch: {numpy_time / torch_time:.2f}")
    print(f"  largest relative difference of the gradient maps: {worst:.1e}; ERF sizes agree: {agree}")
    last = ours[names[-1]]
    print(f"  last layer {names[-1]}: erf {last.size[0]}x{last.size[1]}, rf {report.layer(names[-1]).rf[0]}")


if __name__ == "__main__":
    main()
