"""Training and evaluation of chest X-ray models on any dataset of this package's items.

Losses (paper Sec. 2.4): ``"bce"``, binary cross-entropy per output (multilabel
findings, or the three detectors); ``"weighted_bce"``, the same with each
class's positive term weighted by its negative/positive ratio (Eq. 8);
``"mse"``, squared error of a score (the 0-18 severity, Eq. 9).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..._progress import progress as progress_lines
from ..._validate import check_number, check_positive_int
from ..schema import DETECTORS, FINDINGS, collate

__all__ = ["LOSSES", "positive_weights", "fit", "evaluate"]

LOSSES = ("bce", "weighted_bce", "mse")


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-class weight of the positive term of weighted BCE: negatives / positives.

    Parameters
    ----------
    targets : Tensor, shape (N, C), 0/1
        Training labels.

    Returns
    -------
    Tensor, shape (C,), float32
        ``(N - P_c) / P_c`` for a class with ``P_c`` positives; 1 for a class
        without positives (its positive term never occurs, so any weight does).
    """
    if targets.dim() != 2:
        raise ValueError(f"targets: expected shape (N, C), got {tuple(targets.shape)}")
    positives = targets.float().sum(0)
    negatives = targets.shape[0] - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))


def _target_key(item: Mapping[str, Any], target: Optional[str], regression: bool) -> str:
    """The item key holding the training target: given, or the task's natural one."""
    if target is None:
        candidates = ("score",) if regression else ("labels", "detectors")
        target = next((key for key in candidates if key in item), candidates[0])
    if target not in item:
        raise KeyError(f"target: the dataset's items have no key {target!r}; they have {sorted(item)}")
    return target


def _class_names(key: str, width: int) -> Sequence[str]:
    known = {"labels": FINDINGS, "detectors": DETECTORS}.get(key)
    return known if known is not None and len(known) == width else [f"{key}_{k}" for k in range(width)]


def _targets_of(dataset: Dataset, key: str) -> torch.Tensor:
    """All targets of a dataset as (N, C) floats, from ``dataset.targets(key)`` when it has one."""
    if hasattr(dataset, "targets"):
        values = dataset.targets(key)
    else:
        values = torch.stack([dataset[i][key] for i in range(len(dataset))])
    return values.float().reshape(len(dataset), -1)


def _output_layer(model: nn.Module, width: int) -> Optional[nn.Linear]:
    """The model's last linear layer if it produces the outputs (``width`` features)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears and linears[-1].out_features == width else None


@torch.no_grad()
def _start_at_the_prior(model: nn.Module, targets: torch.Tensor, loss: str, weights: torch.Tensor) -> None:
    """Set the output bias to the loss's best constant prediction, so training starts at the prior.

    Without this, a regressor spends its first epochs learning the mean score
    and a classifier the class frequencies.
    """
    layer = _output_layer(model, targets.shape[1])
    if layer is None or layer.bias is None:
        return
    if loss == "mse":
        best = targets.mean(0)
    else:
        rate = targets.mean(0).clamp(1e-3, 1 - 1e-3)
        best = torch.log(weights * rate / (1 - rate))  # minimiser of the (weighted) BCE
    layer.bias.copy_(best.to(layer.bias))


def fit(
    model: nn.Module,
    dataset: Dataset,
    loss: str = "bce",
    *,
    target: Optional[str] = None,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    num_workers: int = 0,
) -> nn.Module:
    """Train a model on a dataset of chest X-ray items.

    Adam with a one-cycle learning-rate schedule (warm-up, then cosine decay to
    near zero) over ``epochs`` passes; the output bias is first set to the
    best constant prediction (class log-odds, or the mean score).

    Parameters
    ----------
    model : nn.Module
        Maps ``image`` batches (N, 3, H, W) to (N, C) raw outputs. Trained in
        place on the device of its parameters.
    dataset : Dataset
        Items with ``image`` and the target key. When it has a
        ``targets(key)`` method (as :class:`~captum_iba.cxr.PhantomCXR`), the
        class balance is read from it without loading the images.
    loss : {"bce", "weighted_bce", "mse"}
    target : str, optional
        Item key of the target: default ``"labels"`` (or ``"detectors"`` when
        the items have no labels) for the BCE losses, ``"score"`` for MSE.
    epochs, batch_size : int
    lr : float
        Peak learning rate.
    weight_decay : float
    seed : int
        Seeds the shuffling (the model's initialisation is the caller's).
    progress : bool
        Show a tqdm progress bar with the running loss.
    num_workers : int
        DataLoader worker processes.

    Returns
    -------
    nn.Module
        The same model, trained, in eval mode, with ``loss_curve_``: the mean
        training loss of each epoch.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_number(lr, "lr", minimum=0, strict=True)
    if len(dataset) == 0:
        raise ValueError("dataset: expected at least one item, got an empty dataset")
    key = _target_key(dataset[0], target, regression=loss == "mse")
    targets = _targets_of(dataset, key)
    weights = positive_weights(targets) if loss == "weighted_bce" else torch.ones(targets.shape[1])
    _start_at_the_prior(model, targets, loss, weights)

    device = next(model.parameters()).device
    weights = weights.to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    sums, counts = [0.0] * epochs, [0] * epochs  # per epoch: the loss summed over samples, the samples
    steps = ((epoch, batch) for epoch in range(epochs) for batch in loader)

    def running() -> str:  # read after each step: the epoch and its mean loss so far
        return f"epoch {epoch + 1}, loss {sums[epoch] / counts[epoch]:.4f}"

    for epoch, batch in progress_lines(steps, desc=f"fit ({loss})", total=epochs * len(loader), unit="batch",
                                       enabled=progress, postfix=running):
        outputs = model(batch["image"].to(device))
        labels = batch[key].to(device, torch.float32).reshape(outputs.shape)
        if loss == "mse":
            value = F.mse_loss(outputs, labels)
        else:
            value = F.binary_cross_entropy_with_logits(outputs, labels, pos_weight=weights)
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        schedule.step()
        sums[epoch] += value.item() * len(labels)
        counts[epoch] += len(labels)
    model.loss_curve_ = [total / count for total, count in zip(sums, counts)]
    return model.eval()


