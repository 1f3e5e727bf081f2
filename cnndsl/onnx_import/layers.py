"""What the passes hand each other: layer-level graph nodes (`Layer`, after recognition) and the
tree of statements (`Branching`, `Call`, after the series-parallel and folding passes).

A `Layer` holds a cnndsl kind node (`ir.Conv`, `ir.BatchNorm`, ...: the one definition of each
statement, whose `text()` prints it) built with a placeholder name and span, or one of three
import-only steps that later passes turn into statements: `Join` (Add/Mul/Concat of data),
`Crop` (a spatial Slice before a concat) and `AxisAdaptive` (one axis of an adaptive pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from .. import ir
from ..errors import Span

SPAN = Span(0, 0)


def make(kind: type, **fields) -> ir.Node:
    """A kind node for printing and comparing: its name and span are placeholders."""
    return kind(name="", span=SPAN, **fields)


@dataclass(frozen=True)
class Join:
    kind: str  # add | mul | concat


@dataclass(frozen=True)
class Crop:
    """A Slice of height and width: `concat crop` removes it from a branch."""

    top: int
    bottom: int
    left: int
    right: int


@dataclass(frozen=True)
class AxisAdaptive:
    """ONNX's lowering of an uneven adaptive pool along one axis (Slice, Reduce, Concat)."""

    mode: str
    axis: int  # 2 (height) or 3 (width)
    out: int


@dataclass(frozen=True, eq=False)
class Layer:
    """One statement's worth of ONNX nodes: what it computes, what it reads, its weights."""

    node: ir.Node | Join | Crop | AxisAdaptive
    inputs: tuple[str, ...]
    output: str
    origin: int  # the first ONNX node it came from, for messages
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # role -> array, in cnndsl's layout
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Branching:
    """`residual` (branches = (body,), `shortcut` or None), `concat`, `concat crop`, `add`, `mul`."""

    kind: str
    branches: tuple[tuple[Item, ...], ...]
    shortcut: tuple[Item, ...] | None = None
    always: bool = False
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Call:
    """A call of a folded block, `count` times in a row; `expanded` are the items it stands for."""

    block: str
    args: tuple[tuple[str, int], ...]  # every parameter's value (defaults included)
    count: int
    expanded: tuple[Item, ...]
    in_shape: tuple[int, ...] = ()


Item = Union[Layer, Branching, Call]  # noqa: UP007 - a runtime alias


def leaves(items: tuple[Item, ...]):
    """Every `Layer` in statement order: a residual's body before its shortcut, as cnndsl names them."""
    for item in items:
        if isinstance(item, Layer):
            yield item
        elif isinstance(item, Call):
            yield from leaves(item.expanded)
        else:
            for branch in item.branches:
                yield from leaves(branch)
            if item.shortcut is not None:
                yield from leaves(item.shortcut)
