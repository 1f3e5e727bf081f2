"""IR -> readable PyTorch source, and that same source executed into an `nn.Module`.

    source = torch_codegen.generate(net)           # one self-contained .py file (imports only torch)
    model = torch_codegen.build(net)               # exec of exactly that source + cnndsl's seeded weights
    model = torch_codegen.build(net, "w.safetensors")   # or a {name: array} dict, checked by name and shape

The generated file has one `nn.Module` class per block definition and one for the network. A block's
class is written once from the definition and built once per call with that call's values, as
torchvision's `BasicBlock(inplanes, planes, stride, downsample)`: its constructor takes the channels
entering the call, the block's parameters and what else differs between calls (whether a residual
projects, the pads of `pad same`); see `backends/templates.py` for how each value finds its
expression. Every layer is an attribute named after its IR node, so the module hierarchy spells the
dotted IR names and `state_dict()` keys are exactly `net.tensor_specs()`, in the same order. A
branch or a projecting shortcut is an `nn.Sequential` of its layers (torchvision's `downsample`), a
join (`concat1`, `mul1`) an `nn.ModuleDict` of its branches; their layers run in the `forward` of the
enclosing class, one line per statement, each with its `.cnn` source line in a comment.

`build()` does not have a second code path: it executes the generated text (registered with
`linecache`, so tracebacks and `inspect.getsource` show the generated lines) and loads weights.

Figures that depend on the input size (the pads of `pad same`, channels of a depthwise conv, whether
a residual projects) come from `net.shapes`, never recomputed here. Asymmetric pads are applied
with `F.pad` before the conv or pool (`-inf` for max pool, zeros for avg pool, which then counts
them in the divisor as `count_include_pad=True` does).
"""

from __future__ import annotations

import ast
import builtins
import functools
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
from cnndsl import syntax as S
from cnndsl.analysis.shapes import LayerShape, active, window
from cnndsl.kinds import emitter

from .common import INDENT, LINE_LIMIT, class_name, printable, where, wrap_call
from .templates import (
    HELPER_SOURCE,
    ZERO,
    Inst,
    Part,
    Scope,
    Translator,
    add,
    align,
    annotation,
    anti_unify,
    code,
    evaluate,
    fit,
    free_names,
    increments,
    kinds,
    literal,
    literal_value,
    mul,
    name,
    names_in,
    per_call,
    same,
    statement_span,
    stem,
    substitute,
    uniform,
    usual,
    varies_within_a_call,
)

if TYPE_CHECKING:
    from torch import nn

    from cnndsl.api import Net


# Names the generated file defines or imports at module level; user-chosen names never take them.
FILE_GLOBALS = ("torch", "nn", "F", "build")
RESERVED = frozenset(dir(builtins)) | frozenset(FILE_GLOBALS) | frozenset(("self", "x"))

# nn.Module's own attributes (torch 2.13): the plain attributes a class sets (`self.pre`) keep off them
_MODULE_ATTRIBUTES = frozenset("""
    T_destination _apply _backward_hooks _backward_pre_hooks _buffers _call_impl _compiled_call_impl
    _forward_hooks _forward_hooks_always_called _forward_hooks_with_kwargs _forward_pre_hooks
    _forward_pre_hooks_with_kwargs _get_backward_hooks _get_backward_pre_hooks _get_name
    _is_full_backward_hook _load_from_state_dict _load_state_dict_post_hooks
    _load_state_dict_pre_hooks _maybe_warn_non_full_backward_hook _modules _named_members
    _non_persistent_buffers_set _parameters _register_load_state_dict_pre_hook
    _register_state_dict_hook _replicate_for_data_parallel _save_to_state_dict _slow_forward
    _state_dict_hooks _state_dict_pre_hooks _version _wrapped_call_impl add_module apply bfloat16
    buffers call_super_init children compile cpu cuda double dump_patches eval extra_repr float
    forward get_buffer get_extra_state get_parameter get_submodule half ipu load_state_dict modules
    mtia named_buffers named_children named_modules named_parameters parameters
    register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
""".split())

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

    def taken(self, name: str) -> bool:
        return name in self._used

    def reserve(self, name: str) -> None:
        """`name` is taken by something else (a module): never hand it out."""
        self._used.add(name)

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
    "preprocess": "The preprocessing constants (buffers): scale, and with standardize mean and std.",
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
    "DropPath": '''class {name}(nn.Module):
    """Stochastic depth (torchvision's StochasticDepth(p, "row")): in training each sample's residual body
    is dropped with probability p and kept ones are scaled by 1/(1 - p); the identity in evaluation."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)''',
    "Channels": '''class {name}(nn.Module):
    """Channels start..stop-1 of the input (ShuffleNetV2's split)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.stop]''',
}


def _conv_args(shape, node, *options: tuple[str, tuple[int, int], tuple[int, int]]) -> list[str]:
    """nn.Conv2d's and nn.ConvTranspose2d's arguments: the channels and kernel, then the stride and
    `options` (keyword, value, PyTorch's default) where they are not the default, groups, bias."""
    args = [str(shape.in_channels), str(shape.out_channels), _pair(node.kernel)]
    args += [f"{key}={_pair(value)}" for key, value, default in (("stride", node.stride, (1, 1)), *options)
             if value != default]
    if shape.groups != 1:
        args.append(f"groups={shape.groups}")
    if not node.bias:
        args.append("bias=False")
    return args


def _plain_attribute(name: str) -> bool:
    return bool(_PLAIN_MODULE_NAME.match(name)) and not keyword.iskeyword(name) and not name.startswith("__")


def _attr(base: str, part: Part) -> str:
    """Python for the module `part` of `base`; `getattr` for anything that is not a plain attribute
    name (a leading `__` would be mangled by Python inside a class body) or is computed (`f"conv{i + 1}"`)."""
    static = part.static
    if static is not None and _plain_attribute(static):
        return f"{base}.{static}"
    return f"getattr({base}, {part.code()})"


def _path(parts: tuple[Part, ...]) -> str:
    """Python for the module at `parts` below `self`."""
    base = "self"
    for part in parts:
        base = _attr(base, part)
    return base


def _assign(parts: tuple[Part, ...], value: str, indent: str, func: str | None = None,
            args: list[str] = ()) -> list[str]:
    """`self.<parts> = value` (`value` is `func(args)` where `func` is given, wrapped to the line length)."""
    base, last = _path(parts[:-1]), parts[-1]
    static = last.static
    if static is not None and _plain_attribute(static):
        if func is None:
            return [f"{indent}{base}.{static} = {value}"]
        return wrap_call(f"{base}.{static} = ", func, list(args), indent)
    # add_module refuses names that clash with nn.Module's own attributes instead of shadowing them
    value = f"{func}({', '.join(args)})" if func else value
    return wrap_call("", f"{base}.add_module", [last.code(), value], indent)


def _commented(lines: list[str], comment: str | None, indent: str) -> list[str]:
    """`lines` with `comment` after a lone line where it fits (shortened if it must), else on a line above."""
    if comment is None:
        return lines
    if len(lines) == 1:
        room = LINE_LIMIT - len(lines[0]) - 4
        if room >= 12:
            return [f"{lines[0]}  # {comment if len(comment) <= room else comment[:room - 3] + '...'}"]
    return [f"{indent}# {comment}"[:LINE_LIMIT]] + [line if len(line) <= LINE_LIMIT else f"{line}  # noqa: E501"
                                                    for line in lines]


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


def _symmetric(pads: tuple[int, int, int, int]) -> bool:
    top, bottom, left, right = pads
    return top == bottom and left == right


def _pool_output(node: ir.Pool, shape: LayerShape, symmetric: bool) -> list[int]:
    """The height and width PyTorch's pool gives, with the pads in the layer (`symmetric`) or applied by
    F.pad before it. Its ceil rule lets a window start in padding it was handed explicitly, which the
    shape pass (windows may not start in trailing padding) does not: that extra window is cropped."""
    top, bottom, left, right = shape.pads
    if symmetric:
        sizes = [(size, pad) for size, pad in zip(shape.input[1:], (top, left), strict=True)]
    else:
        sizes = [(size + begin + end, 0) for size, begin, end in zip(shape.input[1:], (top, left), (bottom, right),
                                                                       strict=True)]
    out = [window(size, k, s, pad, pad, ceil=node.ceil).out
           for (size, pad), k, s in zip(sizes, node.kernel, node.stride, strict=True)]
    if any(t < w for t, w in zip(out, shape.output[1:], strict=True)):
        raise AssertionError(f"torch backend: pool {node.name} gives {out}, analysis says {list(shape.output[1:])}")
    return out


