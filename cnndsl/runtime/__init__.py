"""NumPy layer kernels (forward and backward) shared by the NumPy backend and training.

`kernels` holds the functions (`conv2d_forward`, `conv2d_backward`, ...); `layers` wraps them in
layers that own their tensors, and `Model` is the base class of the code `cnndsl compile
--target numpy` writes. Only numpy is needed (scipy, when installed, supplies erf for gelu).
The activation layers (`ReLU`, `LeakyReLU`, ...) are made from `cnndsl.kinds.ACTIVATIONS`, one
per row, under the row's `numpy` name.
"""

from . import kernels
from .kernels import concat_backward as split
from .kernels import concat_forward as concat
from .kernels import crop_backward as uncrop
from .kernels import crop_forward as crop
from .layers import (
    ACTIVATION_LAYERS,
    Activation,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm,
    Channels,
    ChannelShuffle,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    DropPath,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    GroupNorm,
    Layer,
    LayerNorm,
    LayerScale,
    Linear,
    MaxPool2d,
    Model,
    Multiply,
    Preprocess,
    Upsample,
)

globals().update(ACTIVATION_LAYERS)

__all__ = ["kernels", "concat", "split", "Layer", "Model", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
           "GlobalMaxPool", "Linear", "Flatten", "Dropout", "DropPath", "Multiply", "BatchNorm", "Preprocess",
           "Activation", *ACTIVATION_LAYERS]
__all__ += ["LayerNorm", "GroupNorm", "LayerScale", "ChannelShuffle", "Channels"]  # issue 14's norm and channel layers
__all__ += ["Upsample", "ConvTranspose2d", "crop", "uncrop"]  # issue 15's layers for dense prediction
__all__ += ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]  # issue 13's adaptive pools
