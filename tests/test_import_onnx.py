"""`cnndsl import` (cnndsl/onnx_import): ONNX models back into programs and weights.

Round trips: every example and every program of the sketch is compiled to ONNX with its node names,
doc strings and metadata stripped, imported, analysed and compiled again with the imported weights;
figures and ONNX Runtime outputs must agree. Hand-written torch modules exported by
`torch.onnx.export(dynamo=False)` must import to programs whose outputs equal the module's.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from extras import require

onnx = require("onnx")
ort = require("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

import cnndsl  # noqa: E402
from cnndsl.backends import onnx_builder  # noqa: E402
from cnndsl.errors import CnnDslError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# 25M+ weights (seeded, built and run twice) or U-Net's 572x572: seconds each on a shared machine
BIG = {"vgg16", "alexnet", "unet", "resnet101", "resnet50", "fcn_resnet50", "convnext_tiny", "resnet34"}
WEIGHTED = {"conv", "fc", "deconv"}
DROPPED = {"dropout", "flatten", "droppath"}  # no ONNX node, or folded into the fc after it


def stripped(model):
    """The model with nothing of its source left: no node names, doc strings, metadata or value_info."""
    for node in model.graph.node:
        node.name, node.doc_string = "", ""
    model.graph.doc_string = model.doc_string = ""
    del model.metadata_props[:]
    del model.graph.value_info[:]
    model.graph.name = "g"
    return model


def run(model, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # graph optimisations cost more than they save on one small batch (U-Net: 2.8 s against 1.7 s)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def sketch(name: str) -> str:
    return (FIXTURES / f"{name}.cnn").read_text(encoding="utf-8").split("\n\n", 1)[1]


def sketch_programs() -> dict[str, str]:
    """The sketch's programs, completed as tests/test_figures.py completes them."""
    lenet = (ROOT / "examples" / "lenet5.cnn").read_text()
    small = ("input 3x224x224\nconv 7x7/2 pad3 -> 8; relu\npool max 3x3/2 pad1\nconv 3x3/2 pad1 -> 16\n"
             "conv 3x3/2 pad1 -> 16\nconv 3x3/2 pad1 -> 16\nconv 3x3 pad1 -> 16\npool avg global\nfc 10\n")
    return {"sketch_lenet5": sketch("sketch_lenet5"), "sketch_resnet18": sketch("sketch_resnet18"),
            "sketch_inception_a_block": sketch("sketch_inception_a_block") + "\ninput 192x35x35\ninception_a(32)\n",
            "sketch_expectations": small + sketch("sketch_expectations"),
            "sketch_data_and_training": lenet + sketch("sketch_data_and_training")}


def small_input(net):
    """A smaller input where the network takes one (the figures are compared at that size): 64x64,
    or 188x188 for the original U-Net, whose valid convolutions need 16k + 124."""
    c, *hw = net.ir.input_shape
    for size in (64, 188):
        if hw and hw[0] > size:
            try:
                return cnndsl.parse(net.source.text, net.source.path, (c, size, size))
            except CnnDslError:
                continue
    return net


def same_rows(original, imported):
    """Per-layer figures: the weighted layers one to one, every other imported layer in order among
    the original's (dropout, a flatten before fc and an identity adaptive pool leave no ONNX node)."""
    def key(row):
        # an fc's input is the map where the original flattened first (flatten; fc = fc)
        return (row.op, row.input if row.op != "fc" else None, row.output, row.params, row.macs, row.rf, row.jump,
                row.offset)

    leaves = [r for r in original.layers if not r.node.children() and r.op not in DROPPED]
    mine = [r for r in imported.layers if not r.node.children() and r.op not in DROPPED]
    assert [key(r) for r in leaves if r.op in WEIGHTED] == [key(r) for r in mine if r.op in WEIGHTED]
    rest = iter(key(r) for r in leaves)
    for row in mine:
        assert any(key(row) == other for other in rest), row


