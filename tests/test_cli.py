"""The `cnndsl` command line, as users run it: a subprocess per call, on the examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ALL_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.cnn"))


def cnndsl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnndsl.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "internal error" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_check_every_example(name):
    proc = cnndsl("check", str(EXAMPLES / name))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert ": ok: " in proc.stdout
    assert "warning" not in proc.stderr  # the examples are written not to drop rows


def test_check_reports_parameters():
    proc = cnndsl("check", str(EXAMPLES / "lenet5.cnn"))
    assert "61,706 parameters" in proc.stdout
    assert "output 10" in proc.stdout


LAYER_KEYS = {"line", "op", "output", "params", "macs", "rf", "jump", "offset"}


def test_analyze_json():
    proc = cnndsl("analyze", "--json", str(EXAMPLES / "lenet5.cnn"))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("network", "input", "output", "params", "trainable_params", "macs", "layers"):
        assert key in data
    assert data["network"] == "lenet5"
    assert data["input"] == [1, 28, 28]
    assert data["output"] == [10]
    assert data["params"] == data["trainable_params"] == 61_706
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    for layer in data["layers"]:
        assert LAYER_KEYS <= set(layer)
    conv1 = data["layers"][0]
    assert conv1 == {**conv1, "line": 5, "op": "conv", "output": [6, 28, 28], "params": 156, "macs": 117_600,
                     "rf": [5, 5], "jump": [1, 1], "offset": [0, 0]}
    conv2 = next(layer for layer in data["layers"] if layer["op"] == "conv" and layer["line"] == 7)
    assert (conv2["rf"], conv2["jump"]) == ([14, 14], [2, 2])
    assert sum(layer["params"] for layer in data["layers"]) == data["params"]


def test_analyze_json_of_blocks_keeps_lines():
    data = json.loads(cnndsl("analyze", "--json", str(EXAMPLES / "resnet18.cnn")).stdout)
    assert data["params"] == 11_689_512
    lines = (EXAMPLES / "resnet18.cnn").read_text().splitlines()
    for layer in data["layers"]:
        assert layer["op"] in lines[layer["line"] - 1] or layer["op"] in ("residual",), layer
    shortcut = [layer for layer in data["layers"] if ".shortcut" in layer["name"] and layer["op"] == "conv"]
    assert len(shortcut) == 3 and all("conv 1x1/s" in lines[layer["line"] - 1] for layer in shortcut)


def test_analyze_json_pad_same_offset():
    data = json.loads(cnndsl("analyze", "--json", str(EXAMPLES / "mobilenet_v1.cnn")).stdout)
    last = [layer for layer in data["layers"] if layer["op"] == "conv"][-1]
    assert (last["rf"], last["jump"], last["offset"]) == ([315, 315], [32, 32], [31, 31])


def test_analyze_explain():
    proc = cnndsl("analyze", "--explain", str(EXAMPLES / "lenet5.cnn"))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "(1*5*5 + 1) * 6 = 156" in proc.stdout
    assert "61,706" in proc.stdout


def test_analyze_table():
    proc = cnndsl("analyze", str(EXAMPLES / "lenet5.cnn"))
    assert proc.returncode == 0, proc.stderr
    for text in ("conv 5x5 pad2 -> 6", "61,706", "16x5x5"):
        assert text in proc.stdout


def test_analyze_input_override():
    proc = cnndsl("analyze", "--json", "--input", "1x32x32", str(EXAMPLES / "lenet5.cnn"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["input"] == [1, 32, 32]
    # the first fc now sees 16x6x6: (576 + 1) * 120 instead of (400 + 1) * 120
    assert data["params"] == 61_706 + (576 - 400) * 120
    proc = cnndsl("analyze", "--json", "--input", "3x64x64", str(EXAMPLES / "resnet18.cnn"))
    data = json.loads(proc.stdout)
    assert data["params"] == 11_689_512 and data["output"] == [1000]


def test_input_override_too_small_is_a_user_error():
    proc = cnndsl("analyze", "--input", "1x3x3", str(EXAMPLES / "lenet5.cnn"))
    no_traceback(proc)
    assert proc.returncode == 1
    assert "lenet5.cnn:7:1: error: kernel 5x5 is larger than its padded input" in proc.stderr


def test_bad_input_option_is_a_usage_error():
    proc = cnndsl("analyze", "--input", "abc", str(EXAMPLES / "lenet5.cnn"))
    no_traceback(proc)
    assert proc.returncode == 2
    assert "not a shape" in proc.stderr


def test_check_error_exit_status(tmp_path):
    path = tmp_path / "bad.cnn"
    path.write_text("network bad\ninput 3x32x32\nconv 3x3/2 pad1 -> 8\nresidual { conv 3x3/2 pad1 -> 16 }\n")
    for command in (["check"], ["analyze"], ["analyze", "--json"]):
        proc = cnndsl(*command, str(path))
        no_traceback(proc)
        assert proc.returncode == 1
        assert f"{path}:4:1: error: the residual body changes the shape" in proc.stderr
        assert "shortcut { conv 1x1/2 -> 16 nobias; bn }" in proc.stderr
        assert proc.stdout == ""


def test_check_warning_exit_status(tmp_path):
    path = tmp_path / "squeeze.cnn"
    path.write_text("network squeeze\ninput 3x224x224\nconv 3x3/2 -> 96; relu\n")
    proc = cnndsl("check", str(path))
    assert proc.returncode == 0
    assert f"{path}:3:1: warning: " in proc.stderr
    assert "1 warning" in proc.stdout


def test_missing_file_is_a_user_error(tmp_path):
    proc = cnndsl("check", str(tmp_path / "nope.cnn"))
    no_traceback(proc)
    assert proc.returncode == 1
    assert "nope.cnn" in proc.stderr and "cannot read" in proc.stderr


def test_expectation_failure_from_the_command_line(tmp_path):
    text = (EXAMPLES / "lenet5.cnn").read_text() + "expect params < 60K\n"
    path = tmp_path / "lenet.cnn"
    path.write_text(text)
    proc = cnndsl("check", str(path))
    assert proc.returncode == 1
    assert f"{path}:{text.count(chr(10))}:1: error: expectation failed: params < 60,000" in proc.stderr


def test_analyze_does_not_import_torch():
    code = (
        "import sys\n"
        "from cnndsl.cli import main\n"
        f"main(['analyze', '--json', {str(EXAMPLES / 'resnet18.cnn')!r}], standalone_mode=False)\n"
        f"main(['check', {str(EXAMPLES / 'cifar_tiny.cnn')!r}], standalone_mode=False)\n"
        "main(['analyze', '--explain', " + repr(str(EXAMPLES / "lenet5.cnn")) + "], standalone_mode=False)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime'))\n"
        "assert not heavy, heavy\n"
        "print('NO-TORCH-OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH-OK" in proc.stdout


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("cnndsl")
    assert exe is not None, "the cnndsl console script is not on PATH: add pip's scripts folder to PATH"
    proc = subprocess.run([exe, "check", str(EXAMPLES / "lenet5.cnn")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "61,706" in proc.stdout


def test_analyze_every_example_in_every_mode():
    code = (
        "import json, sys, io, contextlib\n"
        "from cnndsl.cli import main\n"
        f"paths = {[str(EXAMPLES / name) for name in ALL_EXAMPLES]!r}\n"
        "for path in paths:\n"
        "    for mode in ([], ['--explain'], ['--json']):\n"
        "        out = io.StringIO()\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            main(['analyze', *mode, path], standalone_mode=False)\n"
        "        text = out.getvalue()\n"
        "        if mode == ['--json']:\n"
        "            assert json.loads(text)['layers'], path\n"
        "        else:\n"
        "            assert 'parameters' in text, (path, mode)\n"
        "print('ALL-OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALL-OK" in proc.stdout


# ---------------------------------------------------------------- rough edges after a core install

_WITHOUT = """\
import sys


