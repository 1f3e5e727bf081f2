"""Layers (a kernel plus its tensors) and `Model`, the base class of every generated NumPy model.

A layer is called as `layer(x, train)`, keeps what its backward needs, and `layer.backward(dy)`
returns the input gradient and *adds* the parameter gradients into `layer.grads` (PyTorch's
accumulate-until-zero_grad rule). Its tensors are keyed by role (`weight`, `bias`,
`running_mean`, ...); `Model` exposes them under the full names `<layer name>.<role>`, which
are `net.tensor_specs()` names and the PyTorch `state_dict()` keys.

Tensors are created once and only ever updated in place, so `model.params[name]` stays the
array the layer computes with: an optimizer may update it in place (`p -= lr * g`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..kinds.activation import ACTIVATIONS, ActivationFn
from ..kinds.base import Init, Uniform
from ..weights import as_array, initial_value, save_weights
from . import kernels as K

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]


class Layer:
    """One statement of the network: `params` (trainable), `grads` (same keys) and `buffers`.

    `weight_grad = False` (on a layer, or on the class) makes conv, deconv and fc skip their
    parameter gradients: a probe of the input gradient (the effective receptive field) needs none."""

    weight_grad = True

    def __init__(self, name: str, dtype: Any = np.float32):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.inits: dict[str, Init] = {}  # role -> how the tensor starts (`Model.init_weights`)
        self.cache: K.Cache | None = None

    def param(self, role: str, shape: tuple[int, ...], init: Init) -> np.ndarray:
        self.params[role] = np.zeros(shape, dtype=self.dtype)
        self.grads[role] = np.zeros(shape, dtype=self.dtype)
        self.inits[role] = init
        return self.params[role]

    def buffer(self, role: str, value: Any, dtype: Any = None) -> np.ndarray:
        """A tensor that is not trained, starting at (and reset to) `value`."""
        array = np.array(value, dtype=dtype or self.dtype)
        self.buffers[role] = array
        self.inits[role] = float(value) if array.ndim == 0 else tuple(array.astype(float).ravel())
        return array

    def __call__(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        y, self.cache = self.forward(x, train)
        return y

    def forward(self, x: np.ndarray, train: bool) -> tuple[np.ndarray, K.Cache]:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, dy: np.ndarray | None, input_grad: bool = True) -> np.ndarray | None:
        """d(loss)/d(input); parameter gradients are added into `grads`.

        `input_grad=False` says nothing before this layer needs a gradient (the layers between the
        network's input and its first parameters): the layer then returns None, and skips the
        work where that saves any (conv, fc). A None `dy` passes through as None."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}: backward before forward")
        if dy is None or (not input_grad and not self.params):
            return None
        dx = self.grad(dy, self.cache, input_grad)
        return dx if input_grad else None

    def grad(self, dy: np.ndarray, cache: K.Cache, input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def accumulate(self, role: str, value: np.ndarray | None) -> None:
        if value is not None:
            self.grads[role] += value

    def accumulate_weights(self, dx: np.ndarray | None, dw: np.ndarray | None,
                           db: np.ndarray | None) -> np.ndarray | None:
        """Add a weighted layer's (conv, fc) gradients; pass its input gradient on."""
        self.accumulate("weight", dw)
        self.accumulate("bias", db)
        return dx

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Conv2d(Layer):
    def __init__(self, name: str, in_channels: int, out_channels: int, kernel: Pair, stride: Pair = (1, 1),
                 pads: Pads = (0, 0, 0, 0), dilation: Pair = (1, 1), groups: int = 1, bias: bool = True,
                 dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        bound = Uniform(1.0 / np.sqrt(in_channels // groups * kernel[0] * kernel[1]))
        self.param("weight", (out_channels, in_channels // groups, *kernel), bound)
        if bias:
            self.param("bias", (out_channels,), bound)

    def forward(self, x, train):
        # Inference keeps no column matrix; a backward after it rebuilds the columns.
        return K.conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride, self.pads,
                                self.dilation, self.groups, keep=train)

    def grad(self, dy, cache, input_grad=True):
        return self.accumulate_weights(*K.conv2d_backward(dy, cache, input_grad, self.weight_grad))


class MaxPool2d(Layer):
    def __init__(self, name: str, kernel: Pair, stride: Pair, pads: Pads = (0, 0, 0, 0), ceil: bool = False):
        super().__init__(name)
        self.kernel, self.stride, self.pads, self.ceil = kernel, stride, pads, ceil

    def forward(self, x, train):
        return K.max_pool2d_forward(x, self.kernel, self.stride, self.pads, self.ceil)

    def grad(self, dy, cache, input_grad=True):
        return K.max_pool2d_backward(dy, cache)


class AvgPool2d(MaxPool2d):
    def forward(self, x, train):
        return K.avg_pool2d_forward(x, self.kernel, self.stride, self.pads, self.ceil)

    def grad(self, dy, cache, input_grad=True):
        return K.avg_pool2d_backward(dy, cache)


class GlobalAvgPool(Layer):
    def forward(self, x, train):
        return K.global_avg_pool_forward(x)

    def grad(self, dy, cache, input_grad=True):
        return K.global_avg_pool_backward(dy, cache)


class GlobalMaxPool(Layer):
    def forward(self, x, train):
        return K.global_max_pool_forward(x)

    def grad(self, dy, cache, input_grad=True):
        return K.global_max_pool_backward(dy, cache)


class AdaptiveAvgPool2d(Layer):
    """`pool avg adaptive HxW`: PyTorch's AdaptiveAvgPool2d to the output size `size`."""

    def __init__(self, name: str, size: Pair):
        super().__init__(name)
        self.size = tuple(size)

    def forward(self, x, train):
        return K.adaptive_avg_pool2d_forward(x, self.size)

    def grad(self, dy, cache, input_grad=True):
        return K.adaptive_avg_pool2d_backward(dy, cache)


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    """`pool max adaptive HxW`: PyTorch's AdaptiveMaxPool2d (the gradient goes to each window's first maximum)."""

    def forward(self, x, train):
        return K.adaptive_max_pool2d_forward(x, self.size)

    def grad(self, dy, cache, input_grad=True):
        return K.adaptive_max_pool2d_backward(dy, cache)


class Linear(Layer):
    def __init__(self, name: str, in_features: int, out_features: int, bias: bool = True, dtype: Any = np.float32):
        super().__init__(name, dtype)
        bound = Uniform(1.0 / np.sqrt(in_features))
        self.param("weight", (out_features, in_features), bound)
        if bias:
            self.param("bias", (out_features,), bound)

    def forward(self, x, train):
        return K.linear_forward(x, self.params["weight"], self.params.get("bias"))

    def grad(self, dy, cache, input_grad=True):
        return self.accumulate_weights(*K.linear_backward(dy, cache, input_grad, self.weight_grad))


class Flatten(Layer):
    def forward(self, x, train):
        return x.reshape(x.shape[0], -1), {"x_shape": x.shape}

    def grad(self, dy, cache, input_grad=True):
        return dy.reshape(cache["x_shape"])


class Dropout(Layer):
    """Inverted dropout drawing its masks from its own seeded Generator (`Model.seed` reseeds it)."""

    def __init__(self, name: str, p: float, seed: int = 0):
        super().__init__(name)
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x, train):
        return K.dropout_forward(x, self.p, self.rng, train)

    def grad(self, dy, cache, input_grad=True):
        return K.dropout_backward(dy, cache)


class DropPath(Dropout):
    """Stochastic depth (`droppath P`), seeded like dropout (`Model.seed` reseeds it too)."""

    def forward(self, x, train):
        return K.droppath_forward(x, self.p, self.rng, train)


class Multiply(Layer):
    """`mul`: called with the list of its branches' outputs; `backward` returns their gradients."""

    def forward(self, xs, train):
        return K.mul_forward(xs), {"xs": xs}

    def backward(self, dy, input_grad=True):
        if self.cache is None:
            raise RuntimeError(f"{self.name}: backward before forward")
        xs = self.cache["xs"]
        return [None] * len(xs) if dy is None else K.mul_backward(dy, xs)


class BatchNorm(Layer):
    def __init__(self, name: str, channels: int, eps: float = 1e-5, momentum: float = 0.1, dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.eps, self.momentum = eps, momentum
        self.param("weight", (channels,), 1.0)[...] = 1
        self.param("bias", (channels,), 0.0)
        self.buffer("running_mean", np.zeros(channels))
        self.buffer("running_var", np.ones(channels))
        self.buffer("num_batches_tracked", 0, np.int64)

    def forward(self, x, train):
        b = self.buffers
        return K.batch_norm_forward(x, self.params["weight"], self.params["bias"], b["running_mean"],
                                    b["running_var"], b["num_batches_tracked"], self.eps, self.momentum, train)

    def grad(self, dy, cache, input_grad=True):
        dx, dgamma, dbeta = K.batch_norm_backward(dy, cache)
        self.accumulate("weight", dgamma)
        self.accumulate("bias", dbeta)
        return dx


class LayerNorm(Layer):
    """`ln`: layer norm over the channels at each position (a vector: over its features)."""

    def __init__(self, name: str, channels: int, eps: float = 1e-6, dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.eps = eps
        self.param("weight", (channels,), 1.0)[...] = 1
        self.param("bias", (channels,), 0.0)

    def forward(self, x, train):
        return K.layer_norm_forward(x, self.params["weight"], self.params["bias"], self.eps)

    def grad(self, dy, cache, input_grad=True):
        dx, dgamma, dbeta = K.layer_norm_backward(dy, cache)
        self.accumulate("weight", dgamma)
        self.accumulate("bias", dbeta)
        return dx


class GroupNorm(LayerNorm):
    """`gn G`: PyTorch's GroupNorm(G, C)."""

    def __init__(self, name: str, channels: int, groups: int, eps: float = 1e-5, dtype: Any = np.float32):
        super().__init__(name, channels, eps, dtype)
        self.groups = groups

    def forward(self, x, train):
        return K.group_norm_forward(x, self.params["weight"], self.params["bias"], self.groups, self.eps)

    def grad(self, dy, cache, input_grad=True):
        dx, dgamma, dbeta = K.group_norm_backward(dy, cache)
        self.accumulate("weight", dgamma)
        self.accumulate("bias", dbeta)
        return dx


class LayerScale(Layer):
    """`layerscale INIT`: a learnable factor per channel, the tensor `layer_scale` of `shape`
    ((C, 1, 1) on images, (C,) on vectors), starting at `init`."""

    def __init__(self, name: str, shape: tuple[int, ...], init: float, dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.param("layer_scale", shape, float(init))[...] = init

    def forward(self, x, train):
        return K.layer_scale_forward(x, self.params["layer_scale"])

    def grad(self, dy, cache, input_grad=True):
        dx, dscale = K.layer_scale_backward(dy, cache)
        self.accumulate("layer_scale", dscale)
        return dx


class ChannelShuffle(Layer):
    """`shuffle G`."""

    def __init__(self, name: str, groups: int):
        super().__init__(name)
        self.groups = groups

    def forward(self, x, train):
        return K.channel_shuffle_forward(x, self.groups)

    def grad(self, dy, cache, input_grad=True):
        return K.channel_shuffle_backward(dy, cache)


class Channels(Layer):
    """`channels A:B`: channels start..stop-1."""

    def __init__(self, name: str, start: int, stop: int):
        super().__init__(name)
        self.start, self.stop = start, stop

    def forward(self, x, train):
        return K.channel_slice_forward(x, self.start, self.stop)

    def grad(self, dy, cache, input_grad=True):
        return K.channel_slice_backward(dy, cache)


class Upsample(Layer):
    """`upsample`: resize to `size` (HxW) by `mode` (nearest | bilinear), as F.interpolate with
    align_corners=False; `factor` when the statement gave one (PyTorch then steps by 1/factor)."""

    def __init__(self, name: str, size: Pair, mode: str = "nearest", factor: int | None = None):
        super().__init__(name)
        self.size, self.mode, self.factor = size, mode, factor

    def forward(self, x, train):
        return K.upsample_forward(x, self.size, self.mode, self.factor)

    def grad(self, dy, cache, input_grad=True):
        return K.upsample_backward(dy, cache)


class ConvTranspose2d(Layer):
    """`deconv`: PyTorch's ConvTranspose2d; weight (C_in, C_out/groups, kh, kw), PyTorch's fan-in C_out/groups*kh*kw."""

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel: Pair, stride: Pair = (1, 1),
                 pads: Pair = (0, 0), outpad: Pair = (0, 0), groups: int = 1, bias: bool = True,
                 dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.stride, self.pads, self.outpad, self.groups = stride, pads, outpad, groups
        bound = Uniform(1.0 / np.sqrt(out_channels // groups * kernel[0] * kernel[1]))
        self.param("weight", (in_channels, out_channels // groups, *kernel), bound)
        if bias:
            self.param("bias", (out_channels,), bound)

    def forward(self, x, train):
        return K.conv_transpose2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride, self.pads,
                                          self.outpad, self.groups)

    def grad(self, dy, cache, input_grad=True):
        return self.accumulate_weights(*K.conv_transpose2d_backward(dy, cache, input_grad, self.weight_grad))


class Activation(Layer):
    """An elementwise (or, for softmax, per-position) function with no tensors: a row of
    `cnndsl.kinds.ACTIVATIONS`, computed by its kernels `<kernel>_forward` / `<kernel>_backward`."""

    function: ActivationFn

    def __init__(self, name: str, alpha: float | None = None):
        super().__init__(name)
        self.alpha = alpha if alpha is not None else self.function.default

    def forward(self, x, train):
        forward = getattr(K, f"{self.function.kernel}_forward")
        return forward(x) if self.alpha is None else forward(x, self.alpha)

    def grad(self, dy, cache, input_grad=True):
        return getattr(K, f"{self.function.kernel}_backward")(dy, cache)


def _activation_class(function: ActivationFn) -> type[Activation]:
    return type(function.numpy, (Activation,), {"function": function, "__doc__": function.formula,
                                                "__module__": __name__})


ACTIVATION_LAYERS: dict[str, type[Activation]] = {fn.numpy: _activation_class(fn) for fn in ACTIVATIONS.values()}
# Module attributes as well (`cnndsl.runtime` re-exports them): rt.ReLU, rt.LeakyReLU, ... are the names
# generated models use, and pickle finds a class by its module and name.
globals().update(ACTIVATION_LAYERS)


class Preprocess(Layer):
    """x * scale, then (with standardize) (x - mean[c]) / std[c]: buffers, part of the model.
    Constants the .cnn file gives are the defaults; a mean/std measured on the training set
    arrives with the weights."""

    def __init__(self, name: str, channels: int, standardize: bool, scale: float = 1.0,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 dtype: Any = np.float32):
        super().__init__(name, dtype)
        self.buffer("scale", np.float32(scale))
        if standardize:
            self.buffer("mean", np.array(mean if mean is not None else np.zeros(channels), dtype=np.float32))
            self.buffer("std", np.array(std if std is not None else np.ones(channels), dtype=np.float32))

    def forward(self, x, train):
        b = self.buffers
        return K.preprocess_forward(x, b["scale"], b.get("mean"), b.get("std"))

    def grad(self, dy, cache, input_grad=True):
        return K.preprocess_backward(dy, cache)


class Model:
    """The base of generated models: forward/backward are generated, the tensor bookkeeping is here.

    - `forward(x, train=False)`: x is NCHW (or N x features); cast to the model's dtype.
    - `backward(dy)`: dy is d(loss)/d(output); returns d(loss)/d(x) and adds into `grads`.
    - `params`, `grads`: {tensor name: array} for trainable tensors, `net.tensor_specs()` order.
    - `buffers`: {name: array} for the rest (BN running stats, preprocessing).
    - `state_dict()` / `load_state_dict()`: every tensor, PyTorch's names and layouts.
    """

    input_shape: tuple[int, ...] = ()

    def __init__(self, dtype: Any = np.float32):
        self.dtype = np.dtype(dtype)
        self.layers: list[Layer] = []
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def add(self, layer: Layer) -> Layer:
        """Register a layer (in statement order, which is the tensor registration order)."""
        self.layers.append(layer)
        for role, array in layer.params.items():
            self.params[f"{layer.name}.{role}"] = array
            self.grads[f"{layer.name}.{role}"] = layer.grads[role]
        for role, array in layer.buffers.items():
            self.buffers[f"{layer.name}.{role}"] = array
        return layer

    def __call__(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        return self.forward(x, train)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        raise NotImplementedError("generated models define forward")

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError("generated models define backward")

    def input(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        if self.input_shape and tuple(x.shape[1:]) != tuple(self.input_shape):
            dims = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{type(self).__name__} takes inputs of shape (N, {dims}), not {x.shape}")
        return x

    def init_weights(self, seed: int = 0) -> None:
        """cnndsl's seeded initialisation, the numbers `cnndsl.weights.init_weights(net, seed)` gives
        every backend: each tensor from its layer's `inits`, drawn in tensor order from one Generator
        (`cnndsl.weights.initial_value`) and rounded to float32."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            for role, array in (*layer.params.items(), *layer.buffers.items()):
                array[...] = initial_value(layer.inits[role], array.shape, rng).astype(np.float32)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g[...] = 0

    def seed(self, seed: int) -> None:
        """Reseed every dropout layer's Generator (each gets its own stream)."""
        dropouts = [layer for layer in self.layers if isinstance(layer, Dropout)]
        for index, layer in enumerate(dropouts):
            layer.rng = np.random.default_rng([seed, index])

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every tensor in registration order; the arrays themselves, as PyTorch's state_dict shares storage."""
        out = {}
        for layer in self.layers:
            for role, array in layer.params.items():
                out[f"{layer.name}.{role}"] = array
            for role, array in layer.buffers.items():
                out[f"{layer.name}.{role}"] = array
        return out

    def load_state_dict(self, tensors: dict[str, Any], strict: bool = True) -> None:
        """Copy `tensors` into the model in place (so references to `params` stay valid)."""
        own = self.state_dict()
        missing = [n for n in own if n not in tensors]
        unexpected = [n for n in tensors if n not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state dict does not match {type(self).__name__}: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}")
        for name, value in tensors.items():
            if name not in own:
                continue
            value = as_array(value)
            if value.shape != own[name].shape:
                raise ValueError(f"{name}: shape {value.shape}, the model needs {own[name].shape}")
            own[name][...] = value

    def load_safetensors(self, path: str | os.PathLike) -> None:
        from safetensors.numpy import load_file

        self.load_state_dict(load_file(os.fspath(path)))

    def save_safetensors(self, path: str | os.PathLike) -> None:
        # float32 (int64 counters) whatever the model computes in, as every backend expects.
        tensors = {name: a if a.dtype == np.int64 else a.astype(np.float32) for name, a in self.state_dict().items()}
        save_weights(tensors, path, metadata={"format": "cnndsl", "network": type(self).__name__})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("] + [f"  {layer!r}," for layer in self.layers] + [")"]
        return "\n".join(lines)
