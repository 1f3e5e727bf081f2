"""IR -> ONNX, built with `onnx.helper` straight from the IR: no torch, no tracing.

    model = onnx_builder.build(net)                  # seeded init weights (`resolve_weights(net, None, 0)`)
    model = onnx_builder.build(net, "w.safetensors") # or a {name: array} dict; checked by name and shape
    onnx_builder.save(model, "net.onnx")             # external data when the weights pass 2 GB

The graph reads one input `input` (batch x C x H x W, batch dynamic) and writes one output `output`.
Initializers carry the names of `net.tensor_specs()` (the PyTorch `state_dict()` keys), in the same
order and layout, so a model's weights can be read back by name (`read_weights`), except BN's int64
`num_batches_tracked`: no node reads it (onnxruntime warned once per BN about an unused
initializer), so it is left out and every weight reader recreates it as 0; helper constants are
`Constant` nodes, never initializers. Every ONNX node is named
`<IR node name>@line<N>` after the source line of its statement and carries
`<file>:<line>: <statement>` (plus the block calls that produced it) as its `doc_string`.

One emitter per IR node kind turns the node into ONNX nodes; figures that depend on the input size
(pads of `pad same`, channels of a depthwise conv, whether a residual projects) come from
`net.shapes`, never recomputed here. Every intermediate value gets a `value_info` with the analysed
shape, so a viewer shows shapes and a checker can compare them with ONNX's own shape inference.

Pools never use ONNX's `ceil_mode`: its output size does not follow PyTorch's rule that a window
may not start in the trailing padding (ONNX shape inference and onnxruntime disagree on it). The
shape pass already knows the output size, so a ceil-mode pool is emitted as a floor-mode pool whose
end padding is extended just enough to produce it. For max pool that extension is ordinary
padding (ignored by the max). For avg pool the windows that reach into it must divide by the part
of the window inside input + padding (PyTorch), so the real padding is applied as zeros by a `Pad`
node and the extension as `AveragePool` padding with `count_include_pad=0`.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnndsl import ir
from cnndsl.kinds import emitter
from cnndsl.kinds.base import adaptive_windows
from cnndsl.weights import resolve_weights

DEFAULT_OPSET = 17  # widely deployed (onnxruntime >= 1.13, TensorRT 8.6); gelu is the erf formula below 20
MIN_OPSET = 17
INPUT = "input"
OUTPUT = "output"
BATCH = "batch"
# Serialized protobuf messages cannot exceed 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
EXTERNAL_MIN_TENSOR_BYTES = 1024  # smaller tensors stay inside the .onnx file
_ALIGN = 4096


class _Names:
    """Unique names for ONNX values and nodes: the first use of a base name keeps it, later ones get `_2`, `_3`."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self._used: set[str] = set(reserved)

    def reserve(self, name: str) -> None:
        if name in self._used:
            raise ValueError(f"name {name!r} is already taken")
        self._used.add(name)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name


