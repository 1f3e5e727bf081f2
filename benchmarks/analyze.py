"""`cnndsl analyze` of ResNet-152 end to end vs what users do today, in one run.

Today: build the network in PyTorch by hand and summarise it, either by counting with forward
hooks or with torchinfo. Each path runs as a fresh process (start-up included, as a user
experiences it) and in-process (the work alone). Both must agree on parameters and MACs.

    python benchmarks/analyze.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NET = HERE / "resnet152.cnn"
PARAMS = 60_192_808  # torchvision resnet152

TORCH_SCRIPT = r'''
import sys, time, json
import torch
from torch import nn

class Bottleneck(nn.Module):
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False); self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False); self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False); self.bn3 = nn.BatchNorm2d(4 * c)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != 4 * c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * c, 1, stride, bias=False), nn.BatchNorm2d(4 * c))
    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))

def resnet152():
    layers, c_in = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for c, n, s in ((64, 3, 1), (128, 8, 2), (256, 36, 2), (512, 3, 2)):
        for i in range(n):
            layers.append(Bottleneck(c_in, c, s if i == 0 else 1)); c_in = 4 * c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)

def summarise_with_hooks():
    model = resnet152().eval()
    macs = 0
    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    return sum(p.numel() for p in model.parameters()), macs

def summarise_with_torchinfo():
    import torchinfo
    stats = torchinfo.summary(resnet152(), input_size=(1, 3, 224, 224), verbose=0)
    return stats.total_params, stats.total_mult_adds

mode = sys.argv[1]
t0 = time.perf_counter()
params, macs = summarise_with_hooks() if mode == "hooks" else summarise_with_torchinfo()
print(json.dumps({"params": params, "macs": macs, "seconds": time.perf_counter() - t0}))
'''


def wall(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def median_wall(cmd: list[str], runs: int) -> tuple[float, str]:
    results = [wall(cmd) for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    script = shutil.which("cnndsl") or sys.exit("cnndsl is not on PATH: run ./install.sh")
    # Resolve a pyenv-style shim to the real console script, so the shim's own start-up is not counted.
    real_script = Path(sys.executable).with_name("cnndsl")
    if real_script.exists():
        script = str(real_script)
    # A regular install compiles bytecode; an editable one writes it on first import, unless
    # PYTHONDONTWRITEBYTECODE is set (as on this project's machines): compile it, as pip would.
    import compileall

    import cnndsl

    compileall.compile_dir(Path(cnndsl.__file__).parent, quiet=1)
    wall(["cnndsl", "check", str(NET)])  # warm the lark table cache once
    cli_seconds, cli_out = median_wall([script, "analyze", str(NET), "--json"], args.runs)
    report = json.loads(cli_out)
    assert report["params"] == PARAMS, report["params"]

    cnndsl.load(NET)  # the lexer's per-state scanners are built on first use: start-up, counted above
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        cnndsl.load(NET).analyze()
        times.append(time.perf_counter() - start)
    inproc_seconds = statistics.median(times)

    torch_rows = []
    for mode in ("hooks", "torchinfo"):
        seconds, out = median_wall([sys.executable, "-c", TORCH_SCRIPT, mode], max(args.runs // 2, 1))
        figures = json.loads(out)
        assert figures["params"] == PARAMS, (mode, figures["params"])
        assert abs(figures["macs"] - report["macs"]) / report["macs"] < 0.005, (mode, figures["macs"], report["macs"])
        torch_rows.append((f"torch + {mode}", seconds, figures["seconds"]))

    print(f"ResNet-152, 3x224x224: {report['params']:,} parameters, {report['macs'] / 1e9:.3f} GMACs (all paths agree)")
    print(f"{'path':22} {'process, end to end':>20} {'work only (no start-up)':>24}")
    print(f"{'cnndsl analyze':22} {cli_seconds * 1000:18.0f}ms {inproc_seconds * 1000:22.1f}ms")
    for name, seconds, work in torch_rows:
        print(f"{name:22} {seconds * 1000:18.0f}ms {work * 1000:22.1f}ms")
    for name, seconds, work in torch_rows:
        print(f"ratio {name} / cnndsl: end to end {seconds / cli_seconds:.1f}x, work only {work / inproc_seconds:.1f}x")

if __name__ == "__main__":
    main()
