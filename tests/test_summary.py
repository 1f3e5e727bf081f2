"""The `cnndsl analyze` table: fitted to a width, collapsed by depth, the same in Python; the JSON rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from cnndsl.errors import CnnDslError
from cnndsl.kinds.base import fmt
from cnndsl.summary import human, render_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESNET18 = EXAMPLES / "resnet18.cnn"


def analyze(*args: str, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def table_blocks(text: str) -> list[list[str]]:
    """The rows of a printed table, each with its wrapped continuation lines."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    first_gap = len("layer") + len(lines[header][len("layer"):]) - len(lines[header][len("layer"):].lstrip())
    blocks: list[list[str]] = []
    for line in lines[header + 2:]:
        if line.startswith("parameters:"):
            break
        if line[:first_gap].strip():
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return blocks


@pytest.mark.parametrize("columns", [80, 60, 150])
def test_resnet18_fits_the_width_with_every_row_whole(columns):
    proc = analyze(str(RESNET18), columns=columns)
    assert proc.returncode == 0, proc.stderr
    longest = max(proc.stdout.splitlines(), key=len)
    assert len(longest) <= columns, longest
    assert "…" not in proc.stdout
    report = cnndsl.load(RESNET18).report
    blocks = table_blocks(proc.stdout)
    assert len(blocks) == len(report.layers)
    for row, block in zip(report.layers, blocks, strict=True):
        words = " ".join(block).split()
        first = block[0].split()
        assert row.name in first, (row.name, block)
        assert fmt(row.output) in first, block
        # parameters whole (9,408) or abbreviated (9.41K), never cut
        assert f"{row.params:,}" in first or human(row.params) in first, block
        assert str(row.rf[0]) in first, block
        # the evaluated statement, word by word, in order (wrapped over lines where narrow)
        statement = row.node.text().split()
        cells = [w for w in words if w in statement]
        assert " ".join(cells).find(" ".join(statement)) >= 0, (statement, block)
    assert "conv 3x3/2 pad1 -> 128 nobias" in " ".join(" ".join(b) for b in blocks) or columns < 80


def test_wide_table_keeps_exact_figures_and_every_column():
    text = analyze(str(RESNET18), columns=150).stdout
    header = text.splitlines()[1].split()
    assert header == ["layer", "line", "statement", "output", "params", "MACs", "RF", "jump", "offset"]
    conv1 = next(line for line in text.splitlines() if line.startswith("conv1"))
    assert conv1.split() == ["conv1", "14", "conv", "7x7/2", "pad3", "->", "64", "nobias", "64x112x112", "9,408",
                             "118,013,952", "7", "2", "0"]
    shortcut = next(line for line in text.splitlines() if "basic3.shortcut1.conv1" in line)
    assert "7 (via 17)" in shortcut and "conv 1x1/2 -> 128 nobias" in shortcut


def test_pipe_without_columns_is_80_wide():
    proc = analyze(str(RESNET18))
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    assert "conv 7x7/2 pad3 -> 64 nobias" in proc.stdout


def test_width_option_and_unlimited():
    narrow = analyze("--width", "70", str(RESNET18), columns=150).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 70
    wide = analyze("--width", "0", str(RESNET18), columns=40).stdout
    assert "118,013,952" in wide and " offset" in wide.splitlines()[1]


def test_depth_collapses_rows_into_block_calls():
    report = cnndsl.load(RESNET18).report
    text = render_text(report, None, depth=0)
    blocks = table_blocks(text)
    names = [b[0].split()[0] for b in blocks]
    assert names == ["conv1", "bn1", "relu1", "pool1", *(f"basic{i}" for i in range(1, 9)), "pool2", "fc1"]
    basic3 = next(b[0] for b in blocks if b[0].startswith("basic3 "))
    # torchvision's resnet18 layer2[0]: conv 73,728 + bn 256 + conv 147,456 + bn 256 + downsample 8,192 + bn 256
    assert "230,144" in basic3 and "basic(c=128, s=2)" in basic3 and "128x28x28" in basic3
    assert basic3.split()[1] == "17"  # the line of the call
    assert basic3.split()[-3] == str(report.layer("basic3.relu2").rf[0])  # the call's output field
    assert f"{sum(r.macs for r in report.layers if r.name.startswith('basic3.')):,}" in basic3
    depth1 = [b[0].split()[0] for b in table_blocks(render_text(report, None, depth=1))]
    assert "basic3.shortcut1" in depth1 and "basic3.shortcut1.conv1" not in depth1 and "basic3.conv1" in depth1
    shortcut = next(b[0] for b in table_blocks(render_text(report, None, depth=1)) if "basic3.shortcut1 " in b[0])
    assert "8,448" in shortcut and "shortcut" in shortcut.split()
    collapsed = analyze("--depth", "0", str(RESNET18), columns=80).stdout.splitlines()
    assert sum(line.startswith("basic") for line in collapsed) == 8


