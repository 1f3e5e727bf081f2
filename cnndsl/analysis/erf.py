"""The effective receptive field (Luo et al., NeurIPS 2016): how much each input pixel actually moves
one unit of a layer, measured with the NumPy backend's input gradient.

For every spatial layer (a row of the Report whose output is CxHxW) the unit is the output position
whose theoretical field is centred nearest the centre of the input; its value is the sum over the
layer's channels at that position. The gradient of that sum with respect to the input, in absolute
value, summed over the input channels and averaged over `samples` seeded standard-normal inputs, is
the layer's `gradient` map (HxW). Per axis the map's marginal (the sum over the other axis) is the
mass; the effective field is, per axis, the smallest interval centred on the unit's field centre that
holds `mass` (90%) of it (`centred_extent`). docs/language.md states the definition.

One forward pass of all samples at once, then one backward pass per layer with every sample in the
batch: the gradient of a layer's unit is injected where the layer's output is made (a structure
node's output is the sum of its parts, so a residual injects into its body and its shortcut, a
concat into each branch), layers after it hand back zeros without computing, and the model's own
backward carries it to the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import ir
from ..errors import CnnDslError

if TYPE_CHECKING:
    from ..api import Net
    from ..kinds.base import Rational
    from . import Report

__all__ = ["EffectiveField", "centred_extent", "effective_fields"]

# Bytes of activations (float32, per the Report) one batch of samples may hold: the NumPy model peaks near
# 2.4 times that (ResNet-18, 8 samples: 528 MiB; a U-Net at 572x572, 1 sample: 2.7 GB).
FIELD_BUDGET = 1 << 29
# Bytes of activations ONE sample may hold (batches cannot split a sample): peak near 10 GB. The shipped
# U-Net (1.1 GiB) and FCN-ResNet-50 (1.8 GiB) fit; `upsample 100000x` (terabytes) is refused at once.
SAMPLE_LIMIT = 1 << 32


@dataclass(frozen=True)
class EffectiveField:
    """One layer's effective receptive field."""

    layer: str
    size: tuple[int, int]  # per axis, the side of the smallest centred interval holding `mass` of the gradient
    gradient: np.ndarray  # HxW: mean over samples of |d unit / d input|, summed over input channels
    centre: tuple[Rational, Rational]  # the input position the unit's theoretical field is centred on
    unit: tuple[int, int] = (0, 0)  # the output position (row, column) of the unit
    mass: float = 0.9
    samples: int = 1


class _Tap(NamedTuple):
    """Where a node's output is made: the output of runtime layer `layer` (None: the network input),
    at the node's position shifted by (rows, columns) (a `concat crop` branch is larger)."""

    layer: str | None
    rows: int = 0
    columns: int = 0


def centred_extent(marginal: np.ndarray, centre: Rational, mass: float = 0.9) -> int:
    """The number of positions x (integers, inside the map or not) of the smallest interval
    [centre - r, centre + r] whose positions inside the map hold at least `mass` of `marginal`'s sum;
    0 when the sum is 0."""
    total = float(marginal.sum())
    if total <= 0:
        return 0
    distance = np.abs(np.arange(marginal.size) - float(centre))
    order = np.argsort(distance, kind="stable")
    held = np.cumsum(marginal[order], dtype=np.float64)
    # Every position at the same distance joins at once: an interval is centred or it is not.
    k = int(np.searchsorted(held, mass * total * (1 - 1e-12)))
    k = min(k, marginal.size - 1)
    radius = distance[order[k]]
    low, high = math.ceil(float(centre) - radius - 1e-9), math.floor(float(centre) + radius + 1e-9)
    return high - low + 1