def round_trip(net, seed: int = 0):
    model = stripped(onnx_builder.build(net, seed=seed))
    result = cnndsl.import_onnx(model)
    back = cnndsl.parse(result.text, "imported.cnn")
    a, b = net.report, back.report
    assert (b.params, b.macs, b.output, b.rf, b.jump, b.offset) == (a.params, a.macs, a.output, a.rf, a.jump,
                                                                   a.offset)
    same_rows(a, b)
    x = np.random.default_rng(1).standard_normal((1, *net.ir.input_shape)).astype(np.float32)
    want = run(model, x)
    got = run(onnx_builder.build(back, result.weights), x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    return result


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in BIG else [])
                                  for p in EXAMPLES])
def test_every_example_round_trips(path):
    round_trip(small_input(cnndsl.load(path)))


@pytest.mark.parametrize("name", list(sketch_programs()))
def test_every_sketch_program_round_trips(name):
    round_trip(cnndsl.parse(sketch_programs()[name], f"{name}.cnn"))


EVERY_KIND = """\
network every_kind
input 3x29x29
preprocess { scale 1/255; standardize mean (0.5, 0.4, 0.3) std (0.2, 0.25, 0.3) }

conv 3x3/2 pad same -> 8; leaky 0.2
conv 3x3 pad2 dil2 groups2 -> 8 nobias; gn 4; elu 0.5
conv 3x3 pad1 depthwise -> 2x; ln; gelu
pool max 3x3/2 pad1 ceil
layerscale 0.5
concat crop {
  branch {}
  branch { pool max 2; conv 3x3 -> 8; hardswish; deconv 2x2/2 -> 8 }
}
shuffle 4
concat { branch { channels :12 } branch { channels 12:; conv 1x1 -> 4; tanh } }
pool avg 3x3/2 pad1 ceil
upsample to 9x9 bilinear
upsample 2x
conv 1x1 -> 6; sigmoid; silu; hardsigmoid; relu6
pool avg adaptive 4x5
fc 12; ln eps 1e-5; softmax
"""


def test_every_kind_round_trips():
    """One small program with every statement the importer reads back (gn, ln on a map and a
    vector, a cropping concat crop, ceil pools, uneven adaptive windows, bilinear resizing, ...)."""
    text = round_trip(cnndsl.parse(EVERY_KIND, "every_kind.cnn")).text
    for part in ("gn 4; elu 0.5", "depthwise -> 16; ln; gelu", "concat crop {", "shuffle 4", "channels 12:",
                 "pool avg 3x3/2 pad1 ceil", "upsample 3x bilinear", "pool avg adaptive 4x5",
                 "fc 12; ln eps 1e-5; softmax", "layerscale 0.5", "leaky 0.2",
                 "preprocess { scale 0.003921569; standardize mean (0.5, 0.4, 0.3) std (0.2, 0.25, 0.3) }"):
        assert part in text, (part, text)


def test_a_folding_mistake_falls_back_to_the_program_written_out(monkeypatch):
    from cnndsl.onnx_import import printer

    net = cnndsl.load(ROOT / "examples" / "resnet18.cnn", (3, 32, 32))
    monkeypatch.setattr(printer, "call_text", lambda *call: "no_such_block")
    result = cnndsl.import_onnx(onnx_builder.build(net))
    assert any("could not be folded" in note for note in result.notes)
    assert not re.search(r"^block ", result.text, re.M) and "residual {" in result.text
    assert cnndsl.parse(result.text).report.params == net.report.params


@pytest.mark.slow
def test_resnet50_imports_as_a_short_program_with_a_block():
    text = round_trip(cnndsl.load(ROOT / "examples" / "resnet50.cnn", (3, 64, 64))).text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) <= 40, text
    assert re.search(r"^block \w+\(c, s=1\) \{$", text, re.M), text
    assert re.search(r"\) x5$", text, re.M) and "-> 4*c nobias" in text and "conv 1x1/s -> 4*c" in text, text


