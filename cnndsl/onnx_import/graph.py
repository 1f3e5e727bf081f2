"""Pass (a): read an ONNX model into an `OnnxGraph`: its nodes, constants as numpy, every value's
shape from ONNX's own shape inference, and which values carry data (descend from the input).

Shape inference runs on a copy whose large initializers are typed graph inputs: the shapes are
the same and no weight is copied or serialised, so ResNet-152's 230 MB cost nothing here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CnnDslError, Source

SMALL_CONSTANT = 64  # elements: initializers this small stay in the copy, so shape inference can read their values
FOLDABLE = {"Slice", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Transpose", "Concat", "Gather", "Sqrt",
            "Div", "Mul", "Add", "Sub", "Neg", "Reciprocal"}
SHAPE_OPS = {"Shape", "Size"}  # their outputs describe data, they are not data


@dataclass(frozen=True, eq=False)
class OnnxGraph:
    """The model as the recognition pass reads it."""

    name: str
    path: str
    nodes: tuple[onnx.NodeProto, ...]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int | None, ...]]  # value -> dims, the batch first (None where symbolic)
    input: str
    output: str
    opset: int
    data: frozenset[str] = field(default_factory=frozenset)  # values that descend from the input

    @cached_property
    def producer(self) -> dict[str, int]:
        return {out: i for i, n in enumerate(self.nodes) for out in n.output if out}

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for value in n.input:
                if value:
                    out.setdefault(value, []).append(i)
        out.setdefault(self.output, []).append(-1)  # the graph output reads it
        return out

    def describe(self, index: int) -> str:
        """`node 'conv1' (Conv)` or `node #12 (Conv)` where the exporter left it unnamed."""
        node = self.nodes[index]
        return f"ONNX node {repr(node.name) if node.name else f'#{index}'} ({node.op_type})"

    def input_shapes(self, index: int) -> str:
        parts = []
        for value in self.nodes[index].input:
            if value in self.data:
                parts.append("x".join("?" if d is None else str(d) for d in self.shapes.get(value, ())) or "?")
        return ", ".join(parts) or "none"

    def error(self, index: int, lacks: str, hint: str | None = None) -> CnnDslError:
        """What cannot be expressed: the node, its op type, its input shapes and what the language lacks."""
        return CnnDslError(f"{self.describe(index)} with input {self.input_shapes(index)} cannot be expressed in "
                           f"cnndsl: {lacks}", hint=hint or "rewrite that part of the model with the layers "
                           "docs/import.md lists, or leave it out of the export", source=Source("", self.path))

    def shape(self, value: str) -> tuple[int, ...]:
        """A data value's dims after the batch; every one known (the input size is fixed)."""
        return tuple(self.shapes[value][1:])  # type: ignore[arg-type]

    def attrs(self, index: int) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in self.nodes[index].attribute}

    def const(self, value: str) -> np.ndarray | None:
        return self.constants.get(value) if value else None


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    path = os.fspath(model)
    try:
        return onnx.load(path), path
    except FileNotFoundError:
        raise CnnDslError(f"no ONNX file {path}", hint="check the path", source=Source("", path)) from None
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends: the file is not a model
        raise CnnDslError(f"{path} is not a readable ONNX model: {err}", hint="export the model again with "
                          "torch.onnx.export or tf2onnx", source=Source("", path)) from None


