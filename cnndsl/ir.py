"""The one IR: a flat graph of small frozen dataclasses that every pass and backend reads.

`cnndsl.expand` builds it from the parsed program: block calls are inlined, `x N` repeated and
arithmetic evaluated, so every number here is concrete. Structure is kept only where it means
something to the network: a `Seq` for a block call or a branch, `Residual`, `Concat`, `Add`.

Every node has a unique dotted `name` (`basic3.shortcut1.conv1`). It is the name of the node's
tensors in every backend (`basic3.shortcut1.conv1.weight`), so weights move between PyTorch,
NumPy and ONNX by name. Every node keeps the span of its statement and, through `calls`, the
spans of the block calls that produced it (outermost first).

Figures that depend on the input size (shapes, `pad same` amounts, the channels a depthwise conv
sees, whether a residual projects) are not stored here: `cnndsl.analysis.shapes` computes them
once, and backends ask it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from .errors import Source, Span

# Node classes get their __init__ and frozenness from dataclasses, and one __eq__, __hash__ and
# __repr__ from Node: dataclasses compiles every method it writes, per class, at import time,
# which for the ~15 node classes was a tenth of `cnndsl analyze`'s start-up.
node = dataclass(frozen=True, kw_only=True, eq=False, repr=False)


@node
class Node:
    """A statement of the network, after expansion: every number in it is concrete."""

    name: str
    span: Span
    calls: tuple[Span, ...] = ()

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def children(self) -> tuple[Node, ...]:
        """The nodes directly inside this one, in order (none for a layer)."""
        return ()

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in fields(self))})"


class Padding(NamedTuple):
    """`pad same` (resolved per input size by the shape pass) or explicit amounts."""

    same: bool = False
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def __str__(self) -> str:
        if self.same:
            return "same"
        if self.top == self.bottom == self.left == self.right:
            return str(self.top)
        return f"{self.top},{self.bottom},{self.left},{self.right}"


@node
class Conv(Node):
    """`conv KxK/S pad P dil D groups G -> C`, or depthwise (`groups` = input channels)."""

    out_channels: int | None  # None for depthwise: input channels x multiplier
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding = Padding()
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    depthwise: bool = False
    multiplier: int = 1  # depthwise channel multiplier (`-> 2x`)
    bias: bool = True


@node
class Pool(Node):
    """`pool max|avg KxK/S pad P [ceil]`."""

    mode: str  # max | avg
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding = Padding()
    ceil: bool = False


@node
class GlobalPool(Node):
    """`pool max|avg global`: one value per channel."""

    mode: str  # max | avg

    @property
    def kind(self) -> str:
        return "pool"


@node
class Linear(Node):
    """`fc N`: on a CxHxW input, the HxW convolution to N flattened (C*H*W inputs)."""

    out_features: int
    bias: bool = True

    @property
    def kind(self) -> str:
        return "fc"


@node
class Flatten(Node):
    """`flatten`: CxHxW -> C*H*W."""


@node
class Dropout(Node):
    """`dropout P`."""

    p: float = 0.5


@node
class BatchNorm(Node):
    """`bn [eps E] [momentum M]`."""

    eps: float = 1e-5
    momentum: float = 0.1  # PyTorch convention: running = (1 - momentum) * running + momentum * batch

    @property
    def kind(self) -> str:
        return "bn"


ACTIVATIONS = ("relu", "relu6", "leaky", "elu", "sigmoid", "tanh", "gelu", "silu", "hardswish", "softmax")
ACTIVATION_DEFAULT_ALPHA = {"leaky": 0.01, "elu": 1.0}


@node
class Activation(Node):
    """`relu`, `leaky 0.1`, ...: an elementwise function."""

    fn: str  # one of ACTIVATIONS
    alpha: float | None = None  # leaky slope / elu alpha

    @property
    def kind(self) -> str:
        return self.fn


@node
class Seq(Node):
    """Statements in order. A block call (`block` set) or a branch body; the top-level body."""

    items: tuple[Node, ...]
    block: str | None = None
    args: tuple[tuple[str, int | float], ...] = ()

    def children(self) -> tuple[Node, ...]:
        return self.items


@node
class Residual(Node):
    """body(x) + shortcut(x); the shortcut is the identity unless the body changes the shape
    (or `always`). Whether it projects is the shape pass's answer (`LayerShape.projects`)."""

    body: Seq
    shortcut: Seq | None
    always: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.body,) if self.shortcut is None else (self.body, self.shortcut)


@node
class Concat(Node):
    """`concat { branch {...} ... }`: the branches' outputs joined on channels."""

    branches: tuple[Seq, ...]

    def children(self) -> tuple[Node, ...]:
        return self.branches


@node
class Add(Node):
    """`add { branch {...} ... }`: the branches' outputs summed."""

    branches: tuple[Seq, ...]

    def children(self) -> tuple[Node, ...]:
        return self.branches


LEAVES = (Conv, Pool, GlobalPool, Linear, Flatten, Dropout, BatchNorm, Activation)


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

    def walk(self) -> Iterator[Node]:
        """Every node, parents before children, in statement order."""
        return walk(self.body)

    def leaves(self) -> Iterator[Node]:
        return (n for n in self.walk() if isinstance(n, LEAVES))


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children():
        yield from walk(child)
