"""Softmax cross-entropy, in numpy with its gradient (the torch side uses F.cross_entropy).

With label smoothing e the target is (1 - e) * onehot + e / K, as in PyTorch. If the network's
last layer is already a `softmax`, its output is taken as probabilities and the loss is the
negative log-likelihood of them (the gradient then flows back through that softmax).
"""

from __future__ import annotations

import numpy as np

PROB_FLOOR = 1e-12


def _targets(labels: np.ndarray, classes: int, smoothing: float) -> np.ndarray:
    target = np.zeros((len(labels), classes), dtype=np.float64)
    target[np.arange(len(labels)), labels] = 1.0
    if smoothing:
        target = target * (1 - smoothing) + smoothing / classes
    return target


def cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0,
                  scale: float | None = None) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and d loss / d logits.

    `scale` replaces the 1/batch of the mean (distributed training divides by the global batch)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = _targets(labels, logits.shape[1], smoothing)
    factor = 1.0 / len(labels) if scale is None else scale
    loss = float(-(target * log_probs).sum() * factor)
    grad = (np.exp(log_probs) - target) * factor
    return loss, grad.astype(logits.dtype)


def nll_of_probabilities(probs: np.ndarray, labels: np.ndarray, smoothing: float = 0.0,
                         scale: float | None = None) -> tuple[float, np.ndarray]:
    """Cross-entropy for a network that ends in softmax: -sum(target * log p), and d loss / d p."""
    p = np.maximum(probs.astype(np.float64), PROB_FLOOR)
    target = _targets(labels, probs.shape[1], smoothing)
    factor = 1.0 / len(labels) if scale is None else scale
    loss = float(-(target * np.log(p)).sum() * factor)
    grad = -target / p * factor
    return loss, grad.astype(probs.dtype)


def mean_iou(predicted: np.ndarray, truth: np.ndarray, classes: int) -> float | None:
    """Mean over classes of |pred ∩ truth| / |pred ∪ truth| (integer label maps of one shape);
    a class with no pixel in either is left out of the mean (None when no class is left)."""
    p, t = predicted.reshape(-1).astype(np.int64), truth.reshape(-1).astype(np.int64)
    confusion = np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    return float((hits[present] / union[present]).mean()) if present.any() else None
