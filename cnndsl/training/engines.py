"""The two training engines: NumPy (the generated NumPy model, numpy optimizers) and PyTorch
(the generated nn.Module, torch.optim, DistributedDataParallel under torchrun, with batch norm
over the global batch: `batchnorm.py`).

Both offer the same small interface to the loop: `train_step`, `predict`, `start_epoch`,
`weights`, `optimizer_arrays`, `load_optimizer_arrays`. Batches come in as float32 numpy arrays
(already augmented); the loss is `sum(per-sample loss) * scale`, so a distributed run can divide by
the global batch.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np

from .. import ir
from ..analysis.shapes import active
from ..errors import CnnDslError
from . import optim
from .loss import PROB_FLOOR, cross_entropy, nll_of_probabilities
from .optim import decayed, numpy_optimizer

EVAL_BATCH = 256

if TYPE_CHECKING:
    from ..api import Net


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (seed, epoch, stream, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def ends_in_softmax(net: Net) -> bool:
    nodes = [n for n in active(net.ir.body, net.shapes) if not isinstance(n, ir.Seq)]
    last = [n for n in nodes if not isinstance(n, ir.Flatten | ir.Dropout)]
    return bool(last) and isinstance(last[-1], ir.Activation) and last[-1].fn == "softmax"


def _flat_logits(out):
    return out.reshape(out.shape[0], -1)


def dense_output(net: Net) -> bool:
    """True for a network whose output is CxHxW with HxW larger than 1x1: one score per class and pixel."""
    output = tuple(net.analyze().output)
    return len(output) == 3 and output[1:] != (1, 1)


def _pixel_rows(out):
    """N x C x H x W scores as (N*H*W) x C rows (numpy or torch), one row per pixel."""
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]) if hasattr(out, "permute") else \
        out.transpose(0, 2, 3, 1).reshape(-1, out.shape[1])


class NumpyEngine:
    name = "numpy"

    def __init__(self, net: Net, weights: dict[str, np.ndarray], config: ir.TrainConfig):
        self.net = net
        self.config = config
        self.model = net.to_numpy(weights)
        self.skip_input_grad = "input_grad" in inspect.signature(self.model.backward).parameters
        self.softmax_out = ends_in_softmax(net)
        self.dense = dense_output(net)
        self.optimizer = numpy_optimizer(config, decayed(net.tensor_specs()))
        self.steps = 0

    def start_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Seed the model's dropout generator from (seed, epoch, rank)."""
        self.model.seed(derived_seed(seed, epoch, 2, rank))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, scale: float) -> tuple[float, int]:
        self.model.zero_grad()
        out = self.model.forward(x, train=True)
        pixels = 1
        if self.dense:  # per-pixel: every pixel a row, the loss the mean over a sample's pixels
            pixels = out.shape[2] * out.shape[3]
            flat, labels = _pixel_rows(out), y.reshape(-1)
        else:
            flat, labels = _flat_logits(out), y
        if self.softmax_out:
            loss, grad = nll_of_probabilities(flat, labels, self.config.label_smoothing, scale / pixels)
        else:
            loss, grad = cross_entropy(flat, labels, self.config.label_smoothing, scale / pixels)
        if self.dense:
            n, c, h, w = out.shape
            grad = np.ascontiguousarray(grad.reshape(n, h, w, c).transpose(0, 3, 1, 2))
        if self.skip_input_grad:  # training needs no d(loss)/d(input): the model skips that work
            self.model.backward(grad.reshape(out.shape), input_grad=False)
        else:
            self.model.backward(grad.reshape(out.shape))
        self.optimizer.step(self.model.params, self.model.grads, lr)
        self.steps += 1
        correct = int((flat.argmax(1) == labels).sum())
        return loss, (correct / pixels if self.dense else correct)

    def predict(self, x: np.ndarray) -> np.ndarray:
        shape = (lambda o: o) if self.dense else _flat_logits
        outs = [shape(self.model.forward(x[i:i + EVAL_BATCH], train=False))
                for i in range(0, len(x), EVAL_BATCH)]
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def weights(self) -> dict[str, np.ndarray]:
        state = self.model.state_dict()
        return {s.name: np.array(state[s.name]) for s in self.net.tensor_specs()}

    def optimizer_arrays(self) -> dict[str, np.ndarray]:
        return self.optimizer.state_arrays()

    def load_optimizer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.optimizer.load_state_arrays(arrays, self.model.params)
        self.steps = self.optimizer.steps

    def all_reduce(self, values: list[float]) -> list[float]:
        return values