def test_blocks_nest_a_gate_inside_a_residual_block():
    text = round_trip(small_input(cnndsl.load(ROOT / "examples" / "mobilenet_v3_small.cnn"))).text
    gate = re.search(r"^block (\w+)\(c\) \{\n  mul \{", text, re.M)
    assert gate and re.search(rf"^block resblock\(c, c2\) \{{(\n .*)*\n    {gate.group(1)}\(c2\)$", text, re.M), text
    assert text.index(f"block {gate.group(1)}") < text.index("block resblock"), text


def test_shufflenet_folds_units_with_in_c_and_its_preprocessing_comes_back():
    text = round_trip(small_input(cnndsl.load(ROOT / "examples" / "shufflenet_v2_x1_0.cnn"))).text
    assert "channels :in_c/2" in text and re.search(r"^\w+ x7$", text, re.M), text
    lenet = sketch_programs()["sketch_data_and_training"]
    text = round_trip(cnndsl.parse(lenet)).text
    assert re.search(r"preprocess \{ scale 0.003921569; standardize mean \(0\) std \(1\) \}", text), text


# ---------------------------------------------------------------- hand-built graphs: notes and errors


def graph_model(nodes, initializers=(), shape=(1, 3, 8, 8), out_shape=None):
    weights = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in initializers]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv(name, x, out, c_in=3, c_out=3):
    weight = np.random.default_rng(len(name)).standard_normal((c_out, c_in, 3, 3)) * 0.1
    return helper.make_node("Conv", [x, f"{name}.w"], [out], name=name, pads=[1, 1, 1, 1]), (f"{name}.w", weight)