class _Recipe:
    """The small graph writer an activation's ONNX recipe is written against (`cnndsl.kinds.ACTIVATIONS`):
    `g("Op", *inputs, **attributes)` appends a node of the shape of the activation's output and
    returns its value; `g.const(v)` is a scalar constant; `g.opset` the target opset."""

    def __init__(self, builder: _Builder, node: ir.Node, shape: tuple[int, ...]):
        self.builder, self.node, self.shape, self.opset = builder, node, shape, builder.opset
        self.last: onnx.NodeProto | None = None

    def __call__(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = self.builder.op(self.node, op_type, list(inputs), self.shape, part=op_type.lower(), **attrs)
        self.last = self.builder.nodes[-1]
        return out

    def const(self, value: float) -> str:
        return self.builder.constant(value)

    def result(self, value: str) -> str:
        """The recipe's result takes the node's own names (`relu1`, `relu1@line4`), as every other
        kind's single ONNX node does."""
        if self.last is None or self.last.output[0] != value:
            return value
        builder, node = self.builder, self.node
        renamed = builder.names.fresh(node.name)
        self.last.output[0] = renamed
        self.last.name = builder.names.fresh(f"{node.name}@line{node.span.line}")
        builder.value_shapes[renamed] = builder.value_shapes.pop(value)
        return renamed


class _Builder:
    def __init__(self, net, weights: dict[str, np.ndarray], opset: int):
        self.net = net
        self.shapes = net.shapes
        self.weights = weights
        self.opset = opset
        self.names = _Names((INPUT, OUTPUT))
        self.nodes: list[onnx.NodeProto] = []
        self.value_shapes: dict[str, tuple[int | str, ...]] = {}  # value -> its dims, BATCH first where batched
        self._constants: dict[tuple, str] = {}
        for spec in net.tensor_specs():
            self.names.reserve(spec.name)

    # -- plumbing -------------------------------------------------------------------------------------

    def _where(self, node: ir.Node) -> str:
        source = self.net.source
        lines = [f"{source.path}:{node.span.line}: {source.statement(node.span)}"]
        for call in reversed(node.calls):
            lines.append(f"  in the block call at {source.path}:{call.line}: {source.statement(call)}")
        return "\n".join(lines)

    def op(self, src: ir.Node | None, op_type: str, inputs: list[str], shape: tuple[int, ...], *,
           part: str | None = None, batched: bool = True, **attrs: Any) -> str:
        """Append one ONNX node for IR node `src`; return the name of its (single) output value, whose
        shape is `shape` after the batch dimension (or exactly `shape` if not `batched`)."""
        base = src.name if src is not None else "preprocess"
        out = self.names.fresh(f"{base}/{part}" if part else base)
        if src is not None:
            node_base = f"{src.name}@line{src.span.line}"
            doc = self._where(src)
        else:
            span = self.net.ir.preprocess.span
            node_base = f"preprocess@line{span.line}" if span else "preprocess"
            doc = f"{self.net.source.path}:{span.line}: preprocess" if span else "preprocess"
        name = self.names.fresh(f"{node_base}/{part}" if part else node_base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, doc_string=doc, **attrs))
        self.value_shapes[out] = (BATCH, *shape) if batched else tuple(shape)
        return out

    def constant(self, values: Any, dtype: type = np.float32) -> str:
        """A Constant node (not an initializer: initializers are exactly the network's tensors)."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.names.fresh("const/" + "_".join(str(v) for v in array.ravel()[:4]))
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.names.fresh(f"{name}/node"),
                                               value=numpy_helper.from_array(array, name)))
            self._constants[key] = name
        return self._constants[key]

    def emit(self, node: ir.Node, x: str) -> str:
        return emitter(self, node, "onnx")(node, x)

    # -- emitters, one per node kind: `<key>_onnx` ------------------------------------------------------

    def preprocess(self, x: str) -> str:
        pre = self.net.ir.preprocess
        if pre is None:
            return x
        shape = tuple(self.net.ir.input_shape)
        x = self.op(None, "Mul", [x, "preprocess.scale"], shape, part="scale")
        if pre.standardize:
            mean, std = "preprocess.mean", "preprocess.std"
            if len(shape) == 3:  # (C,) -> (C, 1, 1) to broadcast over N x C x H x W
                axes = self.constant([1, 2], np.int64)
                mean = self.op(None, "Unsqueeze", [mean, axes], (shape[0], 1, 1), part="mean", batched=False)
                std = self.op(None, "Unsqueeze", [std, axes], (shape[0], 1, 1), part="std", batched=False)
            x = self.op(None, "Sub", [x, mean], shape, part="sub_mean")
            x = self.op(None, "Div", [x, std], shape, part="div_std")
        return x

    def seq_onnx(self, node: ir.Seq, x: str) -> str:
        for item in node.items:
            x = self.emit(item, x)
        return x

    def conv_onnx(self, node: ir.Conv, x: str) -> str:
        shape = self.shapes.of(node)
        top, bottom, left, right = shape.pads
        inputs = [x, f"{node.name}.weight"] + ([f"{node.name}.bias"] if node.bias else [])
        return self.op(node, "Conv", inputs, shape.output, kernel_shape=list(node.kernel),
                       strides=list(node.stride), pads=[top, left, bottom, right],
                       dilations=list(node.dilation), group=shape.groups)

    def pool_onnx(self, node: ir.Pool, x: str) -> str:
        shape = self.shapes.of(node)
        top, bottom, left, right = shape.pads
        extra = [w.overhang for w in shape.windows]  # > 0 only where ceil mode adds a window
        attrs = dict(kernel_shape=list(node.kernel), strides=list(node.stride))
        if node.mode == "max":
            return self.op(node, "MaxPool", [x], shape.output,
                           pads=[top, left, bottom + extra[0], right + extra[1]], **attrs)
        if not any(extra):
            return self.op(node, "AveragePool", [x], shape.output, pads=[top, left, bottom, right],
                           count_include_pad=1, **attrs)
        c, h, w = shape.input
        padded = self.op(node, "Pad", [x, self.constant([0, 0, top, left, 0, 0, bottom, right], np.int64)],
                         (c, h + top + bottom, w + left + right), part="pad", mode="constant")
        return self.op(node, "AveragePool", [padded], shape.output, pads=[0, 0, extra[0], extra[1]],
                       count_include_pad=0, **attrs)

    def global_pool_onnx(self, node: ir.GlobalPool, x: str) -> str:
        op_type = "GlobalMaxPool" if node.mode == "max" else "GlobalAveragePool"
        return self.op(node, op_type, [x], self.shapes.of(node).output)

    def adaptive_pool_onnx(self, node: ir.AdaptivePool, x: str) -> str:
        # ONNX has no adaptive pool. To 1x1 it is the global pool; else axis by axis (the mean of a
        # rectangle is the mean over its rows of the means over its columns, and the max likewise):
        # an axis whose windows are even is a pool of kernel = stride = in/out along it, an uneven one
        # a Slice (+ ReduceMean/ReduceMax where the window has more than one row) per window, joined
        # by Concat; out_h + out_w windows, not out_h * out_w.
        shape = self.shapes.of(node)
        if shape.output[1:] == (1, 1):
            return self.global_pool_onnx(node, x)
        if shape.output == shape.input:
            return x  # AlexNet's 6x6 on a 6x6 map: the identity
        pool = "MaxPool" if node.mode == "max" else "AveragePool"
        current = list(shape.input)
        axes = [(dim, size, out) for dim, size, out in zip((2, 3), shape.input[1:], shape.output[1:], strict=True)
                if size != out]
        if all(size % out == 0 for _, size, out in axes):
            kernel = [shape.input[1] // shape.output[1], shape.input[2] // shape.output[2]]
            return self.op(node, pool, [x], shape.output, kernel_shape=kernel, strides=kernel)
        for index, (dim, size, out) in enumerate(axes):
            part = None if index == len(axes) - 1 else ("rows", "cols")[dim - 2]  # the last op takes the name
            before = tuple(current)
            current[dim - 1] = out
            if size % out == 0:
                kernel = [size // out if d == dim else 1 for d in (2, 3)]
                x = self.op(node, pool, [x], tuple(current), part=part, kernel_shape=kernel, strides=kernel)
                continue
            windows = []
            for i, (begin, end) in enumerate(adaptive_windows(size, out)):
                cut = [*before]
                cut[dim - 1] = end - begin
                bounds = [self.constant([value], np.int64) for value in (begin, end, dim)]  # starts, ends, axes
                window = self.op(node, "Slice", [x, *bounds], tuple(cut), part=f"{('rows', 'cols')[dim - 2]}{i}")
                if end - begin > 1:
                    cut[dim - 1] = 1
                    window = self._reduce(node, "ReduceMax" if node.mode == "max" else "ReduceMean", window, dim,
                                          tuple(cut), f"{('rows', 'cols')[dim - 2]}{i}/{node.mode}")
                windows.append(window)
            x = self.op(node, "Concat", windows, tuple(current), part=part, axis=dim)
        return x

    def _reduce(self, node: ir.Node, op_type: str, x: str, axis: int, shape: tuple[int, ...], part: str) -> str:
        """A ReduceMean/ReduceMax over one axis, kept: its axes are an input from opset 18, before an attribute."""
        if self.opset >= 18:
            return self.op(node, op_type, [x, self.constant([axis], np.int64)], shape, part=part, keepdims=1)
        return self.op(node, op_type, [x], shape, part=part, axes=[axis], keepdims=1)

    def fc_onnx(self, node: ir.Linear, x: str) -> str:
        shape = self.shapes.of(node)
        if len(shape.input) != 1:  # C x H x W: flatten in C, H, W order first
            x = self.op(node, "Flatten", [x], (math.prod(shape.input),), part="flatten", axis=1)
        inputs = [x, f"{node.name}.weight"] + ([f"{node.name}.bias"] if node.bias else [])
        return self.op(node, "Gemm", inputs, shape.output, transB=1)

    def flatten_onnx(self, node: ir.Flatten, x: str) -> str:
        shape = self.shapes.of(node)
        if len(shape.input) == 1:
            return x  # flatten of a vector is a no-op
        return self.op(node, "Flatten", [x], shape.output, axis=1)

    def dropout_onnx(self, node: ir.Dropout, x: str) -> str:
        return x  # identity at inference

    def bn_onnx(self, node: ir.BatchNorm, x: str) -> str:
        n = node.name
        # ONNX's momentum weighs the running value (PyTorch's weighs the batch); unused at inference.
        return self.op(node, "BatchNormalization",
                       [x, f"{n}.weight", f"{n}.bias", f"{n}.running_mean", f"{n}.running_var"],
                       self.shapes.of(node).output, epsilon=float(node.eps), momentum=1.0 - float(node.momentum))

    def ln_onnx(self, node: ir.LayerNorm, x: str) -> str:
        shape, n = self.shapes.of(node).output, node.name
        inputs, attrs = [f"{n}.weight", f"{n}.bias"], dict(axis=-1, epsilon=float(node.eps))
        if len(shape) == 1:
            return self.op(node, "LayerNormalization", [x, *inputs], shape, **attrs)
        # LayerNormalization (opset 17) normalises the trailing axes: the channels go last and back
        c, h, w = shape
        x = self.op(node, "Transpose", [x], (h, w, c), part="to_nhwc", perm=[0, 2, 3, 1])
        x = self.op(node, "LayerNormalization", [x, *inputs], (h, w, c), part="norm", **attrs)
        return self.op(node, "Transpose", [x], shape, perm=[0, 3, 1, 2])

    def gn_onnx(self, node: ir.GroupNorm, x: str) -> str:
        # As torch's exporter: InstanceNormalization over N x G x (C/G*H*W) with unit scale and zero bias,
        # then the per-channel weight and bias (GroupNormalization-18 is deprecated, and its scale is per group).
        shape, g, n = self.shapes.of(node).output, node.groups, node.name
        grouped = (g, math.prod(shape) // g)
        x = self.op(node, "Reshape", [x, self.constant([0, *grouped], np.int64)], grouped, part="groups")
        x = self.op(node, "InstanceNormalization", [x, self.constant(np.ones(g)), self.constant(np.zeros(g))],
                    grouped, part="norm", epsilon=float(node.eps))
        x = self.op(node, "Reshape", [x, self.constant([0, *shape], np.int64)], shape, part="ungroup")
        weight, bias = f"{n}.weight", f"{n}.bias"
        if len(shape) == 3:  # (C,) -> (C, 1, 1) to broadcast over N x C x H x W
            axes, column = self.constant([1, 2], np.int64), (shape[0], 1, 1)
            weight = self.op(node, "Unsqueeze", [weight, axes], column, part="weight", batched=False)
            bias = self.op(node, "Unsqueeze", [bias, axes], column, part="bias", batched=False)
        x = self.op(node, "Mul", [x, weight], shape, part="scale")
        return self.op(node, "Add", [x, bias], shape)

    def layerscale_onnx(self, node: ir.LayerScale, x: str) -> str:
        return self.op(node, "Mul", [x, f"{node.name}.layer_scale"], self.shapes.of(node).output)

    def shuffle_onnx(self, node: ir.Shuffle, x: str) -> str:
        shape, g = self.shapes.of(node).output, node.groups
        split = (g, shape[0] // g, *shape[1:])
        x = self.op(node, "Reshape", [x, self.constant([0, *split], np.int64)], split, part="split")
        swapped = (split[1], g, *shape[1:])
        x = self.op(node, "Transpose", [x], swapped, part="transpose", perm=[0, 2, 1, *range(3, len(split) + 1)])
        return self.op(node, "Reshape", [x, self.constant([0, *shape], np.int64)], shape)

    def channels_onnx(self, node: ir.Channels, x: str) -> str:
        shape = self.shapes.of(node)
        start, stop = node.bounds(shape.input[0])
        ends = [self.constant([value], np.int64) for value in (start, stop, 1)]  # starts, ends, axes
        return self.op(node, "Slice", [x, *ends], shape.output)

    def upsample_onnx(self, node: ir.Upsample, x: str) -> str:
        # Resize in PyTorch's coordinates: nearest is `asymmetric` + `floor` (input floor(o * in/out)),
        # bilinear is `half_pixel` + `linear` ((o + 0.5) * in/out - 0.5; the edge clamps, as PyTorch's).
        shape = self.shapes.of(node)
        (_, h, w), (_, oh, ow) = shape.input, shape.output
        attrs = (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
                 if node.mode == "nearest" else dict(mode="linear", coordinate_transformation_mode="half_pixel"))
        if oh % h == 0 and ow % w == 0:  # a whole factor is an exact float scale
            scales = self.constant([1, 1, oh // h, ow // w])
            return self.op(node, "Resize", [x, "", scales], shape.output, **attrs)
        if self.opset >= 18:
            return self.op(node, "Resize", [x, "", "", self.constant([oh, ow], np.int64)], shape.output, axes=[2, 3],
                           **attrs)
        # below opset 18 `sizes` names every axis: N and C are read from the input (int64 values: no value_info)
        sizes = self.op(node, "Shape", [x], (4,), part="shape", batched=False, end=2)
        sizes = self.op(node, "Concat", [sizes, self.constant([oh, ow], np.int64)], (4,), part="sizes",
                        batched=False, axis=0)
        for value in self.nodes[-1].input[:1] + self.nodes[-1].output[:1]:
            self.value_shapes.pop(value)
        return self.op(node, "Resize", [x, "", "", sizes], shape.output, **attrs)

    def deconv_onnx(self, node: ir.Deconv, x: str) -> str:
        shape = self.shapes.of(node)
        (ph, pw), inputs = node.pads, [x, f"{node.name}.weight"] + ([f"{node.name}.bias"] if node.bias else [])
        return self.op(node, "ConvTranspose", inputs, shape.output, kernel_shape=list(node.kernel),
                       strides=list(node.stride), pads=[ph, pw, ph, pw], output_padding=list(node.outpad),
                       group=shape.groups)

    def activation_onnx(self, node: ir.Activation, x: str) -> str:
        graph = _Recipe(self, node, self.shapes.of(node).output)
        return graph.result(node.function.onnx(graph, x, node.argument))

    def residual_onnx(self, node: ir.Residual, x: str) -> str:
        body = self.emit(node.body, x)
        shortcut = self.emit(node.shortcut, x) if self.shapes.of(node).projects else x
        return self.op(node, "Add", [body, shortcut], self.shapes.of(node).output)

    def concat_onnx(self, node: ir.Concat, x: str) -> str:
        outs = [self.emit(branch, x) for branch in node.branches]
        if node.crop:  # `concat crop`: the larger branches' centres, a Slice on height and width
            for index, (branch, (top, bottom, left, right)) in enumerate(zip(node.branches, node.crops(self.shapes),
                                                                             strict=True)):
                if top or bottom or left or right:
                    c, h, w = self.shapes.of(branch).output
                    starts, ends, axes = (self.constant(v, np.int64) for v in ([top, left], [h - bottom, w - right],
                                                                                [2, 3]))
                    outs[index] = self.op(node, "Slice", [outs[index], starts, ends, axes],
                                          (c, h - top - bottom, w - left - right), part=f"crop{index + 1}")
        if len(outs) == 1:
            return outs[0]
        return self.op(node, "Concat", outs, self.shapes.of(node).output, axis=1)

    def mul_onnx(self, node: ir.Mul, x: str) -> str:
        outs = [self.emit(branch, x) for branch in node.branches]  # ONNX's Mul broadcasts a gate
        result, shape = outs[0], self.shapes.of(node.branches[0]).output
        for other, branch in zip(outs[1:], node.branches[1:], strict=True):
            shape = max(shape, self.shapes.of(branch).output, key=math.prod)  # two gates stay a gate
            result = self.op(node, "Mul", [result, other], shape)
        return result

    def droppath_onnx(self, node: ir.DropPath, x: str) -> str:
        return x  # identity at inference, like dropout

    def add_onnx(self, node: ir.Add, x: str) -> str:
        outs = [self.emit(branch, x) for branch in node.branches]
        if len(outs) == 1:
            return outs[0]
        return self.op(node, "Add" if len(outs) == 2 else "Sum", outs, self.shapes.of(node).output)

    # -- the model ------------------------------------------------------------------------------------

    def fill(self, graph: onnx.GraphProto, initializers: bool = True) -> None:
        """Emit the network into `graph`, in place: initializers are written straight into the
        model's own message (`make_graph`/`make_model` would copy every weight twice more).
        Without `initializers`, `serialize` appends them to the encoded graph itself."""
        net = self.net
        x = self.emit(net.ir.body, self.preprocess(INPUT))
        if x == INPUT:  # nothing computes (say, only dropout): the output still needs its own name
            x = self.op(net.ir.body, "Identity", [x], tuple(net.ir.input_shape), part="identity")
        self._rename(x, OUTPUT)
        out_shape = self.value_shapes.pop(OUTPUT)
        graph.name = net.name
        graph.doc_string = f"network {net.name} from {net.source.path}, compiled by cnndsl"
        graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH, *net.ir.input_shape]))
        graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, list(out_shape)))
        graph.node.extend(self.nodes)
        graph.value_info.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                                for name, shape in self.value_shapes.items())
        if not initializers:
            return
        for spec in stored_specs(net):
            array = _little_endian(self.weights[spec.name])
            tensor = graph.initializer.add()
            tensor.name = spec.name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.dims.extend(array.shape)
            tensor.raw_data = array.tobytes()

    def _rename(self, old: str, new: str) -> None:
        """Give the final value the graph output's name (SSA: nothing reads it after its producer)."""
        for node in self.nodes:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        self.value_shapes[new] = self.value_shapes.pop(old)


