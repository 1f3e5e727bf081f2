"""Pass (b): ONNX nodes -> layer-level `Layer`s, one per cnndsl statement (or join).

Phases, each over the nodes no earlier phase claimed: the preprocessing cnndsl emits at the input;
activations, recognised by *evaluating* every small single-input elementwise subgraph on sample
points and comparing with each activation's formula (so `x*Sigmoid(x)` is silu and the erf and tanh
forms of GELU are gelu however an exporter orders their Mul/Div/Add); the lowering of uneven
adaptive pools (Slice/Reduce/Concat along an axis); then every other node by its op type, looking
ahead along single-consumer chains for multi-node patterns (Conv+Add bias, Pad+Conv, MatMul+Add,
the shuffle Reshape/Transpose/Reshape, the group-norm lowering, Transpose/LayerNormalization/
Transpose). Identity-like nodes (Dropout, Identity, a no-op Reshape) are aliased away with a note.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from .. import ir
from ..kinds.base import Padding, adaptive_windows, same_padding, window
from .graph import OnnxGraph
from .layers import AxisAdaptive, Crop, Join, Layer, make

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Sigmoid", "Relu", "Clip", "HardSigmoid",
               "HardSwish", "Exp", "Neg", "Reciprocal", "Max", "Min", "Softplus", "Log", "Abs", "LeakyRelu", "Elu",
               "Gelu"}
MAX_CONE = 12
_SAMPLES = np.concatenate([np.linspace(-8.0, 8.0, 161), [-0.37, 0.013, 2.71, 5.5, 6.0, 3.0, -3.0]])
_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# (statement, formula); the first that matches wins, so the order goes from the most specific
FUNCTIONS: tuple[tuple[str, Callable], ...] = (
    ("relu", lambda x: np.maximum(x, 0.0)),
    ("relu6", lambda x: np.clip(x, 0.0, 6.0)),
    ("sigmoid", _sigmoid),
    ("tanh", np.tanh),
    ("gelu", _gelu),
    ("gelu_tanh", _gelu_tanh),
    ("silu", lambda x: x * _sigmoid(x)),
    ("hardswish", lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    ("hardsigmoid", lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    ("elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))),
)


def nice(value: float) -> float:
    """The shortest decimal that is the same float32: 1e-5 for the float32 nearest 1e-5."""
    return float(str(np.float32(value)))


class Recogniser:
    def __init__(self, graph: OnnxGraph):
        self.g = graph
        self.claimed: set[int] = set()
        self.alias: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.notes: list[str] = []
        self.preprocess: dict[str, np.ndarray] = {}

    # -- helpers --------------------------------------------------------------------------------------
    def resolve(self, value: str) -> str:
        while value in self.alias:
            value = self.alias[value]
        return value

    def only_consumer(self, value: str) -> int | None:
        users = self.g.consumers.get(value, [])
        return users[0] if len(users) == 1 and users[0] >= 0 and users[0] not in self.claimed else None

    def emit(self, node, index: int, inputs, output: str, weights=None, claim=()) -> None:
        inputs = tuple(self.resolve(v) for v in inputs)
        shape_in = self.g.shape(inputs[0]) if inputs else ()
        self.layers.append(Layer(node, inputs, output, index, dict(weights or {}), shape_in, self.g.shape(output)))
        self.claimed.add(index)
        self.claimed.update(claim)

    def data_inputs(self, index: int) -> list[str]:
        return [v for v in self.g.nodes[index].input if v in self.g.data]

    def constant(self, index: int, position: int, what: str) -> np.ndarray:
        node = self.g.nodes[index]
        value = self.g.const(node.input[position]) if position < len(node.input) else None
        if value is None:
            raise self.g.error(index, f"its {what} is computed while the model runs; cnndsl's {what}s are fixed "
                                      "tensors (weights)")
        return value

    def drop(self, index: int, why: str) -> None:
        node = self.g.nodes[index]
        self.alias[node.output[0]] = node.input[0]
        self.claimed.add(index)
        self.notes.append(f"{self.g.describe(index)} dropped: {why}")

    # -- the passes -----------------------------------------------------------------------------------
    def run(self) -> list[Layer]:
        self.find_preprocess()
        for index in reversed(range(len(self.g.nodes))):
            if index not in self.claimed and self.g.nodes[index].op_type in ELEMENTWISE:
                self.find_activation(index)
        for index, node in enumerate(self.g.nodes):
            if node.op_type == "Concat" and index not in self.claimed:
                self.find_adaptive(index)
        for index, node in enumerate(self.g.nodes):
            if index in self.claimed or not any(v in self.g.data for v in node.output):
                continue  # claimed, or shape arithmetic (Shape of a value, and what computes with it)
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise self.g.error(index, f"the language has no {node.op_type} operation")
            handler(index)
        # aliases found after a layer was made (a Dropout after the activations phase) apply to it too
        layers = [dataclasses.replace(layer, inputs=tuple(self.resolve(v) for v in layer.inputs))
                  for layer in sorted(self.layers, key=lambda layer: layer.origin)]
        return merge_adaptive(layers, self.g)

    def find_preprocess(self) -> None:
        """`preprocess { scale S; standardize mean (...) std (...) }` as cnndsl emits it: Mul, Sub, Div."""
        g = self.g
        first = self.only_consumer(g.input)
        if first is None or g.nodes[first].op_type != "Mul":
            return
        scale = next((g.const(v) for v in g.nodes[first].input if g.const(v) is not None), None)
        if scale is None or scale.size != 1:
            return
        self.preprocess["scale"] = scale.reshape(())
        self.alias[g.nodes[first].output[0]] = g.input
        self.claimed.add(first)
        sub = self.only_consumer(g.nodes[first].output[0])
        if sub is None or g.nodes[sub].op_type != "Sub":
            return
        div = self.only_consumer(g.nodes[sub].output[0])
        mean, std = g.const(g.nodes[sub].input[1]), g.const(g.nodes[div].input[1]) if div is not None else None
        channels = g.shape(g.input)[0]
        if div is None or g.nodes[div].op_type != "Div" or mean is None or std is None or \
                mean.size != channels or std.size != channels:
            return
        self.preprocess.update(mean=mean.reshape(-1), std=std.reshape(-1))
        self.alias[g.nodes[div].output[0]] = g.input
        self.claimed.update((sub, div))

    def find_activation(self, end: int) -> None:
        g = self.g
        inputs = {v for v in g.nodes[end].input if v in g.data}
        if len(inputs) > 1 and not any(g.nodes[g.producer[v]].op_type in ELEMENTWISE for v in inputs
                                       if v in g.producer):
            return  # a join of two computed values (a residual's add): no single-input function
        for leaf in self._leaf_candidates(end):
            cone = self._cone(end, leaf)
            if cone is None:
                continue
            fn = self._identify(cone, leaf)
            if fn is None:
                continue
            name, alpha = fn
            if name == "gelu_tanh":
                self.notes.append(f"{g.describe(end)}: the tanh approximation of GELU is written 'gelu', the exact "
                                  "(erf) form cnndsl has; they differ by at most 0.0005 per activation")
                name = "gelu"
            self.emit(make(ir.Activation, fn=name, alpha=alpha), end, [leaf], g.nodes[end].output[0],
                      claim=cone)
            return

    def _leaf_candidates(self, end: int) -> list[str]:
        """Data values a small elementwise subgraph ending at `end` could read: earliest first."""
        g, seen, stack, values = self.g, {end}, [end], []
        while stack and len(seen) <= MAX_CONE:
            node = g.nodes[stack.pop()]
            for value in node.input:
                if value not in g.data:
                    continue
                if value not in values:
                    values.append(value)
                p = g.producer.get(value)
                if p is not None and p not in seen and p not in self.claimed and g.nodes[p].op_type in ELEMENTWISE:
                    seen.add(p)
                    stack.append(p)
        return sorted(values, key=lambda v: g.producer.get(v, -1))

    def _cone(self, end: int, leaf: str) -> set[int] | None:
        g, nodes, stack = self.g, {end}, [end]
        while stack:
            for value in g.nodes[stack.pop()].input:
                if not value or value == leaf or value not in g.data:
                    if value and value != leaf and (g.const(value) is None or g.const(value).size != 1):
                        return None  # a per-channel constant is a layer (layerscale), not an activation
                    continue
                p = g.producer.get(value)
                if p is None or p in self.claimed or g.nodes[p].op_type not in ELEMENTWISE:
                    return None
                if p not in nodes:
                    nodes.add(p)
                    stack.append(p)
                    if len(nodes) > MAX_CONE:
                        return None
        for index in nodes - {end}:
            if any(c not in nodes for c in g.consumers.get(g.nodes[index].output[0], [])):
                return None
        return nodes

    def _identify(self, cone: set[int], leaf: str) -> tuple[str, float | None] | None:
        g = self.g
        if len(cone) == 1:
            (index,) = cone
            node = g.nodes[index]
            if node.op_type == "LeakyRelu":
                return "leaky", nice(g.attrs(index).get("alpha", 0.01))
            if node.op_type == "Elu" and not math.isclose(g.attrs(index).get("alpha", 1.0), 1.0, rel_tol=1e-6):
                return "elu", nice(g.attrs(index).get("alpha", 1.0))
        values = {leaf: _SAMPLES}
        try:
            with np.errstate(all="ignore"):
                for index in sorted(cone):
                    node = g.nodes[index]
                    args = [values[v] if v in values else (float(g.const(v).reshape(-1)[0]) if v else None)
                            for v in node.input]
                    values[node.output[0]] = _evaluate(node.op_type, args, g.attrs(index))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        y = values[g.nodes[max(cone)].output[0]]
        if not np.all(np.isfinite(y)):
            return None
        for name, formula in FUNCTIONS:
            if np.all(np.abs(formula(_SAMPLES) - y) <= 2e-5 * (1.0 + np.abs(y))):
                return name, None
        return None

    def find_adaptive(self, index: int) -> None:
        """Concat along H or W of Slice windows of one value (each Reduce'd where wider than a row)."""
        g = self.g
        node = g.nodes[index]
        rank = len(g.shapes.get(node.output[0], ()))
        axis = g.attrs(index).get("axis", 1) % rank if rank else None
        if axis not in (2, 3) or not all(v in g.data for v in node.input):
            return
        source, windows, modes, claim = None, [], set(), {index}
        for value in node.input:
            p = g.producer.get(value)
            if p is None:
                return
            if g.nodes[p].op_type in ("ReduceMean", "ReduceMax"):
                modes.add("avg" if g.nodes[p].op_type == "ReduceMean" else "max")
                claim.add(p)
                p = g.producer.get(g.nodes[p].input[0])
            if p is None or g.nodes[p].op_type != "Slice":
                return
            claim.add(p)
            x = g.nodes[p].input[0]
            bounds = [self.g.const(v) for v in g.nodes[p].input[1:4]]
            if any(b is None or b.size != 1 for b in bounds) or int(bounds[2].reshape(-1)[0]) % 4 != axis:
                return
            if source not in (None, x):
                return
            source = x
            windows.append((int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])))
        size, out = g.shapes[source][axis], len(windows)
        if windows != adaptive_windows(size, out) or len(modes) > 1:
            return
        self.emit(AxisAdaptive(modes.pop() if modes else "avg", axis, out), index, [source], node.output[0],
                  claim=claim)

    # -- one handler per op type (`op_<OpType>`) -----------------------------------------------------
    def op_Dropout(self, index: int) -> None:
        outputs = self.g.nodes[index].output
        if len(outputs) > 1 and outputs[1] and self.g.consumers.get(outputs[1]):
            raise self.g.error(index, "its mask output is used; dropout is the identity at inference")
        self.drop(index, "dropout is the identity at inference (write 'dropout P' where you train)")

    def op_Identity(self, index: int) -> None:
        self.drop(index, "an identity")

    def op_Conv(self, index: int, x: str | None = None, extra=(0, 0, 0, 0)) -> None:
        """A Conv (with a Pad before it folded into `extra`, top/left/bottom/right, by `op_Pad`)."""
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        x, out = x or node.input[0], node.output[0]
        weight = self.constant(index, 1, "weight")
        bias = self.constant(index, 2, "bias") if len(node.input) > 2 and node.input[2] else None
        if weight.ndim != 4:
            raise g.error(index, f"a {weight.ndim - 2}-D convolution; cnndsl's conv is 2-D")
        c_in, c_out, groups = g.shape(x)[0], weight.shape[0], a.get("group", 1)
        kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
        stride, dilation = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
        pads = self._pads(index, x, kernel, stride, dilation, a, extra)
        claim = []
        user = self.only_consumer(out)
        if bias is None and user is not None and g.nodes[user].op_type == "Add":
            other = next((v for v in g.nodes[user].input if v != out), None)
            value = g.const(other)
            if _per_channel(value, (c_out, 1, 1)):
                bias, out = value.reshape(c_out), g.nodes[user].output[0]
                claim.append(user)
        fields = dict(kernel=kernel, stride=stride, padding=pads, dilation=dilation, bias=bias is not None)
        if groups > 1 and groups == c_in:
            fields.update(depthwise=True, out_channels=None if c_out == c_in else c_out)
        else:
            fields.update(out_channels=c_out, groups=groups)
        weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        self.emit(make(ir.Conv, **fields), index, [x], out, weights, claim)

    def _pads(self, index: int, x: str, kernel, stride, dilation, a: dict, extra=(0, 0, 0, 0)) -> Padding:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        _, h, w = self.g.shape(x)
        if auto == "SAME_UPPER":
            return Padding(same=True)
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto == "NOTSET":
            pads = list(a.get("pads", (0, 0, 0, 0)))
        else:
            raise self.g.error(index, f"auto_pad {auto}: cnndsl's 'pad same' puts the odd row at the end "
                                      "(SAME_UPPER)")
        top, left, bottom, right = (p + e for p, e in zip(pads, extra, strict=True))
        if top == bottom and left == right:
            return Padding(top=top, bottom=bottom, left=left, right=right)
        if (top, bottom) == same_padding(h, kernel[0], stride[0], dilation[0]) and \
                (left, right) == same_padding(w, kernel[1], stride[1], dilation[1]):
            return Padding(same=True)
        raise self.g.error(index, f"asymmetric padding (top {top}, bottom {bottom}, left {left}, right {right}); "
                                  "cnndsl pads both sides alike, or as TensorFlow's SAME ('pad same')")

    def op_ConvTranspose(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        weight = self.constant(index, 1, "weight")
        bias = self.constant(index, 2, "bias") if len(node.input) > 2 and node.input[2] else None
        groups = a.get("group", 1)
        kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            raise g.error(index, "a dilated transposed convolution; cnndsl's deconv has dilation 1")
        top, left, bottom, right = a.get("pads", (0, 0, 0, 0))
        if (top, left) != (bottom, right):
            raise g.error(index, "asymmetric padding of a transposed convolution; deconv's 'pad P' removes P rows "
                                 "from both ends")
        deconv = make(ir.Deconv, out_channels=weight.shape[1] * groups, kernel=kernel,
                      stride=tuple(a.get("strides", (1, 1))), padding=Padding(top=top, bottom=top, left=left,
                                                                              right=left),
                      outpad=tuple(a.get("output_padding", (0, 0))), groups=groups, bias=bias is not None)
        weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        self.emit(deconv, index, [node.input[0]], node.output[0], weights)

    def op_BatchNormalization(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        if a.get("training_mode", 0):
            raise g.error(index, "batch norm in training mode; export the model in evaluation mode (model.eval())")
        scale, bias, mean, var = (self.constant(index, i, what) for i, what in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
        momentum = round(1.0 - nice(a.get("momentum", 0.9)), 9)
        bn = make(ir.BatchNorm, eps=nice(a.get("epsilon", 1e-5)), momentum=momentum if 0 <= momentum <= 1 else 0.1)
        self.emit(bn, index, [node.input[0]], node.output[0],
                  {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var})

    def op_MaxPool(self, index: int) -> None:
        self._pool(index, "max")

    def op_AveragePool(self, index: int) -> None:
        self._pool(index, "avg")

    def _pool(self, index: int, mode: str, x: str | None = None, extra=(0, 0, 0, 0), claim=()) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        x = x or node.input[0]
        if len(node.output) > 1 and node.output[1] and g.consumers.get(node.output[1]):
            raise g.error(index, "its argmax indices are used; cnndsl's max pool gives values only")
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            raise g.error(index, "a dilated pooling window")
        kernel = tuple(a["kernel_shape"])
        if len(kernel) != 2:
            raise g.error(index, f"a {len(kernel)}-D pool; cnndsl's pools are 2-D")
        stride = tuple(a.get("strides", (1, 1)))
        out = g.shape(node.output[0])
        ceil = bool(a.get("ceil_mode", 0))
        pads = list(a.get("pads", (0, 0, 0, 0)))
        pads = [p + e for p, e in zip(pads, extra, strict=True)]
        top, left, bottom, right = pads
        if mode == "avg" and any(pads) and not a.get("count_include_pad", 0) and not any(extra):
            raise g.error(index, "average pooling that leaves padding out of the divisor (count_include_pad=0, "
                                 "TensorFlow's rule); cnndsl's avg pool counts padded zeros, as PyTorch does")
        _, h, w = g.shape(x)
        padding = None
        if top == bottom and left == right:
            padding = Padding(top=top, bottom=top, left=left, right=left)
        elif not ceil and bottom >= top and right >= left:
            # cnndsl's ceil mode: a floor-mode pool whose end padding is extended to give the ceil size
            hw, ww = (window(h, kernel[0], stride[0], top, top, ceil=True),
                      window(w, kernel[1], stride[1], left, left, ceil=True))
            if hw and ww and (hw.out, ww.out) == tuple(out[1:]) and hw.overhang == bottom - top and \
                    ww.overhang == right - left:
                padding, ceil = Padding(top=top, bottom=top, left=left, right=left), True
        if padding is None and (top, bottom) == same_padding(h, kernel[0], stride[0]) and \
                (left, right) == same_padding(w, kernel[1], stride[1]):
            padding = Padding(same=True)
        if padding is None:
            raise g.error(index, f"asymmetric pool padding (top {top}, bottom {bottom}, left {left}, right {right})")
        pool = make(ir.Pool, mode=mode, kernel=kernel, stride=stride, padding=padding, ceil=ceil)
        self.emit(pool, index, [x], node.output[0], claim=claim)

    def op_GlobalAveragePool(self, index: int) -> None:
        node = self.g.nodes[index]
        self.emit(make(ir.GlobalPool, mode="avg"), index, [node.input[0]], node.output[0])

    def op_GlobalMaxPool(self, index: int) -> None:
        node = self.g.nodes[index]
        self.emit(make(ir.GlobalPool, mode="max"), index, [node.input[0]], node.output[0])

    def _reduce(self, index: int, mode: str) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = list(self.constant(index, 1, "axes"))
        rank = len(g.shapes[node.input[0]])
        if axes is None or rank != 4 or sorted(int(x) % rank for x in axes) != [2, 3]:
            raise g.error(index, "a reduction other than over height and width (a global pool)")
        self.emit(make(ir.GlobalPool, mode=mode), index, [node.input[0]], node.output[0])
        if not a.get("keepdims", 1):  # N x C: the global pool, then a flatten
            layer = self.layers.pop()
            pooled = node.output[0] + "/pooled"
            self.layers.append(Layer(layer.node, layer.inputs, pooled, index, {}, layer.in_shape,
                                     (*layer.out_shape, 1, 1)))
            self.layers.append(Layer(make(ir.Flatten), (pooled,), node.output[0], index, {},
                                     (*layer.out_shape, 1, 1), layer.out_shape))

    def op_ReduceMean(self, index: int) -> None:
        self._reduce(index, "avg")

    def op_ReduceMax(self, index: int) -> None:
        self._reduce(index, "max")

    def op_Gemm(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        if a.get("transA", 0):
            raise g.error(index, "a transposed input (transA=1)")
        weight = self.constant(index, 1, "weight")
        weight = weight if a.get("transB", 0) else weight.T
        weight = weight * np.float32(a.get("alpha", 1.0)) if a.get("alpha", 1.0) != 1.0 else weight
        bias = self.constant(index, 2, "bias") if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1) if bias.size > 1 else bias.reshape(()), (weight.shape[0],))
            bias = bias * np.float32(a.get("beta", 1.0)) if a.get("beta", 1.0) != 1.0 else bias
        self._fc(index, node.input[0], node.output[0], weight, bias)

    def _fc(self, index, x, out, weight, bias, claim=()) -> None:
        weights = {"weight": np.ascontiguousarray(weight)} | ({"bias": np.array(bias)} if bias is not None else {})
        self.emit(make(ir.Linear, out_features=weight.shape[0], bias=bias is not None), index, [x], out, weights,
                  claim)

    def op_MatMul(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        weight = self.constant(index, 1, "weight")
        if weight.ndim != 2 or len(g.shapes[node.input[0]]) != 2:
            raise g.error(index, "a matrix product that is not a fully connected layer on a vector (fc reads a "
                                 "vector or flattens a CxHxW map)")
        out, bias, claim = node.output[0], None, []
        user = self.only_consumer(out)
        if user is not None and g.nodes[user].op_type == "Add":
            other = next((v for v in g.nodes[user].input if v != out), None)
            value = g.const(other)
            if value is not None and value.size == weight.shape[1]:
                bias, out = value.reshape(-1), g.nodes[user].output[0]
                claim.append(user)
        self._fc(index, node.input[0], out, weight.T, bias, claim)

    def op_Flatten(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        if g.attrs(index).get("axis", 1) != 1:
            raise g.error(index, "a flatten that keeps more than the batch axis")
        if len(g.shapes[node.input[0]]) == 2:
            self.drop(index, "a flatten of a vector")
            self.notes.pop()
            return
        self.emit(make(ir.Flatten), index, [node.input[0]], node.output[0])

    def op_Reshape(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        x, out = node.input[0], node.output[0]
        shape_in, shape_out = g.shape(x), g.shapes.get(out, ())
        if None in shape_out[1:] or not shape_out:
            raise g.error(index, "a reshape whose result ONNX shape inference cannot size")
        shape_out = shape_out[1:]
        if shape_out == shape_in:
            self.drop(index, "a reshape to the same shape")
            self.notes.pop()
            return
        if len(shape_out) == 1 and shape_out[0] == math.prod(shape_in):
            self.emit(make(ir.Flatten), index, [x], out)
            return
        if len(shape_in) == 3 and len(shape_out) == 4 and self._shuffle(index, shape_in, shape_out):
            return
        if len(shape_out) == 2 and self._group_norm(index, shape_in, shape_out):
            return
        raise g.error(index, f"a reshape of {'x'.join(map(str, shape_in))} to {'x'.join(map(str, shape_out))} "
                             "(cnndsl reshapes only to flatten, and inside 'shuffle' and 'gn')")

    def _chain(self, index: int, *ops: str) -> list[int] | None:
        """The single-consumer chain after `index` when it is exactly `ops`."""
        chain, value = [], self.g.nodes[index].output[0]
        for op in ops:
            user = self.only_consumer(value)
            if user is None or self.g.nodes[user].op_type != op:
                return None
            chain.append(user)
            value = self.g.nodes[user].output[0]
        return chain

    def _shuffle(self, index: int, shape_in, shape_out) -> bool:
        g = self.g
        groups = shape_out[0]
        chain = self._chain(index, "Transpose", "Reshape")
        if chain is None or shape_out != (groups, shape_in[0] // groups, *shape_in[1:]) or \
                list(g.attrs(chain[0]).get("perm", ())) != [0, 2, 1, 3, 4] or \
                g.shape(g.nodes[chain[1]].output[0]) != shape_in:
            return False
        self.emit(make(ir.Shuffle, groups=groups), index, [g.nodes[index].input[0]], g.nodes[chain[1]].output[0],
                  claim=chain)
        return True

    def _group_norm(self, index: int, shape_in, shape_out) -> bool:
        g = self.g
        groups = shape_out[0]
        chain = self._chain(index, "InstanceNormalization", "Reshape", "Mul", "Add")
        if chain is None or g.shape(g.nodes[chain[1]].output[0]) != shape_in:
            return False
        norm, _, mul, add = chain
        unit = [g.const(v) for v in g.nodes[norm].input[1:3]]
        if any(u is None for u in unit) or not (np.all(unit[0] == 1) and np.all(unit[1] == 0)):
            return False
        c = shape_in[0]
        params = []
        for step, previous in ((mul, g.nodes[chain[1]].output[0]), (add, g.nodes[mul].output[0])):
            other = next((v for v in g.nodes[step].input if v != previous), None)
            value = g.const(other)
            if value is None or value.size != c:
                return False
            params.append(value.reshape(c))
        gn = make(ir.GroupNorm, groups=groups, eps=nice(g.attrs(norm).get("epsilon", 1e-5)))
        self.emit(gn, index, [g.nodes[index].input[0]], g.nodes[add].output[0],
                  {"weight": params[0], "bias": params[1]}, claim=chain)
        return True

    def op_Transpose(self, index: int) -> None:
        g = self.g
        chain = self._chain(index, "LayerNormalization", "Transpose")
        if list(g.attrs(index).get("perm", ())) == [0, 2, 3, 1] and chain is not None and \
                list(g.attrs(chain[1]).get("perm", ())) == [0, 3, 1, 2] and \
                g.attrs(chain[0]).get("axis", -1) in (-1, 3):
            self._layer_norm(chain[0], g.nodes[index].input[0], g.nodes[chain[1]].output[0], [index, *chain])
            return
        raise g.error(index, "a transpose; cnndsl's tensors stay channels first (a transpose is recognised only "
                             "around a layer norm over the channels and in a channel shuffle)")

    def _layer_norm(self, index: int, x: str, out: str, claim=()) -> None:
        g = self.g
        scale = self.constant(index, 1, "scale")
        node = g.nodes[index]
        bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
        ln = make(ir.LayerNorm, eps=nice(g.attrs(index).get("epsilon", 1e-5)))
        self.emit(ln, index, [x], out, {"weight": scale.reshape(-1), "bias": np.asarray(bias).reshape(-1)}, claim)

    def op_LayerNormalization(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        if len(g.shapes[node.input[0]]) != 2 or g.attrs(index).get("axis", -1) not in (-1, 1):
            raise g.error(index, "a layer norm over more than the channels at one position (cnndsl's 'ln' "
                                 "normalises each pixel's channels, or a vector)")
        self._layer_norm(index, node.input[0], node.output[0])

    def op_Slice(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        x = node.input[0]
        rank = len(g.shapes[x])
        starts, ends = (self.constant(index, i, what).reshape(-1) for i, what in ((1, "start"), (2, "end")))
        axes = (self.constant(index, 3, "axis").reshape(-1) if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        steps = (self.constant(index, 4, "step").reshape(-1) if len(node.input) > 4 and node.input[4]
                 else np.ones(len(starts), np.int64))
        if np.any(steps != 1):
            raise g.error(index, "a strided slice")
        dims = g.shapes[x]
        bounds = {}
        for start, end, axis in zip(starts, ends, axes, strict=True):
            axis = int(axis) % rank
            size = dims[axis]
            start, end = (int(v) + size if v < 0 else min(int(v), size) for v in (start, end))
            if (start, end) != (0, size):
                bounds[axis] = (start, end)
        if not bounds:
            self.drop(index, "a slice that keeps everything")
            return
        if set(bounds) == {1}:
            start, end = bounds[1]
            channels = make(ir.Channels, start=start or None, stop=None if end == dims[1] else end)
            self.emit(channels, index, [x], node.output[0])
            return
        if rank == 4 and set(bounds) <= {2, 3}:
            (top, bottom), (left, right) = bounds.get(2, (0, dims[2])), bounds.get(3, (0, dims[3]))
            self.emit(Crop(top, dims[2] - bottom, left, dims[3] - right), index, [x], node.output[0])
            return
        raise g.error(index, "a slice of more than the channels (cnndsl's 'channels A:B'), or of height and "
                             "width other than a centred crop before a concat ('concat crop')")

    def op_Split(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        x = node.input[0]
        dims = g.shapes[x]
        if a.get("axis", 0) % len(dims) != 1:
            raise g.error(index, "a split other than of the channels")
        if len(node.input) > 1 and node.input[1]:
            sizes = [int(s) for s in self.constant(index, 1, "split")]
        elif "split" in a:
            sizes = list(a["split"])
        else:
            parts = len(node.output)
            sizes = [-(-dims[1] // parts)] * (parts - 1)
            sizes.append(dims[1] - sum(sizes))
        start = 0
        for size, out in zip(sizes, node.output, strict=True):
            if out and g.consumers.get(out):
                end = start + size
                channels = make(ir.Channels, start=start or None, stop=None if end == dims[1] else end)
                self.layers.append(Layer(channels, (self.resolve(x),), out, index, {}, g.shape(x), g.shape(out)))
            start += size
        self.claimed.add(index)

    def op_Resize(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        decode = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
        mode = decode.get("mode", "nearest")
        transform = decode.get("coordinate_transformation_mode", "half_pixel")
        if mode == "nearest" and transform in ("asymmetric",) and decode.get("nearest_mode", "round_prefer_floor") \
                == "floor":
            kind = "nearest"
        elif mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel"):
            kind = "bilinear"
        else:
            raise g.error(index, f"resizing by mode {mode} with coordinates {transform}"
                                 f"{' and nearest_mode ' + decode.get('nearest_mode', '') if mode == 'nearest' else ''}"
                                 "; cnndsl's upsample is PyTorch's nearest (asymmetric, floor) or bilinear with "
                                 "align_corners=False (half_pixel)")
        self._upsample(index, kind)

    def op_Upsample(self, index: int) -> None:
        mode = self.g.attrs(index).get("mode", b"nearest")
        self._upsample(index, "nearest" if mode in (b"nearest", "nearest") else "bilinear")

    def _upsample(self, index: int, mode: str) -> None:
        g = self.g
        node = g.nodes[index]
        (_, h, w), (_, oh, ow) = g.shape(node.input[0]), g.shape(node.output[0])
        if oh % h == 0 and ow % w == 0 and oh // h == ow // w:
            up = make(ir.Upsample, mode=mode, factor=oh // h)
        else:
            up = make(ir.Upsample, mode=mode, size=(oh, ow))
        self.emit(up, index, [node.input[0]], node.output[0])

    def op_Concat(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        rank = len(g.shapes[node.output[0]])
        if g.attrs(index)["axis"] % rank != 1 or not all(v in g.data for v in node.input):
            raise g.error(index, "a concat other than of data on the channels")
        self.emit(Join("concat"), index, node.input, node.output[0])

    def _join(self, index: int, kind: str) -> None:
        g = self.g
        node = g.nodes[index]
        if all(v in g.data for v in node.input):
            self.emit(Join(kind), index, node.input, node.output[0])
            return
        x = next(v for v in node.input if v in g.data)
        value = g.const(next(v for v in node.input if v not in g.data))
        shape = g.shape(x)
        if kind == "mul" and _per_channel(value, shape):
            flat = value.reshape(-1)
            init = nice(flat[0]) if np.all(flat == flat[0]) else 1.0
            if not np.all(flat == flat[0]):
                self.notes.append(f"{g.describe(index)}: a per-channel scale is 'layerscale'; its initial value is "
                                  "written as 1 (the weights hold the values)")
            dims = (shape[0], 1, 1) if len(shape) == 3 else (shape[0],)
            self.emit(make(ir.LayerScale, init=init), index, [x], node.output[0],
                      {"layer_scale": flat.reshape(dims)})
            return
        what = {"add": "adding a constant (a bias on its own)", "mul": "multiplying by a constant"}[kind]
        raise g.error(index, f"{what}; cnndsl adds and multiplies branches, and scales per channel with "
                             "'layerscale'")

    def op_Add(self, index: int) -> None:
        self._join(index, "add")

    def op_Sum(self, index: int) -> None:
        self._join(index, "add")

    def op_Mul(self, index: int) -> None:
        self._join(index, "mul")

    def op_Softmax(self, index: int) -> None:
        g = self.g
        node = g.nodes[index]
        rank = len(g.shapes[node.input[0]])
        if g.attrs(index).get("axis", -1) % rank != 1:
            raise g.error(index, "a softmax over another axis than the channels")
        self.emit(make(ir.Activation, fn="softmax"), index, [node.input[0]], node.output[0])

    def op_Pad(self, index: int) -> None:
        g, a = self.g, self.g.attrs(index)
        node = g.nodes[index]
        mode = a.get("mode", b"constant")
        pads = a.get("pads")
        if pads is None:
            pads = [int(p) for p in self.constant(index, 1, "padding")]
        value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        user = self.only_consumer(node.output[0])
        if mode in (b"constant", "constant") and (value is None or np.all(value == 0)) and len(pads) == 8 and \
                not any(pads[:2]) and not any(pads[4:6]) and user is not None:
            extra = (pads[2], pads[3], pads[6], pads[7])
            op = g.nodes[user].op_type
            if op == "Conv" and not g.attrs(user).get("auto_pad") and g.nodes[user].input[0] == node.output[0]:
                self._conv_after_pad(index, user, extra)
                return
            if op == "AveragePool" and not g.attrs(user).get("count_include_pad", 0):
                self._avg_after_pad(index, user, extra)
                return
        raise g.error(index, "explicit padding not followed by a convolution or an average pool that it can "
                             "become the 'pad' of")

    def _conv_after_pad(self, pad: int, conv: int, extra) -> None:
        self.claimed.add(pad)
        self.op_Conv(conv, x=self.g.nodes[pad].input[0], extra=extra)

    def _avg_after_pad(self, pad: int, pool: int, extra) -> None:
        """cnndsl's ceil-mode average pool: zeros padded by a Pad, the ceil windows by the pool's own padding
        outside the divisor."""
        g = self.g
        x = g.nodes[pad].input[0]
        top, left, bottom, right = (extra[0], extra[1], extra[2], extra[3])
        if (top, left) != (bottom, right):
            raise g.error(pad, "asymmetric zero padding before an average pool")
        pool_pads = list(g.attrs(pool).get("pads", (0, 0, 0, 0)))
        if pool_pads[:2] != [0, 0]:
            raise g.error(pool, "an average pool that excludes leading padding from its divisor")
        kernel, stride = g.attrs(pool)["kernel_shape"], g.attrs(pool).get("strides", (1, 1))
        _, h, w = g.shape(x)
        hw = window(h, kernel[0], stride[0], top, top, ceil=True)
        ww = window(w, kernel[1], stride[1], left, left, ceil=True)
        out = g.shape(g.nodes[pool].output[0])
        if not (hw and ww and (hw.out, ww.out) == tuple(out[1:]) and hw.overhang == pool_pads[2]
                and ww.overhang == pool_pads[3]):
            raise g.error(pool, "an average pool that leaves padding out of the divisor (count_include_pad=0)")
        ceil = bool(pool_pads[2] or pool_pads[3])
        node = make(ir.Pool, mode="avg", kernel=tuple(kernel), stride=tuple(stride),
                    padding=Padding(top=top, bottom=top, left=left, right=left), ceil=ceil)
        self.emit(node, pad, [x], g.nodes[pool].output[0], claim=[pool])


def _per_channel(value: np.ndarray | None, shape: tuple[int, ...]) -> bool:
    """A constant with one value per channel, broadcast over the rest: (C, 1, 1) on a map, (C,) on a vector."""
    if value is None or value.size != shape[0] or value.size < 2:
        return False
    return value.shape[-1:] == (shape[0],) if len(shape) == 1 else value.shape[-3:] == (shape[0], 1, 1)


def _evaluate(op: str, args: list, attrs: dict):
    x = args[0]
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"):
        a, b = args[0], args[1]
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
                "Max": np.maximum, "Min": np.minimum}[op](a, b)
    if op == "Clip":
        low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min", -np.inf)
        high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max", np.inf)
        return np.clip(x, low, high)
    if op == "HardSigmoid":
        return np.clip(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)
    if op == "Gelu":
        approximate = attrs.get("approximate", b"none")
        return _gelu_tanh(x) if approximate in (b"tanh", "tanh") else _gelu(x)
    if op == "HardSwish":
        return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "LeakyRelu":
        return np.where(x >= 0, x, attrs.get("alpha", 0.01) * x)
    if op == "Elu":
        return np.where(x > 0, x, attrs.get("alpha", 1.0) * np.expm1(np.minimum(x, 0.0)))
    table = {"Sqrt": np.sqrt, "Erf": _erf, "Tanh": np.tanh, "Sigmoid": _sigmoid, "Relu": lambda v: np.maximum(v, 0.0),
             "Exp": np.exp, "Neg": np.negative, "Reciprocal": np.reciprocal, "Log": np.log, "Abs": np.abs,
             "Softplus": lambda v: np.log1p(np.exp(v))}
    return table[op](x)


def merge_adaptive(layers: list[Layer], g: OnnxGraph) -> list[Layer]:
    """An adaptive pool lowered axis by axis becomes one `pool ... adaptive HxW`: an uneven axis
    (`AxisAdaptive`) with, before it, the other axis' uneven windows or even pool (kernel = stride)."""
    by_output = {layer.output: layer for layer in layers}
    uses: dict[str, int] = {}
    for layer in layers:
        for value in layer.inputs:
            uses[value] = uses.get(value, 0) + 1
    gone: set[int] = set()
    out = []
    for layer in layers:
        if not isinstance(layer.node, AxisAdaptive):
            out.append(layer)
            continue
        source, size = layer.inputs[0], list(layer.out_shape[1:])
        before = by_output.get(source)
        if before is not None and uses.get(source) == 1:
            node = before.node
            other = 5 - layer.node.axis
            if isinstance(node, AxisAdaptive) and node.axis == other and node.mode == layer.node.mode:
                gone.add(id(before))
                source = before.inputs[0]
            elif isinstance(node, ir.Pool) and node.mode == layer.node.mode and node.kernel == node.stride and \
                    node.padding == Padding() and not node.ceil and node.kernel[layer.node.axis - 2] == 1 and \
                    before.in_shape[other - 1] % node.kernel[other - 2] == 0:
                gone.add(id(before))
                source = before.inputs[0]
        pool = make(ir.AdaptivePool, mode=layer.node.mode, size=tuple(size))
        out.append(Layer(pool, (source,), layer.output, layer.origin, {}, g.shape(source), layer.out_shape))
    return [layer for layer in out if id(layer) not in gone]


def recognise(graph: OnnxGraph) -> tuple[list[Layer], dict[str, np.ndarray], str, list[str]]:
    """The layers, the preprocessing constants, the value that is the network's output, and notes."""
    recogniser = Recogniser(graph)
    layers = recogniser.run()
    return layers, recogniser.preprocess, recogniser.resolve(graph.output), recogniser.notes
