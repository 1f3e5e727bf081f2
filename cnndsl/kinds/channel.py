"""Channel operations: `shuffle G` (ShuffleNet's channel shuffle) and `channels A:B` (a slice of the
channels, ShuffleNetV2's split). Neither has parameters or MACs, and neither moves a pixel, so the
receptive field passes through unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Field, LayerShape, Node, Pointwise, Shape, fmt, node

if TYPE_CHECKING:
    from ..analysis.receptive_field import FieldPass
    from ..analysis.shapes import Shapes
    from ..expand import Options

_NO_MACS = "params: 0, macs: 0 (torchvision's convention counts conv and fc only)"


@node
class Shuffle(Pointwise):
    """`shuffle G`: view the C channels as G x C/G, transpose to C/G x G, flatten: output channel
    j * G + g is input channel g * C/G + j (torch.channel_shuffle)."""

    key = "shuffle"
    statement = "shuffle"

    groups: int

    @classmethod
    def build(cls, options: Options) -> Shuffle:
        return cls(name=options.name("shuffle"), groups=options.integer("groups", "a group count"), **options.common)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        channels = shape[0]
        if channels % self.groups:
            divisors = [d for d in range(2, channels + 1) if channels % d == 0]
            close = sorted(divisors, key=lambda d: (abs(d - self.groups), d))[:2] or [1]
            raise self.error(f"shuffle {self.groups} cannot split the {channels} channels of its input into "
                             f"{self.groups} equal groups", notes=[f"input {fmt(shape)}"],
                             hint=f"use a group count that divides {channels}, e.g. "
                                  + " or ".join(f"'shuffle {d}'" for d in sorted(close)))
        return LayerShape(shape, shape, in_channels=channels, out_channels=channels, groups=self.groups)

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        channels = shape.input[0]
        return (f"channels viewed as {self.groups} x {channels // self.groups}, transposed to "
                f"{channels // self.groups} x {self.groups} and flattened", _NO_MACS)

    def text(self) -> str:
        return f"shuffle {self.groups}"


@node
class Channels(Node):
    """`channels A:B`: keep channels A..B-1 (half-open, as a Python slice); `channels :B` starts at 0,
    `channels A:` runs to the last channel. Negative indices are not allowed."""

    key = "channels"
    statement = "channels"

    start: int | None = None  # None: from channel 0
    stop: int | None = None  # None: to the last channel

    @classmethod
    def build(cls, options: Options) -> Channels:
        start = options.integer("start", "the first channel", default=None, minimum=0)
        stop = options.integer("stop", "the end channel", default=None, minimum=0)
        if start is not None and stop is not None and stop <= start:
            raise options.error(f"channels {start}:{stop} keeps no channel: A:B keeps channels A to B-1, so B must "
                                f"be greater than A",
                                hint=f"write 'channels {start}:{start + 1}' for channel {start} alone, "
                                     f"or 'channels {start}:' for channel {start} to the last")
        return cls(name=options.name("channels"), start=start, stop=stop, **options.common)

    def bounds(self, channels: int) -> tuple[int, int]:
        """(first, end) on an input of `channels` channels."""
        return (self.start or 0, channels if self.stop is None else self.stop)

    def infer(self, shape: Shape, shapes: Shapes) -> LayerShape:
        channels = shape[0]
        start, stop = self.bounds(channels)
        if stop > channels or start >= channels:
            if start >= channels:
                fix = f"start below {channels}, e.g. 'channels {channels // 2}:' for the second half"
            else:
                fix = f"end at {channels} at most: " + (f"'channels :{channels}'" if self.start is None else
                                                         f"'channels {start}:{channels}' or 'channels {start}:'")
            raise self.error(f"{self.text()} reaches past the {channels} channels of its input "
                             f"(channels 0 to {channels - 1})", notes=[f"input {fmt(shape)}"], hint=fix)
        if stop <= start:
            raise self.error(f"{self.text()} keeps no channel of the {channels}", notes=[f"input {fmt(shape)}"],
                             hint=f"the range is half-open: 'channels {start}:{start + 1}' keeps channel {start}")
        out = (stop - start, *shape[1:])
        return LayerShape(shape, out, in_channels=channels, out_channels=stop - start)

    def field(self, before: Field, fields: FieldPass) -> Field:
        return before

    def explain(self, shape: LayerShape) -> tuple[str, ...]:
        start, stop = self.bounds(shape.input[0])
        return (f"channels {start} to {stop - 1} of {shape.input[0]}: {stop - start}", _NO_MACS)

    def text(self) -> str:
        return f"channels {'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"


__all__ = ["Channels", "Shuffle"]
