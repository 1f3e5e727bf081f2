"""Published figures (REFERENCE-FIGURES.md) and the sketch's promises (LANGUAGE-SKETCH.md), exactly.

Parameters are asserted to the unit, MACs within 0.5% of torchvision's "GFLOPS" column, receptive
fields, jumps and centre offsets to the pixel. None of this needs torch; test_figures_torch.py
re-derives the figures independently with hand-built torch modules (parameter counts, MACs by
forward hooks, receptive fields by gradients). The sketch's programs are tests/fixtures/sketch_*.cnn.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnndsl
from cnndsl import ir
from cnndsl.analysis import same_padding

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"


def report(name: str):
    return cnndsl.load(EXAMPLES / f"{name}.cnn").analyze()


def analyze(text: str, input_shape=None):
    return cnndsl.parse(text).analyze(input_shape)


# ------------------------------------------------------------------ parameters and MACs

PARAMS = {
    "lenet5": 61_706,
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet101": 44_549_160,
    "mobilenet_v1": 4_231_976,
    "mobilenet_v1_sym": 4_231_976,
    "densenet121": 7_978_856,  # torchvision; written with `in_c`
    "mobilenet_v2": 3_504_872,  # torchvision; `in_c`, `divisible`, `x min(1, t-1)`
}

GMACS = {"resnet18": 1.814, "vgg16": 15.470, "alexnet": 0.714, "resnet34": 3.664, "resnet101": 7.801,
         "densenet121": 2.83, "mobilenet_v2": 0.30}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_of_the_examples(name):
    r = report(name)
    assert r.params == PARAMS[name]
    assert r.trainable_params == PARAMS[name]
    assert r.output == ((10,) if name == "lenet5" else (1000,))


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_of_the_examples(name):
    macs = report(name).macs
    assert abs(macs / 1e9 - GMACS[name]) <= 0.005 * GMACS[name], f"{name}: {macs:,}"


def test_macs_count_conv_and_fc_only():
    r = report("resnet18")
    assert r.macs == sum(row.macs for row in r.layers if row.op in ("conv", "fc"))
    assert all(row.macs == 0 for row in r.layers if row.op not in ("conv", "fc"))


VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
VGG_FIGURES = {  # parameters, parameters with bn, GMACs
    "vgg11": (132_863_336, 132_868_840, 7.609),
    "vgg13": (133_047_848, 133_053_736, 11.308),
    "vgg16": (138_357_544, 138_365_992, 15.470),
}


def vgg_program(name: str, bn: bool) -> str:
    lines = [f"network {name}{'_bn' if bn else ''}", "input 3x224x224"]
    for item in VGG_CONFIGS[name]:
        lines.append("pool max 2/2" if item == "M" else f"conv 3x3 pad1 -> {item}" + ("; bn" if bn else "") + "; relu")
    lines += ["fc 4096; relu; dropout .5", "fc 4096; relu; dropout", "fc 1000"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(VGG_CONFIGS))
@pytest.mark.parametrize("bn", [False, True])
def test_vgg_family_inline(name, bn):
    params, params_bn, gmacs = VGG_FIGURES[name]
    r = analyze(vgg_program(name, bn))
    assert r.params == (params_bn if bn else params)
    assert abs(r.macs / 1e9 - gmacs) <= 0.005 * gmacs
    assert r.output == (1000,)


def test_vgg16_example_matches_the_inline_program():
    a, b = report("vgg16"), analyze(vgg_program("vgg16", False))
    assert (a.params, a.macs) == (b.params, b.macs)
    assert [row.rf for row in a.layers if row.op in ("conv", "pool")] == \
        [row.rf for row in b.layers if row.op in ("conv", "pool")]


# ------------------------------------------------------------------ receptive fields


def test_lenet5_receptive_fields():
    r = report("lenet5")
    convs = [row for row in r.layers if row.op == "conv"]
    pools = [row for row in r.layers if row.op == "pool"]
    assert (convs[1].rf, convs[1].jump) == ((14, 14), (2, 2))
    assert (pools[1].rf, pools[1].jump) == ((16, 16), (4, 4))


VGG16_RF = [  # (layer, rf, jump) from REFERENCE-FIGURES.md
    ("conv1_1", 3, 1), ("conv1_2", 5, 1), ("pool1", 6, 2),
    ("conv2_1", 10, 2), ("conv2_2", 14, 2), ("pool2", 16, 4),
    ("conv3_1", 24, 4), ("conv3_2", 32, 4), ("conv3_3", 40, 4), ("pool3", 44, 8),
    ("conv4_1", 60, 8), ("conv4_2", 76, 8), ("conv4_3", 92, 8), ("pool4", 100, 16),
    ("conv5_1", 132, 16), ("conv5_2", 164, 16), ("conv5_3", 196, 16), ("pool5", 212, 32),
]


def test_vgg16_receptive_field_per_layer():
    rows = [row for row in report("vgg16").layers if row.op in ("conv", "pool")]
    assert len(rows) == len(VGG16_RF)
    for row, (layer, rf, jump) in zip(rows, VGG16_RF, strict=True):
        assert (layer, row.rf, row.jump) == (layer, (rf, rf), (jump, jump)), row.name
        assert row.op == ("pool" if layer.startswith("pool") else "conv")


def test_alexnet_last_pool():
    pools = [row for row in report("alexnet").layers if row.op == "pool"]
    assert (pools[-1].rf, pools[-1].jump, pools[-1].output) == ((195, 195), (32, 32), (256, 6, 6))


def _before_global_pool(r):
    rows = list(r.layers)
    index = next(i for i, row in enumerate(rows) if row.op == "pool" and row.output[1:] == (1, 1))
    return rows[index - 1]


@pytest.mark.parametrize(("name", "rf"), [("resnet18", 435), ("resnet34", 899), ("resnet101", 971)])
def test_resnet_last_stage(name, rf):
    last = _before_global_pool(report(name))
    assert (last.rf, last.jump) == ((rf, rf), (32, 32))
    assert last.output[1:] == (7, 7)


@pytest.mark.parametrize(("name", "offset", "padding"), [("mobilenet_v1", 31, 126), ("mobilenet_v1_sym", 0, 157)])
def test_mobilenet_last_pointwise_conv(name, offset, padding):
    last = [row for row in report(name).layers if row.op == "conv"][-1]
    assert last.statement.startswith("conv 1x1")
    assert (last.rf, last.jump, last.offset) == ((315, 315), (32, 32), (offset, offset))
    # the padding the whole stack implies: the first window starts (rf - 1) / 2 before its centre
    assert (last.rf[0] - 1) / 2 - last.offset[0] == padding


def test_global_pool_and_fc_see_their_whole_input():
    r = report("resnet18")
    pool = next(row for row in r.layers if row.op == "pool" and row.output[1:] == (1, 1))
    assert pool.rf == (435 + 6 * 32, 435 + 6 * 32)
    assert r.rf == pool.rf


# ------------------------------------------------------------------ pad same (TensorFlow's rule)

SAME_CASES = [  # kernel, stride, input -> output, (top, bottom)
    (3, 2, 7, 4, (1, 1)),
    (3, 2, 8, 4, (0, 1)),
    (4, 2, 200, 100, (1, 1)),
    (4, 2, 201, 101, (1, 2)),
]


@pytest.mark.parametrize(("k", "s", "size", "out", "pads"), SAME_CASES)
def test_same_padding_function(k, s, size, out, pads):
    assert same_padding(size, k, s) == pads
    assert -(-size // s) == out


@pytest.mark.parametrize(("k", "s", "size", "out", "pads"), SAME_CASES)
@pytest.mark.parametrize("op", ["conv", "pool"])
def test_same_padding_in_programs(k, s, size, out, pads, op):
    stmt = f"conv {k}x{k}/{s} pad same -> 2" if op == "conv" else f"pool avg {k}x{k}/{s} pad same"
    net = cnndsl.parse(f"input 1x{size}x{size + 1}\n{stmt}\n")
    r = net.analyze()
    node = next(n for n in net.ir.walk() if isinstance(n, (ir.Conv, ir.Pool)))
    shape = net.shapes.of(node)
    wide = same_padding(size + 1, k, s)
    assert r.output[1:] == (out, -(-(size + 1) // s))
    assert shape.pads == (*pads, *wide)
    assert not r.warnings  # pad same never leaves a real row unseen


def test_same_padding_dilated_and_stride_one():
    assert same_padding(10, 3, 1) == (1, 1)
    assert same_padding(10, 3, 1, dilation=2) == (2, 2)
    assert same_padding(10, 4, 1) == (1, 2)
    assert same_padding(5, 1, 2) == (0, 0)


# ------------------------------------------------------------------ small figures

def test_conv_variants_parameter_counts():
    cases = {
        "conv 3x3 -> 64": (3 * 9 + 1) * 64,
        "conv 3x3 pad1 -> 64 nobias": 3 * 9 * 64,
        "conv 1x7 pad 0x3 -> 16": (3 * 7 + 1) * 16,
        "conv 3x3 dil2 pad2 -> 8": (3 * 9 + 1) * 8,
        "conv 3x3 pad1 depthwise": 3 * 9 + 3,
        "conv 3x3 pad1 depthwise -> 2x nobias": 6 * 9,
        "conv 1x1 -> 12; conv 3x3 groups4 -> 8": (3 + 1) * 12 + (3 * 9 + 1) * 8,
        "bn": 6,
        "fc 10": (3 * 8 * 8 + 1) * 10,
        "flatten; fc 10 nobias": 3 * 8 * 8 * 10,
    }
    for stmt, params in cases.items():
        assert analyze(f"input 3x8x8\n{stmt}\n").params == params, stmt


def test_fc_on_a_feature_map_is_the_flattened_conv():
    a = analyze("input 16x5x5\nfc 120\n")
    b = analyze("input 16x5x5\nflatten\nfc 120\n")
    c = analyze("input 16x5x5\nconv 5x5 -> 120\nflatten\n")
    assert a.params == b.params == c.params == (16 * 25 + 1) * 120
    assert a.macs == b.macs == c.macs
    assert a.output == b.output == c.output == (120,)


def test_residual_projects_only_where_the_shape_changes():
    r18 = report("resnet18")
    shortcut_convs = [row for row in r18.layers if ".shortcut" in row.name and row.op == "conv"]
    assert len(shortcut_convs) == 3  # basic(128, s=2), basic(256, s=2), basic(512, s=2)
    r = analyze("input 8x8x8\nresidual { conv 3x3 pad1 -> 8 } shortcut always { conv 1x1 -> 8 }\n")
    assert r.params == (8 * 9 + 1) * 8 + (8 + 1) * 8
    r = analyze("input 8x8x8\nresidual { conv 3x3 pad1 -> 8 } shortcut { conv 1x1 -> 8 }\n")
    assert r.params == (8 * 9 + 1) * 8


def test_inception_branches():
    r = report("inception")
    concats = [row for row in r.layers if row.op == "concat"]
    assert [row.output for row in concats] == [(256, 35, 35), (288, 35, 35), (288, 35, 35)]
    assert r.output == (1000,)


def test_input_override_changes_figures_not_parameters_of_convs():
    net = cnndsl.load(EXAMPLES / "resnet18.cnn")
    small = net.analyze((3, 64, 64))
    assert small.params == 11_689_512  # global pool: the fc sees 512 whatever the size
    assert small.output == (1000,)
    assert small.macs < net.analyze().macs


# ------------------------------------------------------------------ the sketch's programs
#
# tests/fixtures/sketch_*.cnn are the programs of LANGUAGE-SKETCH.md sections 1-5, copied verbatim
# under a header: promises to users, held here without reading anything outside the repository.
# (Section 2 is a table of statements, not a program: LAYER_TABLE below.)

SKETCH_PROGRAMS = ("sketch_lenet5", "sketch_resnet18", "sketch_inception_a_block", "sketch_expectations",
                   "sketch_data_and_training")


def sketch(name: str) -> str:
    """The program in tests/fixtures/<name>.cnn without its header: the sketch's text exactly."""
    header, program = (FIXTURES / f"{name}.cnn").read_text(encoding="utf-8").split("\n\n", 1)
    assert all(line.startswith("## ") for line in header.splitlines()), name
    return program


