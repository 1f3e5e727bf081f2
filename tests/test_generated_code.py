"""Generated code a person would commit: every example's PyTorch and NumPy source passes the
project's `ruff check`, names no absolute path, and comments carry the evaluated statements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from cnndsl.backends import numpy_codegen, torch_codegen

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
GENERATORS = {"torch": torch_codegen.generate, "numpy": numpy_codegen.generate}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("generated")
    out = {}
    for path in EXAMPLES:
        net = cnndsl.load(path)
        for target, generate in GENERATORS.items():
            file = folder / f"{path.stem}_{target}.py"
            file.write_text(generate(net))
            out[(path.stem, target)] = file
    return out


def test_every_generated_file_passes_ruff(generated):
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(ROOT / "pyproject.toml"), *map(str, generated.values())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_files_name_no_absolute_path(generated):
    for file in generated.values():
        assert str(ROOT) not in file.read_text(), file.name


@pytest.mark.parametrize("target", GENERATORS)
def test_comments_carry_the_evaluated_statement(generated, target):
    text = generated[("resnet18", target)].read_text()
    if target == "numpy":
        # `conv 3x3/s pad1 -> c nobias` in the block, as the third call of `basic` evaluates it
        assert "line 4: conv 3x3/2 pad1 -> 128 nobias" in text
    else:  # one class serves every call of `basic`: its comments carry the statement as written
        assert "line 4: conv 3x3/s pad1 -> c nobias" in text and "3x3/2 pad1 -> 128" not in text
        assert "line 14: conv 7x7/2 pad3 -> 64 nobias" in text  # the network's own statements, evaluated
    assert text.count("conv 7x7/2 pad3 -> 64 nobias; bn; relu") == 0  # one statement per comment


def test_containers_are_torchs_own_named_modules(generated):
    # a join holds its branches by name (nn.ModuleDict), a branch or a shortcut its layers in order
    # (nn.Sequential, as torchvision's `downsample`): no container classes of our own
    inception = generated[("inception", "torch")].read_text()
    assert "self.concat1 = nn.ModuleDict()" in inception and "self.concat1.branch2 = nn.Sequential()" in inception
    resnet = generated[("resnet18", "torch")].read_text()
    assert "self.shortcut1 = nn.Sequential()" in resnet
    for file in generated.values():
        assert "nn.Module()" not in file.read_text(), file.name


def test_build_documents_its_initialisation(generated):
    text = generated[("lenet5", "torch")].read_text()
    build = text[text.index("def build("):]
    assert "PyTorch's default initialisation" in build and "net.to_torch()" in build
