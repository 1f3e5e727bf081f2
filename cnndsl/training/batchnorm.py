"""Batch norm over the global batch of a torchrun job on CPU.

PyTorch's `SyncBatchNorm` runs only on GPUs (NCCL). Under gloo, `GlobalBatchNorm` all-reduces the
per-channel sum, sum of squares and count of the processes' shares, so every process normalises
with the mean and (biased) variance of the whole global batch, and updates the running statistics
as `nn.BatchNorm2d` would on that batch (unbiased variance, the layer's momentum). The backward
pass all-reduces the per-channel sums of dy and dy * x̂, which is the gradient of the sum of all
processes' losses through the shared statistics; DDP's averaging of the parameter gradients then
gives exactly the gradient of one process training on the whole batch. Moments are accumulated in
float64 (as the NumPy backend's batch norm does).

Imported only when torch is: the NumPy backend never sees this module.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _reduced_axes(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view([1, -1] + [1] * (x.dim() - 2))


class _GlobalBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group):
        channels = x.shape[1]
        axes = _reduced_axes(x)
        wide = x.double()
        count = torch.tensor([x.numel() // max(channels, 1)], dtype=torch.float64)
        moments = torch.cat([wide.sum(axes), (wide * wide).sum(axes), count])
        dist.all_reduce(moments, group=group)
        n = moments[-1]
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} over all processes")
        mean = moments[:channels] / n
        var = (moments[channels:2 * channels] / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        normalised = (wide - _per_channel(mean, x)) * _per_channel(invstd, x)
        scale = invstd if weight is None else invstd * weight.double()
        y = normalised if weight is None else normalised * _per_channel(weight.double(), x)
        if bias is not None:
            y = y + _per_channel(bias.double(), x)
        ctx.save_for_backward(normalised, scale)
        ctx.group, ctx.count, ctx.affine = group, n, (weight is not None, bias is not None)
        unbiased = var * (n / (n - 1))
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx, dy, _mean, _var):
        normalised, scale = ctx.saved_tensors
        axes = _reduced_axes(dy)
        channels = dy.shape[1]
        wide = dy.double()
        local = torch.cat([wide.sum(axes), (wide * normalised).sum(axes)])
        total = local.clone()
        dist.all_reduce(total, group=ctx.group)
        mean_dy, mean_dy_xhat = total[:channels] / ctx.count, total[channels:] / ctx.count
        dx = (wide - _per_channel(mean_dy, dy) - normalised * _per_channel(mean_dy_xhat, dy)) * _per_channel(scale, dy)
        has_weight, has_bias = ctx.affine
        # this process's share of the parameter gradients: DDP averages them over the processes
        dweight = local[channels:].to(dy.dtype) if has_weight else None
        dbias = local[:channels].to(dy.dtype) if has_bias else None
        return dx.to(dy.dtype), dweight, dbias, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm layer (1d or 2d) whose training statistics are those of the global batch."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, group=None):
        super().__init__(source.num_features, source.eps, source.momentum, source.affine,
                         source.track_running_stats)
        # the very tensors of `source`: state_dict names, optimizer and DDP see no change
        self.weight, self.bias = source.weight, source.bias
        self.running_mean, self.running_var = source.running_mean, source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        y, mean, unbiased = _GlobalBatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y


def use_global_batch_norm(module: nn.Module, group=None) -> int:
    """Replace every batch norm layer inside `module` by a `GlobalBatchNorm` on the same tensors;
    return how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            module.add_module(name, GlobalBatchNorm(child, group))
            replaced += 1
        else:
            replaced += use_global_batch_norm(child, group)
    return replaced


__all__ = ["GlobalBatchNorm", "use_global_batch_norm"]