def read(model: onnx.ModelProto, path: str, input_shape: tuple[int, ...] | None = None) -> OnnxGraph:
    """The graph with constants folded and shapes inferred at `input_shape` (C, H, W), or at the
    model's own input size, which must then be fixed."""
    graph = model.graph
    source = Source("", path)
    initial = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initial]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CnnDslError(f"the model has {len(inputs)} input(s) and {len(graph.output)} output(s); a cnndsl "
                          "network reads one image and gives one output", source=source,
                          hint="export the model with one input and one output")
    given = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in given.type.tensor_type.shape.dim]
    if input_shape is not None:
        if len(input_shape) != len(dims) - 1:
            raise CnnDslError(f"--input {'x'.join(map(str, input_shape))} has {len(input_shape)} dimension(s) but "
                              f"the model's input {given.name} has {len(dims) - 1} after the batch", source=source,
                              hint="give CxHxW for an image model")
        fixed = [d for d in dims[1:] if d is not None and d > 0]
        if fixed and any(d is not None and d > 0 and d != want for d, want in zip(dims[1:], input_shape, strict=True)):
            shown = "x".join("?" if d is None or d < 1 else str(d) for d in dims[1:])
            everything = len(fixed) == len(dims) - 1
            raise CnnDslError(f"--input {'x'.join(map(str, input_shape))} contradicts the model, whose input "
                              f"'{given.name}' is fixed at {shown} after the batch", source=source,
                              hint="leave out --input, the size is fixed" if everything else
                              f"give an --input that keeps the sizes the model fixes ({shown})")
        dims = [dims[0] if dims else None, *input_shape]
    elif len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
        shown = "x".join("?" if d is None else str(d) for d in dims[1:])
        raise CnnDslError(f"the model's input {given.name} has a dynamic size ({shown} after the batch); cnndsl "
                          "computes shapes, parameters and fields at one input size", source=source,
                          hint="give the size: 'cnndsl import model.onnx --input 3x224x224'")

    constants = {t.name: tensor_array(t) for t in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    data = {given.name}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(node)
            continue
        if any(v in data for v in node.input) and node.op_type not in SHAPE_OPS:
            data.update(o for o in node.output if o)
            kept.append(node)
            continue
        if node.op_type in FOLDABLE and all(not v or v in constants for v in node.input):
            folded = _fold(node, constants)
            if folded is not None:
                constants[node.output[0]] = folded
                continue
        kept.append(node)  # shape arithmetic (Shape, Gather, Concat of sizes): read, not recognised

    shapes = _infer(model, kept, constants, given, dims, source)
    kept, replaced = _batch_reshapes(kept, shapes, constants, data)
    if replaced:  # `x.view(x.size(0), -1)`: its target shape is now a constant, so ONNX can size what follows
        shapes = _infer(model, kept, constants, given, dims, source)
    shapes[given.name] = tuple(dims)
    for value in data:
        if value not in shapes or None in shapes[value][1:]:
            index = next(i for i, n in enumerate(kept) if value in n.output)
            partial = OnnxGraph(graph.name, path, tuple(kept), constants, shapes, given.name, "", opset,
                                frozenset(data))
            raise partial.error(index, "ONNX shape inference cannot size its output at this input size, and cnndsl "
                                       "computes every shape", hint="export the model at a fixed input size, or "
                                       "give one with --input")
    output = graph.output[0].name
    return OnnxGraph(name=graph.name, path=path, nodes=tuple(kept), constants=constants, shapes=shapes,
                     input=given.name, output=output, opset=opset, data=frozenset(data))


def _infer(model, kept, constants, given, dims, source) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape by ONNX shape inference on a light copy of the graph, after folding (so a
    Resize's folded scales size its output): small constants are initializers it can read, big ones
    typed inputs (the same shapes, and no weight copied)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    lg = light.graph
    lg.node.extend(kept)
    batch = onnx.TypeProto()
    batch.CopyFrom(given.type)
    for d, value in zip(batch.tensor_type.shape.dim, dims, strict=True):
        if value is not None:
            d.Clear()
            d.dim_value = value
    lg.input.append(onnx.ValueInfoProto(name=given.name, type=batch))
    read_by = {v for node in kept for v in node.input}
    for name, value in constants.items():
        if name not in read_by:
            continue
        if value.size <= SMALL_CONSTANT:
            lg.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        else:
            lg.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                          list(value.shape)))
    lg.output.extend(model.graph.output)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as err:  # noqa: BLE001 - onnx raises its own InferenceError subclasses
        raise CnnDslError(f"ONNX shape inference fails on the model: {err}", source=source,
                          hint="check the model with onnx.checker.check_model") from None
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                      for d in info.type.tensor_type.shape.dim)
    return shapes