def test_mlp_has_no_receptive_field():
    net = cnndsl.parse("network mlp\ninput 784\nfc 128; relu\nfc 10\n")
    text = render_text(net.report, 80)
    rows = table_blocks(text)
    assert all(b[0].split()[-1] == "-" for b in rows), text  # the RF column
    assert "receptive field -" in text
    data = net.report.to_json()
    assert all(layer["rf"] is None and layer["jump"] is None for layer in data["layers"])
    assert data["rf"] is None and data["jump"] is None and data["offset"] is None
    spatial = cnndsl.parse("network c\ninput 1x8x8\nconv 3x3 -> 2\n").report.to_json()
    assert spatial["rf"] == [3, 3] and spatial["jump"] == [1, 1] and spatial["offset"] == [1, 1]


def test_readable_totals():
    assert human(10_000_270_000_000) == "10.0T"
    assert human(1_814_073_344) == "1.81G" and human(999_999) == "1.00M" and human(9_408) == "9.41K"
    assert human(12_345_678_901_234_567_890) == "1.23e+19"
    # a network of 10 trillion MACs: a 3x3 conv of 4096 channels on a 1024x1024 map... and more
    net = cnndsl.parse("network big\ninput 3x2048x2048\nconv 3x3 pad1 -> 4096\nconv 3x3 pad1 -> 4096\n")
    text = render_text(net.report, 80)
    assert f"({human(net.report.macs)})" in text and "e+" not in text and "00.00G" not in text
    assert human(net.report.macs).endswith("P") or human(net.report.macs).endswith("T")


def test_str_and_html_of_a_report(monkeypatch):
    monkeypatch.setenv("COLUMNS", "72")
    report = cnndsl.load(RESNET18).report
    text = str(report)
    assert text == render_text(report, 72)
    assert max(len(line) for line in text.splitlines()) <= 72 and "LayerReport" not in text
    html = report._repr_html_()
    assert html.startswith("<div") and "<table>" in html and html.count("<tr>") == len(report.layers) + 1
    assert "conv 7x7/2 pad3 -&gt; 64 nobias" in html and "118,013,952" in html
    assert report.table(None) == render_text(report, None)


def test_explain_returns_what_the_command_prints():
    report = cnndsl.load(EXAMPLES / "lenet5.cnn").report
    text = report.explain("conv1")
    assert isinstance(text, str)
    assert text.splitlines()[0] == "conv1 (line 5): conv 5x5 pad2 -> 6"
    assert "  params: (1*5*5 + 1) * 6 = 156" in text.splitlines()
    assert report.explain_lines("conv1") == tuple(line[2:] for line in text.splitlines()[1:])
    printed = analyze("--explain", "--width", "0", str(EXAMPLES / "lenet5.cnn")).stdout
    assert text in printed
    for row in report.layers:
        assert report.explain(row.name) in printed


def test_explain_wraps_to_the_width():
    printed = analyze("--explain", str(EXAMPLES / "mobilenet_v1.cnn"), columns=70).stdout
    assert max(len(line) for line in printed.splitlines()) <= 70


def test_unknown_layer_suggests_the_closest():
    report = cnndsl.load(RESNET18).report
    with pytest.raises(CnnDslError) as info:
        report.explain("basic3.conv3")
    assert "no layer named 'basic3.conv3'" in info.value.message
    assert "did you mean" in info.value.hint and "'basic3.conv1'" in info.value.hint
    with pytest.raises(CnnDslError) as info:
        report.layer("zzz")
    assert "first column" in info.value.hint


def test_json_keeps_the_statement_and_adds_what_runs():
    data = json.loads(analyze("--json", str(RESNET18)).stdout)
    layers = {layer["name"]: layer for layer in data["layers"]}
    conv = layers["basic3.conv1"]
    assert conv["statement"] == "conv 3x3/s pad1 -> c nobias"
    assert conv["evaluated"] == "conv 3x3/2 pad1 -> 128 nobias"
    assert (conv["kernel"], conv["stride"], conv["pad"], conv["dilation"], conv["groups"]) == (
        [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1)
    pool = layers["pool1"]
    assert (pool["kernel"], pool["stride"], pool["pad"]) == ([3, 3], [2, 2], [1, 1, 1, 1]) and "groups" not in pool
    assert not {"kernel", "stride", "pad", "groups"} & set(layers["relu1"])
    assert "erf" not in conv


def test_json_pad_same_is_resolved_and_depthwise_groups():
    data = json.loads(analyze("--json", str(EXAMPLES / "mobilenet_v1.cnn")).stdout)
    convs = [layer for layer in data["layers"] if layer["op"] == "conv"]
    first = convs[0]
    # TensorFlow's SAME at 224, 3x3/2: out 112, total (112 - 1) * 2 + 3 - 224 = 1, the odd row last
    assert first["stride"] == [2, 2] and first["pad"] == [0, 1, 0, 1]
    depthwise = convs[1]
    assert depthwise["groups"] == depthwise["input"][0] == 32 and "depthwise" in depthwise["evaluated"]


def test_erf_options_need_erf():
    proc = analyze("--weights", "w.safetensors", str(RESNET18))
    assert proc.returncode == 1 and "--weights only apply" in proc.stderr and "fix: add --erf" in proc.stderr


def test_public_formatters():
    from cnndsl.summary import bytes_text, pair_text

    assert pair_text((27, 27)) == "27" and pair_text((7, 5)) == "7x5"
    assert bytes_text(3 * 2**20) == "3.00 MiB" and bytes_text(812) == "812 B"
