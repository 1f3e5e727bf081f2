"""Every layer kind has every rule and every backend's emitter; the IR printer writes statements
that parse back to the same nodes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from extras import require

import cnndsl
from cnndsl import ir
from cnndsl.analysis.shapes import active
from cnndsl.backends import numpy_codegen, onnx_builder, torch_codegen
from cnndsl.kinds import ACTIVATIONS, STATEMENTS, Node
from cnndsl.runtime import kernels, layers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BACKENDS = {"torch": torch_codegen.TorchGenerator, "onnx": onnx_builder._Builder, "numpy": numpy_codegen._Emitter}
RULES = ("infer", "field", "text")


def concrete_kinds(base: type = ir.Node) -> list[type]:
    """The IR's node classes, found as subclasses of its base class (not from any registry)."""
    out = []
    for cls in base.__subclasses__():
        if not cls.__name__.startswith("_") and cls.__dict__.get("__doc__") and cls.key:
            out.append(cls)
        out.extend(concrete_kinds(cls))
    return out


def test_the_kinds_are_found():
    names = {cls.__name__ for cls in concrete_kinds()}
    assert {"Conv", "Pool", "GlobalPool", "Linear", "Flatten", "Dropout", "BatchNorm", "Activation", "Seq",
            "Residual", "Concat", "Add"} <= names


@pytest.mark.parametrize("kind", concrete_kinds(), ids=lambda cls: cls.__name__)
def test_every_kind_has_its_rules_and_an_emitter_per_backend(kind):
    missing = [rule for rule in RULES if getattr(kind, rule) is getattr(Node, rule)]
    assert not missing, f"kind {kind.__name__} has no {', '.join(missing)} rule"
    if kind.statement is not None:
        assert kind.build.__func__ is not Node.build.__func__, f"kind {kind.__name__} has no build rule"
        assert STATEMENTS[kind.statement] is kind
    for backend, cls in BACKENDS.items():
        assert hasattr(cls, f"{kind.key}_{backend}"), \
            f"kind {kind.__name__}: the {backend} backend has no emitter `{kind.key}_{backend}`"


@pytest.mark.parametrize("fn", list(ACTIVATIONS.values()), ids=lambda fn: fn.name)
def test_every_activation_has_a_kernel_and_a_layer(fn):
    assert callable(getattr(kernels, f"{fn.kernel}_forward", None)), f"{fn.name}: no kernels.{fn.kernel}_forward"
    assert callable(getattr(kernels, f"{fn.kernel}_backward", None)), f"{fn.name}: no kernels.{fn.kernel}_backward"
    assert layers.ACTIVATION_LAYERS[fn.numpy].function is fn
    assert fn.torch.startswith("nn.")


def test_every_activation_is_a_torch_module():
    torch = require("torch")
    for fn in ACTIVATIONS.values():
        assert issubclass(getattr(torch.nn, fn.torch[len("nn."):]), torch.nn.Module), fn.name


def _same_node(a: ir.Node, b: ir.Node) -> bool:
    skip = {"name", "span", "calls"}
    return type(a) is type(b) and all(_same_value(getattr(a, f.name), getattr(b, f.name))
                                      for f in dataclasses.fields(a) if f.name not in skip)


def _same_value(a, b) -> bool:
    # an evaluated 0.2*6/16 is 0.07500000000000001: printed to twelve digits, it reads back as 0.075
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-11)
    return a == b


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.cnn")), ids=lambda p: p.stem)
def test_printed_statements_parse_back_to_the_same_node(path):
    net = cnndsl.load(path)
    for node in active(net.ir.body, net.shapes):
        if node.children() or isinstance(node, ir.Seq):
            continue
        shape = net.shapes.of(node).input
        statement = node.text()
        if isinstance(node, ir.DropPath):  # it may only end a residual body
            statement = f"residual {{ {statement} }}"
        text = f"network printed\ninput {'x'.join(map(str, shape))}\n{statement}\n"
        again = cnndsl.parse(text).ir.body.items[0]
        if isinstance(node, ir.DropPath):
            again = again.body.items[0]
        assert _same_node(node, again), f"{node.name}: {node.text()!r} parses to {again}"


def test_printer_writes_evaluated_statements():
    net = cnndsl.load(EXAMPLES / "resnet18.cnn")
    texts = {node.name: node.text() for node in net.ir.walk()}
    assert texts["basic3.conv1"] == "conv 3x3/2 pad1 -> 128 nobias"  # written `conv 3x3/s pad1 -> c nobias`
    assert texts["basic3"] == "basic(c=128, s=2)"
    assert texts["pool1"] == "pool max 3x3/2 pad1"
    assert texts["pool2"] == "pool avg global"
    assert texts["fc1"] == "fc 1000"
    text = ("network t\ninput 8x16x16\nconv 3x3/2 pad same groups2 -> 8; leaky .2; bn eps 1e-3\n"
            "conv 1x7 pad 0x3 dil2 depthwise -> 2x nobias; dropout .25; elu")
    assert [n.text() for n in cnndsl.parse(text).ir.leaves()] == [
        "conv 3x3/2 pad same groups2 -> 8", "leaky 0.2", "bn eps 0.001",
        "conv 1x7 pad 0x3 dil2 depthwise -> 2x nobias", "dropout 0.25", "elu"]