def test_sketch_fixtures_say_where_they_come_from():
    paths = sorted(FIXTURES.glob("sketch_*.cnn"))
    assert {p.stem for p in paths} >= set(SKETCH_PROGRAMS)
    for path in paths:
        header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert re.match(r"## Copied verbatim from LANGUAGE-SKETCH\.md section \d+, ", header), path.name
        assert "A promise to users" in header, path.name


def test_sketch_networks_analyze_to_the_stated_figures():
    networks = {"lenet5": sketch("sketch_lenet5"), "resnet18": sketch("sketch_resnet18")}
    lenet = cnndsl.parse(networks["lenet5"]).analyze()
    assert lenet.params == 61_706
    conv2 = [row for row in lenet.layers if row.op == "conv"][1]
    pool2 = [row for row in lenet.layers if row.op == "pool"][1]
    assert (conv2.rf, conv2.jump, pool2.rf, pool2.jump) == ((14, 14), (2, 2), (16, 16), (4, 4))
    resnet = cnndsl.parse(networks["resnet18"]).analyze()
    assert resnet.params == 11_689_512
    blocks = [n for n in cnndsl.parse(networks["resnet18"]).ir.walk() if isinstance(n, ir.Seq) and n.block]
    projections = [b.args for b in blocks if any(isinstance(c, ir.Residual) for c in b.items)
                   and dict(b.args)["s"] == 2]
    assert len(projections) == 3
    # and the copies in examples/ are verbatim
    assert networks["lenet5"].strip() == (EXAMPLES / "lenet5.cnn").read_text().strip()
    assert networks["resnet18"].strip() == (EXAMPLES / "resnet18.cnn").read_text().strip()


