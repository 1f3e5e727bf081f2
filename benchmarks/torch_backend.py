"""Generated PyTorch modules vs the same networks written by hand, timed in the same run.

    python benchmarks/torch_backend.py [--threads N] [--repeat N] [--quick]

For LeNet-5 and ResNet-18 it builds the module `cnndsl` generates from examples/*.cnn and a
hand-written equivalent (torchvision's layout and idioms: modules for every layer, in-place ReLU,
a `downsample` Sequential), copies the generated weights into the hand-written one and checks
both give the same output, then times evaluation forward passes (no_grad) and SGD training steps
(forward, cross-entropy, backward, step). The two are measured alternately, so drift in a shared
machine's load hits both alike; each figure is the median of `--repeat` runs after a warm-up, in
process CPU time by default (steadier than elapsed time when other jobs share the cores).
Ratio = generated / hand-written time; the target is <= 1.02.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import cnndsl
from cnndsl.backends import torch_codegen

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ---------------------------------------------------------------- hand-written equivalents


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(self.dropout(x))


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------- timing


def copy_weights(generated: nn.Module, hand: nn.Module) -> None:
    """Both register their tensors in the same order; copy by position, checking every shape."""
    src, dst = generated.state_dict(), hand.state_dict()
    assert len(src) == len(dst), (len(src), len(dst))
    hand.load_state_dict({name: value for name, value in zip(dst, src.values(), strict=True)})
    for (a, x), (b, y) in zip(src.items(), hand.state_dict().items(), strict=True):
        assert x.shape == y.shape, (a, b)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


def compare(models: dict[str, nn.Module], step_of, warmup: int, repeat: int) -> dict[str, float]:
    """Median seconds per call of `step_of(model)` for each model, measured alternately."""
    steps = {name: step_of(model) for name, model in models.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(repeat):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(timed(steps[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def forward_step(x: torch.Tensor):
    def make(model: nn.Module):
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
        return step
    return make


def train_step(x: torch.Tensor, y: torch.Tensor):
    def make(model: nn.Module):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return step
    return make


def run(name: str, hand: nn.Module, batch: int, warmup: int, repeat: int) -> list[tuple[str, float, float]]:
    net = cnndsl.load(EXAMPLES / f"{name}.cnn")
    generated = torch_codegen.build(net)
    copy_weights(generated, hand)
    x = torch.randn(batch, *net.ir.input_shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, net.analyze().output[0], (batch,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(generated.eval()(x), hand.eval()(x), rtol=1e-4, atol=1e-4)
    rows = []
    for what, make in (("forward", forward_step(x)), ("train step", train_step(x, y))):
        medians = compare({"generated": generated, "hand": hand}, make, warmup, repeat)
        rows.append((f"{name} {what} (batch {batch})", medians["generated"], medians["hand"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=0, help="timed runs per figure (default: per network)")
    parser.add_argument("--quick", action="store_true", help="few repeats, small ResNet batch (a smoke run)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: process CPU time, steady on a shared machine (best with --threads 1); "
                             "wall: elapsed time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plans = [("lenet5", LeNet5(), 64, 20, args.repeat or 200),
             ("resnet18", ResNet18(), 2 if args.quick else 8, 2, args.repeat or 15)]
    if args.quick:
        plans = [(n, m, b, 1, min(r, 5)) for n, m, b, _, r in plans]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} time, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':<34} {'generated ms':>13} {'hand ms':>10} {'ratio':>7}")
    for name, hand, batch, warmup, repeat in plans:
        for case, gen, ref in run(name, hand, batch, warmup, repeat):
            print(f"{case:<34} {gen * 1e3:>13.3f} {ref * 1e3:>10.3f} {gen / ref:>7.3f}")


if __name__ == "__main__":
    main()