class TorchEngine:
    name = "torch"

    def __init__(self, net: Net, weights: dict[str, np.ndarray], config: ir.TrainConfig,
                 distributed: bool = False):
        import torch

        self.torch = torch
        self.net = net
        self.config = config
        self.module = net.to_torch(weights)
        self.module.float()
        self.softmax_out = ends_in_softmax(net)
        self.dense = dense_output(net)
        self.named = list(self.module.named_parameters())
        expected = {s.name for s in net.tensor_specs() if s.trainable}
        if {n for n, _ in self.named} != expected:
            raise CnnDslError("the PyTorch module's parameter names do not match the network's tensors",
                              hint="train with --backend numpy, and report this network file as a cnndsl bug",
                              notes=[f"module: {sorted(n for n, _ in self.named)[:6]}",
                                     f"network: {sorted(expected)[:6]}"])
        self.distributed = distributed
        if distributed:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel

            from .batchnorm import use_global_batch_norm

            if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.module.modules()):
                # a group of its own, so the statistics' all-reduces never interleave with DDP's buckets
                use_global_batch_norm(self.module, dist.new_group(backend="gloo"))
            self.runner = DistributedDataParallel(self.module)
        else:
            self.runner = self.module
        self.optimizer = optim.torch_optimizer(config, self.named, decayed(net.tensor_specs()))
        self.steps = 0

    def start_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Seed torch's generator (dropout) from (seed, epoch, rank)."""
        self.torch.manual_seed(derived_seed(seed, epoch, 2, rank))

    def _loss(self, out, y, scale: float):
        torch = self.torch
        if self.dense:  # per-pixel: every pixel a row, the loss the mean over a sample's pixels
            scale = scale / (out.shape[2] * out.shape[3])
            flat, y = _pixel_rows(out), y.reshape(-1)
        else:
            flat = out.reshape(out.shape[0], -1)
        if self.softmax_out:
            classes = flat.shape[1]
            target = torch.nn.functional.one_hot(y, classes).to(flat.dtype)
            eps = self.config.label_smoothing
            if eps:
                target = target * (1 - eps) + eps / classes
            return -(target * torch.log(flat.clamp_min(PROB_FLOOR))).sum() * scale, flat
        loss = torch.nn.functional.cross_entropy(flat, y, reduction="sum", label_smoothing=self.config.label_smoothing)
        return loss * scale, flat

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, scale: float) -> tuple[float, int]:
        torch = self.torch
        self.module.train()
        xb, yb = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.runner(xb)
        loss, flat = self._loss(out, yb, scale)
        loss.backward()
        optim.set_torch_lr(self.optimizer, lr)
        self.optimizer.step()
        self.steps += 1
        correct = int((flat.detach().argmax(1) == yb.reshape(-1)).sum())
        return float(loss.detach()), (correct / (out.shape[2] * out.shape[3]) if self.dense else correct)

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        self.module.eval()
        with torch.no_grad():
            shape = (lambda o: o) if self.dense else _flat_logits
            outs = [shape(self.module(torch.from_numpy(np.ascontiguousarray(x[i:i + EVAL_BATCH])))).numpy()
                    for i in range(0, len(x), EVAL_BATCH)]
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def weights(self) -> dict[str, np.ndarray]:
        state = self.module.state_dict()
        return {s.name: state[s.name].detach().cpu().numpy().copy() for s in self.net.tensor_specs()}

    def optimizer_arrays(self) -> dict[str, np.ndarray]:
        return optim.torch_state_arrays(self.optimizer, self.named, self.steps)

    def load_optimizer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.steps = optim.load_torch_state_arrays(self.optimizer, self.named, arrays)

    def all_reduce(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        import torch.distributed as dist

        tensor = self.torch.tensor(values, dtype=self.torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()
