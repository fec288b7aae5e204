"""Real data without a download: scikit-learn's 8x8 handwritten digits, and the small training
loop (with optional distillation) used to measure pruning quality.

``load_digits_split()`` gives 1437 train / 360 test images upsampled to 16x16;
``fit(digits_cnn(), data, epochs=4)`` trains the zoo's ``DigitsNet`` (what it reaches, before
and after pruning, is in docs/benchmarks.md); ``accuracy(model, data.x_test, data.y_test)``
scores it.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.capture import eval_mode
from surgeon.errors import SurgeonInputError
from surgeon.schedule import distill_loss

__all__ = ["DigitsData", "accuracy", "fit", "load_digits_split"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DigitsData:
    """A train / test split of the digits: ``x`` float32 ``(N, 1, size, size)``, ``y`` int64.

    ``mean`` and ``std`` are the train-set pixel statistics (of the [0, 1]-scaled images) that
    both splits were standardised with: apply them to new images the same way.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def load_digits_split(size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """The 1797 scikit-learn digits, split, upsampled to ``size`` x ``size`` and standardised.

    The 8x8 images (values 0..16) are resized with bilinear interpolation
    (``align_corners=False``), scaled to [0, 1] and standardised with the mean and standard
    deviation of the train split. The split is stratified by class and seeded; the defaults
    give 1437 train and 360 test images.

    Raises:
        SurgeonInputError: scikit-learn is not installed, ``size`` is not a positive int, or
            ``test_fraction`` is not strictly between 0 and 1.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SurgeonInputError(f"size={size!r}: use a positive int (e.g. 16)")
    if not 0 < test_fraction < 1:
        raise SurgeonInputError(f"test_fraction={test_fraction!r}: use a number in (0, 1)")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise SurgeonInputError(
            "the digits data set ships with scikit-learn, which is not installed: "
            "pip install 'surgeon[data]'"
        ) from exc

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    x_train, x_test = images[train_idx], images[test_idx]
    mean, std = x_train.mean().item(), x_train.std().item()
    return DigitsData(
        x_train=((x_train - mean) / std).contiguous(),
        y_train=labels[train_idx],
        x_test=((x_test - mean) / std).contiguous(),
        y_test=labels[test_idx],
        mean=mean,
        std=std,
    )


def fit(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: float,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    teacher: nn.Module | None = None,
    T: float = 4.0,
    alpha: float = 0.5,
    weight_decay: float = 1e-4,
) -> nn.Module:
    """Train ``model`` on ``data.x_train`` with AdamW and a one-cycle learning-rate schedule.

    Each epoch visits the train set in a fresh order drawn from a ``torch.Generator`` seeded
    with ``seed`` (full batches only), so a run is reproducible. ``epochs`` may be fractional:
    ``0.5`` runs half an epoch of batches (at least one). With a ``teacher``, the loss is
    :func:`surgeon.distill_loss` (``T``, ``alpha``) against the teacher's logits, computed in
    eval mode without gradients (the teacher's mode is restored afterwards); without one, it is
    the cross-entropy.

    Args:
        model: the network; trained in place, in train mode.
        data: from :func:`load_digits_split`.
        epochs: passes over the train set, > 0.
        lr: the peak learning rate of the one-cycle schedule.
        batch_size: images per step.
        seed: seeds the shuffling.
        teacher: optional model whose logits are distilled into ``model``.
        T: distillation temperature.
        alpha: weight of the distillation term (``1 - alpha`` goes to the cross-entropy).
        weight_decay: AdamW's decoupled weight decay.

    Returns:
        ``model``, in eval mode.

    Raises:
        SurgeonInputError: ``epochs``, ``lr`` or ``batch_size`` is out of range.
    """
    _check_fit(epochs, lr, batch_size)
    x, y = data.x_train, data.y_train
    n = len(y)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    device = next(model.parameters()).device

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()

    model.train()
    order = torch.empty(0, dtype=torch.int64)
    loss = torch.zeros(())
    try:
        for step in range(total_steps):
            position = step % steps_per_epoch
            if position == 0:
                order = torch.randperm(n, generator=generator)
            batch = order[position * batch_size : (position + 1) * batch_size]
            xb, yb = x[batch].to(device), y[batch].to(device)
            loss = _loss(model, teacher, xb, yb, T, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
    logger.debug("fit: %d steps (%.3g epochs), last loss %.4f", total_steps, epochs, loss.item())
    return model.eval()


def _check_fit(epochs: float, lr: float, batch_size: int) -> None:
    if not (isinstance(epochs, numbers.Real) and not isinstance(epochs, bool) and epochs > 0):
        raise SurgeonInputError(f"epochs={epochs!r}: use a number > 0 (fractions allowed)")
    if not lr > 0:
        raise SurgeonInputError(f"lr={lr!r}: the learning rate must be > 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SurgeonInputError(f"batch_size={batch_size!r}: use a positive int (e.g. 64)")


def _loss(
    model: nn.Module,
    teacher: nn.Module | None,
    xb: torch.Tensor,
    yb: torch.Tensor,
    T: float,
    alpha: float,
) -> torch.Tensor:
    """Cross-entropy, or the distillation loss against ``teacher``'s logits (no gradients)."""
    logits = model(xb)
    if teacher is None:
        return F.cross_entropy(logits, yb)
    with torch.no_grad():
        teacher_logits = teacher(xb)
    return distill_loss(logits, teacher_logits, yb, T, alpha)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in percent, in eval mode and without gradients;
    the model's train / eval mode is restored afterwards."""
    if len(y) == 0:
        raise SurgeonInputError("accuracy needs at least one example")
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size].to(device))
            correct += (logits.argmax(dim=1).cpu() == y[start : start + batch_size]).sum().item()
    return 100.0 * correct / len(y)
