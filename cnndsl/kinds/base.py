"""What every layer kind is made of: the IR node base class, the figures its rules return, and the
one place where window arithmetic lives (`window`, `same_padding`).

A kind is one `Node` subclass (see `cnndsl.kinds`). Its fields are the evaluated statement; its
methods are its rules, each a pure function of the node and what the passes hand it:

    infer(shape, shapes)    -> LayerShape   the shape rule (`shapes.infer(child, shape)` recurses)
    field(before, fields)   -> Field        the receptive-field rule (`fields.field(child, f)` recurses)
    cost(shape)             -> Cost         parameters, buffers, MACs
    tensors(shape)          -> TensorSpec.. the tensors it owns, in PyTorch's registration order,
                                            each with its initialisation
    explain(shape)          -> lines        the arithmetic `analyze --explain` shows
    text()                  -> str          the evaluated statement, as a person would write it
    build(options)          -> Node         (classmethod) the node from a statement's options

Backends find their emitter for a node by one convention, `<key>_<backend>` (`conv_torch`,
`conv_onnx`, `conv_numpy`), through `emitter()`; `tests/test_kinds.py` checks every kind has all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from math import gcd, sqrt
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ..errors import ShapeError, Span

if TYPE_CHECKING:
    from fractions import Fraction

    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options

    # A jump or centre of a receptive field: an int where it is whole, else an exact Fraction (never
    # a float), so fields compare exactly and Fraction's cost is paid only where a value is not whole.
    Rational = int | Fraction

Shape = tuple[int, ...]

# Node classes get their __init__ and frozenness from dataclasses, and one __eq__, __hash__ and
# __repr__ from Node: dataclasses compiles every method it writes, per class, at import time,
# which for the node classes was a tenth of `cnndsl analyze`'s start-up.
node = dataclass(frozen=True, kw_only=True, eq=False, repr=False)


def fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def number_text(value: int | float) -> str:
    """A number as a person writes it in a .cnn file: `2`, `0.5`, `1e-5`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:g}"
    if float(text) != value:  # 0.2*1/17: twelve digits, which read back within 1e-12
        text = f"{value:.12g}"
    return text.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def fraction(numerator: Rational, denominator: int = 1) -> Fraction:
    """fractions.Fraction, imported on first use: importing it (and decimal with it) costs more than
    the whole field pass of a network whose figures are all whole, such as ResNet-152's."""
    from fractions import Fraction

    return Fraction(numerator, denominator)


def exact(value: Rational) -> Rational:
    """`value` as an int where it is whole."""
    if type(value) is not int and getattr(value, "denominator", None) == 1:
        return value.numerator
    return value


def rational_text(value: Rational | float) -> str:
    """A field figure for a person: `3`, `-0.5`, `0.125` (a decimal where one of at most 6 places is
    exact), else `7/6`."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    p, q = value.numerator, value.denominator
    if q == 1:
        return str(p)
    if 10**6 % q:
        return f"{p}/{q}"
    digits = str(abs(p) * (10**6 // q)).rjust(7, "0")
    return f"{'-' if p < 0 else ''}{digits[:-6]}.{digits[-6:].rstrip('0')}"


def rational_json(value: Rational | float) -> int | float | str:
    """A field figure in JSON: an integer where whole, else the exact `"p/q"` string."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return value.numerator if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def pair_text(values: tuple[int, int], square: str = "x") -> str:
    """`3` for (3, 3) when `square` is "", else `3x3`; `1x7` for (1, 7)."""
    if values[0] == values[1] and not square:
        return number_text(values[0])
    return f"{number_text(values[0])}x{number_text(values[1])}"


# ---------------------------------------------------------------- window arithmetic


def groups_fix(groups: int, c_in: int, c_out: int) -> str:
    """The fix for `groups` that does not divide the channels: the group count dividing both that
    is nearest the one written (both on a tie), not simply the largest (which would be depthwise)."""
    common = gcd(c_in, c_out)
    nearest = [common]
    # Outward from the number written: 1 divides both, so the search ends by `groups - 1` steps;
    # bounded for absurd channel counts, where the common divisor itself is the answer.
    for distance in range(min(groups, common, 1 << 20)):
        found = [d for d in (groups - distance, groups + distance) if 1 <= d <= common and common % d == 0]
        if found:
            nearest = sorted(set(found))
            break
    both = f"{c_in}" if c_in == c_out else f"both {c_in} and {c_out}"
    if len(nearest) == 1:
        return f"use 'groups{nearest[0]}': the nearest group count that divides {both}"
    return f"use 'groups{nearest[0]}' or 'groups{nearest[1]}': the nearest group counts that divide {both}"