# torch's defaults for the keywords emitters leave out where they have them (one class passes a keyword
# where any of its calls needs it); a pool's stride defaults to its kernel, its first argument
_KEYWORD_DEFAULTS = {"stride": "1", "padding": "0", "dilation": "1", "groups": "1", "bias": "True",
                     "ceil_mode": "False", "eps": "1e-05", "momentum": "0.1", "inplace": "False"}
_STRIDE_IS_KERNEL = {"nn.MaxPool2d", "nn.AvgPool2d"}
# Which expression an argument comes from, tried first where its value differs between calls: "in", the
# channels entering the layer, or the option of the statement (`-> c` is "out", `/s` "stride", ...)
_HINTS: dict[object, str] = {("nn.Conv2d", 0): "in", ("nn.Conv2d", 1): "out", ("nn.Conv2d", 2): "kernel",
                             ("nn.Linear", 0): "in", ("nn.Linear", 1): "out", ("nn.BatchNorm2d", 0): "in",
                             ("nn.BatchNorm1d", 0): "in", ("nn.MaxPool2d", 0): "kernel", ("nn.AvgPool2d", 0): "kernel",
                             ("nn.Dropout", 0): "p", "stride": "stride", "padding": "pad", "dilation": "dil",
                             "groups": "groups"}
# Names of positional arguments, for a constructor argument made of one
_ARGUMENT_NAMES = {("nn.Conv2d", 0): "in_channels", ("nn.Conv2d", 1): "out_channels", ("nn.Conv2d", 2): "kernel_size",
                   ("nn.Linear", 0): "in_features", ("nn.Linear", 1): "out_features", ("nn.BatchNorm2d", 0): "channels",
                   ("nn.BatchNorm1d", 0): "channels"}
# issue 15's layers: nn.ConvTranspose2d reads as nn.Conv2d does; nn.Upsample's size or factor is an option
_KEYWORD_DEFAULTS.update({"output_padding": "0"})
_HINTS.update({("nn.ConvTranspose2d", 0): "in", ("nn.ConvTranspose2d", 1): "out", ("nn.ConvTranspose2d", 2): "kernel",
               "output_padding": "outpad", "scale_factor": "factor", "size": "to"})
_ARGUMENT_NAMES.update({("nn.ConvTranspose2d", 0): "in_channels", ("nn.ConvTranspose2d", 1): "out_channels",
                        ("nn.ConvTranspose2d", 2): "kernel_size"})
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(?!=)(.*)\Z", re.S)