def effective_fields(net: Net, *, samples: int = 8, seed: int = 0, weights: Any = None, mass: float = 0.9,
                     report: Report | None = None, layers: list[str] | None = None) -> dict[str, EffectiveField]:
    """Report layer name -> its EffectiveField, for every layer whose output is CxHxW; or for the
    nodes named in `layers` (block calls too: `--depth` shows a call's field).

    Weights: `weights` (a .safetensors path or a name -> array dict), else cnndsl's seeded
    initialisation with `seed`; inputs: `samples` standard normals from `numpy.random.default_rng(seed)`.
    Batch norm uses its running statistics (inference), dropout is off."""
    from ..weights import resolve_weights

    if samples < 1:
        raise CnnDslError(f"--samples must be 1 or more, not {samples}", hint="use e.g. --samples 8")
    if not 0 < mass <= 1:
        raise CnnDslError(f"the ERF mass must be in (0, 1], not {mass}",
                          hint="give the fraction of the gradient mass to enclose, e.g. 0.95")
    report = report if report is not None else net.report
    if len(report.input) != 3:
        return {}
    if report.activation_bytes > SAMPLE_LIMIT:
        from ..summary import bytes_text

        raise CnnDslError(
            f"the effective field needs one sample's activations in memory: "
            f"{bytes_text(report.activation_bytes)} at input {'x'.join(map(str, report.input))}, "
            f"over the {bytes_text(SAMPLE_LIMIT)} it allows",
            hint="measure at a smaller input with --input CxHxW (the activations grow with height x width), "
                 "or on a network with fewer or smaller layers")
    if report.weight_bytes > SAMPLE_LIMIT:
        from ..summary import bytes_text

        raise CnnDslError(f"the effective field needs the network's weights in memory: "
                          f"{bytes_text(report.weight_bytes)}, over the {bytes_text(SAMPLE_LIMIT)} it allows",
                          hint="measure a network with fewer channels")
    model = net.to_numpy(resolve_weights(net, weights, seed))
    taps = _output_taps(net.ir, report)
    if layers is None:
        layers = [row.name for row in report.layers]
    names = [name for name in dict.fromkeys(layers)
             if name in taps and name in report.fields and len(report.shapes[name].output) == 3]
    rng = np.random.default_rng(seed)
    # Samples go through in batches whose activations fit FIELD_BUDGET (8 samples through a U-Net at
    # 572x572 would hold 9 GiB); drawn from one generator, so the batching changes no figure.
    batch = max(1, min(samples, FIELD_BUDGET // max(report.activation_bytes, 1)))
    units = {name: _centre_unit(report.shapes[name].output, report.fields[name].start, report.fields[name].jump,
                                report.input) for name in names}
    totals: dict[str, np.ndarray] = {}
    probe = _Probe(model)
    try:
        for start in range(0, samples if names else 0, batch):
            x = rng.standard_normal((min(batch, samples - start), *report.input)).astype(model.dtype)
            out = model.forward(x, train=False)
            for name in names:
                unit = units[name][0]
                grad = probe.gradient(out, [(t.layer, unit[0] + t.rows, unit[1] + t.columns) for t in taps[name]])
                mass_map = np.abs(grad).sum(axis=(0, 1))
                totals[name] = mass_map if name not in totals else totals[name] + mass_map
    finally:
        probe.close()  # the wrapped layers refer to the probe and to themselves: undo, so the activations go
    result = {}
    for name in names:
        unit, centre = units[name]
        gradient = totals[name] / samples
        size = (centred_extent(gradient.sum(axis=1), centre[0], mass),
                centred_extent(gradient.sum(axis=0), centre[1], mass))
        result[name] = EffectiveField(name, size, gradient, centre, unit, mass, samples)
    return result


def _centre_unit(output, starts, jumps, input_shape) -> tuple[tuple[int, int], tuple[Rational, Rational]]:
    """The output position whose field is centred nearest the input's centre (the first of a tie),
    and that field centre: start + jump * position, per axis."""
    unit, centre = [], []
    for size, start, jump, middle in zip(output[1:], starts, jumps, input_shape[1:], strict=True):
        best = min(range(size), key=lambda o: abs(2 * (start + jump * o) - (middle - 1)))
        unit.append(best)
        centre.append(start + jump * best)
    return (unit[0], unit[1]), (centre[0], centre[1])


def _output_taps(network: ir.Network, report: Report) -> dict[str, list[_Tap]]:
    """Node name -> the taps whose sum is its output, for every node the NumPy model computes."""
    runtime = {row.name for row in report.layers if not isinstance(row.node, (ir.Residual, ir.Add, ir.Concat))}
    taps: dict[str, list[_Tap]] = {}
    start = [_Tap("preprocess")] if network.preprocess is not None else [_Tap(None)]
    _taps(network.body, start, report, runtime, taps)
    return taps


def _taps(node: ir.Node, before: list[_Tap], report: Report, runtime: set[str],
          taps: dict[str, list[_Tap]]) -> list[_Tap]:
    shapes = report.shapes
    if isinstance(node, ir.Seq):
        out = before
        for item in node.items:
            out = _taps(item, out, report, runtime, taps)
    elif isinstance(node, ir.Residual):
        out = _taps(node.body, before, report, runtime, taps)
        if shapes.of(node).projects:
            assert node.shortcut is not None
            out = out + _taps(node.shortcut, before, report, runtime, taps)
        else:
            out = out + before
    elif isinstance(node, ir.Concat):
        out = []
        for branch, (top, _, left, _) in zip(node.branches, node.crops(shapes), strict=True):
            out += [_Tap(t.layer, t.rows + top, t.columns + left)
                    for t in _taps(branch, before, report, runtime, taps)]
    elif isinstance(node, ir.Add):
        out = [t for branch in node.branches for t in _taps(branch, before, report, runtime, taps)]
    elif node.name in runtime:
        for child in node.children():  # a gate's branches (mul) feed its runtime layer
            _taps(child, before, report, runtime, taps)
        out = [_Tap(node.name)]
    else:
        raise CnnDslError(f"the effective receptive field does not know where {node.kind} '{node.name}' is computed",
                          hint="this is a gap in cnndsl: please report it with the .cnn file")
    taps[node.name] = out
    return out


class _Probe:
    """Wraps a NumPy model's layers so one backward pass carries only the gradient of one unit."""

    def __init__(self, model):
        self.model = model
        self.order: dict[str, int] = {}  # layer name -> position in the forward pass
        self.inputs: dict[str, Any] = {}  # layer name -> the shape(s) and dtype of its input
        self.inject: dict[str, list[tuple[int, int]]] = {}
        self.cutoff = -1
        self.by_name = {layer.name: layer for layer in model.layers}
        for layer in model.layers:
            self._wrap(layer)

    def _wrap(self, layer) -> None:
        layer.weight_grad = False  # only the input gradient is wanted: conv, deconv and fc skip dW
        forward, backward = layer.forward, layer.backward

        def recording_forward(x, train):
            self.order[layer.name] = len(self.order)
            self.inputs[layer.name] = [(a.shape, a.dtype) for a in x] if isinstance(x, list) else (x.shape, x.dtype)
            return forward(x, train)

        def injecting_backward(dy, input_grad=True):
            if self.order[layer.name] > self.cutoff:  # after every tap: its output gradient is zero
                known = self.inputs[layer.name]
                return [np.zeros(*s) for s in known] if isinstance(known, list) else np.zeros(*known)
            positions = self.inject.get(layer.name)
            if positions:
                dy = np.array(dy, copy=True)
                for h, w in positions:
                    dy[:, :, h, w] += 1
            return backward(dy, input_grad)

        layer.forward, layer.backward = recording_forward, injecting_backward

    def close(self) -> None:
        """Unwrap every layer (the wrappers are instance attributes shadowing the class's methods)."""
        for layer in self.model.layers:
            vars(layer).pop("forward", None)
            vars(layer).pop("backward", None)

    def gradient(self, out: np.ndarray, taps: list[tuple[str | None, int, int]]) -> np.ndarray:
        """d(sum over channels of every tap's output at its position) / d(network input), per sample:
        one backward pass."""
        self.inject = {}
        direct = []
        for layer, h, w in taps:
            if layer is None:
                direct.append((h, w))
            else:
                self.inject.setdefault(layer, []).append((h, w))
        self.cutoff = max((self.order[name] for name in self.inject), default=-1)
        grad = np.array(self.model.backward(np.zeros_like(out)), copy=True)
        for h, w in direct:
            grad[:, :, h, w] += 1
        return grad
