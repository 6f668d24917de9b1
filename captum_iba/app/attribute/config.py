"""What an attribute run works on, and what determines its maps: items, statistics, configuration.

The configuration (:func:`run_config`) is what the store compares on a rerun:
the method and its options, the model's weights, the items, the statistics and
the library versions. Everything here only reads.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import math
import sys
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ... import __version__
from ..._hashing import tensor_digest
from ...cxr import PhantomCXR, collate
from ..methods import METHODS
from ...stats import FeatureStats, estimate_stats
from .distributed import quiet_worker
from .plan import DEFAULT_PHANTOM_IMAGES, Plan, UsageError
from ..sources import DATASETS, HELD_OUT_PHANTOM_SEED, TRAINING_PHANTOM_SEED, open_dataset

__all__ = ["run_items", "data_identity", "estimation_source", "estimation_data", "load_stats_option",
           "estimate_run_stats", "versions", "run_config", "stats_digest", "run_plan", "PLANNED_PHANTOM_LIMIT"]

#: Phantom items whose labels are counted up front for the planned number of maps (its labels are
#: drawn per item: about 50 us each); beyond it a store records its planned batches only.
PLANNED_PHANTOM_LIMIT = 100_000


def stats_digest(stats: Dict[str, FeatureStats]) -> str:
    tensors = {f"{layer}.{key}": getattr(s, key) for layer, s in stats.items() for key in ("mean", "m2", "nonzero")}
    return tensor_digest(tensors, prefix=str(sorted((layer, s.count) for layer, s in stats.items())))


def run_items(args: argparse.Namespace, plan: Plan, size: int) -> Dataset:
    """The items to attribute, in their fixed order."""
    if DATASETS[args.dataset].generated:
        seed = HELD_OUT_PHANTOM_SEED if args.phantom_seed is None else args.phantom_seed
        return open_dataset(args.dataset, task=plan.data_task, size=size,
                            n=args.images or DEFAULT_PHANTOM_IMAGES, seed=seed)
    data = open_dataset(args.dataset, args.root, size=size, split=args.split)
    return data if args.images is None else Subset(data, range(min(args.images, len(data))))


def run_plan(args: argparse.Namespace, plan: Plan, items: Dataset) -> dict:
    """What the run will write, recorded in the store before any batch: ``{"items", "batches", "maps"}``.

    ``maps`` follows the targets policy of :func:`~captum_iba.app.attribute.runner` (``--target``,
    else every positive label the model has an output for, else the top prediction: one map), counted
    from the items' labels without reading an image; None where they cannot be counted up front (a phantom of more than
    :data:`PLANNED_PHANTOM_LIMIT` items, or a dataset that cannot list its labels).
    """
    n = len(items)
    maps = None
    if plan.label_key is None:
        maps = n
    elif plan.targets is not None:
        maps = n * len(plan.targets)
    elif not DATASETS[args.dataset].generated or n <= PLANNED_PHANTOM_LIMIT:
        reader, indices = (items.dataset, list(items.indices)) if isinstance(items, Subset) else (items, None)
        if hasattr(reader, "targets"):
            labels = reader.targets(plan.label_key)
            labels = (labels if indices is None else labels[indices]).reshape(n, -1)[:, plan.outputs.held_columns()]
            maps = int(torch.count_nonzero(labels, dim=1).clamp(min=1).sum())
    return {"items": n, "batches": math.ceil(n / args.batch_size), "maps": maps}


def data_identity(args: argparse.Namespace, plan: Plan, items: Dataset, size: int) -> dict:
    """What determines the items: the phantom's parameters, or the image ids of real data."""
    if DATASETS[args.dataset].generated:
        return {"dataset": args.dataset, "task": plan.data_task, "seed": items.seed, "images": len(items), "size": size}
    reader, indices = (items.dataset, items.indices) if isinstance(items, Subset) else (items, range(len(items)))
    ids = "\n".join(reader.image_ids[i] for i in indices)
    return {"dataset": args.dataset, "split": args.split, "images": len(items), "size": size,
            "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}


def estimation_source(args: argparse.Namespace, plan: Plan, n: int = None) -> str:
    if DATASETS[args.dataset].generated:
        return f"phantom {plan.data_task} seed {TRAINING_PHANTOM_SEED} (the embedded models' training images)"
    return f"{args.dataset} train split, {args.stats_samples if n is None else n} random items (seed 0)"


def estimation_data(args: argparse.Namespace, plan: Plan, size: int, n: int = None) -> Dataset:
    """``n`` (default ``--stats-samples``) training images to estimate the statistics on (see
    :func:`_estimation_source`), or to train a method on."""
    n = args.stats_samples if n is None else n
    if DATASETS[args.dataset].generated:
        return PhantomCXR(n, size=size, seed=TRAINING_PHANTOM_SEED, task=plan.data_task)
    train = open_dataset(args.dataset, args.root, size=size, split="train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    return Subset(train, pick.tolist())


def load_stats_option(path: str, layers: Sequence[str]) -> Dict[str, FeatureStats]:
    """``--stats``: one file for a one-layer method, or a folder of ``<layer>.pt`` files."""
    folder = Path(path)
    if folder.is_dir():
        files = {layer: folder / f"{layer}.pt" for layer in layers}
        for file in files.values():
            if not file.is_file():
                raise UsageError(f"--stats {folder}: no {file.name} (one FeatureStats file per layer, <layer>.pt)")
    elif len(layers) == 1:
        files = {layers[0]: folder}
    else:
        raise UsageError(f"--stats: the method needs the statistics of {len(layers)} layers: "
                         f"pass a folder holding {', '.join(f'{layer}.pt' for layer in layers)}")
    return {layer: FeatureStats.load(file) for layer, file in files.items()}


def estimate_run_stats(model: nn.Module, args: argparse.Namespace, plan: Plan, size: int,
                    device: torch.device) -> Dict[str, FeatureStats]:
    data = estimation_data(args, plan, size)
    loader = DataLoader(data, batch_size=32, collate_fn=collate, num_workers=args.workers,
                        worker_init_fn=quiet_worker)
    modules = dict(model.named_modules())
    stats = estimate_stats(model, [modules[layer] for layer in plan.stats_layers],
                           (batch["image"].to(device) for batch in loader),
                           min(args.stats_samples, len(data)), progress=sys.stderr.isatty())
    return dict(zip(plan.stats_layers, stats))


def versions(method: str) -> dict:
    """Versions of the libraries that compute the method's maps."""
    versions = {"captum_iba": __version__}
    family = METHODS[method].family
    if family != "captum_iba":
        try:
            versions[family] = importlib.metadata.version(family)
        except importlib.metadata.PackageNotFoundError:  # a registered family that is not a package name
            versions[family] = "unknown"
    return versions


def run_config(args: argparse.Namespace, plan: Plan, model: nn.Module, items: Dataset, size: int,
            given: Dict[str, FeatureStats] = None) -> dict:
    """Everything that determines the maps: the store refuses to mix maps of two configurations.

    ``model.outputs`` says what a stored target is: the model's number of outputs, its own output
    names, and the output index of each label of the task (see
    :meth:`~captum_iba.app.sources.ModelOutputs.record`).
    """
    stats_identity = None
    if plan.stats_layers:
        stats_identity = ({"sha256": stats_digest(given)} if given else
                          {"estimated_from": estimation_source(args, plan), "samples": args.stats_samples})
    training = {}
    if METHODS[plan.method].train is not None:  # the items the method learns from, recorded with its options
        n = plan.options["readout_images"]
        training = {"training": {"data": estimation_source(args, plan, n), "items": n, "labels": plan.label_key,
                                 "seed": args.seed}}
    return {
        "method": plan.method,
        "options": plan.options,
        **training,
        "model": {"task": plan.model_task, "weights_sha256": tensor_digest(model.state_dict()),
                  "outputs": plan.outputs.record()},
        "data": data_identity(args, plan, items, size),
        "targets": list(plan.targets) if plan.targets else ("single output" if plan.label_key is None else
                                                           f"positive {plan.label_key}, else top prediction"),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "stats": stats_identity,
        "versions": versions(plan.method),
    }