def test_tanh_gelu_and_dropout_come_back_with_notes():
    k = math.sqrt(2 / math.pi)
    consts = [("c3", 3.0), ("k", k), ("a", 0.044715), ("one", 1.0), ("half", 0.5)]
    nodes = [helper.make_node("Dropout", ["x"], ["d"]), helper.make_node("Pow", ["d", "c3"], ["p"]),
             helper.make_node("Mul", ["p", "a"], ["pa"]), helper.make_node("Add", ["d", "pa"], ["s"]),
             helper.make_node("Mul", ["s", "k"], ["sk"]), helper.make_node("Tanh", ["sk"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["d", "t1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    result = cnndsl.import_onnx(graph_model(nodes, consts))
    assert [line for line in result.text.splitlines() if line and not line.startswith("#")][-1] == "gelu"
    assert any("tanh approximation" in n for n in result.notes) and any("Dropout" in n for n in result.notes)
    assert "# note: " in result.text


def test_a_pad_before_a_conv_and_a_bias_after_it_fold_into_the_conv():
    """TensorFlow exporters' forms: an explicit Pad node, a bias Add of its own, auto_pad SAME_UPPER."""
    node, weight = conv("c1", "p", "v")
    del node.attribute[:]
    same, weight2 = conv("c2", "r", "y", c_in=3, c_out=4)
    del same.attribute[:]
    same.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    same.attribute.append(helper.make_attribute("strides", [2, 2]))
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), node, helper.make_node("Add", ["v", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), same]
    model = graph_model(nodes, [weight, weight2, ("b", np.arange(3.0).reshape(1, 3, 1, 1))])
    model.graph.initializer.append(onnx.numpy_helper.from_array(pads, "pads"))
    result = cnndsl.import_onnx(model)
    assert "conv 3x3 pad1 -> 3; relu\nconv 3x3/2 pad same -> 4" in result.text, result.text
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = run(onnx_builder.build(cnndsl.parse(result.text), result.weights), x)
    np.testing.assert_allclose(got, run(model, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["unknown op", "not series-parallel", "asymmetric padding", "constant add",
                                  "identity"])
def test_what_the_language_cannot_express_is_an_error_naming_the_node(case):
    if case == "unknown op":
        nodes, weights = [helper.make_node("LRN", ["x"], ["y"], name="lrn", size=3)], []
        expected = ["ONNX node 'lrn' (LRN)", "input 1x3x8x8", "no LRN"]
    elif case == "not series-parallel":
        (a, wa), (b, wb), (c, wc) = conv("a", "x", "va"), conv("b", "x", "vb"), conv("c", "va", "vc")
        nodes = [a, b, c, helper.make_node("Add", ["vb", "vc"], ["s"], name="add1"),
                 helper.make_node("Add", ["s", "va"], ["y"], name="add2")]
        weights, expected = [wa, wb, wc], ["ONNX node 'a' (Conv)", "not series-parallel"]
    elif case == "asymmetric padding":
        node, weight = conv("c1", "x", "y")
        node.attribute[0].CopyFrom(helper.make_attribute("pads", [0, 0, 1, 1]))
        nodes, weights, expected = [node], [weight], ["ONNX node 'c1' (Conv)", "asymmetric padding"]
    elif case == "identity":
        nodes, weights, expected = [helper.make_node("Identity", ["x"], ["y"])], [], ["nothing but the identity"]
    else:
        nodes = [helper.make_node("Add", ["x", "b"], ["y"])]
        weights, expected = [("b", np.ones((3, 1, 1)))], ["ONNX node #0 (Add)", "adding a constant"]
    with pytest.raises(CnnDslError) as info:
        cnndsl.import_onnx(graph_model(nodes, weights))
    for part in expected:
        assert part in info.value.message, info.value.message


def test_command_writes_program_and_weights_and_reports_errors_without_traceback(tmp_path):
    net = cnndsl.load(ROOT / "examples" / "lenet5.cnn")
    onnx_builder.save(stripped(onnx_builder.build(net)), tmp_path / "lenet.onnx")
    command = [sys.executable, "-m", "cnndsl.cli", "import", str(tmp_path / "lenet.onnx")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    back = cnndsl.load(tmp_path / "lenet.cnn")
    assert back.report.params == net.report.params == 61_706
    from cnndsl.weights import load_weights

    assert set(load_weights(back, tmp_path / "lenet.safetensors")) == {s.name for s in back.tensor_specs()}
    (tmp_path / "mine.cnn").write_text("# my own program\n")
    refused = subprocess.run([*command, "-o", str(tmp_path / "mine.cnn")], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 1 and "not overwriting" in refused.stderr
    onnx.save(graph_model([helper.make_node("LRN", ["x"], ["y"], size=3)]), tmp_path / "lrn.onnx")
    failed = subprocess.run([*command[:-1], str(tmp_path / "lrn.onnx")], capture_output=True, text=True,
                            check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "ONNX node #0 (LRN) with input 1x3x8x8 cannot be expressed" in failed.stderr


def one_conv(shape=(1, 3, 8, 8)):
    node, weight = conv("c", "x", "y")
    return graph_model([node], [weight], shape=shape)


def test_command_never_writes_over_the_model_nor_both_outputs_to_one_file(tmp_path):
    from click.testing import CliRunner

    from cnndsl.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(one_conv(), model)
    before = model.read_bytes()
    runner = CliRunner()
    for args in (["-o", str(model)], ["-o", str(model), "--force"], ["--weights-out", str(model), "--force"]):
        refused = runner.invoke(main, ["import", str(model), *args])
        assert refused.exit_code == 1 and "which this command reads" in refused.output, refused.output
    (tmp_path / "link.cnn").symlink_to(model)
    refused = runner.invoke(main, ["import", str(model), "-o", str(tmp_path / "link.cnn"), "--force"])
    assert refused.exit_code == 1 and "which this command reads" in refused.output
    both = runner.invoke(main, ["import", str(model), "-o", str(tmp_path / "same.cnn"), "--weights-out",
                                str(tmp_path / "." / "same.cnn"), "--force"])
    assert both.exit_code == 1 and "both be written to" in both.output and "--weights-out" in both.output
    assert model.read_bytes() == before and not (tmp_path / "same.cnn").exists()


def test_command_keeps_a_hand_edited_import_unless_forced(tmp_path):
    from click.testing import CliRunner

    from cnndsl.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(one_conv(), model)
    runner = CliRunner()
    assert runner.invoke(main, ["import", str(model)]).exit_code == 0
    program = tmp_path / "m.cnn"
    assert runner.invoke(main, ["import", str(model)]).exit_code == 0  # unedited: replaced without asking
    edited = program.read_text() + "relu  # mine\n"
    program.write_text(edited)
    refused = runner.invoke(main, ["import", str(model)])
    assert refused.exit_code == 1 and "edited since" in refused.output and "--force" in refused.output
    assert program.read_text() == edited
    assert runner.invoke(main, ["import", str(model), "--force"]).exit_code == 0
    assert "# mine" not in program.read_text()


def test_input_that_contradicts_a_fixed_size_is_refused():
    model = one_conv()
    assert cnndsl.parse(cnndsl.import_onnx(model, (3, 8, 8)).text).ir.input_shape == (3, 8, 8)  # agreeing is fine
    for shape in ((3, 32, 32), (1, 8, 8)):
        with pytest.raises(CnnDslError) as info:
            cnndsl.import_onnx(model, shape)
        assert "is fixed at 3x8x8" in info.value.message and "leave out --input" in info.value.hint
    partly = one_conv(shape=(1, 3, "h", "w"))
    with pytest.raises(CnnDslError, match=r"fixed at 3x\?x\?"):
        cnndsl.import_onnx(partly, (1, 16, 16))
    assert cnndsl.parse(cnndsl.import_onnx(partly, (3, 16, 16)).text).ir.input_shape == (3, 16, 16)


def test_an_input_too_small_for_the_model_is_a_user_error_naming_the_size():
    weight = np.ones((4, 3, 3, 3), np.float32)
    model = graph_model([helper.make_node("Conv", ["x", "w"], ["y"])], [("w", weight)], shape=(1, 3, "h", "w"))
    with pytest.raises(CnnDslError) as info:
        cnndsl.import_onnx(model, (3, 2, 2))
    message = info.value.message
    assert "does not work at --input 3x2x2" in message and "kernel 3x3 is larger than its padded input 2x2" in message
    assert "imported.cnn" not in message and "larger --input" in info.value.hint
    assert cnndsl.parse(cnndsl.import_onnx(model, (3, 5, 5)).text).report.output == (4, 3, 3)


# ---------------------------------------------------------------- ONNX from torch.onnx.export

torch = require("torch")
nn = torch.nn
F = torch.nn.functional


class Basic(nn.Module):
    def __init__(self, cin, c, s):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, s, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.down = None
        if s != 1 or cin != c:
            self.down = nn.Sequential(nn.Conv2d(cin, c, 1, s, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for c, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Basic(cin, c, s), Basic(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.layers(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, c, s, t, se):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, s, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True)]
        if se:
            layers.append(SE(hidden))
        layers += [nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c)]
        self.conv = nn.Sequential(*layers)
        self.res = s == 1 and cin == c

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNetV2SE(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)]
        cin = 16
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2)):
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t, se=c >= 32))
                cin = c
        layers += [nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, 10))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class InceptionBlock(nn.Module):
    def __init__(self, cin=32):
        super().__init__()
        self.b1 = nn.Conv2d(cin, 16, 1)
        self.b2 = nn.Sequential(nn.Conv2d(cin, 12, 1), nn.ReLU(), nn.Conv2d(12, 16, 5, padding=2))
        self.b3 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(24, 24, 3, padding=1))
        self.b4 = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(cin, 8, 1))

    def forward(self, x):
        return F.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.a = InceptionBlock(32)
        self.b = InceptionBlock(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.b(self.a(self.stem(x)))
        return self.head(x.mean((2, 3)))


def double(cin, c):
    return nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                         nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inc = double(1, 8)
        self.down1 = double(8, 16)
        self.down2 = double(16, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.conv1 = double(32, 16)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv2 = double(24, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        y = self.conv1(torch.cat([x2, self.up1(x3)], 1))
        y = self.conv2(torch.cat([x1, self.up2(y)], 1))
        return self.out(y)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's: each pixel's channels normalised (channels last and back)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Norms(nn.Module):
    """Group and layer norms, GELU, hardswish, a ceil-mode pool and `x.reshape(x.size(0), -1)`."""

    def __init__(self):
        super().__init__()
        self.c1, self.gn = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.c2, self.ln = nn.Conv2d(8, 8, 3, padding=1), LayerNorm2d(8, eps=1e-6)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc, self.ln2 = nn.Linear(16 * 4 * 4, 10), nn.LayerNorm(10)

    def forward(self, x):
        x = F.gelu(self.gn(self.c1(x)))
        x = F.hardswish(self.ln(self.c2(x)))
        x = F.avg_pool2d(F.leaky_relu(self.c3(x), 0.1), 2, ceil_mode=True)
        return torch.softmax(self.ln2(self.fc(x.reshape(x.size(0), -1))), 1)


# what each import must read as: the language's constructs, found from the graph alone
STRUCTURE = {"resnet18": ("residual {", "} shortcut {", "resblock(64) x2", "block resblock(c, s=1)"),
             "mobilenet_v2_se": ("mul {", "relu6", "silu", "depthwise", "sigmoid"),
             "inception": ("concat {", "pool avg 3x3/1 pad1", "mixed x2", "pool avg global"),
             "unet": ("deconv 2x2/2 -> 16", "upsample 2x bilinear", "concat {"),
             "norms": ("conv 3x3 pad1 -> 8; gn 4; gelu", "conv 3x3 pad1 -> 8; ln; hardswish", "leaky 0.1",
                       "pool avg 2x2/2 ceil", "fc 10; ln eps 1e-5; softmax")}
TORCH_MODELS = {"resnet18": (ResNet18, (3, 64, 64)), "mobilenet_v2_se": (MobileNetV2SE, (3, 64, 64)),
                "inception": (InceptionNet, (3, 63, 63)), "unet": (UNet, (1, 32, 32)),
                "norms": (Norms, (3, 16, 16))}


def exported(module, x, fold: bool, dynamic_size: bool = False):
    buffer = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"} if dynamic_size else {0: "n"}
    torch.onnx.export(module, x, buffer, dynamo=False, do_constant_folding=fold, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes})
    return onnx.load_from_string(buffer.getvalue())


def trained_looking(module):
    """BN statistics and affine terms away from their defaults, so folding them is visible."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            for tensor, (low, high) in ((layer.running_mean, (-0.5, 0.5)), (layer.running_var, (0.5, 2.0)),
                                        (layer.weight.data, (0.5, 1.5)), (layer.bias.data, (-0.5, 0.5))):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return module.eval()


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_torch_exports_import_with_equal_outputs(name, fold):
    torch.manual_seed(0)
    cls, shape = TORCH_MODELS[name]
    module = trained_looking(cls())
    if name == "norms":  # away from the norms' initial 1 and 0
        for parameter in module.parameters():
            parameter.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, *shape)
    result = cnndsl.import_onnx(exported(module, x, fold))
    net = cnndsl.parse(result.text)
    got = run(onnx_builder.build(net, result.weights), x.numpy())
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for part in STRUCTURE[name]:
        assert part in result.text, result.text
    has_bn = any(isinstance(layer, nn.BatchNorm2d) for layer in module.modules())
    bns = sum(1 for row in net.report.layers if row.op == "bn")
    # the exporter folds BN into the conv before it only with constant folding
    assert bns == (0 if fold or not has_bn else sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()))
    if not fold:
        assert net.report.params == sum(p.numel() for p in module.parameters())


@pytest.mark.usefixtures("one_torch_thread")
def test_dynamic_size_asks_for_input_and_imports_with_it():
    torch.manual_seed(0)
    model = exported(trained_looking(InceptionNet()), torch.randn(1, 3, 63, 63), True, dynamic_size=True)
    with pytest.raises(CnnDslError) as info:
        cnndsl.import_onnx(model)
    assert "dynamic size" in info.value.message and "--input" in info.value.hint
    net = cnndsl.parse(cnndsl.import_onnx(model, (3, 95, 95)).text)
    assert net.ir.input_shape == (3, 95, 95) and net.report.output == (10,)
