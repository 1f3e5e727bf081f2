"""IR -> a readable NumPy model (forward and backward) over `cnndsl.runtime`.

`generate(net)` writes the Python source: a class named after the network whose `__init__`
creates the layers in statement order and whose `forward` has one line per statement, commented
with its `.cnn` source line. `backward` is the same program read backwards: every forward line
has a backward partner, and the backward lines are the partners in reverse order.

Branches are explicit. A fork (`skip1 = x`) becomes a gradient sum (`dx = dx + dskip1`), and a
join (`x = x + skip1`) hands the same gradient to both sides, so fan-in and fan-out need no
bookkeeping at run time.

`build(net, weights)` executes that same source: there is one code path, whether the model is
written to a file or used in memory.
"""

from __future__ import annotations

import keyword
import linecache
import os
import re
from typing import Any

import numpy as np

from ..errors import CnnDslError
from ..ir import Node, Residual
from ..kinds import emitter
from ..kinds.structure import is_gate
from .common import INDENT, LINE_LIMIT, class_name, printable, where, wrap_call

_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_COMMENT_COLUMN = 52


def _literal(value: Any) -> str:
    """Numbers and tuples as source; anything else is a bug in the emitter."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):  # repr would be a bare name
            raise CnnDslError(f"the numpy backend cannot use the number {value}",
                              hint="use a finite number in the network (a value overflowed to inf?)")
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    raise TypeError(f"cannot write {value!r} as a literal")


class _Emitter:
    def __init__(self, net):
        self.net = net
        self.shapes = net.shapes
        self.source = net.source
        self.inits: list[str] = []
        self.pairs: list[tuple[str, str, str]] = []  # (forward line, backward line, comment)
        # Until the first layer with parameters, the top-level layers pass `input_grad` on, so a
        # caller that needs no d(loss)/d(input) (training) skips computing it (see Layer.backward).
        self.prefix = True
        self.attrs: set[str] = set()
        self.counter = 0
        self.dropouts = 0
        self.registered: list[str] = ["preprocess"] if net.ir.preprocess is not None else []

    # ------------------------------------------------------------ names and comments

    def attr(self, node: Node) -> str:
        if not _NODE_NAME.fullmatch(node.name):
            raise CnnDslError(f"layer name {node.name!r} cannot name a Python attribute", node.span,
                              hint="block names must be identifiers")
        base = node.name.replace(".", "_")
        name, n = base, 1
        while name in self.attrs or keyword.iskeyword(name) or name in _RESERVED:
            n += 1
            name = f"{base}_{n}"
        self.attrs.add(name)
        return name

    def where(self, node: Node) -> str:
        text = where(node)
        if node.calls:
            call = self.net.source.statement(node.calls[-1])
            text += f"  (in {printable(call)}, line {node.calls[-1].line})"
        return text

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def pair(self, forward: str, backward: str, comment: str = "") -> None:
        self.pairs.append((forward, backward, comment))

    # ------------------------------------------------------------ statements

    def node(self, node: Node, var: str) -> None:
        emitter(self, node, "numpy")(node, var)

    def seq_numpy(self, seq, var: str) -> None:
        for item in seq.items:
            self.node(item, var)

    def leaf(self, node: Node, var: str, layer: str, *args: str) -> None:
        """A layer of the runtime: registered in `__init__`, called in `forward`, its backward in `backward`."""
        attr = self.layer_attr(node, layer, *args)
        flag = ", input_grad" if self.prefix and var == "x" else ""
        self.pair(f"{var} = self.{attr}({var}, train)", f"d{var} = self.{attr}.backward(d{var}{flag})",
                  self.where(node))
        if any(spec.trainable for spec in node.tensors(self.shapes.of(node))):
            self.prefix = False

    def layer_attr(self, node: Node, layer: str, *args: str) -> str:
        """Register runtime layer `rt.<layer>(name, *args)` for `node` in `__init__`; its attribute."""
        attr = self.attr(node)
        self.inits.extend(wrap_call(f"self.{attr} = self.add(", f"rt.{layer}", [repr(node.name), *args], INDENT * 2,
                                    tail=")"))
        self.registered.append(node.name)
        return attr

    # ------------------------------------------------------------ one emitter per kind: `<key>_numpy`

    def conv_numpy(self, node, var: str) -> None:
        shape = self.shapes.of(node)
        options = {"stride": (node.stride, (1, 1)), "pads": (shape.pads, (0, 0, 0, 0)),
                   "dilation": (node.dilation, (1, 1)), "groups": (shape.groups, 1), "bias": (node.bias, True)}
        self.leaf(node, var, "Conv2d", str(shape.in_channels), str(shape.out_channels),
                  f"kernel={_literal(node.kernel)}",
                  *(f"{key}={_literal(value)}" for key, (value, default) in options.items() if value != default),
                  "dtype=dtype")

    def pool_numpy(self, node, var: str) -> None:
        cls = {"max": "MaxPool2d", "avg": "AvgPool2d"}[node.mode]
        self.leaf(node, var, cls, f"kernel={_literal(node.kernel)}", f"stride={_literal(node.stride)}",
                  f"pads={_literal(self.shapes.of(node).pads)}", f"ceil={node.ceil}")

    def global_pool_numpy(self, node, var: str) -> None:
        cls = {"max": "GlobalMaxPool", "avg": "GlobalAvgPool"}[node.mode]
        self.leaf(node, var, cls)

    def adaptive_pool_numpy(self, node, var: str) -> None:
        cls = {"max": "AdaptiveMaxPool2d", "avg": "AdaptiveAvgPool2d"}[node.mode]
        self.leaf(node, var, cls, f"size={_literal(node.size)}")

    def fc_numpy(self, node, var: str) -> None:
        features = int(np.prod(self.shapes.of(node).input))
        self.leaf(node, var, "Linear", str(features), str(node.out_features), f"bias={node.bias}", "dtype=dtype")

    def flatten_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "Flatten")

    def dropout_numpy(self, node, var: str) -> None:
        self.dropouts += 1
        self.leaf(node, var, "Dropout", f"p={_literal(float(node.p))}", f"seed={self.dropouts - 1}")

    def droppath_numpy(self, node, var: str) -> None:
        self.dropouts += 1  # its own seeded stream, after the dropouts before it (`Model.seed`)
        self.leaf(node, var, "DropPath", f"p={_literal(float(node.p))}", f"seed={self.dropouts - 1}")

    def bn_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "BatchNorm", str(self.shapes.of(node).input[0]), f"eps={_literal(float(node.eps))}",
                  f"momentum={_literal(float(node.momentum))}", "dtype=dtype")

    def ln_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "LayerNorm", str(self.shapes.of(node).input[0]), f"eps={_literal(float(node.eps))}",
                  "dtype=dtype")

    def gn_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "GroupNorm", str(self.shapes.of(node).input[0]), str(node.groups),
                  f"eps={_literal(float(node.eps))}", "dtype=dtype")

    def layerscale_numpy(self, node, var: str) -> None:
        (spec,) = node.tensors(self.shapes.of(node))
        self.leaf(node, var, "LayerScale", _literal(spec.shape), _literal(float(node.init)), "dtype=dtype")

    def shuffle_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "ChannelShuffle", str(node.groups))

    def channels_numpy(self, node, var: str) -> None:
        self.leaf(node, var, "Channels", *map(str, node.bounds(self.shapes.of(node).input[0])))

    def upsample_numpy(self, node, var: str) -> None:
        factor = [f"factor={node.factor}"] if node.factor is not None else []
        self.leaf(node, var, "Upsample", _literal(tuple(self.shapes.of(node).output[1:])), repr(node.mode), *factor)

    def deconv_numpy(self, node, var: str) -> None:
        shape = self.shapes.of(node)
        options = {"stride": (node.stride, (1, 1)), "pads": (node.pads, (0, 0)), "outpad": (node.outpad, (0, 0)),
                   "groups": (shape.groups, 1), "bias": (node.bias, True)}
        self.leaf(node, var, "ConvTranspose2d", str(shape.in_channels), str(shape.out_channels),
                  f"kernel={_literal(node.kernel)}",
                  *(f"{key}={_literal(value)}" for key, (value, default) in options.items() if value != default),
                  "dtype=dtype")

    def activation_numpy(self, node, var: str) -> None:
        fn = node.function
        if node.alpha is not None and node.alpha != fn.default:
            self.leaf(node, var, fn.numpy, f"alpha={_literal(float(node.alpha))}")
        else:
            self.leaf(node, var, fn.numpy)

    def residual_numpy(self, node: Residual, var: str) -> None:
        self.prefix = False
        skip = self.fresh("skip")
        projects = self.shapes.of(node).projects
        what = "projected shortcut" if projects else "identity shortcut"
        # Fork: x feeds the body and the shortcut, so their gradients add up on the way back.
        self.pair(f"{skip} = {var}", f"d{var} = d{var} + d{skip}", f"{node.name}: {what}; {self.where(node)}")
        self.node(node.body, var)
        if projects:
            assert node.shortcut is not None
            self.node(node.shortcut, skip)
        self.pair(f"{var} = {var} + {skip}", f"d{skip} = d{var}", f"{node.name}: body + shortcut")

    def concat_numpy(self, node, var: str) -> None:
        names, grads = self.branches(node, var)
        if node.crop:  # `concat crop`: the larger branches' centres, their gradients padded back with zeros
            for name, grad, pads in zip(names, grads, node.crops(self.shapes), strict=True):
                if any(pads):
                    self.pair(f"{name} = rt.crop({name}, {_literal(pads)})", f"{grad} = rt.uncrop({grad}, "
                              f"{_literal(pads)})", f"{node.name}: centre crop (top, bottom, left, right)")
        channels = tuple(self.shapes.of(branch).output[0] for branch in node.branches)
        self.pair(f"{var} = rt.concat([{', '.join(names)}])",
                  f"{', '.join(grads)}{',' if len(grads) == 1 else ''} = rt.split(d{var}, {_literal(channels)})",
                  f"{node.name}: join on channels {'+'.join(map(str, channels))}")

    def add_numpy(self, node, var: str) -> None:
        names, grads = self.branches(node, var)
        self.pair(f"{var} = {' + '.join(names)}", f"{' = '.join(grads)} = d{var}", f"{node.name}: sum of branches")

    def mul_numpy(self, node, var: str) -> None:
        names, grads = self.branches(node, var)
        attr = self.layer_attr(node, "Multiply")
        self.prefix = False
        gates = [str(i) for i, b in enumerate(node.branches, 1) if is_gate(self.shapes.of(b).output,
                                                                          self.shapes.of(node).output)]
        what = f"product of branches (gate{'s' * (len(gates) > 1)} {', '.join(gates)} broadcast over HxW)" if gates \
            else "product of branches"
        self.pair(f"{var} = self.{attr}([{', '.join(names)}], train)",
                  f"{', '.join(grads)}{',' if len(grads) == 1 else ''} = self.{attr}.backward(d{var})",
                  f"{node.name}: {what}")

    def branches(self, node, var: str) -> tuple[list[str], list[str]]:
        """Every branch reads `var` (a fork: their gradients add up); returns their outputs and gradients."""
        self.prefix = False
        stem = self.fresh("branch")
        names = [f"{stem}_{i}" for i in range(1, len(node.branches) + 1)]
        grads = [f"d{n}" for n in names]
        self.pair(f"{' = '.join(names)} = {var}", f"d{var} = {' + '.join(grads)}",
                  f"{node.name}: every branch reads {var}; {self.where(node)}")
        for branch, name in zip(node.branches, names, strict=True):
            self.node(branch, name)
        return names, grads


_RESERVED = {"add", "forward", "backward", "params", "grads", "buffers", "layers", "dtype", "input", "seed",
             "zero_grad", "state_dict", "load_state_dict", "load_safetensors", "save_safetensors", "input_shape"}


def _lines(pairs, side: int) -> list[str]:
    """Statement lines with their comments at one column; a comment that would pass the line length
    goes on its own line above the statement."""
    out = []
    for pair in pairs:
        code, comment = pair[side], pair[2]
        line = f"{INDENT * 2}{code:<{_COMMENT_COLUMN}}  # {comment}" if comment else f"{INDENT * 2}{code}"
        if len(line) > LINE_LIMIT:
            out.append(f"{INDENT * 2}# {comment}"[:LINE_LIMIT])
            line = f"{INDENT * 2}{code}"
        if len(line) > LINE_LIMIT and code.endswith(")") and "(" in code:
            # a deeply nested layer's attribute: the call's arguments go on the next line
            head, args = code.rsplit("(", 1)
            out += [f"{INDENT * 2}{head}(", f"{INDENT * 3}{args[:-1]}", f"{INDENT * 2})"]
            continue
        out.append(line)
    return out


def generate(net) -> str:
    """The NumPy model of `net` as Python source (needs only numpy and cnndsl.runtime)."""
    cls = class_name(net.name)
    em = _Emitter(net)
    pre = net.ir.preprocess
    if pre is not None:
        channels = net.ir.input_shape[0]
        args = ["'preprocess'", str(channels), f"standardize={pre.standardize}",
                f"scale={_literal(float(pre.scale if pre.scale is not None else 1.0))}"]
        if pre.standardize and pre.mean is not None:
            args.append(f"mean={_literal(tuple(map(float, pre.mean)))}")
        if pre.standardize and pre.std is not None:
            args.append(f"std={_literal(tuple(map(float, pre.std)))}")
        em.inits.extend(wrap_call("self.preprocess = self.add(", "rt.Preprocess", [*args, "dtype=dtype"], INDENT * 2,
                                  tail=")"))
        line = pre.span.line if pre.span else 0
        em.pair("x = self.preprocess(x, train)", "dx = self.preprocess.backward(dx, input_grad)",
                f"line {line}: preprocess" if line else "preprocess")
    em.node(net.ir.body, "x")
    # Every tensor the model registers must be one tensor_specs names, in the same order.
    _check_registration(net, em)

    path = printable(os.path.basename(net.source.path))
    shape = _literal(tuple(net.ir.input_shape))
    output = _literal(tuple(net.shapes.of(net.ir.body).output))
    head = [
        f"# Generated by cnndsl from {path}: network {printable(net.name)}. Recompile instead of editing.",
        f'"""NumPy model of network {cls}: forward and backward, input (N, {shape[1:-1].rstrip(",")}).',
        "",
        "    model = build('weights.safetensors')       # or build() for cnndsl's seeded init; dtype=np.float64",
        "    y = model.forward(x, train=True)           # x: N x " + "x".join(map(str, net.ir.input_shape)),
        "    dx = model.backward(dloss_dy)              # fills model.grads, keyed like model.params",
        "    model.backward(dloss_dy, input_grad=False) # the same, skipping d(loss)/d(x): returns None",
        '"""',
        "",
        "import numpy as np",
        "",
        "from cnndsl import runtime as rt",
        "",
        "",
        f"class {cls}(rt.Model):",
        f"    input_shape = {shape}",
        f"    output_shape = {output}",
        "",
        "    def __init__(self, dtype=np.float32):",
        "        super().__init__(dtype)",
        *em.inits,
        "",
        "    def forward(self, x, train=False):",
        "        x = self.input(x)",
        *_lines(em.pairs, 0),
        "        return x",
        "",
        "    def backward(self, dy, input_grad=True):",
        "        dx = np.asarray(dy, dtype=self.dtype)",
        *_lines(reversed(em.pairs), 1),
        "        return dx",
        "",
        "",
        f"def build(weights=None, dtype=np.float32, seed=0) -> {cls}:",
        f'    """{cls} with cnndsl\'s seeded initialisation (the numbers every backend starts from),',
        '    or with the tensors of a .safetensors file."""',
        f"    model = {cls}(dtype)",
        "    if weights is None:",
        "        model.init_weights(seed)",
        "    else:",
        "        model.load_safetensors(weights)",
        "    return model",
        "",
    ]
    return "\n".join(head)


def _check_registration(net, em: _Emitter) -> None:
    owners = list(dict.fromkeys(spec.node for spec in net.tensor_specs()))
    order = [name for name in em.registered if name in set(owners)]
    if order != owners:
        raise AssertionError(f"numpy backend: layers {order} do not register the tensors of {owners} in order")


def build(net, weights=None, dtype: Any = np.float32):
    """The generated model, in memory: exec of `generate(net)`, weights from
    `cnndsl.weights.resolve_weights(net, weights, 0)` (None: the seeded init every backend shares)."""
    from ..weights import resolve_weights

    source = generate(net)
    filename = f"<cnndsl numpy {net.name}>"
    # Tracebacks through the model show its generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": f"cnndsl_numpy_{net.name}"}
    exec(compile(source, filename, "exec"), namespace)
    model = namespace[class_name(net.name)](dtype=dtype)
    model.load_state_dict(resolve_weights(net, weights, 0))
    return model
