"""Optimizers and learning-rate schedules.

The NumPy optimizers are written in numpy over a model's `params` / `grads` dicts and follow
`torch.optim` step by step (same update order, float32 arithmetic), so both backends train the
same way; the torch backend uses `torch.optim.SGD`/`Adam`/`AdamW` with the same settings and
the same per-step learning rate from `lr_at`.

Weight decay is an L2 term on conv and fc weights only (tensors of role `weight` with two or more
dimensions): biases and batch-norm parameters are not decayed. For `adamw` it is the decoupled
decay of AdamW, on the same tensors.

Optimizer state is exchanged as name-keyed arrays (`<tensor>.momentum_buffer`, `<tensor>.exp_avg`,
`<tensor>.exp_avg_sq`, and a scalar `step`), the same for both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ir
from ..errors import CnnDslError, Span

ADAM_EPS = 1e-8
ONECYCLE_DIV = 25.0  # initial lr = lr / 25
ONECYCLE_FINAL_DIV = 1e4  # final lr = initial lr / 1e4


@dataclass(frozen=True)
class Schedule:
    name: str
    base_lr: float
    epochs: int
    steps_per_epoch: int
    args: tuple[float, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def check_schedule(name: str, args: tuple[float, ...], span: Span | None = None) -> None:
    """Raise CnnDslError for a schedule with unusable arguments."""
    limits = {"constant": 0, "step": 2, "cosine": 0, "onecycle": 1}
    if name not in limits:
        raise CnnDslError(f"unknown schedule '{name}'", span, hint="one of: constant, step, cosine, onecycle")
    if len(args) > limits[name]:
        usage = {"constant": "constant", "step": "step STEP_EPOCHS [GAMMA]", "cosine": "cosine",
                 "onecycle": "onecycle [PCT_START]"}[name]
        raise CnnDslError(f"schedule {name} takes at most {limits[name]} argument(s), got {len(args)}", span,
                          hint=f"write: schedule {usage}")
    if name == "step" and args and (args[0] < 1 or args[0] != int(args[0])):
        whole = " ".join(f"{a:g}" for a in (max(1, round(args[0])), *args[1:]))
        raise CnnDslError(f"the step schedule's step size is a whole number of epochs, got {args[0]:g}", span,
                          hint=f"give the epochs between decays as a whole number of 1 or more: step {whole}")
    if name == "onecycle" and args and not 0 < args[0] < 1:
        raise CnnDslError(f"onecycle's warm-up fraction is between 0 and 1, got {args[0]:g}", span,
                          hint="give the fraction of the steps spent warming up, strictly between 0 and 1: "
                               "onecycle 0.3 (the default)")


def lr_at(schedule: Schedule, epoch: int, step: int) -> float:
    """The learning rate of step `step` (0-based) of epoch `epoch` (0-based).

    constant: lr.  step S [G]: lr * G ** (epoch // S) (G = 0.1; S = max(1, epochs // 3) if not
    given).  cosine: lr * (1 + cos(pi * t / T)) / 2 over all T steps (t the global step, as
    `CosineAnnealingLR(T_max=T)` stepped every batch).  onecycle [P]: `OneCycleLR` stepped every
    batch with max_lr = lr, pct_start P (0.3), cosine annealing, div_factor 25,
    final_div_factor 1e4, momentum not cycled.
    """
    base = schedule.base_lr
    name, args = schedule.name, schedule.args
    t = epoch * schedule.steps_per_epoch + step
    total = max(1, schedule.total_steps)
    if name == "constant":
        return base
    if name == "step":
        size = int(args[0]) if args else max(1, schedule.epochs // 3)
        gamma = args[1] if len(args) > 1 else 0.1
        return base * gamma ** (epoch // size)
    if name == "cosine":
        return base * (1 + math.cos(math.pi * t / total)) / 2
    if name == "onecycle":
        pct = args[0] if args else 0.3
        initial = base / ONECYCLE_DIV
        final = initial / ONECYCLE_FINAL_DIV
        warm_end = float(pct * total) - 1
        end = total - 1

        def anneal(start: float, stop: float, fraction: float) -> float:
            return stop + (start - stop) / 2.0 * (math.cos(math.pi * fraction) + 1)

        if t <= warm_end:
            return anneal(initial, base, t / warm_end if warm_end > 0 else 1.0)
        span = end - warm_end
        return anneal(base, final, min(1.0, (t - warm_end) / span) if span > 0 else 1.0)
    raise CnnDslError(f"unknown schedule '{name}'", hint="one of: constant, step, cosine, onecycle")


def decayed(specs) -> set[str]:
    """Names of the tensors weight decay applies to: conv and fc weights."""
    return {s.name for s in specs if s.trainable and s.role == "weight" and len(s.shape) >= 2}


class NumpyOptimizer:
    """Base: `step(params, grads, lr)` updates `params` in place."""

    def __init__(self, config: ir.TrainConfig, decay: set[str]):
        self.config = config
        self.decay = decay
        self.steps = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        self.steps += 1
        for name, param in params.items():
            grad = grads.get(name)
            if grad is None:
                continue
            self._update(name, param, np.asarray(grad, dtype=param.dtype), lr)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"{name}.{key}": value for name, entry in self.state.items() for key, value in entry.items()}
        out["step"] = np.array(self.steps, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
        self.steps = int(arrays.get("step", 0))
        self.state = {}
        for name, slot, value in state_entries(arrays, params):
            self.state.setdefault(name, {})[slot] = np.array(value, dtype=params[name].dtype)


def state_entries(arrays: dict[str, np.ndarray], known):
    """(parameter name, slot, value) for each `<param>.<slot>` entry of the shared optimizer layout."""
    for key, value in arrays.items():
        if key == "step":
            continue
        name, _, slot = key.rpartition(".")
        if name not in known:
            raise CnnDslError(f"optimizer state for {name}, which the network does not have",
                              hint="the checkpoint is of another network: resume with the network file that run "
                                   "trained, or start a new run with another --out")
        yield name, slot, value


class SGD(NumpyOptimizer):
    """torch.optim.SGD: d = g + wd * p; buf = momentum * buf + d (buf = d on the first step);
    d = d + momentum * buf (nesterov) or buf; p -= lr * d."""

    def _update(self, name, param, grad, lr):
        cfg = self.config
        d = grad + np.float32(cfg.weight_decay) * param if cfg.weight_decay and name in self.decay else grad
        if cfg.momentum:
            entry = self.state.setdefault(name, {})
            buf = entry.get("momentum_buffer")
            if buf is None:
                buf = d.copy()
            else:
                buf = buf * np.float32(cfg.momentum) + d
            entry["momentum_buffer"] = buf
            d = d + np.float32(cfg.momentum) * buf if cfg.nesterov else buf
        param -= np.float32(lr) * d


class Adam(NumpyOptimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient) and AdamW (decoupled decay)."""

    decoupled = False

    def _update(self, name, param, grad, lr):
        cfg = self.config
        b1, b2 = cfg.betas
        if cfg.weight_decay and name in self.decay:
            if self.decoupled:
                param *= np.float32(1 - lr * cfg.weight_decay)
            else:
                grad = grad + np.float32(cfg.weight_decay) * param
        entry = self.state.setdefault(name, {})
        m = entry.get("exp_avg", np.zeros_like(param))
        v = entry.get("exp_avg_sq", np.zeros_like(param))
        m = m + np.float32(1 - b1) * (grad - m)  # lerp, as torch
        v = v * np.float32(b2) + np.float32(1 - b2) * grad * grad
        entry["exp_avg"], entry["exp_avg_sq"] = m, v
        t = self.steps
        step_size = lr / (1 - b1 ** t)
        denom = np.sqrt(v) / np.float32(math.sqrt(1 - b2 ** t)) + np.float32(ADAM_EPS)
        param -= np.float32(step_size) * (m / denom)