@torch.no_grad()
def _predict(model: nn.Module, dataset: Dataset, key: str, batch_size: int, progress: bool):
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    outputs, targets = [], []
    for batch in progress_lines(loader, desc="evaluate", unit="batch", enabled=progress):
        out = model(batch["image"].to(device)).float().cpu()
        outputs.append(out)
        targets.append(batch[key].float().reshape(out.shape))
    return torch.cat(outputs).numpy(), torch.cat(targets).numpy()


def _mean(values: Mapping[str, float]) -> float:
    defined = [value for value in values.values() if not math.isnan(value)]
    return float(np.mean(defined)) if defined else float("nan")


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    target: Optional[str] = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Dict[str, Any]:
    """Evaluate a classifier (AUC, AP per class) or a regressor (MAE).

    Parameters
    ----------
    model : nn.Module
        Raw outputs (N, C): logits for classifiers, scores for regressors.
    dataset : Dataset
        Items with ``image`` and the target key.
    target : str, optional
        Item key of the target. Default: ``"score"`` for a model with one
        output and items that have a score (regression); otherwise
        ``"labels"``, or ``"detectors"`` when the items have no labels.
    batch_size : int
    progress : bool

    Returns
    -------
    dict
        Classification: ``auc`` and ``ap`` (dicts of class name to value; NaN
        for a class whose targets are all equal), ``mean_auc``, ``mean_ap``
        (over the defined classes) and ``n``. Regression (``target`` is
        ``"score"``): ``mae`` (mean absolute error, in score units) and ``n``.
    """
    check_positive_int(batch_size, "batch_size")
    if len(dataset) == 0:
        raise ValueError("dataset: expected at least one item, got an empty dataset")
    was_training = model.training
    model.eval()
    try:
        first = dataset[0]
        width = model(first["image"][None].to(next(model.parameters()).device)).shape[1]
        key = _target_key(first, target, regression=width == 1 and "score" in first)
        outputs, targets = _predict(model, dataset, key, batch_size, progress)
    finally:
        model.train(was_training)
    if key == "score":
        return {"mae": float(np.abs(outputs - targets).mean()), "n": len(targets)}
    names = _class_names(key, outputs.shape[1])
    auc, ap = {}, {}
    for k, name in enumerate(names):
        single_class = targets[:, k].min() == targets[:, k].max()
        auc[name] = float("nan") if single_class else float(roc_auc_score(targets[:, k], outputs[:, k]))
        ap[name] = float("nan") if single_class else float(average_precision_score(targets[:, k], outputs[:, k]))
    return {"auc": auc, "ap": ap, "mean_auc": _mean(auc), "mean_ap": _mean(ap), "n": len(targets)}