class Missing:
    # the packages named on the command line are not installed, as after `pip install cnndsl`
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named '{{name}}'", name=name)
        return None


sys.meta_path.insert(0, Missing())
sys.argv = ["cnndsl", *sys.argv[1:]]
from cnndsl.cli import run
run()
"""


def cnndsl_without(modules: set[str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "without.py"
    script.write_text(_WITHOUT.format(blocked=modules))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("modules", "args", "extra"), [
    ({"onnx", "onnxruntime"}, ("compile", "lenet5.cnn", "--target", "onnx"), "onnx"),
    ({"torch"}, ("train", "lenet5.cnn", "--backend", "torch", "--epochs", "1"), "torch"),
])
def test_a_missing_extra_names_it(modules, args, extra, tmp_path):
    (tmp_path / "lenet5.cnn").write_text((EXAMPLES / "lenet5.cnn").read_text())
    args = tuple(str(tmp_path / a) if a.endswith(".cnn") else a for a in args)
    proc = cnndsl_without(modules, *args, tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    no_traceback(proc)
    assert f"pip install 'cnndsl[{extra}]'" in proc.stderr
    assert "not installed" in proc.stderr


def test_compile_numpy_honours_weights_and_seed(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    import cnndsl as api

    net = api.load(EXAMPLES / "lenet5.cnn")
    trained = {name: array + 1 for name, array in net.init_weights(seed=11).items()}
    save_file(trained, str(tmp_path / "w.safetensors"))

    def built(*options: str):
        out = tmp_path / f"m{len(list(tmp_path.glob('m*.py')))}.py"
        proc = cnndsl("compile", str(EXAMPLES / "lenet5.cnn"), "-t", "numpy", "-o", str(out), *options)
        assert proc.returncode == 0, proc.stderr
        namespace: dict = {}
        exec(compile(out.read_text(), str(out), "exec"), namespace)  # noqa: S102 - our own generated code
        return namespace["build"]().params

    with_weights = built("--weights", str(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(with_weights["conv1.weight"], trained["conv1.weight"])
    seeded, default = built("--seed", "3"), built()
    np.testing.assert_array_equal(seeded["conv1.weight"], net.init_weights(seed=3)["conv1.weight"])
    assert not np.array_equal(seeded["conv1.weight"], default["conv1.weight"])


@pytest.mark.parametrize(("args", "words"), [
    (("-t", "numpy", "--weights", "missing.safetensors"), "no weights file"),
    (("-t", "torch", "--weights", "missing.safetensors"), "no weights file"),
    (("-t", "torch", "--seed", "3"), "--seed does not apply to the torch target"),
])
def test_compile_refuses_what_it_cannot_honour(args, words, tmp_path):
    proc = cnndsl("compile", str(EXAMPLES / "lenet5.cnn"), "-o", str(tmp_path / "out.py"), *args)
    assert proc.returncode == 1
    no_traceback(proc)
    assert words in proc.stderr and "fix: " in proc.stderr
    assert not (tmp_path / "out.py").exists()


def test_onnxruntime_loads_our_models_without_warnings(tmp_path):
    out = tmp_path / "resnet18.onnx"
    assert cnndsl("compile", str(EXAMPLES / "resnet18.cnn"), "-t", "onnx", "-o", str(out)).returncode == 0
    code = ("import onnxruntime, sys\n"
            "options = onnxruntime.SessionOptions(); options.log_severity_level = 2  # warnings and up\n"
            f"onnxruntime.InferenceSession({str(out)!r}, options, providers=['CPUExecutionProvider'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "num_batches_tracked" not in proc.stderr and "[W:" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- README listings


def test_readme_listings_equal_the_example_files():
    """Every README code block that names an example file (`examples/NAME.cnn`) just before it shows
    that file exactly."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = 0
    # A listing is introduced by a line naming the file and ending in ':', then a blank line.
    for match in re.finditer(r"(examples/[\w.-]+\.cnn)[^\n]*:\n\n```[^\n]*\n(.*?)```", readme, re.DOTALL):
        path, listing = ROOT / match.group(1), match.group(2)
        if path.exists():
            assert listing == path.read_text(encoding="utf-8"), f"the README's listing of {match.group(1)} differs"
            found += 1
    assert found >= 2  # LeNet-5 and ResNet-18