def test_sketch_block_inception_a():
    block = sketch("sketch_inception_a_block")
    text = block + "\ninput 192x35x35\ninception_a(32)\n"
    r = analyze(text)
    assert r.output == (64 + 64 + 96 + 32, 35, 35)
    assert r.params == (192 + 1) * 64 + (192 + 1) * 48 + (48 * 25 + 1) * 64 + (192 + 1) * 64 + \
        (64 * 9 + 1) * 96 + (96 * 9 + 1) * 96 + (192 + 1) * 32


def test_sketch_expectations():
    block = sketch("sketch_expectations")
    # a small 224 network that keeps all three promises
    ok = "input 3x224x224\nconv 7x7/2 pad3 -> 8; relu\npool max 3x3/2 pad1\nconv 3x3/2 pad1 -> 16\n" \
         "conv 3x3/2 pad1 -> 16\nconv 3x3/2 pad1 -> 16\nconv 3x3 pad1 -> 16\npool avg global\nfc 10\n"
    r = analyze(ok + block)
    assert r.output == (10,) and r.params < 5_000_000 and min(r.rf) >= 224
    # LeNet breaks `expect rf >= 224`: the check fails pointing at that line
    lenet = (EXAMPLES / "lenet5.cnn").read_text()
    with pytest.raises(cnndsl.CnnDslError) as info:
        analyze(lenet + block)
    line = lenet.count("\n") + 1 + block.splitlines().index(next(x for x in block.splitlines() if "rf" in x))
    assert info.value.line == line
    assert "rf" in info.value.message