def model_metadata(net) -> dict[str, str]:
    """What the model records about where it came from (ONNX `metadata_props`)."""
    from cnndsl import __version__

    return {
        "cnndsl.network": net.name,
        "cnndsl.version": __version__,
        "cnndsl.source": net.source.path,
        "cnndsl.source_sha256": hashlib.sha256(net.source.text.encode("utf-8")).hexdigest(),
        "cnndsl.input_shape": "x".join(str(d) for d in net.ir.input_shape),
    }


def _little_endian(value) -> np.ndarray:
    """A C-contiguous array in ONNX's byte order (raw_data is little-endian)."""
    array = np.asarray(value)
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).reshape(array.shape)


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")


def _model(net, weights, seed: int, opset: int, initializers: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    _check_opset(opset)
    net.report  # noqa: B018 - shape errors and failed expectations surface as CnnDslError before any ONNX is built
    tensors = resolve_weights(net, weights, seed)
    opsets = [helper.make_opsetid("", opset)]
    from cnndsl import __version__

    model = onnx.ModelProto(
        ir_version=helper.find_min_ir_version_for(opsets), producer_name="cnndsl", producer_version=__version__,
        doc_string=f"cnndsl network {net.name} ({net.source.path}); weights: "
                   f"{'seeded init, seed ' + str(seed) if weights is None else _describe(weights)}")
    model.opset_import.extend(opsets)
    _Builder(net, tensors, opset).fill(model.graph, initializers)
    helper.set_model_props(model, model_metadata(net))
    return model, tensors


def build(net, weights: str | os.PathLike | dict | None = None, *, seed: int = 0, opset: int = DEFAULT_OPSET,
          check: bool = False) -> onnx.ModelProto:
    """The network as an `onnx.ModelProto` with its weights as initializers.

    `weights`: None (fresh weights, PyTorch's default initialisation drawn with `seed`), a
    .safetensors path or a {name: array} dict; checked by name and shape (`WeightsError`).
    `opset`: the default ONNX opset to target (>= 17; from 20 gelu is the `Gelu` operator).
    `check`: run `onnx.checker.check_model(full_check=True)` on the result (models under 2 GB).
    """
    model, _ = _model(net, weights, seed, opset, initializers=True)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(message, field: str) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def serialize(net, weights: str | os.PathLike | dict | None = None, *, seed: int = 0,
              opset: int = DEFAULT_OPSET) -> bytes:
    """The model's bytes, as `build(...).SerializeToString()` encodes them, several times faster.

    Protobuf encodes a 100 MB message slowly (it grows its buffer as it goes), and `build` has
    already copied every weight into the message once. Here the message is encoded without its
    initializers, and the initializers follow as a second `graph` field whose tensors are encoded
    by hand around the weight arrays themselves, joined with one copy. Protobuf parsers merge the
    two occurrences of the `graph` field (a documented rule of the wire format: an embedded message
    field that occurs twice is merged, and repeated fields such as `initializer` append), so the
    bytes decode to the same message as `build` gives. Models whose weights pass 2 GB need
    `save(build(...), path)` (external data).
    """
    model, tensors = _model(net, weights, seed, opset, initializers=False)
    init_tag, raw_tag = _tag(onnx.GraphProto, "initializer"), _tag(TensorProto, "raw_data")
    pieces: list[bytes | memoryview] = []
    size = 0
    for spec in stored_specs(net):
        array = _little_endian(tensors[spec.name])
        header = TensorProto(name=spec.name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             dims=array.shape).SerializeToString()
        data = memoryview(array.reshape(-1)).cast("B")
        body = len(header) + len(raw_tag) + len(_varint(data.nbytes)) + data.nbytes
        tensor = [init_tag, _varint(body), header, raw_tag, _varint(data.nbytes), data]
        pieces.extend(tensor)
        size += len(init_tag) + len(_varint(body)) + body
    if size > EXTERNAL_DATA_THRESHOLD:
        raise ValueError(f"the weights of {net.name} take {size / 2**30:.1f} GiB, more than one protobuf message "
                         "holds: write the model with save(build(net), path), which uses external data")
    return b"".join([model.SerializeToString(), _tag(onnx.ModelProto, "graph"), _varint(size), *pieces])


def write(net, path: str | os.PathLike, weights: str | os.PathLike | dict | None = None, *, seed: int = 0,
          force: bool = False, opset: int = DEFAULT_OPSET) -> list[Path]:
    """What `cnndsl compile --target onnx` writes: `serialize` into one file by the output rules
    (atomic; never over the source or a file cnndsl did not write, unless `force`), or, for
    weights past 2 GB, `save` with external data. Returns the files written."""
    from cnndsl.outputs import write_output

    path = Path(path)
    if sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in stored_specs(net)) > EXTERNAL_DATA_THRESHOLD:
        return save(build(net, weights, seed=seed, opset=opset), path, net=net, force=force, external=True)
    write_output(path, serialize(net, weights, seed=seed, opset=opset), net, force=force)
    return [path]