BATCH = -(2**40)  # the batch size in evaluated shape arithmetic: unknown, and unlike any real size


def _batch_reshapes(kept, shapes, constants, data):
    """Evaluate shape arithmetic (Shape, Gather, Unsqueeze, Concat, ...) with the batch as a marker;
    a Reshape target that comes out as [batch, ...] becomes the constant [0, ...] (0: keep that
    dimension), and the nodes that computed it go. Returns the nodes left and whether any went."""
    values: dict[str, np.ndarray] = {}
    for node in kept:
        if any(o in data for o in node.output):
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            dims = np.array([BATCH if d is None else d for d in shapes[node.input[0]]], np.int64)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values[node.output[0]] = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
        elif all(not v or v in values or v in constants for v in node.input):
            folded = _fold(node, {**constants, **values})
            if folded is not None:
                values[node.output[0]] = folded
    replaced, gone = False, set()
    consumers: dict[str, list] = {}
    for node in kept:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    for node in kept:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in values:
            continue
        target = values[node.input[1]]
        if target.ndim != 1 or not len(target) or target[0] != BATCH or np.any(target[1:] == BATCH) or \
                any(c.op_type != "Reshape" or c.input[1] != node.input[1] for c in consumers[node.input[1]]):
            continue
        constants[node.input[1]] = np.concatenate([[0], target[1:]]).astype(np.int64)
        gone.add(node.input[1])
        replaced = True
    if not replaced:
        return kept, False
    needed = {v for node in kept if not set(node.output) & gone for v in node.input}
    # drop the arithmetic that only fed the replaced targets (walking back, latest first)
    left = []
    for node in reversed(kept):
        if set(node.output) & gone or (not any(o in data for o in node.output) and not set(node.output) & needed):
            continue
        left.append(node)
        needed.update(node.input)
    return left[::-1], True


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer as numpy: a view of its raw little-endian bytes where it has them (numpy_helper
    copies each weight several times: 2 s of VGG-16's 550 MB), else numpy_helper's reading."""
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type) if tensor.data_type else None
    if tensor.HasField("raw_data") and dtype is not None and np.dtype(dtype).kind != "O" and \
            tensor.data_location != onnx.TensorProto.EXTERNAL:
        return np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    return np.asarray(value, dtype=np.float32 if attr.name.startswith("value_float") else np.int64)


def _fold(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """Evaluate a node of constants (an exporter's Unsqueeze of a weight, a Cast of a scalar)."""
    args = [constants[v] if v else None for v in node.input]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Identity":
        return args[0]
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes", list(args[1]) if len(args) > 1 and args[1] is not None else None)
        if op == "Squeeze":
            return np.squeeze(args[0], axis=tuple(axes) if axes is not None else None)
        out = args[0]
        for axis in sorted(a % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, axis)
        return out
    if op == "Reshape":
        target = [int(d) for d in args[1]]
        target = [args[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
        return args[0].reshape(target)
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Transpose":
        return np.transpose(args[0], attrs.get("perm"))
    if op == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    if op == "Slice" and len(args) >= 3:
        axes = [int(a) for a in args[3]] if len(args) > 3 and args[3] is not None else [0]
        if args[0].ndim != 1 or axes != [0] or (len(args) > 4 and args[4] is not None and int(args[4][0]) != 1):
            return None
        return args[0][int(args[1][0]):int(args[2][0])]
    if op == "Gather":
        return np.take(args[0], args[1], axis=attrs.get("axis", 0))
    unary = {"Sqrt": np.sqrt, "Neg": np.negative, "Reciprocal": np.reciprocal}
    if op in unary:
        return unary[op](args[0])
    binary = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Sub": np.subtract}
    if op in binary:
        return binary[op](args[0], args[1]).astype(np.result_type(args[0], args[1]))
    return None