class AdamW(Adam):
    decoupled = True


def numpy_optimizer(config: ir.TrainConfig, decay: set[str]) -> NumpyOptimizer:
    return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[config.optimizer](config, decay)


# ---- torch ------------------------------------------------------------------------------------

def torch_optimizer(config: ir.TrainConfig, named_params: list[tuple[str, object]], decay: set[str]):
    """The torch.optim optimizer with the same settings: two parameter groups (decayed, not)."""
    import torch

    with_decay = [p for n, p in named_params if n in decay]
    without = [p for n, p in named_params if n not in decay]
    groups = [{"params": with_decay, "weight_decay": config.weight_decay},
              {"params": without, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr, betas=tuple(config.betas), eps=ADAM_EPS)


def set_torch_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def torch_state_arrays(optimizer, named_params: list[tuple[str, object]], steps: int) -> dict[str, np.ndarray]:
    """The torch optimizer's state in the shared name-keyed layout."""
    out: dict[str, np.ndarray] = {}
    for name, param in named_params:
        for key, value in optimizer.state.get(param, {}).items():
            if key == "step":
                continue
            if value is not None:
                out[f"{name}.{key}"] = value.detach().cpu().numpy().copy()
    out["step"] = np.array(steps, dtype=np.int64)
    return out


def load_torch_state_arrays(optimizer, named_params: list[tuple[str, object]], arrays: dict[str, np.ndarray]) -> int:
    """Fill the torch optimizer's state from the shared layout; return the step count."""
    import torch

    steps = int(arrays.get("step", 0))
    by_name = dict(named_params)
    for name, slot, value in state_entries(arrays, by_name):
        state = optimizer.state[by_name[name]]
        state[slot] = torch.from_numpy(np.array(value))
        if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            state["step"] = torch.tensor(float(steps))
    return steps
