"""IR -> readable PyTorch source, and that same source executed into an `nn.Module`.

    source = torch_codegen.generate(net)           # one self-contained .py file (imports only torch)
    model = torch_codegen.build(net)               # exec of exactly that source + cnndsl's seeded weights
    model = torch_codegen.build(net, "w.safetensors")   # or a {name: array} dict, checked by name and shape

The generated file has one `nn.Module` class per network and one helper class per distinct block
body (two calls of a block whose expansions are identical share a class). Every layer is an
attribute named after its IR node, so the module hierarchy spells the dotted IR names and
`state_dict()` keys are exactly `net.tensor_specs()`, in the same order. Branches and projecting
shortcuts are containers (`Branch`, `Shortcut`, ...): their layers run in the `forward` of the enclosing
class, one line per statement, each with its `.cnn` source line in a comment.

`build()` does not have a second code path: it executes the generated text (registered with
`linecache`, so tracebacks and `inspect.getsource` show the generated lines) and loads weights.

Figures that depend on the input size (the pads of `pad same`, channels of a depthwise conv, whether
a residual projects) come from `net.shapes`, never recomputed here. Asymmetric pads are applied
with `F.pad` before the conv or pool (`-inf` for max pool, zeros for avg pool, which then counts
them in the divisor as `count_include_pad=True` does).
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import keyword
import linecache
import math
import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnndsl import ir
from cnndsl.analysis.shapes import LayerShape, window
from cnndsl.kinds import emitter

from .common import INDENT, LINE_LIMIT, class_name, printable, where, wrap_call

if TYPE_CHECKING:
    from torch import nn

    from cnndsl.api import Net


# Names the generated file defines or imports at module level; user-chosen names never take them.
FILE_GLOBALS = ("torch", "nn", "F", "build")
RESERVED = frozenset(dir(builtins)) | frozenset(FILE_GLOBALS) | frozenset(("self", "x"))

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# IR node names end in their per-scope counter (`conv1`, `basic3`, `branch2`), which keeps them off
# every nn.Module attribute (`training`, `forward`, `to`): only such names become plain attributes.
_PLAIN_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[0-9]\Z")



# ---------------------------------------------------------------- names


class _Namespace:
    """Hands out identifiers (after torch.fx's `_Namespace`): cleaned of illegal characters, unique,
    never a Python keyword, a builtin or a name the generated file itself uses."""

    def __init__(self, reserved: Iterable[str] = RESERVED):
        self._used = set(reserved)

    def release(self, name: str) -> None:
        """`name` is dead from here on (a joined branch, a consumed shortcut): it may be handed out again."""
        self._used.discard(name)

    def create(self, candidate: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_]", "_", candidate) or "_"
        if name[0].isdigit():
            name = f"_{name}"
        base, suffix = name, 1
        while name in self._used or keyword.iskeyword(name):
            name = f"{base}_{suffix}"
            suffix += 1
        self._used.add(name)
        return name


# What each container holds; its layers run in the forward of the module that holds the container.
_CONTAINER_DOCS = {
    "branch": "A branch of a concat or add: its layers, run by the forward of the module that holds it.",
    "shortcut": "The projection of a residual: its layers, run by the forward of the module that holds it.",
    "concat": "A concat: its branches, run by the forward of the module that holds it.",
    "add": "An add: its branches, run by the forward of the module that holds it.",
    "preprocess": "The preprocessing constants (buffers): scale, and with standardize mean and std.",
    "": "Layers run by the forward of the module that holds them.",
}

# Module classes torch.nn lacks, written into the file once each and only where a layer needs one
# (`TorchGenerator.helper`); `{name}` is the class name the file gives it.
_HELPERS = {
    "LayerNorm2d": '''class {name}(nn.LayerNorm):
    """Layer norm over the channels at each position (ConvNeXt's LayerNorm2d): NCHW -> NHWC, nn.LayerNorm, back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2)''',
    "LayerScale": '''class {name}(nn.Module):
    """A learnable factor per channel (ConvNeXt's layer_scale): `shape` is (C, 1, 1), or (C,) on vectors."""

    def __init__(self, shape: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.full(shape, init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.layer_scale''',
    "ChannelShuffle": '''class {name}(nn.Module):
    """Channel shuffle (ShuffleNet): the C channels viewed as groups x C/groups, transposed, flattened."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(1, (self.groups, -1))  # N x groups x C/groups x ...
        return x.transpose(1, 2).flatten(1, 2)''',
    "Channels": '''class {name}(nn.Module):
    """Channels start..stop-1 of the input (ShuffleNetV2's split)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.stop]''',
}


def _plain_attribute(name: str) -> bool:
    return bool(_PLAIN_MODULE_NAME.match(name)) and not keyword.iskeyword(name) and not name.startswith("__")


def _attr(base: str, name: str) -> str:
    """Python for attribute `name` of `base`; `getattr` for anything that is not a plain attribute
    name (a leading `__` would be mangled by Python inside a class body)."""
    return f"{base}.{name}" if _plain_attribute(name) else f'getattr({base}, "{name}")'


def _check_module_name(node: ir.Node, part: str) -> None:
    if not _IDENTIFIER.match(part):
        raise ValueError(f"torch backend: node name {node.name!r} has the part {part!r}, which cannot name a "
                         f"PyTorch module (letters, digits and '_', not starting with a digit)")


# ---------------------------------------------------------------- literals and comments


def _num(value: int | float) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"torch backend: expected a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value):
        return repr(float(value))
    return f'float("{value}")'


def _pair(values: tuple[int, int]) -> str:
    return _num(values[0]) if values[0] == values[1] else f"({_num(values[0])}, {_num(values[1])})"


# ---------------------------------------------------------------- one class being written


@dataclass
class _ClassBody:
    """The `__init__` and `forward` of one generated class, for one IR scope (`prefix`)."""

    prefix: str  # "" for the network, "basic3." for a block call
    container_class: Callable[[str], str]  # the module class of a container (`branch2` -> `Branch`)
    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    locals: _Namespace = field(default_factory=_Namespace)
    containers: set[str] = field(default_factory=set)
    fresh: bool = False  # the flowing tensor was just made by an op that keeps no reference to it

    def relative(self, node: ir.Node) -> list[str]:
        if not node.name.startswith(self.prefix) or len(node.name) == len(self.prefix):
            raise ValueError(f"torch backend: node {node.name!r} is outside its scope {self.prefix!r}")
        parts = node.name[len(self.prefix):].split(".")
        for part in parts:
            _check_module_name(node, part)
        return parts

    def register(self, node: ir.Node, func: str, args: list[str]) -> str:
        """Add `node`'s module under its IR name; return the expression that reaches it."""
        parts = self.relative(node)
        base = "self"
        for depth, part in enumerate(parts[:-1], 1):
            path = ".".join(parts[:depth])
            if path not in self.containers:
                self.containers.add(path)
                self.init.extend(self._assign(base, part, self.container_class(part), []))
            base = _attr(base, part)
        self.init.extend(self._assign(base, parts[-1], func, args))
        return _attr(base, parts[-1])

    @staticmethod
    def _assign(base: str, name: str, func: str, args: list[str]) -> list[str]:
        indent = INDENT * 2
        if _plain_attribute(name):
            return wrap_call(f"{base}.{name} = ", func, args, indent)
        # add_module refuses names that clash with nn.Module's own attributes instead of shadowing them
        return wrap_call("", f"{base}.add_module", [f'"{name}"', f"{func}({', '.join(args)})"], indent)

    def line(self, code: str, comment: str) -> None:
        indent = INDENT * 2
        text = f"{indent}{code}"
        room = LINE_LIMIT - len(text) - 4
        if room >= 12:
            if len(comment) > room:
                comment = comment[:room - 3] + "..."
            self.forward.append(f"{text}  # {comment}")
        else:
            self.forward.append(f"{indent}# {comment[:LINE_LIMIT - len(indent) - 2]}")
            self.forward.append(text if len(text) <= LINE_LIMIT else f"{text}  # noqa: E501")


@dataclass
class _BlockClass:
    name: str
    block: str
    line: int
    body: _ClassBody
    calls: list[tuple[tuple[str, int | float], ...]] = field(default_factory=list)


# ---------------------------------------------------------------- the generator


class TorchGenerator:
    """Writes the module source for one network. One `<kind>_code` method per IR node class
    (`conv_code`, `residual_code`, ...), found by name like sqlglot's `<key>_sql` dispatch; each
    appends its `forward` line(s) and returns the variable that holds its output."""

    def __init__(self, net: Net, weights_path: str | None = None):
        self.net = net
        self.weights_path = weights_path
        self.network = net.ir
        self.shapes = net.shapes
        self.source = net.ir.source
        self.globals = _Namespace()
        self.blocks: dict[tuple, _BlockClass] = {}
        self.block_order: list[_BlockClass] = []
        self.uses_functional = False
        self.containers: dict[str, str] = {}  # role (`branch`, `shortcut`, ...) -> its container class
        self.helpers: dict[str, str] = {}  # helper module classes written where used (`LayerNorm2d`): key -> source

    # ------------------------------------------------------------ driving
    def generate(self) -> str:
        network_class = self.globals.create(class_name(self.network.name))  # the network's name first
        top = _ClassBody(prefix="", container_class=self.container_class)
        if self.network.preprocess is not None:
            self.preprocess(top)
        out = self.seq_items(top, self.network.body, "x", "x")
        top.forward.append(f"{INDENT * 2}return {out}")
        parts = [self.header()]
        for role, name in self.containers.items():
            parts.append(f'class {name}(nn.Module):\n{INDENT}"""{_CONTAINER_DOCS[role]}"""')
        parts.extend(self.helpers.values())
        for block in self.block_order:
            parts.append(self.class_text(block.name, self.block_doc(block), block.body))
        parts.append(self.class_text(network_class, self.network_doc(), top, self.network_attrs()))
        parts.append(self.build_text(network_class))
        return "\n\n\n".join(parts) + "\n"

    def emit(self, body: _ClassBody, node: ir.Node, src: str, dst: str) -> str:
        return emitter(self, node, "torch")(body, node, src, dst)

    def seq_items(self, body: _ClassBody, seq: ir.Seq, src: str, dst: str) -> str:
        """The statements of `seq` reading `src`; the first writes `dst`. Returns the output variable
        (`src` itself when there are no statements: an empty branch is the identity)."""
        body.fresh = False  # the input may be held elsewhere (the caller, another branch, a shortcut)
        current = src
        for item in seq.items:
            current = self.emit(body, item, current, dst)
        return current

    def shape(self, node: ir.Node) -> LayerShape:
        return self.shapes.of(node)

    def comment(self, node: ir.Node, note: str | None = None) -> str:
        return f"line {node.span.line}: {printable(note)}" if note else where(node)

    def layer(self, body: _ClassBody, node: ir.Node, func: str, args: list[str], call: Callable[[str], str],
              dst: str, fresh: bool) -> str:
        ref = body.register(node, func, args)
        body.line(f"{dst} = {call(ref)}", self.comment(node))
        body.fresh = fresh
        return dst

    def pad(self, src: str, pads: tuple[int, int, int, int], value: str | None = None) -> str:
        self.uses_functional = True
        top, bottom, left, right = pads
        fill = f", value={value}" if value is not None else ""
        return f"F.pad({src}, ({left}, {right}, {top}, {bottom}){fill})"

    # ------------------------------------------------------------ leaves
    def conv_torch(self, body: _ClassBody, node: ir.Conv, src: str, dst: str) -> str:
        shape = self.shape(node)
        top, bottom, left, right = shape.pads
        symmetric = top == bottom and left == right
        args = [str(shape.in_channels), str(shape.out_channels), _pair(node.kernel)]
        if node.stride != (1, 1):
            args.append(f"stride={_pair(node.stride)}")
        if symmetric and (top or left):
            args.append(f"padding={_pair((top, left))}")
        if node.dilation != (1, 1):
            args.append(f"dilation={_pair(node.dilation)}")
        if shape.groups != 1:
            args.append(f"groups={shape.groups}")
        if not node.bias:
            args.append("bias=False")
        x = src if symmetric else self.pad(src, shape.pads)
        return self.layer(body, node, "nn.Conv2d", args, lambda m: f"{m}({x})", dst, fresh=True)

    def pool_torch(self, body: _ClassBody, node: ir.Pool, src: str, dst: str) -> str:
        shape = self.shape(node)
        top, bottom, left, right = shape.pads
        symmetric = top == bottom and left == right
        args = [_pair(node.kernel)]
        if node.stride != node.kernel:
            args.append(f"stride={_pair(node.stride)}")
        if symmetric and (top or left):
            args.append(f"padding={_pair((top, left))}")
        if node.ceil:
            args.append("ceil_mode=True")
        if symmetric:
            x, sizes = src, [(size, pad, pad) for size, pad in zip(shape.input[1:], (top, left), strict=True)]
        else:
            x = self.pad(src, shape.pads, 'float("-inf")' if node.mode == "max" else None)
            sizes = [(size + begin + end, 0, 0)
                     for size, begin, end in zip(shape.input[1:], (top, left), (bottom, right), strict=True)]
        # PyTorch's ceil rule lets a window start in padding it was handed explicitly, which the
        # shape pass (windows may not start in trailing padding) does not: drop that extra window.
        torch_out = [window(size, k, s, pad, pad, ceil=node.ceil).out
                     for (size, pad, _), k, s in zip(sizes, node.kernel, node.stride, strict=True)]
        want = list(shape.output[1:])
        if any(t < w for t, w in zip(torch_out, want, strict=True)):
            raise AssertionError(f"torch backend: pool {node.name} gives {torch_out}, analysis says {want}")
        crop = f"[:, :, :{want[0]}, :{want[1]}]" if torch_out != want else ""
        func = "nn.MaxPool2d" if node.mode == "max" else "nn.AvgPool2d"
        return self.layer(body, node, func, args, lambda m: f"{m}({x}){crop}", dst, fresh=True)

    def global_pool_torch(self, body: _ClassBody, node: ir.GlobalPool, src: str, dst: str) -> str:
        func = "nn.AdaptiveMaxPool2d" if node.mode == "max" else "nn.AdaptiveAvgPool2d"
        return self.layer(body, node, func, ["1"], lambda m: f"{m}({src})", dst, fresh=True)

    def fc_torch(self, body: _ClassBody, node: ir.Linear, src: str, dst: str) -> str:
        shape = self.shape(node)
        args = [str(math.prod(shape.input)), str(node.out_features)]
        if not node.bias:
            args.append("bias=False")
        # on a CxHxW input fc is the HxW conv to N, i.e. Linear on the C,H,W-ordered flattening
        x = f"torch.flatten({src}, 1)" if len(shape.input) > 1 else src
        return self.layer(body, node, "nn.Linear", args, lambda m: f"{m}({x})", dst, fresh=True)

    def flatten_torch(self, body: _ClassBody, node: ir.Flatten, src: str, dst: str) -> str:
        return self.layer(body, node, "nn.Flatten", [], lambda m: f"{m}({src})", dst, fresh=False)

    def dropout_torch(self, body: _ClassBody, node: ir.Dropout, src: str, dst: str) -> str:
        # identity in evaluation, so its output may be its input: not fresh
        return self.layer(body, node, "nn.Dropout", [_num(node.p)], lambda m: f"{m}({src})", dst, fresh=False)

    def bn_torch(self, body: _ClassBody, node: ir.BatchNorm, src: str, dst: str) -> str:
        shape = self.shape(node)
        func = "nn.BatchNorm2d" if len(shape.input) == 3 else "nn.BatchNorm1d"
        args = [str(shape.input[0])]
        if node.eps != 1e-5:
            args.append(f"eps={_num(node.eps)}")
        if node.momentum != 0.1:
            args.append(f"momentum={_num(node.momentum)}")
        return self.layer(body, node, func, args, lambda m: f"{m}({src})", dst, fresh=True)

    def activation_torch(self, body: _ClassBody, node: ir.Activation, src: str, dst: str) -> str:
        fn = node.function
        args = [_num(node.argument)] if fn.default is not None else []
        if fn.name == "softmax":
            args.append("dim=1")
        # In place (as torchvision does) only on a tensor this forward just made and nobody else
        # holds; the saving matters for speed parity with hand-written modules.
        if fn.inplace and body.fresh:
            args.append("inplace=True")
        return self.layer(body, node, fn.torch, args, lambda m: f"{m}({src})", dst, fresh=False)

    def helper(self, key: str) -> str:
        """The name of helper module class `key` of `_HELPERS`, written into the file at its first use."""
        if key not in self.helpers:
            name = self.globals.create(key)
            self.helpers[key] = _HELPERS[key].replace("{name}", name, 1)
        return re.match(r"class (\w+)", self.helpers[key]).group(1)

    def ln_torch(self, body: _ClassBody, node: ir.LayerNorm, src: str, dst: str) -> str:
        shape = self.shape(node)
        func = self.helper("LayerNorm2d") if len(shape.input) == 3 else "nn.LayerNorm"
        args = [str(shape.input[0])] + ([f"eps={_num(node.eps)}"] if node.eps != 1e-5 else [])
        return self.layer(body, node, func, args, lambda m: f"{m}({src})", dst, fresh=True)

    def gn_torch(self, body: _ClassBody, node: ir.GroupNorm, src: str, dst: str) -> str:
        args = [str(node.groups), str(self.shape(node).input[0])]
        if node.eps != 1e-5:
            args.append(f"eps={_num(node.eps)}")
        return self.layer(body, node, "nn.GroupNorm", args, lambda m: f"{m}({src})", dst, fresh=True)

    def layerscale_torch(self, body: _ClassBody, node: ir.LayerScale, src: str, dst: str) -> str:
        (spec,) = node.tensors(self.shape(node))
        args = [repr(spec.shape), _num(float(node.init))]
        return self.layer(body, node, self.helper("LayerScale"), args, lambda m: f"{m}({src})", dst, fresh=True)

    def shuffle_torch(self, body: _ClassBody, node: ir.Shuffle, src: str, dst: str) -> str:
        # not fresh: with 1 or C groups the result is a view of the input
        return self.layer(body, node, self.helper("ChannelShuffle"), [str(node.groups)], lambda m: f"{m}({src})",
                          dst, fresh=False)

    def channels_torch(self, body: _ClassBody, node: ir.Channels, src: str, dst: str) -> str:
        args = list(map(str, node.bounds(self.shape(node).input[0])))
        # not fresh: a slice is a view of its input
        return self.layer(body, node, self.helper("Channels"), args, lambda m: f"{m}({src})", dst, fresh=False)

    # ------------------------------------------------------------ structure
    def seq_torch(self, body: _ClassBody, node: ir.Seq, src: str, dst: str) -> str:
        if node.block is None:
            return self.seq_items(body, node, src, dst)
        cls = self.block_class(node)
        ref = body.register(node, cls, [])
        call = node.calls[-1] if node.calls else node.span
        body.line(f"{dst} = {ref}({src})", f"line {call.line}: {printable(self.source.statement(call))}")
        body.fresh = False
        return dst

    def residual_torch(self, body: _ClassBody, node: ir.Residual, src: str, dst: str) -> str:
        shape = self.shape(node)
        keep = src
        if src == dst:  # the body overwrites the flowing variable: keep the input for the shortcut
            keep = body.locals.create("shortcut")
            body.line(f"{keep} = {src}", self.comment(node))
        out = self.seq_items(body, node.body, src, dst)
        # Add in place (as torchvision's `out += identity`) when the body's result is a tensor of
        # its own that its producer does not keep for backward; saves an allocation per block.
        in_place = body.fresh and out == dst
        if shape.projects and node.shortcut is not None:
            target = keep if keep != src else body.locals.create("shortcut")
            short = self.seq_items(body, node.shortcut, keep, target)
            note = "residual: body + projected shortcut"
        else:
            short = keep
            note = "residual: body + input (identity shortcut)"
        code = f"{dst} += {short}" if in_place else f"{dst} = {out} + {short}"
        body.line(code, self.comment(node, note=note))
        for name in {keep, short} - {src}:
            body.locals.release(name)
        body.fresh = True
        return dst

    def concat_torch(self, body: _ClassBody, node: ir.Concat, src: str, dst: str) -> str:
        outs = self.branches(body, node, src)
        self.join(body, node, dst, "torch.cat(", f"[{', '.join(outs)}], 1)", outs)
        self.release(body, outs, src)
        body.fresh = True
        return dst

    def add_torch(self, body: _ClassBody, node: ir.Add, src: str, dst: str) -> str:
        outs = self.branches(body, node, src)
        self.join(body, node, dst, "", " + ".join(outs), outs)
        self.release(body, outs, src)
        body.fresh = len(outs) > 1
        return dst

    def branches(self, body: _ClassBody, node: ir.Concat | ir.Add, src: str) -> list[str]:
        outs = []
        for index, branch in enumerate(node.branches, 1):
            # an empty branch is the identity: it reads the input and needs no variable of its own
            var = body.locals.create(f"branch{index}") if branch.items else src
            outs.append(self.seq_items(body, branch, src, var))
        return outs

    @staticmethod
    def release(body: _ClassBody, outs: list[str], src: str) -> None:
        for out in set(outs) - {src}:
            body.locals.release(out)

    def join(self, body: _ClassBody, node: ir.Node, dst: str, func: str, expr: str, outs: list[str]) -> None:
        code = f"{dst} = {func}{expr}"
        if len(INDENT * 2 + code) <= LINE_LIMIT - 20:
            body.line(code, self.comment(node))
            return
        body.forward.append(f"{INDENT * 2}# {self.comment(node)}")
        sep = "," if func else " +"
        close = "], 1)" if func else ")"
        body.forward.append(f"{INDENT * 2}{dst} = {func}{'[' if func else '('}")
        for i, out in enumerate(outs):
            body.forward.append(f"{INDENT * 3}{out}{sep if i < len(outs) - 1 or func else ''}")
        body.forward.append(f"{INDENT * 2}{close}")

    def block_class(self, seq: ir.Seq) -> str:
        """The helper class for one block call; calls whose expansions are identical share it."""
        inner = _ClassBody(prefix=f"{seq.name}.", container_class=self.container_class)
        out = self.seq_items(inner, seq, "x", "x")
        inner.forward.append(f"{INDENT * 2}return {out}")
        key = (seq.block, tuple(inner.init), tuple(inner.forward))
        found = self.blocks.get(key)
        if found is None:
            found = _BlockClass(self.globals.create(class_name(seq.block or "block", "Block")), seq.block or "",
                                seq.span.line, inner)
            self.blocks[key] = found
            self.block_order.append(found)
        if seq.args not in found.calls:
            found.calls.append(seq.args)
        return found.name

    def container_class(self, part: str) -> str:
        """The class of the module that holds a branch's or a shortcut's layers (`branch2` -> `Branch`),
        written once at the top of the file."""
        role = re.sub(r"\d+$", "", part)
        role = role if role in _CONTAINER_DOCS else ""
        if role not in self.containers:
            self.containers[role] = self.globals.create(class_name(role or "container"))
        return self.containers[role]

    def preprocess(self, top: _ClassBody) -> None:
        pre = self.network.preprocess
        assert pre is not None
        channels = self.network.input_shape[0]
        scale = pre.scale if pre.scale is not None else 1.0
        top.init.append(f"{INDENT * 2}self.preprocess = {self.container_class('preprocess')}()")
        top.init.extend(wrap_call("", "self.preprocess.register_buffer",
                                   ['"scale"', f"torch.tensor({_num(float(scale))})"], INDENT * 2))
        line = pre.span.line if pre.span is not None else 0
        top.line("x = x * self.preprocess.scale", f"line {line}: preprocess: scale")
        if pre.standardize:
            for role, given, default in (("mean", pre.mean, "torch.zeros"), ("std", pre.std, "torch.ones")):
                value = (f"torch.tensor([{', '.join(_num(float(v)) for v in given)}])" if given is not None
                         else f"{default}({channels})")
                top.init.extend(wrap_call("", "self.preprocess.register_buffer", [f'"{role}"', value], INDENT * 2))
            view = ".view(-1, 1, 1)" if len(self.network.input_shape) == 3 else ""
            top.line(f"x = (x - self.preprocess.mean{view}) / self.preprocess.std{view}",
                     f"line {line}: preprocess: standardize")

    # ------------------------------------------------------------ text
    def header(self) -> str:
        from cnndsl import __version__

        path = Path(self.source.path).name if self.source.path != "<string>" else "<string>"
        digest = hashlib.sha256(self.source.text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        shape = "x".join(map(str, self.network.input_shape))
        lines = [
            f"# Generated by cnndsl {__version__} from {printable(path)[:60]} (sha256 {digest}):",
            f"# network {printable(self.network.name)[:60]}, input {shape}.",
            "# Do not edit: change the .cnn file and compile again (cnndsl compile FILE --target torch).",
            "# Parameter and buffer names are the .cnn layer names (docs/backends.md), so weights load by name:",
            '#     model = build()  # or build("weights.safetensors"), loaded with safetensors.torch',
            "# Branches and projecting shortcuts are containers (Branch, Shortcut, ...) that keep those names;",
            "# their layers run in the forward of the class that holds them.",
        ]
        imports = ["import torch"]
        if self.uses_functional:
            imports.append("import torch.nn.functional as F")
        imports.append("from torch import nn")
        return "\n".join(lines) + "\n\n" + "\n".join(imports)

    def class_text(self, name: str, doc: str, body: _ClassBody, attrs: list[str] = ()) -> str:
        out = [f"class {name}(nn.Module):", f'{INDENT}"""{doc}"""', ""]
        for attr in attrs:
            out.append(f"{INDENT}{attr}")
        if attrs:
            out.append("")
        out.append(f"{INDENT}def __init__(self) -> None:")
        out.append(f"{INDENT * 2}super().__init__()")
        out.extend(body.init)
        out.append("")
        out.append(f"{INDENT}def forward(self, x: torch.Tensor) -> torch.Tensor:")
        out.extend(body.forward)
        return "\n".join(out)

    def block_doc(self, block: _BlockClass) -> str:
        calls = ", ".join(f"{block.block}({', '.join(f'{k}={_num(v)}' for k, v in args)})" for args in block.calls)
        doc = f"Block {block.block} (line {block.line}) as {calls}."
        return doc if len(doc) + 7 <= LINE_LIMIT else f"Block {block.block} (line {block.line})."

    def network_doc(self) -> str:
        report = self.net.report
        return (f"Network {self.network.name}: input {'x'.join(map(str, self.network.input_shape))} -> output "
                f"{'x'.join(map(str, report.output))}, {report.params:,} parameters.")

    def network_attrs(self) -> list[str]:
        return [f"input_shape = {tuple(self.network.input_shape)!r}"]

    def build_text(self, cls: str) -> str:
        # `cnndsl compile --weights W` makes W the default, so `build()` gives the trained model.
        default = repr(self.weights_path) if self.weights_path is not None else "None"
        return (f"def build(weights: str | None = {default}) -> {cls}:\n"
                f'{INDENT}"""A fresh {cls}. Without `weights`: PyTorch\'s default initialisation (conv and linear\n'
                f"{INDENT}weights kaiming-uniform, biases uniform in +-1/sqrt(fan_in), batch norm weight 1, bias 0),\n"
                f"{INDENT}drawn from torch's global generator (`torch.manual_seed` fixes it); cnndsl's seeded\n"
                f"{INDENT}initialisation, the same numbers in every backend, is `net.to_torch()` or `cnndsl compile\n"
                f"{INDENT}--weights`. With `weights`, a .safetensors file loaded by tensor name (strictly: a missing,\n"
                f"{INDENT}extra or mis-shaped tensor is an error).\"\"\"\n"
                f"{INDENT}model = {cls}()\n"
                f"{INDENT}if weights is not None:\n"
                f"{INDENT * 2}from safetensors.torch import load_file\n\n"
                f"{INDENT * 2}model.load_state_dict(load_file(weights))\n"
                f"{INDENT}return model")


# ---------------------------------------------------------------- public API


def generate(net: Net, weights: str | os.PathLike | dict | None = None) -> str:
    """Readable, self-contained Python source (imports only torch) defining the network's
    `nn.Module` and `build(weights=None)`. The file carries no tensors; `weights`, when given, is
    checked against the network (names and shapes) so a compile with `--weights` fails early and
    clearly, and a path becomes `build()`'s default, so the compiled file loads it."""
    path = None
    if weights is not None:
        from cnndsl.weights import resolve_weights

        resolve_weights(net, weights)
        if isinstance(weights, (str, os.PathLike)):
            path = os.path.abspath(weights)
    return TorchGenerator(net, path).generate()


def build(net: Net, weights: str | os.PathLike | dict | None = None, seed: int = 0) -> nn.Module:
    """The generated module, in memory: `generate(net)` executed, then weights loaded by name:
    None (cnndsl's seeded initialisation, identical in every backend), a .safetensors path or a dict."""
    import numpy as np
    import torch

    from cnndsl.weights import resolve_weights

    tensors = resolve_weights(net, weights, seed=seed)
    module = load_source(generate(net), f"<cnndsl-torch {net.name}>")["build"]()
    state = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in tensors.items()}
    expected = list(module.state_dict())
    if expected != list(state):
        raise AssertionError(f"torch backend: module tensors {expected[:5]}... differ from tensor_specs "
                             f"{list(state)[:5]}...")
    module.load_state_dict(state, strict=True)
    return module


_loaded = itertools.count(1)


def load_source(source: str, filename: str) -> dict[str, Any]:
    """Execute generated source as a module of its own (registered in `sys.modules` under a unique
    name, its text in `linecache`), so tracebacks, `inspect.getsource` and in-process pickling
    work as they do for an imported file. Returns the module's namespace."""
    name = f"_{re.sub(r'[^A-Za-z0-9]+', '_', filename).strip('_')}_{next(_loaded)}"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own generated code
    return module.__dict__