def stored_specs(net) -> list:
    """The tensors an ONNX model stores as initializers: all but what no node reads (BN's
    `num_batches_tracked`, which `read_weights` and `cnndsl.weights.check_weights` recreate as 0)."""
    return [spec for spec in net.tensor_specs() if spec.role != "num_batches_tracked"]


def read_weights(model: onnx.ModelProto | str | os.PathLike, net=None) -> dict[str, np.ndarray]:
    """The weights of an ONNX model cnndsl wrote, by tensor name, as every backend reads them; with
    `net`, checked against it and completed (`num_batches_tracked` as 0) in its tensor order."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if net is None:
        return tensors
    from cnndsl.weights import check_weights

    return check_weights(net, tensors, origin="the ONNX model's initializers")


def _describe(weights) -> str:
    return os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "given tensors"


# -- saving ---------------------------------------------------------------------------------------------


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds inline."""
    return sum(t.ByteSize() for t in model.graph.initializer)  # sizes only: reading raw_data would copy it


def save(model: onnx.ModelProto, path: str | os.PathLike, *, net=None, force: bool = False,
         external: bool | None = None) -> list[Path]:
    """Write `model` to `path` atomically; return the files written.

    With `external` (by default: when the initializers pass 2 GB, which one protobuf message cannot
    hold) the tensors of at least 1 KB go to `<path>.data` next to it, as ONNX external data that
    `onnx.load` and onnxruntime find by relative location. The data file starts with a text header
    (so cnndsl recognises it as its own), and tensors are 4 KB-aligned for memory mapping.
    With `net`, the output rules of `cnndsl compile` apply: never over the source, nor over a file
    cnndsl did not write (unless `force`).
    """
    from cnndsl.outputs import check_output, replacing, write_atomic, write_output

    path = Path(path)
    if external is None:
        external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if not external:
        data = model.SerializeToString()
        write_output(path, data, net, force=force) if net is not None else write_atomic(path, data)
        return [path]

    data_path = path.with_name(path.name + ".data")
    if net is not None:
        check_output(path, net, force)
        check_output(data_path, net, force)
    moved: list[tuple[TensorProto, bytes]] = []
    try:
        with replacing(data_path) as handle:
            header = f"cnndsl external data of {path.name} ({model.graph.name})\n".encode()
            handle.write(header)
            offset = len(header)
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < EXTERNAL_MIN_TENSOR_BYTES:
                    continue
                pad = -offset % _ALIGN
                handle.write(b"\0" * pad)
                offset += pad
                handle.write(raw)
                moved.append((tensor, raw))
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                offset += len(raw)
            serialized = model.SerializeToString()
    finally:
        for tensor, raw in moved:  # leave the caller's model as it was
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            tensor.raw_data = raw
    if net is not None:
        write_output(path, serialized, net, force=True)  # checked above, before the data was written
    else:
        write_atomic(path, serialized)
    return [path, data_path]