class Window(NamedTuple):
    """One axis of a sliding window, resolved."""

    size: int  # input size on this axis
    kernel: int  # effective kernel: dilation * (k - 1) + 1
    stride: int
    pad_begin: int
    pad_end: int
    out: int
    dropped: int  # real input rows/columns at the end that no window sees

    @property
    def overhang(self) -> int:
        """Rows past input + padding that the last window reaches: > 0 only where ceil mode adds a
        window. Padding the end by this much lets a floor-mode window give the same count."""
        return max((self.out - 1) * self.stride + self.kernel - (self.size + self.pad_begin + self.pad_end), 0)


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME: out = ceil(size / stride); the odd row/column of padding goes last."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def window(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
           ceil: bool = False) -> Window | None:
    """The output size of one axis, or None when the kernel is larger than the padded input."""
    k = effective_kernel(kernel, dilation)
    room = size + pad_begin + pad_end - k
    if room < 0:
        return None
    if ceil:
        out = -(-room // stride) + 1
        # As PyTorch and ONNX do: the last window must start inside the input or its leading padding.
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
    else:
        out = room // stride + 1
    covered = (out - 1) * stride + k  # rows of the padded input the windows reach
    unseen_padded = size + pad_begin + pad_end - covered
    # A kernel smaller than its stride skips rows everywhere by design (ResNet's 1x1/2 projection);
    # only windows that tile the input leave a real, one-sided remainder worth a warning.
    dropped = max(unseen_padded - pad_end, 0) if not ceil and k >= stride else 0
    return Window(size, k, stride, pad_begin, pad_end, out, dropped)


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling of `size` rows to `out`: window i covers rows floor(i*size/out) up
    to, not including, ceil((i+1)*size/out). Windows are even (all size/out, stride size/out) where
    out divides size; else they differ by a row and may overlap, and with out > size repeat rows."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


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

    def text(self) -> str:
        """The option as written: `pad1`, `pad 1x2`, `pad same`; "" for no padding."""
        if self.same:
            return "pad same"
        if not (self.top or self.bottom or self.left or self.right):
            return ""
        if self.top == self.left:
            return f"pad{self.top}"
        return f"pad {self.top}x{self.left}"


def glued(keyword: str, values: tuple[int, int]) -> str:
    """An option with a pair: glued where square (`dil2`, `outpad1`), else `dil 1x2`."""
    return f"{keyword}{values[0]}" if values[0] == values[1] else f"{keyword} {pair_text(values)}"


def window_words(keyword: str, kernel: tuple[int, int], stride: tuple[int, int], padding: Padding) -> list[str]:
    """The printed start of a windowed statement: `conv 3x3/2`, `pad1` (stride and padding only where set)."""
    strided = f"/{pair_text(stride, '')}" if stride != (1, 1) else ""
    return [f"{keyword} {pair_text(kernel)}{strided}", padding.text()]


# ---------------------------------------------------------------- what the rules return


class LayerShape(NamedTuple):
    """What the shape pass knows of one node at the network's input size."""

    input: Shape
    output: Shape
    windows: tuple[Window, Window] | None = None  # conv / pool: height and width axes
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1
    projects: bool = False  # residual: the shortcut branch is used

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right), as F.pad's reversed order and ONNX's begin/end order need."""
        if self.windows is None:
            return (0, 0, 0, 0)
        h, w = self.windows
        return (h.pad_begin, h.pad_end, w.pad_begin, w.pad_end)


class Spans(NamedTuple):
    """One axis of a field that depends on the output position, exactly: output o sees the input
    rows first(o)..last(o) (padding included, as everywhere in the field), and the pattern repeats
    every `period` outputs, `shift` rows further on (shift = jump * period, a whole number)."""

    period: int
    first: tuple[int, ...]  # first(o) for o in 0..period-1
    last: tuple[int, ...]
    shift: int
    count: int | None = None  # the output size on this axis: positions past it do not exist

    def at(self, o: int) -> tuple[int, int]:
        """(first, last) input row of output position `o` (any integer: padding positions too)."""
        q, r = divmod(o, self.period)
        return self.first[r] + q * self.shift, self.last[r] + q * self.shift

    def extent(self) -> int:
        """The largest last - first + 1 over the output positions that exist."""
        n = self.period if self.count is None else max(min(self.period, self.count), 1)
        return max(self.last[o] - self.first[o] for o in range(n)) + 1


def _half(start: Rational, twice: Rational) -> Rational:
    """start + twice / 2, exactly; an int where whole."""
    if type(start) is int and type(twice) is int and not twice & 1:
        return start + (twice >> 1)
    return exact(start + fraction(twice) / 2)


class Field(NamedTuple):
    """Receptive field size, jump (effective stride) and the input coordinate of the centre of the
    first output, per axis (height, width). Jump and start are exact rationals (`Rational`).

    Usually every output sees `size` rows centred at start + jump * o (`spans` None). Uneven
    adaptive windows make the rows an output sees depend on its position: such an axis keeps its
    exact `Spans`, `size` is the largest extent over the output positions, and jump and start are
    the affine model of the positions (the centre of output o is start + jump * o, a fraction of an
    input row apart) that branches must agree on."""

    size: tuple[int, int]
    jump: tuple[Rational, Rational]
    start: tuple[Rational, Rational]
    spans: tuple[Spans | None, Spans | None] | None = None

    def through(self, kernel: tuple[int, int], stride: tuple[int, int], pad_begin: tuple[int, int],
                out: tuple[int | None, int | None] = (None, None)) -> Field:
        """Distill's forward recursion through a window of effective size k, stride s, leading pad p:
        r += (k - 1) * j, start += ((k - 1) / 2 - p) * j, j *= s. `out` is the output size (it bounds
        the positions a position-dependent field takes its largest extent over)."""
        if self.spans is None:  # the common case: jumps are ints, and so the start mostly is
            (r_h, r_w), (j_h, j_w), (s_h, s_w) = self.size, self.jump, self.start
            (k_h, k_w), (p_h, p_w) = kernel, pad_begin
            t_h, t_w = (k_h - 1 - 2 * p_h) * j_h, (k_w - 1 - 2 * p_w) * j_w  # twice the move of the centre
            if type(s_h) is int and type(s_w) is int and not (t_h | t_w) & 1:
                start = (s_h + (t_h >> 1), s_w + (t_w >> 1))
            else:
                start = (_half(s_h, t_h), _half(s_w, t_w))
            return Field((r_h + (k_h - 1) * j_h, r_w + (k_w - 1) * j_w), (j_h * stride[0], j_w * stride[1]), start)
        return self._per_axis(lambda axis: self._window(axis, kernel[axis], stride[axis], pad_begin[axis],
                                                        out[axis]))

    def whole(self, shape: Shape) -> Field:
        """The field of a unit that sees its whole HxW input (flatten, global pool, fc)."""
        if len(shape) != 3:
            return self
        return self.through((shape[1], shape[2]), (1, 1), (0, 0), (1, 1))

    def adaptive(self, sizes: tuple[int, int], outs: tuple[int, int]) -> Field:
        """Through adaptive pooling of `sizes` to `outs` (`adaptive_windows`). Even windows are a
        window of size/out, stride size/out; uneven ones give position-dependent `Spans`, jump
        j * size/out and the affine centre of output 0, start + j * (size - out) / (2 * out): output o
        at input position (o + 1/2) * size/out - 1/2, the centre of its window where they are even."""
        if all(size % out == 0 for size, out in zip(sizes, outs, strict=True)):
            k = (sizes[0] // outs[0], sizes[1] // outs[1])
            return self.through(k, k, (0, 0), outs)
        return self._per_axis(lambda axis: self._adaptive(axis, sizes[axis], outs[axis]))

    def axis_spans(self, axis: int) -> Spans:
        """Axis `axis` as `Spans` (one period of one output where the field does not depend on it)."""
        if self.spans is not None and self.spans[axis] is not None:
            return self.spans[axis]
        size = self.size[axis]
        first = exact(fraction(self.start[axis]) - fraction(size - 1, 2))
        return Spans(1, (first,), (first + size - 1,), self.jump[axis])

    def span(self, axis: int, o: int) -> tuple[int, int]:
        """The first and last input row (axis 0) or column (1) that output position `o` sees."""
        return self.axis_spans(axis).at(o)

    # -- position-dependent axes -------------------------------------------------------------------
    def _window(self, axis: int, k: int, s: int, p: int, out: int | None):
        spans = self.axis_spans(axis)
        period = spans.period // gcd(spans.period, s)
        first = tuple(spans.at(o * s - p)[0] for o in range(period))
        last = tuple(spans.at(o * s - p + k - 1)[1] for o in range(period))
        jump = self.jump[axis]
        return (Spans(period, first, last, spans.shift * s * period // spans.period, out),
                exact(jump * s), _half(self.start[axis], (k - 1 - 2 * p) * jump))

    def _adaptive(self, axis: int, size: int, out: int):
        if size % out == 0:
            return self._window(axis, size // out, size // out, 0, out)
        spans = self.axis_spans(axis)
        g = gcd(size, out)
        # window i + out/g is window i moved size/g rows; `reps` of those move whole periods
        reps = spans.period // gcd(spans.period, size // g)
        period = out // g * reps
        first = tuple(spans.at(i * size // out)[0] for i in range(period))
        last = tuple(spans.at(-(-(i + 1) * size // out) - 1)[1] for i in range(period))
        jump = self.jump[axis]
        return (Spans(period, first, last, spans.shift * (size // g) * reps // spans.period, out),
                exact(jump * fraction(size, out)), exact(self.start[axis] + jump * fraction(size - out, 2 * out)))

    def _per_axis(self, rule) -> Field:
        """A field from `rule(axis) -> (Spans, jump, start)` per axis; an axis whose spans are one
        period of one output centred on `start` is plain again (no spans)."""
        sizes, jumps, starts, spans = [], [], [], []
        for axis in range(2):
            axis_spans, jump, start = rule(axis)
            sizes.append(axis_spans.extent())
            jumps.append(jump)
            starts.append(start)
            plain = axis_spans.period == 1 and axis_spans.first[0] + axis_spans.last[0] == 2 * start
            spans.append(None if plain else axis_spans)
        return Field(tuple(sizes), tuple(jumps), tuple(starts), None if spans == [None, None] else tuple(spans))

    @staticmethod
    def union(fields: list[Field]) -> Field:
        """What joined branches with the same jump and start see: per output position, every row any
        branch sees (the largest field, where none depends on the position)."""
        first = fields[0]
        if all(f.spans is None for f in fields):
            return Field(tuple(max(f.size[axis] for f in fields) for axis in range(2)), first.jump, first.start)

        def rule(axis: int):
            spans = [f.axis_spans(axis) for f in fields]
            period = 1
            for s in spans:
                period = period * s.period // gcd(period, s.period)
            at = [[s.at(o) for s in spans] for o in range(period)]
            counts = [s.count for s in spans if s.count is not None]
            merged = Spans(period, tuple(min(a for a, _ in row) for row in at),
                           tuple(max(b for _, b in row) for row in at),
                           spans[0].shift * period // spans[0].period, min(counts) if counts else None)
            return merged, first.jump[axis], first.start[axis]

        return first._per_axis(rule)


INPUT_FIELD = Field((1, 1), (1, 1), (0, 0))


class Cost(NamedTuple):
    params: int
    buffers: int
    macs: int


ZERO = Cost(0, 0, 0)


class Uniform(NamedTuple):
    """Drawn uniformly in [-bound, bound] (PyTorch's default for conv and fc: bound 1/sqrt(fan_in))."""

    bound: float


# How a tensor starts: a constant fill, values given in the file, or a uniform draw.
Init = float | tuple[float, ...] | Uniform


class TensorSpec(NamedTuple):
    name: str  # "<node name>.<role>", e.g. "basic3.shortcut1.conv1.weight"
    shape: tuple[int, ...]
    role: str  # weight | bias | running_mean | running_var | num_batches_tracked | scale | mean | std
    node: str
    trainable: bool
    dtype: str = "float32"
    init: Init = 0.0


def n(value: int) -> str:
    """A figure in an explanation: `1,234`."""
    return f"{value:,}"


# ---------------------------------------------------------------- the node base class


@node
class Node:
    """A statement of the network, after expansion: every number in it is concrete.

    Subclasses set `key` (the name backends find emitters by) and, for a statement a user writes,
    `statement` (its keyword, which registers the kind with the expander)."""

    key: ClassVar[str] = ""
    statement: ClassVar[str | None] = None

    name: str
    span: Span
    calls: tuple[Span, ...] = ()

    @property
    def kind(self) -> str:
        """What the analysis table calls it (`conv`, `pool`, `relu`, ...)."""
        return self.key

    def children(self) -> tuple[Node, ...]:
        """The nodes directly inside this one, in order (none for a layer)."""
        return ()

    def moved(self, name: str, span: Span, calls: tuple[Span, ...], children: dict[str, Any] | None = None) -> Node:
        """The same evaluated statement at another place: a copy with another name, span and calls
        (and, for structure, the `children` fields given). dataclasses.replace would run every field
        through __init__ again: the expander moves most layers of a large program, so a copy of the
        fields is what it pays for."""
        moved = object.__new__(type(self))
        fields_of = moved.__dict__
        fields_of.update(self.__dict__)
        fields_of["name"], fields_of["span"], fields_of["calls"] = name, span, calls
        if children:
            fields_of.update(children)
        return moved

    # -- rules (every kind defines them or inherits a family's) ----------------------------------
    @classmethod
    def build(cls, options: Options) -> Node:
        raise NotImplementedError(f"{cls.__name__} has no build rule")

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        raise NotImplementedError(f"{type(self).__name__} has no shape rule")

    def field(self, before: Field, fields: FieldPass) -> Field:
        raise NotImplementedError(f"{type(self).__name__} has no receptive-field rule")

    def cost(self, shape: LayerShape) -> Cost:
        return ZERO

    def tensors(self, shape: LayerShape) -> tuple[TensorSpec, ...]:
        return ()

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        return ()

    def text(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no printer")

    # -- helpers for the rules --------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None, notes=()) -> ShapeError:
        return ShapeError(message, self.span, hint=hint, notes=notes, calls=self.calls)

    def need_spatial(self, shape: Shape, what: str) -> None:
        if len(shape) != 3:
            raise self.error(f"{what} needs a CxHxW input, but its input is the vector {fmt(shape)}",
                             hint=f"move the {what} before 'flatten'/'fc', or remove the flatten")

    def weight_and_bias(self, dims: tuple[int, ...], fan_in: int, outputs: int, bias: bool) -> tuple[TensorSpec, ...]:
        """A weight of `dims` and, with `bias`, one bias per output, drawn as PyTorch's conv and linear
        layers draw them: uniform in +-1/sqrt(fan_in)."""
        bound = Uniform(1.0 / sqrt(fan_in))
        weight = self.spec("weight", dims, bound)
        return (weight, self.spec("bias", (outputs,), bound)) if bias else (weight,)

    def spec(self, role: str, dims: tuple[int, ...], init: Init, trainable: bool = True,
             dtype: str = "float32") -> TensorSpec:
        return TensorSpec(f"{self.name}.{role}", tuple(dims), role, self.name, trainable, dtype, init)

    # -- one __eq__/__hash__/__repr__ for every node class ----------------------------------------
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


@node
class Pointwise(Node):
    """A kind that keeps its input's shape and receptive field (activations, norms, dropout)."""

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        return LayerShape(shape, shape)

    def field(self, before: Field, fields: FieldPass) -> Field:
        return before


def emitter(backend: Any, node: Node, suffix: str):
    """The backend's method for `node`: `<key>_<suffix>`, like sqlglot's `<key>_sql`."""
    method = getattr(backend, f"{node.key}_{suffix}", None)
    if method is None:
        raise NotImplementedError(f"the {suffix} backend has no emitter for {type(node).__name__} "
                                  f"(a method `{node.key}_{suffix}`)")
    return method