def test_sketch_sections():
    block = sketch("sketch_data_and_training")
    net = cnndsl.parse((EXAMPLES / "lenet5.cnn").read_text() + block)
    pre, aug, train = net.ir.preprocess, net.ir.augment, net.ir.train
    assert pre.scale == pytest.approx(1 / 255) and pre.standardize and pre.mean is None
    assert aug.flip == ("horizontal",) and aug.rotate == 15 and aug.zoom == (0.9, 1.1)
    assert (aug.skew, aug.crop, aug.crop_pad, aug.brightness, aug.contrast) == (0.1, 32, 4, 0.2, 0.2)
    assert (train.optimizer, train.lr, train.momentum, train.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
    assert (train.batch, train.epochs, train.schedule) == (64, 10, "cosine")
    assert net.analyze().params == 61_706
    # the alternative spelled in the comment
    alt = re.search(r"# or: (standardize mean .*)", block).group(1)
    net = cnndsl.parse((EXAMPLES / "lenet5.cnn").read_text() + "preprocess {\n  " + alt + "\n}\n")
    assert net.ir.preprocess.mean == (0.49, 0.48, 0.45)
    assert net.ir.preprocess.std == (0.25, 0.24, 0.26)


LAYER_TABLE = [  # the statements of the sketch's section 2 (its table of layers) and what they give on 16x8x8
    ("conv 3x3 -> 64", (64, 6, 6)),
    ("conv 3x3/2 pad1 -> 64", (64, 4, 4)),
    ("conv 3x3/2x1 pad1 -> 64", (64, 4, 8)),
    ("conv 3x3 dil2 pad2 -> 64", (64, 8, 8)),
    ("conv 3x3 groups4 -> 64", (64, 6, 6)),
    ("conv 3x3 pad1 depthwise", (16, 8, 8)),
    ("conv 3x3 pad1 depthwise -> 2x", (32, 8, 8)),
    ("conv 1x1 -> 16", (16, 8, 8)),
    ("conv 3 -> 4", (4, 6, 6)),
    ("conv 1x7 -> 4", (4, 8, 2)),
    ("conv 3x3 pad 1 -> 4", (4, 8, 8)),
    ("conv 3x3 pad 1x0 -> 4", (4, 8, 6)),
    ("conv 3x3 pad same -> 4", (4, 8, 8)),
    ("conv 3x3 pad valid -> 4", (4, 6, 6)),
    ("conv 3x3 pad1 -> 64 nobias", (64, 8, 8)),
    ("pool max 2/2", (16, 4, 4)),
    ("pool avg 3x3/2 pad1", (16, 4, 4)),
    ("pool max 2", (16, 4, 4)),
    ("pool max global", (16, 1, 1)),
    ("pool avg global", (16, 1, 1)),
    ("fc 120", (120,)),
    ("flatten", (1024,)),
    ("dropout .5", (16, 8, 8)),
    ("bn", (16, 8, 8)),
    ("bn eps 1e-3 momentum .01", (16, 8, 8)),
    ("relu; relu6; leaky .1; elu; sigmoid; tanh; gelu; silu; hardswish; softmax", (16, 8, 8)),
    ("conv 1x1 -> 16; concat { branch {} branch { bn; relu; conv 3x3 pad1 -> 8 } }", (24, 8, 8)),
    ("add { branch { conv 3x3 pad1 -> 16 } branch { conv 1x1 -> 16 } }", (16, 8, 8)),
    ("residual { conv 3x3 pad1 -> 16 } shortcut always { conv 1x1 -> 16 }", (16, 8, 8)),
]


@pytest.mark.parametrize(("stmt", "shape"), LAYER_TABLE)
def test_sketch_layer_table(stmt, shape):
    assert analyze(f"input 16x8x8\n{stmt}\n").output == shape


def test_sketch_arithmetic():
    text = "block b(c, n=3, s=1) {\n  conv 3x3/s pad1 -> 4*c; relu x (n-1)\n}\ninput 3x16x16\nb(2, s=2)\n"
    net = cnndsl.parse(text)
    assert net.analyze().output == (8, 8, 8)
    assert sum(isinstance(n, ir.Activation) for n in net.ir.walk()) == 2


@pytest.mark.parametrize(("size", "value"), [("2.01K", 2010), ("1.07G", 1_070_000_000), ("4.35M", 4_350_000),
                                             (".5K", 500), ("5M", 5_000_000)])
def test_size_suffixes_are_exact(size, value):
    # fc on a vector of 200: (200 + 1) * 10 = 2010 parameters
    assert analyze("input 200\nfc 10\nexpect params == 2.01K\n").params == 2010
    net = cnndsl.parse(f"input 4\nfc {size}\n")
    assert net.ir.body.items[0].out_features == value
    assert analyze(f"input 1\nfc 1\nexpect params < {size}\n").params == 2


def test_whole_numbers_written_with_decimals():
    # width multipliers: 0.7*10 is 7.000000000000001 in floating point, and still 7 channels
    assert analyze("input 3x8x8\nconv 1x1 -> 0.7*10\n").output == (7, 8, 8)
    assert analyze("block b(c, w=0.1) { conv 1x1 -> w*c }\ninput 3x8x8\nb(30)\n").output == (3, 8, 8)
    assert analyze("block b(c, w=0.75) { conv 1x1 -> w*c }\ninput 3x8x8\nb(64)\n").output == (48, 8, 8)
    with pytest.raises(cnndsl.CnnDslError, match="whole number"):
        analyze("block b(c, w=0.35) { conv 1x1 -> w*c }\ninput 3x8x8\nb(32)\n")


def test_shortcut_may_start_the_next_line():
    same_line = (EXAMPLES / "resnet18.cnn").read_text()
    next_line = same_line.replace("  } shortcut {", "  }  # the projection, on its own line\n  shortcut {")
    assert next_line != same_line
    a, b = cnndsl.parse(same_line).analyze(), cnndsl.parse(next_line).analyze()
    assert a.params == b.params == 11_689_512
    assert [row.name for row in a.layers] == [row.name for row in b.layers]
