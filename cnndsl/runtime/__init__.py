"""NumPy layer kernels (forward and backward) shared by the NumPy backend and training.

`kernels` holds the functions (`conv2d_forward`, `conv2d_backward`, ...); `layers` wraps them in
layers that own their tensors, and `Model` is the base class of the code `cnndsl compile
--target numpy` writes. Only numpy is needed (scipy, when installed, supplies erf for gelu).
"""

from . import kernels
from .kernels import concat_backward as split
from .kernels import concat_forward as concat
from .layers import (
    ELU,
    GELU,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Hardswish,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Model,
    Preprocess,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)

__all__ = ["kernels", "concat", "split", "Layer", "Model", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
           "GlobalMaxPool", "Linear", "Flatten", "Dropout", "BatchNorm", "Preprocess", "ReLU", "ReLU6", "LeakyReLU",
           "ELU", "Sigmoid", "Tanh", "GELU", "SiLU", "Hardswish", "Softmax"]
