"""`cnndsl analyze` of ResNet-152 end to end vs what users do today, in one run.

Today: build the network in PyTorch by hand and summarise it, either by counting with forward
hooks or with torchinfo. Each path runs as a fresh process (start-up included, as a user
experiences it) and in-process (the work alone). All must agree on parameters and MACs.

cnndsl runs as a user installs it: `pip install` of this checkout (not editable) into a virtual
environment of its own with only its declared dependencies (kept in benchmarks/.venv and
refreshed every run). The development install is timed too, for comparison: an editable install
adds setuptools' import hook to every start. The torch paths run in this interpreter, which has
torch and torchinfo.

    python benchmarks/analyze.py [--runs 21]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NET = HERE / "resnet152.cnn"
VENV = HERE / ".venv"
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


def interleaved(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float, str]]:
    """Median and fastest wall time of `runs` fresh processes of each command, and the last one's
    output; the commands take turns, so a busy moment of the machine hits all alike."""
    results: dict[str, list[tuple[float, str]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            results[name].append(wall(cmd))
    return {name: (statistics.median(t for t, _ in rs), min(t for t, _ in rs), rs[-1][1])
            for name, rs in results.items()}


def instructions(cmd: list[str]) -> int | None:
    """CPU instructions of one run, counted by valgrind: the same however busy the machine is."""
    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    counted = re.search(r"Collected : (\d+)", done.stderr)
    return int(counted.group(1)) if counted else None


def user_install() -> Path:
    """This checkout, installed as a user installs it, into a venv of its own: its python."""
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # pip builds in the checkout's build/, which setuptools never cleans: a module deleted from the
    # checkout would still be installed from there.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run(pip + [str(ROOT)], check=True, capture_output=True)  # dependencies, once
    subprocess.run(pip + ["--no-deps", "--force-reinstall", str(ROOT)], check=True, capture_output=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--instructions", action="store_true", help="also count cnndsl's CPU instructions (valgrind)")
    args = parser.parse_args()

    python = user_install()
    user_cli = [str(python), str(python.with_name("cnndsl"))]
    dev_cli = [sys.executable, str(Path(sys.executable).with_name("cnndsl"))]
    # A regular install compiles bytecode; an editable one writes it on first import, unless
    # PYTHONDONTWRITEBYTECODE is set (as on this project's machines): compile it, as pip would.
    import compileall

    import cnndsl.grammar

    for package in (cnndsl, cnndsl.grammar):  # grammar/ is a folder of its own in the checkout
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)
    analyze = ["analyze", str(NET), "--json"]
    wall(user_cli + analyze)  # warms the disk cache
    timed = interleaved({"bare": [str(python), "-c", "pass"], "cli": user_cli + analyze, "dev": dev_cli + analyze},
                        args.runs)
    report = json.loads(timed["cli"][2])
    assert report["params"] == PARAMS, report["params"]
    counted = instructions(user_cli + analyze) if args.instructions else None

    work_script = ("import json, sys, time, cnndsl\n"
                   "cnndsl.load(sys.argv[1])\n"
                   "times = []\n"
                   "for _ in range(int(sys.argv[2])):\n"
                   "    start = time.perf_counter(); cnndsl.load(sys.argv[1]).analyze()\n"
                   "    times.append(time.perf_counter() - start)\n"
                   "print(json.dumps(times))\n")
    # cwd: not the checkout, whose cnndsl/ would shadow the installed one
    work_times = json.loads(subprocess.run([str(python), "-c", work_script, str(NET), str(args.runs)],
                                           capture_output=True, text=True, check=True, cwd=VENV).stdout)
    work = (statistics.median(work_times), min(work_times))

    torch_rows = []
    for mode in ("hooks", "torchinfo"):
        runs = [wall([sys.executable, "-c", TORCH_SCRIPT, mode]) for _ in range(max(args.runs // 4, 3))]
        figures = [json.loads(out) for _, out in runs]
        for figure in figures:
            assert figure["params"] == PARAMS, (mode, figure["params"])
            assert abs(figure["macs"] - report["macs"]) / report["macs"] < 0.005, (mode, figure["macs"], report["macs"])
        walls, works = [t for t, _ in runs], [f["seconds"] for f in figures]
        torch_rows.append((f"torch + {mode}", (statistics.median(walls), min(walls)),
                           (statistics.median(works), min(works))))

    def ms(pair: tuple[float, float], digits: int = 0) -> str:
        return f"{pair[0] * 1000:.{digits}f} ({pair[1] * 1000:.{digits}f}) ms"

    print(f"ResNet-152, 3x224x224: {report['params']:,} parameters, {report['macs'] / 1e9:.3f} GMACs (all paths agree)")
    print("median (fastest) of each path's runs")
    print(f"{'path':32} {'process, end to end':>22} {'work only':>22}")
    print(f"{'cnndsl analyze (pip install)':32} {ms(timed['cli'][:2]):>22} {ms(work, 1):>22}")
    print(f"{'cnndsl analyze (editable, dev)':32} {ms(timed['dev'][:2]):>22}")
    print(f"{'  python -c pass (same venv)':32} {ms(timed['bare'][:2]):>22}")
    for name, walls, works in torch_rows:
        print(f"{name:32} {ms(walls):>22} {ms(works, 1):>22}")
    cli = timed["cli"][:2]
    for name, walls, works in torch_rows:
        print(f"ratio {name} / cnndsl: end to end {walls[0] / cli[0]:.1f}x ({walls[1] / cli[1]:.1f}x fastest), "
              f"work only {works[0] / work[0]:.1f}x ({works[1] / work[1]:.1f}x fastest)")
    if counted:
        print(f"cnndsl analyze (pip install): {counted / 1e6:.0f}M instructions (valgrind)")


if __name__ == "__main__":
    main()
