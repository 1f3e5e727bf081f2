"""`cnndsl draw`: well-formed SVG, one node per statement or collapsed call, figures that add up to the
published totals, boxes that do not overlap, and the output rules `compile` follows."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

import cnndsl
from cnndsl import ir
from cnndsl.cli import main
from cnndsl.draw import svg_bytes

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"

# Boxes counted by hand from each file: ResNet-152 is conv, bn, relu, pool, seven call boxes
# (`bottleneck(64) x3`, `bottleneck(128, s=2)`, `bottleneck(128) x7`, ...), pool, fc.
HAND_COUNTS = {
    "examples/resnet18.cnn": 13,
    "benchmarks/resnet152.cnn": 13,
    "examples/densenet121.cnn": 15,
    "examples/inception.cnn": 21,  # a 12-statement stem, 3 calls + 3 relus, pool, dropout, fc
    "examples/unet.cnn": 22,  # 4 at the top, 5 per level inside the three upper concats, 3 at the bottom
}
# Published parameter counts (torchvision), which the boxes' figures must add up to.
PUBLISHED_PARAMS = {
    "examples/resnet18.cnn": 11_689_512,
    "benchmarks/resnet152.cnn": 60_192_808,
    "examples/densenet121.cnn": 7_978_856,
}
EXAMPLES = [*HAND_COUNTS, "examples/efficientnet_b0.cnn", "examples/mobilenet_v2.cnn",
            "examples/shufflenet_v2_x1_0.cnn", "examples/convnext_tiny.cnn"]


def expected_nodes(items: tuple[ir.Node, ...], shapes) -> int:
    """Statements and collapsed calls, counted from the IR: a run of copies of one statement (`x N`)
    or a block call is one box; a residual or join shows its branches around one joining box."""
    count, previous = 0, None
    for node in items:
        if isinstance(node, ir.Seq) and node.block is None:
            count += expected_nodes(node.items, shapes)
            previous = None
            continue
        key = (type(node), node.span, node.calls)
        if key == previous:
            continue  # another copy of the statement just counted
        following = items[items.index(node) + 1] if items.index(node) + 1 < len(items) else None
        repeated = following is not None and (type(following), following.span, following.calls) == key
        previous = key
        if isinstance(node, ir.Seq) or repeated or not node.children():
            count += 1
        elif isinstance(node, ir.Residual):
            count += 1 + expected_nodes(node.body.items, shapes)
            if node.shortcut is not None and shapes.of(node).projects:
                count += expected_nodes(node.shortcut.items, shapes)
        else:
            count += 1 + sum(expected_nodes(branch.items, shapes) for branch in node.branches)
    return count


@pytest.fixture(scope="module", params=EXAMPLES)
def drawn(request):
    net = cnndsl.load(ROOT / request.param)
    data = svg_bytes(net)
    return request.param, net, data, ET.fromstring(data)


def nodes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "node" in g.get("class", "").split()]


def test_svg_is_well_formed_with_one_node_per_statement_or_collapsed_call(drawn):
    path, net, data, root = drawn
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>') and root.tag == f"{SVG}svg"
    found = nodes(root)
    assert len(found) == expected_nodes(net.ir.body.items, net.report.shapes)
    if path in HAND_COUNTS:
        assert len(found) == HAND_COUNTS[path]
    assert len({g.get("data-name") for g in found}) == len(found)  # each box a different statement


def test_each_box_carries_the_analysis_figures(drawn):
    path, net, _, root = drawn
    report = net.report
    found = nodes(root)
    # every box's output is the analysis' shape of the last layer it stands for
    for g in found:
        if g.get("data-count") == "1" and g.get("data-kind") != "call":
            assert g.get("data-output") == "x".join(map(str, report.layer(g.get("data-name")).output))
    total = sum(int(g.get("data-params")) for g in found)
    assert total == report.params
    if path in PUBLISHED_PARAMS:
        assert total == PUBLISHED_PARAMS[path]
    # every edge is labelled with a shape some layer outputs (or the input)
    shapes = {"x".join(map(str, row.output)) for row in report.layers} | {"x".join(map(str, report.input))}
    labels = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "shapes" for t in g]
    assert labels and set(labels) <= shapes


def test_boxes_do_not_overlap(drawn):
    _, _, _, root = drawn
    rects = []
    for g in nodes(root) + [g for g in root.iter(f"{SVG}g") if g.get("class") == "terminal"]:
        r = g.findall(f"{SVG}rect")[-1]  # the front rect (a stack draws its copies first)
        rects.append(tuple(float(r.get(k)) for k in ("x", "y", "width", "height")))
    for i, (x1, y1, w1, h1) in enumerate(rects):
        for x2, y2, w2, h2 in rects[i + 1:]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, (rects[i], (x2, y2, w2, h2))
    width = float(root.get("width"))
    assert all(0 <= x and x + w <= width for x, _, w, _ in rects)


def test_calls_are_labelled_as_written_and_repeats_collapsed():
    root = ET.fromstring(svg_bytes(cnndsl.load(ROOT / "examples/resnet18.cnn")))
    by_name = {g.get("data-name"): g for g in nodes(root)}
    assert by_name["basic1"].get("data-count") == "2"  # basic(64) x2: basic1 and basic2 in one box
    assert "basic2" not in by_name
    texts = {g.get("data-name"): [t.text for t in g.iter(f"{SVG}text")] for g in nodes(root)}
    assert texts["basic1"][0] == "basic(64) x2"
    assert texts["basic3"][0] == "basic(128, s=2)"
    assert texts["basic3"][1] == "8 layers, 230K params"  # 73,728 + 147,456 + 8,192 + 3 x 256
    assert texts["conv1"] == ["conv 7x7/2 pad3 -> 64 nobias"]
    legend = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "legend" for t in g.iter(f"{SVG}text")]
    assert {"conv", "batch norm", "activation", "pool", "fc", "block call"} <= set(legend)
    fills = {g.get("data-kind"): g.find(f"{SVG}rect").get("fill") for g in nodes(root)}
    assert len({fills["conv"], fills["bn"], fills["activation"], fills["pool"], fills["fc"]}) == 5


def test_residual_branches_stand_side_by_side():
    text = "network n\ninput 3x16x16\nresidual { conv 3x3/2 pad1 -> 8; relu } shortcut { conv 1x1/2 -> 8 }\nfc 2\n"
    root = ET.fromstring(svg_bytes(cnndsl.parse(text)))
    boxes = {g.get("data-name"): g.find(f"{SVG}rect") for g in nodes(root)}
    body, shortcut, join = boxes["conv1"], boxes["shortcut1.conv1"], boxes["residual1"]
    assert float(shortcut.get("x")) > float(body.get("x")) + float(body.get("width"))  # beside it
    assert float(body.get("y")) == float(shortcut.get("y"))  # both start on the same row
    below = max(float(boxes[n].get("y")) for n in ("conv1", "relu1", "shortcut1.conv1"))
    assert float(join.get("y")) > below  # the add comes after every branch
    assert float(boxes["fc1"].get("y")) > float(join.get("y"))


def test_cli_writes_atomically_and_never_over_a_users_file(tmp_path):
    runner = CliRunner()
    out = tmp_path / "net.svg"
    result = runner.invoke(main, ["draw", str(ROOT / "examples/resnet18.cnn"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    ET.parse(out)
    again = runner.invoke(main, ["draw", str(ROOT / "examples/resnet18.cnn"), "-o", str(out)])
    assert again.exit_code == 0, again.output  # its own output is replaced
    mine = tmp_path / "mine.svg"
    mine.write_text("<svg>my drawing</svg>")
    refused = runner.invoke(main, ["draw", str(ROOT / "examples/resnet18.cnn"), "-o", str(mine)])
    assert refused.exit_code == 1 and "was not written by cnndsl" in refused.output
    assert mine.read_text() == "<svg>my drawing</svg>"
    forced = runner.invoke(main, ["draw", str(ROOT / "examples/resnet18.cnn"), "-o", str(mine), "--force"])
    assert forced.exit_code == 0 and mine.read_bytes().startswith(b"<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.svg", "net.svg"]  # no temporary left


def test_cli_reports_a_bad_program_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n\ninput 3x8x8\nconv 3x3 -> 4\nbasik(3)\n")
    result = CliRunner().invoke(main, ["draw", str(bad)])
    assert result.exit_code == 1
    assert "bad.cnn:4:1: error: unknown block or layer 'basik'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bad.svg").exists()


def test_default_output_follows_the_one_naming_rule(monkeypatch, tmp_path):
    """draw (and report) name their file by the rule compile's default_output uses, not a copy of it."""
    from pathlib import Path

    from cnndsl import outputs

    net = cnndsl.parse("network tiny\ninput 1x8x8\nconv 3x3 -> 2\n")
    assert outputs.beside_source(net, ".svg") == Path("tiny.svg")
    assert outputs.default_output(net, "onnx") == Path("tiny.onnx")
    monkeypatch.setattr(outputs, "beside_source", lambda net, ending: tmp_path / ("renamed" + ending))
    assert outputs.default_output(net, "onnx") == tmp_path / "renamed.onnx"  # one rule for both
    program = tmp_path / "tiny.cnn"
    program.write_text("network tiny\ninput 1x8x8\nconv 3x3 -> 2\n")
    result = CliRunner().invoke(main, ["draw", str(program)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "renamed.svg").exists() and not (tmp_path / "tiny.svg").exists()
