"""Weights shared by every backend: initialisation, safetensors loading and saving, checked by name.

Tensor names, shapes and layouts come from `analysis.tensor_specs`: the PyTorch `state_dict()`,
the NumPy model and the ONNX initializers all use them, so one .safetensors file serves all three.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import WeightsError
from .kinds.base import Init, Uniform


def initial_value(init: Init, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One tensor's starting value (float64): a uniform draw from `rng`, values from the file, or a
    constant fill. Every backend starts from these numbers: `init_weights` and the NumPy runtime's
    `Model.init_weights` both draw through here, in tensor order, from one Generator."""
    if isinstance(init, Uniform):
        return rng.uniform(-init.bound, init.bound, shape)
    if isinstance(init, tuple):
        return np.array(init, dtype=np.float64).reshape(shape)
    return np.full(shape, float(init))


def init_weights(net, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation, drawn with numpy, as each kind's tensor specs say: conv/fc
    weights and biases uniform in +-1/sqrt(fan_in) (kaiming_uniform with a=sqrt(5)); BN gamma 1,
    beta 0, running stats 0 and 1; preprocessing constants from the .cnn file."""
    rng = np.random.default_rng(seed)
    return {spec.name: initial_value(spec.init, spec.shape, rng).astype(spec.dtype) for spec in net.tensor_specs()}


def as_array(value: Any) -> np.ndarray:
    """A numpy view of a tensor from any backend (a torch tensor is detached and moved to the CPU)."""
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def check_weights(net, tensors: dict[str, Any], origin: str = "the weights") -> dict[str, np.ndarray]:
    """Return `tensors` as numpy arrays in spec order; raise WeightsError naming any missing,
    unexpected or mis-shaped tensor."""
    specs = net.tensor_specs()
    expected = {s.name: s for s in specs}
    arrays = {name: as_array(value) for name, value in tensors.items()}
    missing = [n for n in expected if n not in arrays]
    unexpected = [n for n in arrays if n not in expected]
    if missing or unexpected:
        notes = []
        if missing:
            notes.append(f"missing: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            notes.append(f"not in the network: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise WeightsError(f"{origin} do not match network {net.name}", notes=notes,
                           hint="tensor names follow the layer names `cnndsl analyze` prints, e.g. conv1.weight; "
                                "compile from the .cnn file the weights were trained with")
    out = {}
    for name, spec in expected.items():
        array = arrays[name]
        if tuple(array.shape) != spec.shape:
            raise WeightsError(
                f"tensor {name} in {origin} has shape {list(array.shape)}, the network needs {list(spec.shape)}",
                hint="the weights come from a different network or input size")
        out[name] = array.astype(spec.dtype, copy=False)
    return out


def load_weights(net, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a .safetensors file and check it against the network."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(os.fspath(path))
    except FileNotFoundError:
        raise WeightsError(f"no weights file {os.fspath(path)}", hint="check the path") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{os.fspath(path)} is not a readable safetensors file: {err}",
                           hint="give a .safetensors file, e.g. one `cnndsl train` wrote") from None
    return check_weights(net, tensors, origin=os.fspath(path))


def resolve_weights(net, weights, seed: int = 0) -> dict[str, np.ndarray]:
    """`weights` as a checked name -> array dict: None (fresh, seeded), a path, or a dict."""
    if weights is None:
        return init_weights(net, seed)
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(net, weights)
    return check_weights(net, dict(weights))


def save_weights(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a .safetensors file atomically."""
    from safetensors.numpy import save

    from .outputs import write_atomic

    # np.ascontiguousarray would turn 0-d tensors (preprocess.scale, num_batches_tracked) into shape (1,).
    arrays = {}
    for name, value in tensors.items():
        array = as_array(value)
        arrays[name] = array.copy(order="C") if not array.flags.c_contiguous else array
    write_atomic(os.fspath(path), save(arrays, metadata=metadata))
