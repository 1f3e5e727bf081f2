"""The one IR: a flat graph of small frozen dataclasses that every pass and backend reads.

`cnndsl.expand` builds it from the parsed program: block calls are inlined, `x N` repeated and
arithmetic evaluated, so every number here is concrete. Structure is kept only where it means
something to the network: a `Seq` for a block call or a branch, `Residual`, `Concat`, `Add`.

Every node has a unique dotted `name` (`basic3.shortcut1.conv1`). It is the name of the node's
tensors in every backend (`basic3.shortcut1.conv1.weight`), so weights move between PyTorch,
NumPy and ONNX by name. Every node keeps the span of its statement and, through `calls`, the
spans of the block calls that produced it (outermost first).

Figures that depend on the input size (shapes, `pad same` amounts, the channels a depthwise conv
sees, whether a residual projects) are not in the nodes: the shape rules (`cnndsl.analysis.shapes`)
compute them once, while the expander builds the nodes (a block can read the channels entering
it), the network keeps them as `shapes`, and the analysis and backends ask them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import Source, Span
from .kinds import (
    ACTIVATIONS,
    Activation,
    AdaptivePool,
    Add,
    BatchNorm,
    Channels,
    Concat,
    Conv,
    Deconv,
    Dropout,
    DropPath,
    Flatten,
    GlobalPool,
    GroupNorm,
    LayerNorm,
    LayerScale,
    Linear,
    Mul,
    Node,
    Padding,
    Pool,
    Residual,
    Seq,
    Shuffle,
    Upsample,
)

__all__ = [
    "ACTIVATIONS", "Activation", "AdaptivePool", "Add", "Augment", "BatchNorm", "Channels", "Concat", "Conv",
    "Deconv", "Dropout", "DropPath", "Expect", "Flatten", "GlobalPool", "GroupNorm", "LayerNorm", "LayerScale",
    "Linear", "Mul", "Network", "Node", "Padding", "Pool", "Preprocess", "Residual", "Seq", "Shuffle", "Span",
    "TrainConfig", "Upsample", "walk",
]


class Expect(NamedTuple):
    """`expect WHAT [comparison] VALUE`, checked by the analysis."""

    what: str  # params | trainable_params | macs | rf | output | memory
    comparison: str
    value: tuple[int | float, ...]
    span: Span


class Preprocess(NamedTuple):
    """The `preprocess` section: input scaling and standardisation, part of the model."""

    scale: float | None = None
    standardize: bool = False
    mean: tuple[float, ...] | None = None  # given in the file; else computed on the training set
    std: tuple[float, ...] | None = None
    span: Span | None = None


class Augment(NamedTuple):
    """The `augment` section: random transformations of training images."""

    flip: tuple[str, ...] = ()  # horizontal / vertical
    rotate: float = 0.0  # degrees
    zoom: tuple[float, float] | None = None
    skew: float = 0.0
    crop: int | None = None
    crop_pad: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    span: Span | None = None


class TrainConfig(NamedTuple):
    """Defaults for a file with no `train` section (or settings it leaves out): Adam with a cosine
    schedule over 15 epochs of batch 16 takes LeNet-5 past 97% on the bundled digits."""

    optimizer: str = "adam"
    lr: float = 0.002
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    batch: int = 16
    epochs: int = 15
    schedule: str = "cosine"
    schedule_args: tuple[float, ...] = ()
    seed: int = 0
    label_smoothing: float = 0.0
    val_split: float = 0.2
    span: Span | None = None


@dataclass(frozen=True)
class Network:
    """A whole program: the flat graph (`body`) and what the file says about it."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W), or (N,) for a vector input
    body: Seq
    expects: tuple[Expect, ...] = ()
    preprocess: Preprocess | None = None
    augment: Augment | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    source: Source = Source("")
    input_span: Span | None = None
    declared_input: tuple[int, ...] | None = None  # what the `input` line says (`input_shape` may override it)
    # The block definitions as written (syntax.BlockDef, expressions unevaluated): a backend that
    # writes one class per definition reads each statement's expressions here, finding the statement
    # of a node by its span.
    blocks: tuple = ()
    # Every node's shape at `input_shape`, computed once while expanding (a block reads the channels
    # entering it, `in_c`); the analysis reuses it at that input size.
    shapes: object = field(default=None, compare=False, repr=False)

    def block(self, name: str):
        """The definition (`syntax.BlockDef`) of block `name`."""
        return next(b for b in self.blocks if b.name == name)

    def walk(self) -> Iterator[Node]:
        """Every node, parents before children, in statement order."""
        return walk(self.body)

    def leaves(self) -> Iterator[Node]:
        """Every node that is not structure (no children)."""
        return (n for n in self.walk() if not n.children() and not isinstance(n, Seq))


def walk(node: Node) -> Iterator[Node]:
    """`node` and every node inside it, parents before children, in statement order."""
    # A stack of nodes still to visit, the next on top, rather than recursion: a recursive generator
    # resumes every enclosing generator for each node it yields (a deep network's walk was quadratic
    # in its depth, and a twentieth of an expansion).
    pending = [node]
    while pending:
        node = pending.pop()
        yield node
        children = node.children()
        if children:
            pending.extend(reversed(children))
