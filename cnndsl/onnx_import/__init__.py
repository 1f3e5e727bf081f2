"""`cnndsl import`: an ONNX model -> a cnndsl program and its weights.

    result = cnndsl.import_onnx("model.onnx", input_shape=(3, 224, 224))
    print(result.text)              # the program
    result.weights                  # {cnndsl tensor name: numpy array}
    result.notes                    # what was dropped or rewritten

A pipeline of small pure passes (docs/import.md):
(a) `graph.read`: the ONNX graph, constants as numpy, shapes by ONNX shape inference;
(b) `recognise`: layer-level nodes, one per statement;
(c) `structure.decompose`: the series-parallel tree (residual, concat, add, mul);
(d) `fold.fold`: repeated subtrees as `block` definitions, runs of calls as `x N`;
(e) `printer.program`: the text;
(f) `tensors.name_weights`: the weights under cnndsl's names, by parsing the text with cnndsl.
The result is checked: the parsed program's output shape must be the ONNX graph's.
"""

from __future__ import annotations

import keyword
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CnnDslError, Source

if TYPE_CHECKING:
    import numpy as np
    import onnx


@dataclass(frozen=True)
class Imported:
    """What `import_onnx` returns: the program, its weights by cnndsl tensor name, and notes on
    what was dropped or rewritten."""

    text: str
    weights: dict[str, np.ndarray]
    notes: tuple[str, ...] = ()


def network_name(graph_name: str, path: str) -> str:
    """A valid network name: the graph's, else the file's stem, else `imported`."""
    from ..kinds import STATEMENTS

    for candidate in (graph_name, os.path.splitext(os.path.basename(path))[0]):
        name = re.sub(r"\W", "_", candidate or "").strip("_")
        if name and not name[0].isdigit() and name not in STATEMENTS and not keyword.iskeyword(name) and \
                name not in ("main_graph", "torch_jit", "model"):
            return name
    return "imported"


def import_onnx(model: str | os.PathLike | onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
                name: str | None = None) -> Imported:
    """Import an ONNX model (a path or a ModelProto) as a cnndsl program with its weights.

    `input_shape` (C, H, W) fixes the input size of a model whose size is dynamic. Raises
    CnnDslError naming the ONNX node for anything the language cannot express."""
    try:
        import onnx  # noqa: F401 - the extra's presence, said as a user error
    except ImportError:
        raise CnnDslError("importing ONNX needs the onnx package", hint="pip install 'cnndsl[onnx]'") from None
    from ..api import parse
    from .fold import fold
    from .graph import load_model, read
    from .layers import AxisAdaptive, Crop, Join, leaves
    from .printer import program
    from .recognise import recognise
    from .structure import decompose

    proto, path = load_model(model)
    graph = read(proto, path, input_shape)
    layers, preprocess, output, notes = recognise(graph)
    tree = decompose(layers, output, graph)
    for layer in leaves(tree):
        if isinstance(layer.node, (Join, Crop, AxisAdaptive)):
            raise graph.error(layer.origin, "a step the language has only inside a construct (a join, a crop before "
                                            "a concat, one axis of an adaptive pool) stands on its own here")
    if not tree:
        raise CnnDslError("the model computes nothing but the identity (every node was dropped), and a cnndsl "
                          "network has at least one layer", notes=notes, source=Source("", path),
                          hint="export the model with its layers")
    net_name = name or network_name(graph.name, path)
    shape, origin = graph.shape(graph.input), os.path.basename(path)
    blocks, body = fold(tree)
    try:
        text, weights = _checked(program(net_name, shape, preprocess, blocks, body, origin, notes), body, preprocess,
                                 graph, parse)
    except _FoldingFailed as failure:  # a folding bug must not cost the user the import: write it out
        notes = [*notes, f"the repeated blocks could not be folded ({failure}); the program is written out in full"]
        try:
            text, weights = _checked(program(net_name, shape, preprocess, (), tree, origin, notes), tree,
                                     preprocess, graph, parse)
        except _FoldingFailed as unfolded:  # not the folding, then: the program itself does not check
            size = "x".join(map(str, shape))
            if input_shape is not None:
                raise CnnDslError(f"the model does not work at --input {size}: {unfolded}", source=Source("", path),
                                  hint="give a larger --input (the size the model was trained at, for one)") from None
            raise CnnDslError(f"the imported program does not check at the model's input {size}: {unfolded}",
                              source=Source("", path),
                              hint="this is a gap in cnndsl's import: please report it with the model") from None
    return Imported(text, weights, tuple(notes))


class _FoldingFailed(Exception):
    """The text printed from the graph does not check; the message says where, without a file name."""


def _checked(text: str, body, preprocess, graph, parse) -> tuple[str, dict]:
    """The text, parsed back by cnndsl and checked against the graph, and the weights it names."""
    from .tensors import name_weights

    try:
        net = parse(text, "imported.cnn")
        weights = name_weights(net, body, preprocess)
    except CnnDslError as err:
        where = f"line {err.line} of the program, `{err.source.line_text(err.line).strip()}`: " \
            if err.line and err.source else ""
        raise _FoldingFailed(f"{where}{err.message}") from None
    except RuntimeError as err:
        raise _FoldingFailed(str(err).splitlines()[0]) from None
    expected = graph.shape(graph.output)
    if tuple(net.report.output) != tuple(expected):
        raise CnnDslError(f"the imported program gives {'x'.join(map(str, net.report.output))} where the model "
                          f"gives {'x'.join(map(str, expected))}", source=Source("", graph.path),
                          hint="this is a gap in cnndsl's import: please report it with the model")
    return text, weights


__all__ = ["Imported", "import_onnx", "network_name"]
