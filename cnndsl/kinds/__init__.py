"""The layer kinds: each one `Node` subclass that holds all its rules (see `kinds.base`).

Adding a kind is the checklist in docs/backends.md ("Adding a layer kind"): its grammar rule, its
class here, one emitter per backend (`<key>_torch`, `<key>_onnx`, `<key>_numpy`) and, for NumPy,
its kernel. `STATEMENTS` maps a statement keyword to its kind, for the expander.
"""

from __future__ import annotations

from .activation import ACTIVATIONS, Activation, ActivationFn
from .base import (
    INPUT_FIELD,
    ZERO,
    Cost,
    Field,
    Init,
    LayerShape,
    Node,
    Padding,
    Pointwise,
    Shape,
    TensorSpec,
    Uniform,
    Window,
    emitter,
    fmt,
    same_padding,
    window,
)
from .channel import Channels, Shuffle
from .dense import Dropout, DropPath, Flatten, Linear
from .norm import BatchNorm, GroupNorm, LayerNorm, LayerScale
from .resample import Deconv, Upsample
from .structure import Add, Concat, Mul, Residual, Seq
from .window import AdaptivePool, Conv, GlobalPool, Pool


def all_kinds(base: type[Node] = Node) -> list[type[Node]]:
    """Every concrete kind: the subclasses of `Node` that have a `key`."""
    out = []
    for cls in base.__subclasses__():
        if cls.key:
            out.append(cls)
        out.extend(all_kinds(cls))
    return out


STATEMENTS: dict[str, type[Node]] = {cls.statement: cls for cls in all_kinds() if cls.statement}

__all__ = [
    "ACTIVATIONS", "INPUT_FIELD", "STATEMENTS", "ZERO", "Activation", "ActivationFn", "AdaptivePool", "Add",
    "all_kinds", "BatchNorm", "Channels", "Concat", "Conv", "Cost", "Deconv", "Dropout", "DropPath", "emitter",
    "Field", "Flatten", "fmt", "GlobalPool", "GroupNorm", "Init", "LayerNorm", "LayerScale", "LayerShape", "Linear",
    "Mul", "Node", "Padding", "Pointwise", "Pool", "Residual", "same_padding", "Seq", "Shape", "Shuffle",
    "TensorSpec", "Uniform", "Upsample", "Window", "window",
]