@functools.lru_cache(maxsize=4096)
def _form(call: str) -> str:
    """A forward expression with its numbers left out: two that differ only in numbers have one form."""
    tree = ast.parse(call, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            node.value = 0
    return ast.dump(tree)


def _split_argument(arg: str) -> tuple[str | None, str]:
    """`stride=2` -> ("stride", "2"); `64` -> (None, "64")."""
    match = _KEYWORD.match(arg)
    return (match.group(1), match.group(2)) if match else (None, arg)


def _callees(stmts: tuple[S.Statement, ...]) -> list[str]:
    """The blocks that statements call, in order, however deep in repeats, residuals and branches."""
    out: list[str] = []
    for stmt in stmts:
        if isinstance(stmt, S.Repeat):
            out += _callees((stmt.stmt,))
        elif isinstance(stmt, S.Call):
            out.append(stmt.block)
        elif isinstance(stmt, S.Residual):
            out += _callees(stmt.body) + _callees(stmt.shortcut or ())
        elif isinstance(stmt, S.Branches):
            for branch in stmt.branches:
                out += _callees(branch)
    return out


# ---------------------------------------------------------------- one class being written

_MODULE = "MODULE_"  # stands for the module in a leaf's forward expression until the module has its name
_CHANNEL_LINE = "\x00"  # ends an `__init__` line that only keeps the channels variable up to date


@dataclass
class _Built:
    """What a leaf's emitter built for one instance: the module `func(args)`, the forward expression
    that runs it (`_MODULE` where the module goes), and whether its output is a tensor of its own."""

    func: str
    args: list[str]
    call: str
    fresh: bool


class _Recorder:
    """Stands in for the class body while a leaf's emitter runs for one instance: keeps what it builds
    (`TorchGenerator.layer`) and tells it every instance of its statement (`TorchGenerator.instances`)."""

    def __init__(self, fresh: bool, site: list[tuple[ir.Node, LayerShape]]):
        self.fresh = fresh
        self.site = site
        self.built: list[_Built] = []


@dataclass
class _Arg:
    """An argument of a block class's constructor."""

    name: str
    annotation: str
    default: ast.expr | None = None  # None: required
    computed: ast.expr | None = None  # a default written over other arguments, computed where None is passed
    derived: bool = False  # not a block parameter: what the analysis gives each call


@dataclass
class _Class:
    """A class being written: the network's, or a block definition's, with its constructor's arguments
    and, per call of the block (the call's IR name), the values it is built with."""

    name: str
    block: S.BlockDef | None = None
    names: _Namespace = field(default_factory=lambda: _Namespace(RESERVED | set(HELPER_SOURCE)))  # __init__'s
    attributes: _Namespace = field(default_factory=lambda: _Namespace(RESERVED | _MODULE_ATTRIBUTES))  # `self.pre`
    cnndsl_names: dict[str, str] = field(default_factory=dict)  # block parameter or in_c -> Python name
    in_channels: str | None = None
    args: list[_Arg] = field(default_factory=list)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # call -> argument -> value
    envs: dict[str, dict[str, Any]] = field(default_factory=dict)  # call -> the arguments it was given
    used: set[str] = field(default_factory=set)  # names the class's code reads
    output: ast.expr | None = None  # the channels it gives, over its arguments
    channels: str | None = None  # the variable that follows the channels through loops and switches
    channel_names: set[str] = field(default_factory=set)  # names the lines updating it read
    stored: dict[str, str] = field(default_factory=dict)  # argument -> the attribute `forward` reads it from

    def signature(self) -> list[_Arg]:
        head = [_Arg(self.in_channels, "int")] if self.in_channels in self.used else []
        return head + self.args


@dataclass
class _ClassBody:
    """The `__init__` and `forward` of one generated class, written statement by statement for all the
    instances that run each statement (`insts`: the calls of a block, and the iterations of its loops)."""

    cls: _Class
    container_class: Callable[[str], str]  # the module class of a container (`branch` -> `Branch`)
    insts: list[Inst]
    scope: Scope = field(default_factory=Scope)
    prologue: list[str] = field(default_factory=list)  # __init__ lines before the layers
    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    locals: _Namespace = field(default_factory=_Namespace)  # forward's variables
    containers: set[tuple[str, ...]] = field(default_factory=set)
    registered: list[tuple[Part, ...]] = field(default_factory=list)  # the class's own attributes, in order
    loops: list[str] = field(default_factory=list)  # the loop variables around the statement, outermost first
    fresh: bool = False  # the flowing tensor was just made by an op that keeps no reference to it
    cur: ast.expr | None = None  # the channels entering the next statement, over __init__'s names
    site: tuple[S.Statement | None, list[ir.Node]] = (None, [])  # the statement being written, per instance
    init_depth: int = 0
    forward_depth: int = 0
    later: set[str] = field(default_factory=set)  # kinds the statements after this one name in its scope

    @property
    def envs(self) -> list[dict[str, Any]]:
        return [inst.env for inst in self.insts]

    def indent(self, init: bool) -> str:
        return INDENT * (2 + (self.init_depth if init else self.forward_depth))

    def code(self, expr: ast.expr) -> str:
        """`expr` as Python, noting the names it reads."""
        self.cls.used |= names_in(expr)
        return code(expr)

    def register(self, parts: tuple[Part, ...], func: str, args: list[str], comment: str | None) -> str:
        """Add a module at `parts` (inside its containers); return the expression that reaches it in `forward`."""
        self.open(parts[:-1])
        self.cls.used |= free_names(parts[-1].counter) if parts[-1].static is None else set()
        self.init.extend(_commented(_assign(parts, "", self.indent(True), func, args), comment, self.indent(True)))
        if len(parts) == 1:
            self.registered.append(parts)
        return self.forward_path(parts)

    def forward_path(self, parts: tuple[Part, ...]) -> str:
        """The module at `parts` as `forward` reaches it: a name computed from the constructor's arguments
        (`f"conv{pre + 2}"`) reads them through attributes (`self.pre`); loop variables are its own."""
        return _path(tuple(part if part.static is not None else Part(part.prefix, self.forward_expr(part.counter))
                           for part in parts))

    def forward_expr(self, expr: ast.expr) -> ast.expr:
        """`expr`, over __init__'s names, as `forward` computes it: through attributes (`self.pre`)."""
        outside = free_names(expr) - set(self.loops)
        if not outside:
            return expr
        mapping = {n: name(n) for n in names_in(expr)}
        mapping.update((n, ast.Attribute(name("self"), self.stored(n), ast.Load())) for n in outside)
        return substitute(expr, mapping)

    def stored(self, local: str) -> str:
        """The attribute through which `forward` reads the constructor's argument `local`."""
        if local not in self.cls.stored:
            self.cls.stored[local] = self.cls.attributes.create(local)
            self.prologue.append(f"{INDENT * 2}self.{self.cls.stored[local]} = {local}")
        return self.cls.stored[local]

    def open(self, parts: tuple[Part, ...]) -> None:
        """Create the containers (a branch's, a shortcut's) down to `parts`, those that do not exist yet."""
        for part in parts:  # names computed over the constructor's arguments read them
            self.cls.used |= free_names(part.counter) if part.static is None else set()
        for depth in range(1, len(parts) + 1):
            key = tuple(p.code() for p in parts[:depth])
            if key in self.containers:
                continue
            self.containers.add(key)
            self.init.extend(_assign(parts[:depth], "", self.indent(True), self.container_class(parts[depth - 1].role)))
            if depth == 1:
                self.registered.append(parts[:1])

    def init_line(self, code: str, comment: str | None = None) -> None:
        self.init.extend(_commented([f"{self.indent(True)}{code}"], comment, self.indent(True)))

    def line(self, code: str, comment: str | None) -> None:
        """A line of `forward`, with its comment."""
        self.forward.extend(_commented([f"{self.indent(False)}{code}"], comment, self.indent(False)))


# ---------------------------------------------------------------- the generator


class TorchGenerator:
    """Writes the module source for one network: a class per block definition, then the network's.

    One `<key>_torch` method per IR node kind, found by name like sqlglot's `<key>_sql`. A leaf's
    emitter (`conv_torch`, ...) builds its module for one instance of its statement through `layer()`;
    the walker (`sequence`, `statement`, `leaf`) runs it for every instance (each call of the block,
    each iteration of a loop) and writes one module whose arguments give every instance's values.
    Structure (`seq_torch` for a call, `residual_torch`, the joins) is written once for all instances,
    following the block's definition; the network's class follows its IR, one instance."""

    def __init__(self, net: Net, weights_path: str | None = None):
        self.net = net
        self.weights_path = weights_path
        self.network = net.ir
        self.shapes = net.shapes
        self.source = net.ir.source
        self.globals = _Namespace(RESERVED | set(HELPER_SOURCE))
        self.classes: dict[str, _Class] = {}  # block name -> its class, written before the classes that call it
        self.bodies: list[_ClassBody] = []
        self.kinds: dict = {}  # a statement's span -> the kind its nodes are counted as (`conv`, `relu6`)
        self.uses_functional = False
        self.containers: dict[str, str] = {}  # role (`branch`, `shortcut`, ...) -> its container class
        self.helpers: dict[str, str] = {}  # helper module classes written where used (`LayerNorm2d`): key -> source

    # ------------------------------------------------------------ driving
    def generate(self) -> str:
        network_class = self.globals.create(class_name(self.network.name))  # the network's name first
        calls: dict[str, list[ir.Seq]] = {}
        for node in self.network.walk():
            self.kinds.setdefault(statement_span(node), stem(node.name.rsplit(".", 1)[-1]))
            if isinstance(node, ir.Seq) and node.block is not None:
                calls.setdefault(node.block, []).append(node)
        for block in self.block_order(calls):
            self.block_class(block, calls[block])
        top = _ClassBody(_Class(network_class), self.container_class, [Inst("", {})])
        if self.network.preprocess is not None:
            self.preprocess(top)
        out = self.sequence(top, None, [self.network.body.items], "x", "x")
        top.forward.append(f"{INDENT * 2}return {out}")
        parts = [self.header()]
        used = set().union(*(body.cls.used for body in self.bodies))
        parts.extend(source for function, source in HELPER_SOURCE.items() if function in used)
        for role, container in self.containers.items():
            parts.append(f'class {container}(nn.Module):\n{INDENT}"""{_CONTAINER_DOCS[role]}"""')
        parts.extend(self.helpers.values())
        for body in self.bodies:
            parts.append(self.class_text(body, self.block_doc(body.cls)))
        parts.append(self.class_text(top, self.network_doc(), self.network_attrs()))
        parts.append(self.build_text(network_class))
        return "\n\n\n".join(parts) + "\n"

    def block_order(self, calls: dict[str, list[ir.Seq]]) -> list[str]:
        """The blocks that are called, each after the blocks it calls."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(block: str) -> None:
            if block in seen or block not in calls:
                return
            seen.add(block)  # a block cannot call itself (the expander refuses it): no cycles
            for callee in _callees(self.network.block(block).body):
                visit(callee)
            order.append(block)

        for block in calls:
            visit(block)
        return order

    def block_class(self, block: str, seqs: list[ir.Seq]) -> None:
        """The class of block `block`, from its definition and every call of it (`seqs`)."""
        definition = self.network.block(block)
        cls = _Class(self.globals.create(class_name(block, "Block")), definition)
        for seq in seqs:  # the module names: plain attributes (`self.num_conv`) keep off them
            for node in ir.walk(seq):
                cls.attributes.reserve(node.name[len(seq.name) + 1:].split(".")[0])
        cls.in_channels = cls.names.create("in_channels")
        cls.cnndsl_names = {"in_c": cls.in_channels}
        for param in definition.params:
            cls.cnndsl_names[param.name] = cls.names.create(param.name)
        insts = []
        for seq in seqs:
            env = {cls.cnndsl_names[key]: value for key, value in seq.args}
            env[cls.in_channels] = self.shape(seq).input[0]
            cls.envs[seq.name], cls.values[seq.name] = dict(env), dict(env)
            insts.append(Inst(seq.name, env))
        body = _ClassBody(cls, self.container_class, insts, cur=name(cls.in_channels))
        translate = self.translator(body)
        for param in definition.params:
            py = cls.cnndsl_names[param.name]
            arg = _Arg(py, annotation(inst.env[py] for inst in insts))
            if param.default is not None:
                expr = translate(param.default)
                if expr is None:
                    raise ValueError(f"torch backend: the default of {param.name} in block {block} cannot be written "
                                     f"in Python")
                if names_in(expr) & set(cls.cnndsl_names.values()):  # over other arguments: computed in __init__
                    arg.computed, arg.default, arg.annotation = expr, literal(None), f"{arg.annotation} | None"
                    body.prologue.append(f"{INDENT * 2}{arg.name} = {body.code(expr)} if {arg.name} is None else "
                                         f"{arg.name}")
                else:
                    arg.default = literal(evaluate(expr, {}))
            cls.args.append(arg)
        out = self.sequence(body, definition.body, [seq.items for seq in seqs], "x", "x")
        body.forward.append(f"{INDENT * 2}return {out}")
        cls.output = body.cur
        keep = cls.channels is not None and cls.channels in cls.used
        if keep:
            cls.used |= cls.channel_names
        body.init = [line.rstrip(_CHANNEL_LINE) for line in body.init if keep or not line.endswith(_CHANNEL_LINE)]
        self.classes[block] = cls
        self.bodies.append(body)

    def emit(self, body: _ClassBody | _Recorder, node: ir.Node, src: str, dst: str) -> str:
        return emitter(self, node, "torch")(body, node, src, dst)

    def sequence(self, body: _ClassBody, stmts: tuple[S.Statement, ...] | None, seqs: list[tuple[ir.Node, ...]],
                 src: str, dst: str, scope: Scope | None = None) -> str:
        """The statements `stmts` of a definition as every instance runs them: `seqs[k]` are the IR
        nodes they made in instance k (`stmts` None: every node is a statement, at the network level).
        The first statement reads `src` and writes `dst`; returns the variable that holds the result
        (`src` itself when there are no statements: an empty branch is the identity)."""
        outer, later = body.scope, body.later
        body.scope = scope or outer
        body.fresh = False  # the input may be held elsewhere (the caller, another branch, a shortcut)
        steps = align(stmts, seqs) if stmts is not None else [(None, [[node]]) for node in seqs[0]]
        current = src
        for index, (stmt, groups) in enumerate(steps):
            if stmts is not None:  # a residual's body counts in the scope around it, a branch in its own
                body.later = kinds(stmts[index + 1:], self.layer_kind) | (later if scope is None else set())
            current = self.statement(body, stmt, groups, current, dst)
        body.scope, body.later = outer, later
        return current

    def statement(self, body: _ClassBody, stmt: S.Statement | None, groups: list[list[ir.Node]], src: str,
                  dst: str) -> str:
        """One statement; `groups[k]` are the nodes it made in instance k (one each, but for a repeat)."""
        if isinstance(stmt, S.Repeat):
            return self.repeat(body, stmt, groups, src, dst)
        if any(len(group) != 1 for group in groups):
            raise AssertionError(f"torch backend: statement at {stmt.span} made {[len(g) for g in groups]} nodes")
        nodes = [group[0] for group in groups]
        body.site = (stmt, nodes)
        if isinstance(nodes[0], ir.Seq) or nodes[0].children():
            return self.emit(body, nodes[0], src, dst)
        return self.leaf(body, stmt, nodes, src, dst)

    def leaf(self, body: _ClassBody, stmt: S.Statement | None, nodes: list[ir.Node], src: str, dst: str) -> str:
        """A layer: its emitter runs once per instance; one module, whose arguments are the same
        numbers where every instance has the same and expressions over the constructor's names where
        they differ (`nn.Conv2d(in_channels, c, 3, stride=s, ...)`), and one line of `forward`."""
        site = [(node, self.shape(node)) for node in nodes]
        built = []
        for node in nodes:
            recorder = _Recorder(body.fresh, site)
            self.emit(recorder, node, src, dst)
            if len(recorder.built) != 1:
                raise AssertionError(f"torch backend: the emitter of {type(node).__name__} built "
                                     f"{len(recorder.built)} modules, not one")
            built.append(recorder.built[0])
        part = self.part(body, nodes)
        comment = self.comment(nodes[0], body=body)
        forms: dict[tuple[str, str], list[int]] = {}  # instances that build the same module, run the same way
        for index, b in enumerate(built):
            forms.setdefault((b.func, _form(b.call)), []).append(index)
        if len(forms) == 1:
            self.module(body, stmt, part, built, comment, dst)
        else:
            self.forms(body, stmt, nodes, part, built, list(forms.values()), comment, dst)
        options = [e for es in self.options(body, stmt).values() for e in es]
        products = [mul(body.cur, e) for e in options] if body.cur is not None else []
        body.cur = self.channels(body, [self.shape(n).output[0] for n in nodes], [body.cur, *options, *products])
        return dst

    def module(self, body: _ClassBody, stmt: S.Statement | None, part: Part, built: list[_Built], comment: str,
               dst: str) -> None:
        """One module for what every instance built, and its line of `forward`."""
        label = part.static or part.prefix.rstrip("_")
        args = self.arguments(body, stmt, built[0].func, [b.args for b in built], label)
        call = self.forward_call(body, [b.call for b in built], label)
        ref = body.register(body.scope.parts + (part,), built[0].func, args, comment)
        body.line(f"{dst} = {call.replace(_MODULE, ref)}", comment)
        body.fresh = built[0].fresh

    def forms(self, body: _ClassBody, stmt: S.Statement | None, nodes: list[ir.Node], part: Part,
              built: list[_Built], forms: list[list[int]], comment: str, dst: str) -> None:
        """A statement that builds different modules in different calls (a block called on images and on
        vectors: BatchNorm2d and BatchNorm1d): each form under `if`/`elif` on a constructor argument."""
        label = part.static or part.prefix.rstrip("_")
        ranks = [len(self.shape(n).input) for n in nodes]
        if len(forms) == 2 and all(len({ranks[i] for i in form}) == 1 for form in forms) and \
                ranks[forms[0][0]] != ranks[forms[1][0]]:
            forms.sort(key=lambda form: -ranks[form[0]])  # images first: the argument says "spatial"
            flag = self.resolve(body, [rank == 3 for rank in ranks], [], f"{label}_spatial")
            tests = ["{}", None]
        else:
            which = [next(k for k, form in enumerate(forms) if index in form) for index in range(len(built))]
            flag = self.resolve(body, which, [], f"{label}_form")
            tests = [f"{{}} == {k}" for k in range(len(forms) - 1)] + [None]
        insts, fresh, lines, heads = body.insts, True, [], []
        for k, (form, test) in enumerate(zip(forms, tests, strict=True)):
            head = "else:" if test is None else f"{'if' if k == 0 else 'elif'} {test}:"
            body.init_line(head.format(body.code(flag)), comment if k == 0 else None)
            at = len(body.forward)
            heads.append(at)
            body.line(head, comment if k == 0 else None)
            body.insts = [insts[i] for i in form]
            body.init_depth += 1
            body.forward_depth += 1
            self.module(body, stmt, part, [built[i] for i in form], comment, dst)
            lines.append(body.forward[at + 1:])
            fresh = fresh and body.fresh
            body.init_depth -= 1
            body.forward_depth -= 1
        if all(form == lines[0] for form in lines):  # every form runs the same way: one line, no test
            del body.forward[len(body.forward) - sum(len(form) + 1 for form in lines):]
            body.forward.extend(line.replace(INDENT, "", 1) for line in lines[0])
        else:  # `forward` reads the argument through an attribute
            test = body.code(body.forward_expr(flag))
            for at in heads:
                body.forward[at] = body.forward[at].replace("{}", test, 1)
        body.insts, body.fresh = insts, fresh

    def shape(self, node: ir.Node) -> LayerShape:
        return self.shapes.of(node)

    def instances(self, body: _ClassBody | _Recorder, node: ir.Node) -> list[tuple[ir.Node, LayerShape]]:
        """Every instance of `node`'s statement with its shape, for an emitter whose module must have
        the same form in all of them (`pad same` padding F.pad's where any instance's is asymmetric)."""
        return body.site if isinstance(body, _Recorder) else [(node, self.shape(node))]

    def comment(self, node: ir.Node, note: str | None = None, body: _ClassBody | None = None) -> str:
        """`line 5: conv 5x5 pad2 -> 6`: in a block's class the statement as written (the class serves
        every call); in the network's, the evaluated statement (a call: as written)."""
        span = statement_span(node)
        if (body is not None and body.cls.block is not None) or span != node.span:
            return printable(f"line {span.line}: {note or self.source.statement(span)}")
        return f"line {node.span.line}: {printable(note)}" if note else where(node)

    def layer(self, body: _Recorder, node: ir.Node, func: str, args: list[str], call: Callable[[str], str],
              dst: str, fresh: bool) -> str:
        """What a leaf's emitter calls: the module `func(args)` and its forward expression `call(module)`
        for this instance (the walker writes one module for all instances)."""
        body.built.append(_Built(func, list(args), call(_MODULE), fresh))
        body.fresh = fresh
        return dst

    # ------------------------------------------------------------ the values of a class's modules
    def translator(self, body: _ClassBody) -> Translator:
        return Translator(body.cls.cnndsl_names, body.envs)

    def options(self, body: _ClassBody, stmt: S.Statement | None) -> dict[str, list[ast.expr]]:
        """A layer statement's options as Python expressions: candidates for its module's arguments."""
        if not isinstance(stmt, S.Layer):
            return {}
        translate = self.translator(body)
        return {option.key: translate.option(option.value) for option in stmt.options}

    def part(self, body: _ClassBody, nodes: list[ir.Node], kind: str | None = None) -> Part:
        """The last part of `nodes`' names, counted in their scope as the expander counts (`conv{i + 1}`
        in a loop) and checked against every instance's name."""
        actual = [node.name.rsplit(".", 1)[-1] for node in nodes]
        for node, part in zip(nodes, actual, strict=True):
            _check_module_name(node, part)
        part = body.scope.next(kind or stem(actual[0]))
        try:
            if all(part.value(inst.env) == want for inst, want in zip(body.insts, actual, strict=True)):
                return part
        except Exception:  # noqa: S110 - a counter that does not run is a count that does not fit
            pass
        if len(set(actual)) == 1:
            return Part(actual[0])
        raise AssertionError(f"torch backend: the names {sorted(set(actual))} of one statement of block "
                             f"{body.cls.block.name} follow no count the class can compute")

    def resolve(self, body: _ClassBody, values: list[Any], candidates: list[ast.expr | None], hint: str,
                forward: bool = False) -> ast.expr:
        """One expression that gives every instance's value: the first candidate that does, the number
        every instance has, a tuple of such, or else a new constructor argument (`hint`), which each
        caller passes (`forward`: read in `forward`, through an attribute)."""
        envs = body.envs
        for candidate in candidates:
            expr = fit(candidate, envs, values)
            if expr is not None:
                return literal(values[0]) if not free_names(expr) else expr  # `64 * 2` is 128
        if uniform(values):
            return literal(values[0])
        if all(isinstance(v, tuple) for v in values) and len({len(v) for v in values}) == 1:
            elements = []
            for index in range(len(values[0])):
                column = [v[index] for v in values]
                found = [e for c in candidates if (e := fit(c, envs, column)) is not None]
                if not found and not uniform(column):
                    break
                elements.append(found[0] if found else literal(column[0]))
            else:
                return ast.Tuple(elements, ast.Load())
        return self.derived(body, values, hint, forward)

    def derived(self, body: _ClassBody, values: list[Any], hint: str, forward: bool) -> ast.expr:
        """A constructor argument for values that differ between calls and that nothing written gives:
        each call's value (per loop iteration, a tuple indexed by the loop variables)."""
        cls = body.cls
        indexed = varies_within_a_call(body.insts, values)
        calls = per_call(body.insts, values, indexed)
        arg = _Arg(cls.names.create(hint), annotation(calls.values()), literal(usual(list(calls.values()))),
                   derived=True)
        cls.args.append(arg)
        for call, value in calls.items():
            cls.values.setdefault(call, {})[arg.name] = value
        cls.used.add(arg.name)
        expr: ast.expr = name(arg.name)
        if forward:
            attribute = cls.attributes.create(arg.name)
            body.prologue.append(f"{INDENT * 2}self.{attribute} = {arg.name}")
            expr = ast.Attribute(name("self"), attribute, ast.Load())
        if indexed:
            for variable in body.loops[:len(body.insts[0].loop)]:
                expr = ast.Subscript(expr, name(variable), ast.Load())
        return expr

    def channels(self, body: _ClassBody, values: list[int], candidates: list[ast.expr | None]) -> ast.expr | None:
        """The channels after a statement, for the statements after it: a candidate that gives them,
        the number every instance has, or None (unknown: a module that needs them takes an argument)."""
        for candidate in candidates:
            expr = fit(candidate, body.envs, values)
            if expr is not None:
                return literal(values[0]) if not free_names(expr) else expr
        return literal(values[0]) if uniform(values) else None

    def arguments(self, body: _ClassBody, stmt: S.Statement | None, func: str, arg_lists: list[list[str]],
                  label: str) -> list[str]:
        """One argument list for the instances' (positional by position, keywords by name; a keyword
        some instances leave out has its default there)."""
        split = [[_split_argument(arg) for arg in args] for args in arg_lists]
        positional = [[value for key, value in args if key is None] for args in split]
        if len({len(p) for p in positional}) != 1:
            raise ValueError(f"torch backend: {func} takes different numbers of arguments in the calls of block "
                             f"{body.cls.block.name}: {[len(p) for p in positional]}")
        keywords = [{key: value for key, value in args if key is not None} for args in split]
        order: list[str] = []
        for given in keywords:
            previous = -1
            for key in given:
                if key not in order:
                    order.insert(previous + 1, key)
                previous = order.index(key)
        out = [self.argument(body, stmt, func, index, [p[index] for p in positional], label)
               for index in range(len(positional[0]))]
        for key in order:
            defaults = [positional_args[0] if key == "stride" and func in _STRIDE_IS_KERNEL
                        else _KEYWORD_DEFAULTS.get(key) for positional_args in positional]
            texts = [given.get(key, default) for given, default in zip(keywords, defaults, strict=True)]
            if None in texts:
                raise ValueError(f"torch backend: {func} takes {key}= in some calls of block {body.cls.block.name} "
                                 f"and not in others, and its default is not known here: its emitter must always "
                                 f"pass it")
            if texts != defaults:
                out.append(f"{key}={self.argument(body, stmt, func, key, texts, label)}")
        return out

    def argument(self, body: _ClassBody, stmt: S.Statement | None, func: str, position: int | str,
                 texts: list[str], label: str) -> str:
        options = self.options(body, stmt)
        hint = _HINTS.get((func, position)) or _HINTS.get(position)
        first = [body.cur] if hint == "in" else options.get(hint, [])
        if all(text == texts[0] for text in texts):
            # the same in every call: what the statement wrote there where it is over the constructor's names
            # (`-> c`, the channels entering), else the number
            envs, value = body.envs, literal_value(texts[0])
            named = [e for c in first if c is not None and free_names(c) and (e := fit(c, envs, [value] * len(envs)))]
            return body.code(named[0]) if named else texts[0]
        rest = [body.cur, *(e for es in options.values() for e in es)]
        if body.cur is not None:
            rest += [mul(body.cur, e) for e in options.get("mult", [])]
        role = position if isinstance(position, str) else _ARGUMENT_NAMES.get((func, position), f"arg{position}")
        values = [literal_value(text) for text in texts]
        return body.code(self.resolve(body, values, [*first, *rest], f"{label}_{role}"))

    def forward_call(self, body: _ClassBody, texts: list[str], label: str) -> str:
        """One forward expression for the instances' (which differ at most in numbers: F.pad's amounts)."""
        if all(text == texts[0] for text in texts):
            return texts[0]
        holes: list[tuple[ast.Name, list[Any]]] = []
        tree = anti_unify([ast.parse(text, mode="eval").body for text in texts], holes)
        for hole, values in holes:
            role = "pads" if isinstance(values[0], tuple) and len(values[0]) == 4 else "size"
            hole.id = body.code(self.resolve(body, values, [], f"{label}_{role}", forward=True))
        return code(tree)

    def pad(self, src: str, pads: tuple[int, int, int, int], value: str | None = None) -> str:
        self.uses_functional = True
        top, bottom, left, right = pads
        fill = f", value={value}" if value is not None else ""
        return f"F.pad({src}, ({left}, {right}, {top}, {bottom}){fill})"

    # ------------------------------------------------------------ leaves
    def conv_torch(self, body: _ClassBody, node: ir.Conv, src: str, dst: str) -> str:
        shape = self.shape(node)
        top, bottom, left, right = shape.pads
        # one form for every instance: F.pad where any instance's pads are asymmetric
        symmetric = all(_symmetric(s.pads) for _, s in self.instances(body, node))
        padding = (top, left) if symmetric else (0, 0)
        args = _conv_args(shape, node, ("padding", padding, (0, 0)), ("dilation", node.dilation, (1, 1)))
        x = src if symmetric else self.pad(src, shape.pads)
        return self.layer(body, node, "nn.Conv2d", args, lambda m: f"{m}({x})", dst, fresh=True)

    def pool_torch(self, body: _ClassBody, node: ir.Pool, src: str, dst: str) -> str:
        shape = self.shape(node)
        top, bottom, left, right = shape.pads
        # one form for every instance: F.pad where any instance's pads are asymmetric, a crop where any needs one
        symmetric = all(_symmetric(s.pads) for _, s in self.instances(body, node))
        args = [_pair(node.kernel)]
        if node.stride != node.kernel:
            args.append(f"stride={_pair(node.stride)}")
        if symmetric and (top or left):
            args.append(f"padding={_pair((top, left))}")
        if node.ceil:
            args.append("ceil_mode=True")
        x = src if symmetric else self.pad(src, shape.pads, 'float("-inf")' if node.mode == "max" else None)
        want = list(shape.output[1:])
        crops = any(_pool_output(n, s, symmetric) != list(s.output[1:]) for n, s in self.instances(body, node))
        crop = f"[:, :, :{want[0]}, :{want[1]}]" if crops else ""
        func = "nn.MaxPool2d" if node.mode == "max" else "nn.AvgPool2d"
        return self.layer(body, node, func, args, lambda m: f"{m}({x}){crop}", dst, fresh=True)

    def global_pool_torch(self, body: _ClassBody, node: ir.GlobalPool, src: str, dst: str) -> str:
        func = "nn.AdaptiveMaxPool2d" if node.mode == "max" else "nn.AdaptiveAvgPool2d"
        return self.layer(body, node, func, ["1"], lambda m: f"{m}({src})", dst, fresh=True)

    def adaptive_pool_torch(self, body: _ClassBody, node: ir.AdaptivePool, src: str, dst: str) -> str:
        func = "nn.AdaptiveMaxPool2d" if node.mode == "max" else "nn.AdaptiveAvgPool2d"
        size = f"({_num(node.size[0])}, {_num(node.size[1])})"  # as torchvision writes AlexNet's (6, 6)
        return self.layer(body, node, func, [size], lambda m: f"{m}({src})", dst, fresh=True)

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

    def droppath_torch(self, body: _ClassBody, node: ir.DropPath, src: str, dst: str) -> str:
        # identity in evaluation, so its output may be its input: not fresh
        return self.layer(body, node, self.helper("DropPath"), [_num(node.p)], lambda m: f"{m}({src})", dst,
                          fresh=False)

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

    def upsample_torch(self, body: _ClassBody, node: ir.Upsample, src: str, dst: str) -> str:
        # F.interpolate's rules: a factor scales positions by 1/factor, a size by in/out (align_corners=False)
        if node.factor is not None:
            args = [f"scale_factor={node.factor}"]
        else:
            args = [f"size={_pair(self.shape(node).output[1:])}"]
        args.append(f'mode="{node.mode}"')
        if node.mode == "bilinear":
            args.append("align_corners=False")
        return self.layer(body, node, "nn.Upsample", args, lambda m: f"{m}({src})", dst, fresh=True)

    def deconv_torch(self, body: _ClassBody, node: ir.Deconv, src: str, dst: str) -> str:
        shape = self.shape(node)
        args = _conv_args(shape, node, ("padding", node.pads, (0, 0)), ("output_padding", node.outpad, (0, 0)))
        return self.layer(body, node, "nn.ConvTranspose2d", args, lambda m: f"{m}({src})", dst, fresh=True)

    # ------------------------------------------------------------ structure
    def seq_torch(self, body: _ClassBody, node: ir.Seq, src: str, dst: str) -> str:
        """A block call: the block's class, built with this call's values (`Basic(64, 128, s=2, project=True)`)."""
        if node.block is None:  # a sequence of its own (the walker writes bodies and branches itself)
            return self.sequence(body, None, [node.items], src, dst)
        stmt, nodes = body.site
        inner = self.classes[node.block]
        part = self.part(body, nodes, node.block)
        label = part.static or part.prefix.rstrip("_")
        written = self.written_arguments(body, stmt, inner)
        entering = [self.shape(n).input[0] for n in nodes]
        mapping = {inner.in_channels: self.channels(body, entering, [body.cur])}
        args, keywords = [], False
        for arg in inner.signature():
            default = evaluate(arg.default, {}) if arg.default is not None else None
            values = [inner.values[n.name].get(arg.name, default) for n in nodes]
            candidates = [body.cur] if arg.name == inner.in_channels else [written.get(arg.name)]
            expr = self.resolve(body, values, candidates, f"{label}_{arg.name}")
            mapping[arg.name] = expr
            if arg.default is not None and not (names_in(expr) - {"float"}):  # a number, left out if the default
                defaults = [evaluate(arg.computed, inner.envs[n.name]) if arg.computed is not None else default
                            for n in nodes]
                if all(same(v, d) == (True, False) for v, d in zip(values, defaults, strict=True)):
                    keywords = True
                    continue
            keywords = keywords or arg.default is not None
            args.append(f"{arg.name}={body.code(expr)}" if keywords else body.code(expr))
        comment = self.comment(node, body=body)
        ref = body.register(body.scope.parts + (part,), inner.name, args, comment)
        body.line(f"{dst} = {ref}({src})", comment)
        body.fresh = False
        made = [self.shape(n).output[0] for n in nodes]
        body.cur = self.channels(body, made, [substitute(inner.output, mapping), body.cur, *written.values()])
        return dst

    def written_arguments(self, body: _ClassBody, stmt: S.Statement | None, inner: _Class) -> dict[str, ast.expr]:
        """A call's arguments as written, in Python over the calling class's names, by the callee's names."""
        if not isinstance(stmt, S.Call):
            return {}
        translate = self.translator(body)
        given = dict(zip((p.name for p in inner.block.params), stmt.args, strict=False))
        given.update((kw.name, kw.value) for kw in stmt.kwargs)
        out = {inner.cnndsl_names[key]: translate(expr) for key, expr in given.items()}
        return {key: expr for key, expr in out.items() if expr is not None}

    def residual_torch(self, body: _ClassBody, node: ir.Residual, src: str, dst: str) -> str:
        stmt, nodes = body.site
        projects = [self.shape(n).projects for n in nodes]
        mixed = any(projects) and not all(projects)
        self.part(body, nodes, "residual")  # counted, though a residual has no module of its own
        keep = src
        if src == dst or mixed:  # the body overwrites the flowing variable: keep the input for the shortcut
            keep = body.locals.create("shortcut")
            body.line(f"{keep} = {src}", self.comment(node, body=body))
        entry = body.cur
        out = self.sequence(body, stmt.body if stmt else None, [n.body.items for n in nodes], src, dst)
        made = body.cur
        # Add in place (as torchvision's `out += identity`) when the body's result is a tensor of
        # its own that its producer does not keep for backward; saves an allocation per block.
        in_place = body.fresh and out == dst
        short, note = keep, "residual: body + input (identity shortcut)"
        if node.shortcut is not None:
            part = self.part(body, [n.shortcut for n in nodes], "shortcut")
            scope = body.scope.child(part)
            stmts = stmt.shortcut if stmt else None
            body.cur = entry
            if all(projects):
                target = keep if keep != src else body.locals.create("shortcut")
                if any(self.holds_modules(n.shortcut) for n in nodes):
                    body.open(scope.parts)
                short = self.sequence(body, stmts, [n.shortcut.items for n in nodes], keep, target, scope)
                note = "residual: body + projected shortcut"
            elif mixed:
                self.projection(body, nodes, projects, scope, stmts, keep)
                note = "residual: body + shortcut, projected where the body changes the shape"
        body.cur = made
        body.line(f"{dst} += {short}" if in_place else f"{dst} = {out} + {short}",
                  self.comment(node, note=note, body=body))
        for var in {keep, short} - {src}:
            body.locals.release(var)
        body.fresh = True
        return dst

    def projection(self, body: _ClassBody, nodes: list[ir.Residual], projects: list[bool], scope: Scope,
                   stmts: tuple[S.Statement, ...] | None, keep: str) -> None:
        """A shortcut that projects in some calls only: built where the constructor's flag (`project`)
        says so, as torchvision's `downsample`, else None; run where it is not None."""
        part = scope.parts[-1]
        number = part.static[len("shortcut"):] if part.static and part.static != "shortcut1" else ""
        flag = body.code(self.resolve(body, projects, [], f"project{number}"))
        comment = self.comment(nodes[0], "the shortcut, projected where the body changes the shape", body)
        body.init.extend(_assign(scope.parts, "None", body.indent(True)))
        body.init_line(f"if {flag}:", comment)
        body.line(f"if {body.forward_path(scope.parts)} is not None:", comment)
        insts = body.insts
        active = [k for k, p in enumerate(projects) if p]
        body.insts = [insts[k] for k in active]
        body.init_depth += 1
        body.forward_depth += 1
        body.open(scope.parts)
        self.sequence(body, stmts, [nodes[k].shortcut.items for k in active], keep, keep, scope)
        body.init_depth -= 1
        body.forward_depth -= 1
        body.insts = insts

    def concat_torch(self, body: _ClassBody, node: ir.Concat, src: str, dst: str) -> str:
        _, nodes = body.site  # every instance of the statement (read before the branches move the site on)
        outs = self.branches(body, node, src)
        joined = self.cropped(body, nodes, outs) if node.crop else outs
        self.join(body, node, dst, "torch.cat(", f"[{', '.join(joined)}], 1)", joined)
        self.release(body, outs, src)
        body.fresh = True
        return dst

    def cropped(self, body: _ClassBody, nodes: list[ir.Concat], outs: list[str]) -> list[str]:
        """`concat crop`: each larger branch's centre by slicing (`branch1[:, :, 88:480, 88:480]`); where the
        calls of a block crop differently, the bounds are constructor arguments."""
        part = nodes[0].name.rsplit(".", 1)[-1]
        out = []
        for index, var in enumerate(outs):
            bounds = []
            for instance in nodes:
                top, bottom, left, right = instance.crops(self.shapes)[index]
                _, h, w = self.shape(instance.branches[index]).output
                bounds.append((top, h - bottom, left, w - right) if top or bottom or left or right else None)
            if all(b is None for b in bounds):
                out.append(var)
            elif len(set(bounds)) == 1:  # rows and columns first:end of every call
                row, row_end, col, col_end = bounds[0]
                out.append(f"{var}[:, :, {row}:{row_end}, {col}:{col_end}]")
            else:
                sizes = [(0, self.shape(n.branches[index]).output[1], 0, self.shape(n.branches[index]).output[2])
                         if b is None else b for n, b in zip(nodes, bounds, strict=True)]
                e = body.code(self.resolve(body, sizes, [], f"{part}_crop{index + 1}", forward=True))
                out.append(f"{var}[:, :, {e}[0]:{e}[1], {e}[2]:{e}[3]]")
        return out

    def add_torch(self, body: _ClassBody, node: ir.Add, src: str, dst: str) -> str:
        outs = self.branches(body, node, src)
        self.join(body, node, dst, "", " + ".join(outs), outs)
        self.release(body, outs, src)
        body.fresh = len(outs) > 1
        return dst

    def mul_torch(self, body: _ClassBody, node: ir.Mul, src: str, dst: str) -> str:
        outs = self.branches(body, node, src)  # a Cx1x1 gate broadcasts over HxW
        self.join(body, node, dst, "", " * ".join(outs), outs, op="*")
        self.release(body, outs, src)
        body.fresh = len(outs) > 1
        return dst

    def branches(self, body: _ClassBody, node: ir.Node, src: str) -> list[str]:
        """The branches of a join (`concat`, `add`, ...), each reading `src`; their output variables."""
        stmt, nodes = body.site
        scope = body.scope.child(self.part(body, nodes))
        entry, outs, made = body.cur, [], []
        for index in range(len(node.branches)):
            stmts = stmt.branches[index] if stmt else None
            seqs = [n.branches[index] for n in nodes]
            # an empty branch is the identity: it reads the input and needs no variable of its own
            var = body.locals.create(f"branch{index + 1}") if (stmts if stmt else seqs[0].items) else src
            branch = scope.child(Part(f"branch{index + 1}"))
            if any(self.holds_modules(seq) for seq in seqs):
                body.open(branch.parts)
            body.cur = entry
            outs.append(self.sequence(body, stmts, [seq.items for seq in seqs], src, var, branch))
            made.append(body.cur)
        total = None
        if None not in made:
            total = made[0]
            for expr in made[1:]:
                total = add(total, expr)
        body.cur = self.channels(body, [self.shape(n).output[0] for n in nodes], [total, *made])
        return outs

    def holds_modules(self, seq: ir.Seq) -> bool:
        """Whether a branch or a projecting shortcut has a module (a layer or a block call) to hold."""
        return any((isinstance(n, ir.Seq) and n.block is not None) or (not isinstance(n, ir.Seq) and not n.children())
                   for n in active(seq, self.shapes)[1:])

    @staticmethod
    def release(body: _ClassBody, outs: list[str], src: str) -> None:
        for out in set(outs) - {src}:
            body.locals.release(out)

    def join(self, body: _ClassBody, node: ir.Node, dst: str, func: str, expr: str, outs: list[str], op: str = "+"
             ) -> None:
        line = f"{dst} = {func}{expr}"
        indent = body.indent(False)
        comment = self.comment(node, body=body)
        if len(indent + line) <= LINE_LIMIT - 20:
            body.line(line, comment)
            return
        body.forward.append(f"{indent}# {comment}")
        sep = "," if func else f" {op}"
        close = "], 1)" if func else ")"
        body.forward.append(f"{indent}{dst} = {func}{'[' if func else '('}")
        for i, out in enumerate(outs):
            body.forward.append(f"{indent}{INDENT}{out}{sep if i < len(outs) - 1 or func else ''}")
        body.forward.append(f"{indent}{close}")

    # ------------------------------------------------------------ repeats
    def repeat(self, body: _ClassBody, stmt: S.Repeat, groups: list[list[ir.Node]], src: str, dst: str) -> str:
        """`stmt x n`: written out where n is the same in every call; else a switch (n is 0 or 1) or a loop."""
        counts = [len(group) for group in groups]
        if uniform(counts):
            current = src
            for index in range(counts[0]):
                current = self.statement(body, stmt.stmt, [[group[index]] for group in groups], current, dst)
            return current
        kind = self.kind(stmt.stmt)
        count = self.resolve(body, counts, [self.translator(body)(stmt.count)], f"num_{kind}")
        if src != dst:  # every run reads and writes `dst`, which holds the input where there is none
            body.line(f"{dst} = {src}", None)
        body.fresh = False
        before = dict(body.scope.counts)
        inc = increments(stmt.stmt, self.layer_kind, self.translator(body))
        if set(counts) <= {0, 1}:
            self.switch(body, stmt, groups, counts, count, dst, kind, set(inc) & body.later)
        else:
            self.loop(body, stmt, groups, counts, count, dst, kind, before, inc)
        for key, n in inc.items():
            body.scope.counts[key] = add(before.get(key, ZERO), mul(count, n))
        return dst

    def layer_kind(self, layer: S.Layer) -> str | None:
        """What a layer statement's nodes are counted as (`conv`, `relu6`); None if it never ran."""
        return self.kinds.get(layer.span)

    def kind(self, stmt: S.Statement) -> str:
        """What a statement's nodes are counted as: the layer's kind, the block, `residual`, `concat`."""
        if isinstance(stmt, S.Layer):
            return self.kinds.get(stmt.span, stmt.op)
        if isinstance(stmt, S.Call):
            return stmt.block
        return "residual" if isinstance(stmt, S.Residual) else stmt.kind

    def switch(self, body: _ClassBody, stmt: S.Repeat, groups: list[list[ir.Node]], counts: list[int],
               count: ast.expr, var: str, kind: str, renamed: set[str]) -> None:
        """`stmt x n`, n 0 or 1: its modules built where n is 1, else None (torchvision's `downsample`),
        and run where they are not None. Where a later statement takes the name when n is 0 (`renamed`:
        kinds counted again after it), `forward` tests n itself."""
        comment = self.comment(groups[counts.index(1)][0], note=self.source.statement(stmt.span), body=body)
        init_at, forward_at, registered_at = len(body.init), len(body.forward), len(body.registered)
        insts, entry, fresh = body.insts, body.cur, body.fresh
        active = [k for k, n in enumerate(counts) if n]
        body.insts = [insts[k] for k in active]
        body.init_depth += 1
        body.forward_depth += 1
        self.statement(body, stmt.stmt, [groups[k] for k in active], var, var)
        made = body.cur
        inner_init, inner_forward = body.init[init_at:], body.forward[forward_at:]
        del body.init[init_at:], body.forward[forward_at:]
        before = self.follow_channels(body, insts, entry, made, counts, inner_init)
        body.init_depth -= 1
        body.forward_depth -= 1
        body.insts = insts
        condition = body.code(count)
        first = body.registered[registered_at] if len(body.registered) > registered_at else None
        if first is not None and not renamed:
            test = f"{body.forward_path(first)} is not None"
            otherwise = [f"{body.indent(True)}else:", *_assign(first, "None", body.indent(True) + INDENT)]
        else:
            test, otherwise = body.code(body.forward_expr(count)), []
        body.init.extend(before)
        body.init.extend(_commented([f"{body.indent(True)}if {condition}:"], comment, body.indent(True)))
        body.init.extend(inner_init + otherwise)
        body.forward.extend(_commented([f"{body.indent(False)}if {test}:"], comment, body.indent(False)))
        body.forward.extend(inner_forward)
        body.fresh = fresh and body.fresh

    def follow_channels(self, body: _ClassBody, insts: list[Inst], entry: ast.expr | None, made: ast.expr | None,
                        counts: list[int], inner_init: list[str]) -> list[str]:
        """After a switch: the channels are `made` where it ran and `entry` elsewhere; where those differ,
        the channels variable holds them (its update appended to `inner_init`). Returns the lines that go
        before the switch."""
        if entry is not None and made is not None and code(entry) == code(made):
            body.cur = entry
            return []
        if entry is None or made is None:
            body.cur = None
            return []
        ch = self.channels_variable(body)
        values = [evaluate(made if n else entry, inst.env) for inst, n in zip(insts, counts, strict=True)]
        inner_init.append(self.channel_line(body, ch, made))  # at the switch's depth: inside it
        before = [] if code(entry) == ch else [self.channel_line(body, ch, entry, outer=True)]
        for inst, value in zip(insts, values, strict=True):
            inst.env[ch] = value
        body.cur = name(ch)
        return before

    def channels_variable(self, body: _ClassBody) -> str:
        if body.cls.channels is None:
            body.cls.channels = body.cls.names.create("channels")
        return body.cls.channels

    def channel_line(self, body: _ClassBody, ch: str, expr: ast.expr, outer: bool = False) -> str:
        """`channels = expr`, kept only if the class reads `channels` (see `block_class`)."""
        body.cls.channel_names |= names_in(expr)
        indent = INDENT * (2 + body.init_depth - outer)
        return f"{indent}{ch} = {code(expr)}{_CHANNEL_LINE}"

    def loop(self, body: _ClassBody, stmt: S.Repeat, groups: list[list[ir.Node]], counts: list[int],
             count: ast.expr, var: str, kind: str, before: dict[str, ast.expr], inc: dict[str, ast.expr]) -> None:
        """`stmt x n`, n differing between calls: a `for` loop in `__init__` and in `forward`, the
        modules named `f"{kind}{i + 1}"` (as the expander counts)."""
        comment = self.comment(groups[counts.index(max(counts))][0], note=self.source.statement(stmt.span), body=body)
        variable = next((v for v in ("i", "j", "k") if not body.cls.names.taken(v)), None) or body.cls.names.create("i")
        body.cls.names.reserve(variable)
        attribute = body.cls.attributes.create(f"num_{kind}")
        body.prologue.append(f"{INDENT * 2}self.{attribute} = {body.code(count)}")
        for key, n in inc.items():
            body.scope.counts[key] = add(before.get(key, ZERO), mul(name(variable), n))
        insts, items = [], []
        for inst, group, n in zip(body.insts, groups, counts, strict=True):
            for index, node in enumerate(group):
                insts.append(inst.iteration(variable, index, n))
                items.append([node])
        entering = [self.shape(group[0]).input[0] for group in items]
        leaving = [self.shape(group[0]).output[0] for group in items]
        outer, entry, init_at, forward_at = body.insts, body.cur, len(body.init), len(body.forward)
        body.insts = insts
        body.loops.append(variable)
        pre, ch = [], None
        if entry is not None and fit(entry, body.envs, entering) is None:  # the channels change from run to run
            ch = self.channels_variable(body)
            if code(entry) != ch:
                pre.append(self.channel_line(body, ch, entry))
            for inst, value in zip(insts, entering, strict=True):
                inst.env[ch] = value
            body.cur = name(ch)
        elif entry is None:
            body.cur = None
        body.init_depth += 1
        body.forward_depth += 1
        body.fresh = False
        self.statement(body, stmt.stmt, items, var, var)
        if ch is not None:
            update = self.resolve(body, leaving, [body.cur], f"{kind}_out_channels")
            if code(update) != ch:
                body.init.append(self.channel_line(body, ch, update))
        body.init_depth -= 1
        body.forward_depth -= 1
        body.loops.pop()
        body.insts = outer
        inner_init, inner_forward = body.init[init_at:], body.forward[forward_at:]
        del body.init[init_at:], body.forward[forward_at:]
        used = re.compile(rf"\b{variable}\b")
        body.init.extend(pre)
        target = variable if any(used.search(line) for line in inner_init) else "_"
        body.init.extend(_commented([f"{body.indent(True)}for {target} in range({body.code(count)}):"], comment,
                                    body.indent(True)))
        body.init.extend(inner_init)
        target = variable if any(used.search(line) for line in inner_forward) else "_"
        body.forward.extend(_commented([f"{body.indent(False)}for {target} in range(self.{attribute}):"], comment,
                                       body.indent(False)))
        body.forward.extend(inner_forward)
        body.cls.names.release(variable)
        body.fresh = False
        # the channels after the loop: the last run's, or what entered where it never ran
        final, last = [], {}
        for inst, value in zip(insts, leaving, strict=True):
            last[inst.call] = value
        for inst in outer:
            if inst.call in last:
                final.append(last[inst.call])
            elif entry is not None:
                final.append(evaluate(entry, inst.env))
            else:
                body.cur = None
                return
        if ch is not None:
            for inst, value in zip(outer, final, strict=True):
                inst.env[ch] = value
        body.cur = self.channels(body, final, [name(ch) if ch else None, entry])

    def container_class(self, part: str) -> str:
        """The module that holds a branch's or a shortcut's layers (`branch2`: an `nn.Sequential`, as
        torchvision's `downsample`), a join's branches (`concat1`: an `nn.ModuleDict`), or the
        preprocessing buffers (a class written once at the top of the file)."""
        role = re.sub(r"\d+$", "", part)
        if role in ("branch", "shortcut"):
            return "nn.Sequential"
        if role != "preprocess":
            return "nn.ModuleDict"
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
            "# A block's class is built once per call with that call's values. A branch or a projecting shortcut",
            "# is an nn.Sequential of its layers, a join an nn.ModuleDict of its branches; their layers run in",
            "# the forward of the class holding them, one line per statement.",
        ]
        imports = ["import torch"]
        if self.uses_functional:
            imports.append("import torch.nn.functional as F")
        imports.append("from torch import nn")
        return "\n".join(lines) + "\n\n" + "\n".join(imports)

    def class_text(self, body: _ClassBody, doc: str, attrs: list[str] = ()) -> str:
        out = [f"class {body.cls.name}(nn.Module):", f'{INDENT}"""{doc}"""', ""]
        for attr in attrs:
            out.append(f"{INDENT}{attr}")
        if attrs:
            out.append("")
        out.extend(self.signature(body.cls))
        out.append(f"{INDENT * 2}super().__init__()")
        out.extend(body.prologue)
        out.extend(body.init)
        out.append("")
        out.append(f"{INDENT}def forward(self, x: torch.Tensor) -> torch.Tensor:")
        out.extend(body.forward)
        return "\n".join(out)

    @staticmethod
    def signature(cls: _Class) -> list[str]:
        """`def __init__(self, in_channels: int, c: int, s: int = 1, project: bool = False) -> None:`; the
        arguments after the first with a default are keyword-only where a later one has none."""
        args = cls.signature()
        params = []
        for arg in args:
            params.append(f"{arg.name}: {arg.annotation}" + (f" = {code(arg.default)}" if arg.default is not None
                                                              else ""))
        first = next((k for k, arg in enumerate(args) if arg.default is not None), len(args))
        if any(arg.default is None for arg in args[first:]):
            params.insert(first, "*")
        line = f"{INDENT}def __init__({', '.join(['self', *params])}) -> None:"
        if len(line) <= LINE_LIMIT:
            return [line]
        return [f"{INDENT}def __init__(", *(f"{INDENT * 2}{p}," for p in ["self", *params]), f"{INDENT}) -> None:"]

    def block_doc(self, cls: _Class) -> str:
        block = cls.block
        params = ", ".join(self.source.statement(p.span) for p in block.params)
        doc = printable(f"Block {block.name} (line {block.span.line}): {block.name}({params}), built once per call.")
        return doc if len(doc) + 7 <= LINE_LIMIT else printable(f"Block {block.name} (line {block.span.line}).")

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
