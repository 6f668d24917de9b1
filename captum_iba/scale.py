"""``captum-iba attribute``: one method's maps for a whole dataset, sharded and resumable.

The dataset's items, in their fixed order, are cut into batches of
``--batch-size``. Batch ``b`` goes to process ``b % K`` of a ``torchrun``
launch and is attributed with a seed derived from ``--seed`` and ``b``: what
a batch holds and the noise it gets do not depend on K, so K processes write
the maps one process writes, bit for bit (on the same kind of device, with the
same number of threads per process).

Process 0 sets the run up -- it checks the output folder, loads the model,
opens the store (refusing a changed configuration) and loads or estimates the
feature statistics -- and shares the model, the items and the statistics with
the others over torch.distributed (gloo on CPU, NCCL on GPU). Every process
then computes its batches that are not done yet and writes them to the store
(:mod:`captum_iba.io`): a rerun of the same command completes what is missing.

Test hook: with ``CAPTUM_IBA_FAIL_AFTER=k`` in the environment, a process
raises once it has marked at least ``k`` items done (tests of crash and resume).

Run it as ``captum-iba attribute ...``, ``python -m captum_iba.scale ...`` or
``torchrun --nproc_per_node=K -m captum_iba.scale ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import __version__
from .cxr import PhantomCXR, collate
from .cxr.checkpoints import TASKS
from .cxr.sources import DATASETS, open_dataset, open_model
from .app.store import BatchWriter, MethodStore, StoreError, check_out_dir, open_method_store
from .maps import parse_threshold
from .methods import METHODS, MethodSuite
from .stats import FeatureStats, estimate_stats

__all__ = ["DESCRIPTION", "FAIL_AFTER_ENV", "add_arguments", "run", "main", "shard", "batch_seed"]

#: Environment variable of the test hook (see the module notes).
FAIL_AFTER_ENV = "CAPTUM_IBA_FAIL_AFTER"

DEFAULT_PHANTOM_IMAGES = 64
#: Seed of the phantom images attributed by default: held out from the embedded models'
#: training (seed 0) and test (seed 1) images.
DEFAULT_PHANTOM_SEED = 1000
#: The embedded models' training phantom: the statistics are estimated on its distribution.
TRAINING_PHANTOM_SEED = 0
DEFAULT_LAYER = "features.denseblock3"
#: Multi-layer IBA's layers: the outputs of dense blocks 1-3, as the paper.
MULTILAYER_LAYERS = ("features.denseblock1", "features.denseblock2", "features.denseblock3")
IBA_FAMILY = ("iba", "inverse", "multilayer", "regression")
REGRESSION_LOSSES = ("deviation", "maximize", "mse")
#: Library defaults of the IBA options, written into the configuration.
DEFAULT_STEPS, DEFAULT_NOISE_DRAWS, DEFAULT_THRESHOLD = 10, 10, "top:0.3"


#: One line for ``--help`` and the lead's subcommand list.
DESCRIPTION = ("One attribution method's maps for a whole dataset, in batches, sharded over "
               "torch.distributed (torchrun) and resumable.")


class UsageError(ValueError):
    """An argument that does not fit the others; the message names it."""


class SetupFailed(Exception):
    """Process 0 failed to set the run up (it reports why); raised in the other processes."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``captum-iba attribute`` to ``parser``."""
    parser.add_argument("--method", required=True, choices=list(METHODS), help="the attribution method")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the store: created, or resumed when it holds this configuration")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this method's maps in --out when they were computed with other options")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="phantom", help="default: phantom")
    data.add_argument("--root", metavar="PATH", help="the dataset folder (nih, brixia)")
    data.add_argument("--split", choices=("train", "test"),
                      help="the official split (nih, brixia); default: every item")
    data.add_argument("--task", choices=("nih", "brixia"),
                      help="phantom only: NIH-like findings or BrixIA-like zones (default nih; regression: brixia)")
    data.add_argument("--images", type=int, metavar="N",
                      help=f"the first N items (phantom: N images, default {DEFAULT_PHANTOM_IMAGES})")
    data.add_argument("--phantom-seed", type=int, metavar="S",
                      help=f"phantom only: seed of its images (default {DEFAULT_PHANTOM_SEED}, held out from training)")
    data.add_argument("--size", type=int, metavar="PX", help="image side (default: the model's input size)")

    model = parser.add_argument_group("model and targets")
    model.add_argument("--checkpoint", metavar="FILE",
                       help="a model written by `captum-iba train` (default: the embedded phantom model)")
    model.add_argument("--target", action="append", metavar="K",
                       help="output index to explain (repeatable, or a comma list); default: every positive "
                            "label of an item (labels, detectors), else its top prediction")
    # Hidden: recipe overrides of the embedded model, for quick runs and tests.
    model.add_argument("--embedded-overrides", metavar="KEY=INT,...", help=argparse.SUPPRESS)

    method = parser.add_argument_group("method options")
    method.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    method.add_argument("--layer", help=f"the IBA layer (default {DEFAULT_LAYER})")
    method.add_argument("--beta", type=float, metavar="B", help="weight of the information loss (default: the method's)")
    method.add_argument("--steps", type=int, metavar="N", help=f"optimisation steps (default {DEFAULT_STEPS})")
    method.add_argument("--noise-draws", type=int, metavar="N",
                        help=f"noise draws per image and step (default {DEFAULT_NOISE_DRAWS})")
    method.add_argument("--threshold", metavar="T", help=f"multilayer: 'top:F', 'otsu' or a value (default {DEFAULT_THRESHOLD})")
    method.add_argument("--loss", choices=REGRESSION_LOSSES,
                        help="regression: deviation (default), maximize, or mse against the item's score")
    method.add_argument("--stats", metavar="PATH",
                        help="saved FeatureStats: a file (one layer) or a folder of <layer>.pt files; "
                             "default: estimated by process 0 on training data")
    method.add_argument("--stats-samples", type=int, default=1000, metavar="N",
                        help="images to estimate the statistics from (default 1000)")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--batch-size", type=int, default=8, metavar="B", help="items per batch (default 8)")
    compute.add_argument("--device", default="auto",
                         help="auto (default: cuda if available), cpu, cuda; torchrun: cuda:LOCAL_RANK")
    compute.add_argument("--threads", type=int, metavar="T",
                         help="CPU threads per process (default: torch's; torchrun sets 1)")
    compute.add_argument("--workers", type=int, default=2, metavar="W", help="data loading workers (default 2)")


# The plan: what the arguments ask for, checked before anything is read or written.


@dataclass(frozen=True)
class Plan:
    """A validated request.

    Attributes
    ----------
    method : str
        Key of :data:`captum_iba.methods.METHODS`.
    method_key : str
        The method as the store names it: ``method``, or ``"regression-<loss>"``.
    model_task : str
        The model's task (``open_model``): "nih", "brixia_detectors" or "brixia_regression".
    data_task : str
        Which labels the items carry: "nih" or "brixia".
    label_key : str or None
        Item entry whose positives are the default targets; None for the regressor.
    targets : tuple of int or None
        Explicit ``--target`` indices.
    layer : str
        The IBA layer.
    stats_layers : tuple of str
        Layers whose statistics the method needs (none for the baselines).
    options : dict
        The method's options as the configuration records them.
    embedded_overrides : dict
        Recipe overrides of the embedded model.
    """

    method: str
    method_key: str
    model_task: str
    data_task: str
    label_key: Optional[str]
    targets: Optional[Tuple[int, ...]]
    layer: str
    stats_layers: Tuple[str, ...]
    options: dict
    embedded_overrides: dict


def _refuse(args: argparse.Namespace, names: Sequence[str], reason: str) -> None:
    """Raise if any of the options ``names`` (attribute names) was given: they do not apply."""
    for name in names:
        if getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} does not apply {reason}")


def _at_least(name: str, value: Optional[int], minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"--{name}: expected an integer >= {minimum}, got {value}")


def _parse_targets(values: Optional[List[str]], outputs: int) -> Optional[Tuple[int, ...]]:
    if not values:
        return None
    try:
        targets = sorted({int(part) for value in values for part in value.split(",") if part.strip()})
    except ValueError as error:
        raise UsageError(f"--target: expected output indices, got {values}") from error
    if not targets or not all(0 <= target < outputs for target in targets):
        raise UsageError(f"--target: the model has {outputs} outputs (0-{outputs - 1}), got {values}")
    return tuple(targets)


def _parse_overrides(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        return {key.strip(): int(value) for key, value in (part.split("=") for part in text.split(","))}
    except ValueError as error:
        raise UsageError(f"--embedded-overrides: expected KEY=INT,..., got {text!r}") from error


def _threshold(text: str):
    """A multilayer threshold: a number, or 'top:F' / 'otsu'."""
    try:
        threshold = float(text)
    except ValueError:
        threshold = text
    try:
        parse_threshold(threshold)
    except ValueError as error:
        raise UsageError(f"--threshold: {error}") from error
    return threshold


def make_plan(args: argparse.Namespace) -> Plan:
    """Check the arguments against each other and resolve the defaults.

    Raises
    ------
    UsageError
        Naming the argument at fault.
    """
    method = args.method
    if method not in METHODS:
        raise UsageError(f"--method: unknown method {method!r}; known: {', '.join(METHODS)}")
    regression = method == "regression"
    if args.dataset == "phantom":
        _refuse(args, ("root", "split"), "to --dataset phantom (it is generated)")
        data_task = args.task or ("brixia" if regression else "nih")
    else:
        _refuse(args, ("task", "phantom_seed"), f"to --dataset {args.dataset}")
        if args.root is None:
            raise UsageError(f"--dataset {args.dataset} is read from a folder: pass --root PATH")
        data_task = args.dataset
    if regression and data_task != "brixia":
        raise UsageError(
            "--method regression explains the BrixIA severity score: use --dataset brixia, "
            "or --dataset phantom --task brixia"
        )
    if regression:
        model_task, label_key = "brixia_regression", None
        _refuse(args, ("target",), "to --method regression (one output, recorded as target -1)")
    else:
        model_task, label_key = ("nih", "labels") if data_task == "nih" else ("brixia_detectors", "detectors")
        _refuse(args, ("loss",), f"to --method {method}: it is the regression loss")
    if method not in IBA_FAMILY:
        _refuse(args, ("layer", "beta", "steps", "noise_draws", "stats"), f"to --method {method} (IBA options)")
    if method != "multilayer":
        _refuse(args, ("threshold",), f"to --method {method}: it is Multi-layer IBA's")
    else:
        _refuse(args, ("layer",), "to --method multilayer: it uses dense blocks 1-3")
    if args.checkpoint is not None:
        _refuse(args, ("embedded_overrides",), "with --checkpoint")
    for name in ("images", "size", "steps", "noise_draws", "batch_size", "threads"):
        _at_least(name.replace("_", "-"), getattr(args, name))
    _at_least("stats-samples", args.stats_samples, 2)
    _at_least("workers", args.workers, 0)
    _at_least("seed", args.seed, 0)
    _at_least("phantom-seed", args.phantom_seed, 0)
    if args.beta is not None and not args.beta >= 0:
        raise UsageError(f"--beta: expected a number >= 0, got {args.beta}")

    layer = args.layer or DEFAULT_LAYER
    options: dict = {}
    stats_layers: Tuple[str, ...] = ()
    if method in IBA_FAMILY:
        stats_layers = MULTILAYER_LAYERS if method == "multilayer" else (layer,)
        options = {"layers": list(stats_layers), "beta": args.beta, "steps": args.steps or DEFAULT_STEPS,
                   "noise_draws": args.noise_draws or DEFAULT_NOISE_DRAWS}
        if method == "multilayer":
            options["threshold"] = _threshold(args.threshold or DEFAULT_THRESHOLD)
        if regression:
            options["loss"] = args.loss or "deviation"
    return Plan(
        method=method,
        method_key=f"regression-{options['loss']}" if regression else method,
        model_task=model_task,
        data_task=data_task,
        label_key=label_key,
        targets=_parse_targets(args.target, TASKS[model_task][1]),
        layer=layer,
        stats_layers=stats_layers,
        options=options,
        embedded_overrides=_parse_overrides(args.embedded_overrides),
    )


# Sharding and seeds: functions of the batch index alone, never of the number of processes.


def shard(n_items: int, batch_size: int, rank: int, world: int) -> List[Tuple[int, range]]:
    """The batches of process ``rank`` out of ``world``.

    Batch ``b`` holds items ``b*batch_size`` up to ``(b+1)*batch_size``
    (fewer in the last one) and belongs to process ``b % world``.

    Returns
    -------
    list of (int, range)
        (batch index, item indices) in increasing order.
    """
    n_batches = math.ceil(n_items / batch_size)
    return [(b, range(b * batch_size, min(n_items, (b + 1) * batch_size))) for b in range(rank, n_batches, world)]


def batch_seed(seed: int, batch: int) -> int:
    """The noise seed of batch ``batch`` of a run seeded with ``seed``: a 63-bit integer."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# Processes.


class Processes:
    """This process's place in a ``torchrun`` launch (or a lone process) and the collectives a run needs.

    ``torch.distributed`` is initialised only when ``WORLD_SIZE`` > 1: with
    NCCL when the device is a GPU (each process takes ``cuda:LOCAL_RANK``),
    with gloo on CPU.
    """

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise UsageError(f"--device: {error}") from error
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank)
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()

    def share(self, make: Callable[[], object]) -> object:
        """``make()`` run by process 0, its result (or its exception) given to every process."""
        outcome: list = [None]
        if self.rank == 0:
            try:
                outcome = [(make(), None)]
            except Exception as error:  # every process must fail with it, not wait for a result
                outcome = [(None, error)]
        if self.world > 1:
            dist.broadcast_object_list(outcome, src=0)
        value, error = outcome[0]
        if error is not None:
            if self.rank == 0:
                raise error
            raise SetupFailed(str(error))
        return value

    def gather(self, value: object) -> list:
        """``value`` of every process, in rank order."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values


@contextlib.contextmanager
def _determinism(device: torch.device, threads: Optional[int]) -> Iterator[None]:
    """Fix what changes floating-point results within a process; restore it afterwards."""
    saved = torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


# Set-up by process 0: the model, the items, the store, the statistics.


def _digest(tensors: Dict[str, Tensor], extra: str = "") -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes)."""
    sha = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _stats_digest(stats: Dict[str, FeatureStats]) -> str:
    tensors = {f"{layer}.{key}": getattr(s, key) for layer, s in stats.items() for key in ("mean", "m2", "nonzero")}
    return _digest(tensors, extra=str(sorted((layer, s.count) for layer, s in stats.items())))


def _items(args: argparse.Namespace, plan: Plan, size: int) -> Dataset:
    """The items to attribute, in their fixed order."""
    if args.dataset == "phantom":
        seed = DEFAULT_PHANTOM_SEED if args.phantom_seed is None else args.phantom_seed
        return open_dataset("phantom", task=plan.data_task, size=size,
                            n=args.images or DEFAULT_PHANTOM_IMAGES, seed=seed)
    data = open_dataset(args.dataset, args.root, size=size, split=args.split)
    return data if args.images is None else Subset(data, range(min(args.images, len(data))))


def _data_identity(args: argparse.Namespace, plan: Plan, items: Dataset, size: int) -> dict:
    """What determines the items: the phantom's parameters, or the image ids of real data."""
    if isinstance(items, PhantomCXR):
        return {"dataset": "phantom", "task": plan.data_task, "seed": items.seed, "images": len(items), "size": size}
    reader, indices = (items.dataset, items.indices) if isinstance(items, Subset) else (items, range(len(items)))
    ids = "\n".join(reader.image_ids[i] for i in indices)
    return {"dataset": args.dataset, "split": args.split, "images": len(items), "size": size,
            "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}


def _estimation_source(args: argparse.Namespace, plan: Plan) -> str:
    if args.dataset == "phantom":
        return f"phantom {plan.data_task} seed {TRAINING_PHANTOM_SEED} (the embedded models' training images)"
    return f"{args.dataset} train split, {args.stats_samples} random items (seed 0)"


def _estimation_data(args: argparse.Namespace, plan: Plan, size: int) -> Dataset:
    """Training images to estimate the statistics on (see :func:`_estimation_source`)."""
    if args.dataset == "phantom":
        return PhantomCXR(args.stats_samples, size=size, seed=TRAINING_PHANTOM_SEED, task=plan.data_task)
    train = open_dataset(args.dataset, args.root, size=size, split="train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.stats_samples]
    return Subset(train, pick.tolist())


def _load_stats_option(path: str, layers: Sequence[str]) -> Dict[str, FeatureStats]:
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


def _estimate_stats(model: nn.Module, args: argparse.Namespace, plan: Plan, size: int,
                    device: torch.device) -> Dict[str, FeatureStats]:
    data = _estimation_data(args, plan, size)
    loader = DataLoader(data, batch_size=32, collate_fn=collate, num_workers=args.workers)
    modules = dict(model.named_modules())
    stats = estimate_stats(model, [modules[layer] for layer in plan.stats_layers],
                           (batch["image"].to(device) for batch in loader),
                           min(args.stats_samples, len(data)), progress=True)
    return dict(zip(plan.stats_layers, stats))


def _versions(method: str) -> dict:
    """Versions of the libraries that compute the method's maps."""
    versions = {"captum_iba": __version__}
    family = METHODS[method].family
    if family != "captum_iba":
        versions[family] = importlib.metadata.version(family)
    return versions


@dataclass
class Setup:
    """What process 0 prepares and shares: the same model, items and statistics for all."""

    model: nn.Module
    items: Dataset
    stats: Dict[str, FeatureStats]
    config_hash: str
    done: set
    run_id: str


def set_up(args: argparse.Namespace, plan: Plan, device: torch.device) -> Setup:
    """Process 0's part: folder check, model, configuration, store, statistics."""
    out = check_out_dir(args.out)  # before the model, which may take minutes to train
    model = open_model(plan.model_task, args.checkpoint, **plan.embedded_overrides)
    modules = dict(model.named_modules())
    missing = [layer for layer in plan.stats_layers if layer not in modules]
    if missing:
        raise UsageError(f"--layer: the model has no layer {missing[0]!r}")
    size = args.size or model.input_size
    items = _items(args, plan, size)
    given = _load_stats_option(args.stats, plan.stats_layers) if args.stats else None
    stats_identity = None
    if plan.stats_layers:
        stats_identity = ({"sha256": _stats_digest(given)} if given else
                          {"estimated_from": _estimation_source(args, plan), "samples": args.stats_samples})
    config = {
        "method": plan.method,
        "options": plan.options,
        "model": {"task": plan.model_task, "weights_sha256": _digest(model.state_dict())},
        "data": _data_identity(args, plan, items, size),
        "targets": list(plan.targets) if plan.targets else ("single output" if plan.label_key is None else
                                                           f"positive {plan.label_key}, else top prediction"),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "stats": stats_identity,
        "versions": _versions(plan.method),
    }
    store = open_method_store(out, plan.method_key, config, overwrite=args.overwrite)
    # A resumed run uses the statistics its first run stored, never a new estimate.
    stats = store.load_stats(plan.stats_layers)
    if stats is None:
        stats = given or _estimate_stats(model.to(device), args, plan, size, device)
        store.save_stats(stats)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    return Setup(model.cpu(), items, stats, store.config_hash, store.done_batches(), run_id)


def _attach(out: str, plan: Plan, config_hash: str, rank: int) -> MethodStore:
    """The store process 0 opened, as this process sees it."""
    try:
        store = MethodStore(Path(out).expanduser().absolute() / plan.method_key)
    except StoreError:
        store = None
    if store is None or store.config_hash != config_hash:
        raise StoreError(f"--out {out}: process {rank} does not see the store process 0 opened; "
                         "across machines, --out must be a folder they all share")
    return store


# Attribution of one batch.


def _targets(batch: dict, plan: Plan, model: nn.Module, device: torch.device) -> List[List[int]]:
    """The outputs to explain per item: ``--target``, else its positive labels, else its top prediction."""
    n = len(batch["image_id"])
    if plan.label_key is None:
        return [[-1]] * n
    if plan.targets is not None:
        return [list(plan.targets)] * n
    positives = [torch.nonzero(row).flatten().tolist() for row in batch[plan.label_key]]
    if all(positives):
        return positives
    with torch.no_grad():
        top = model(batch["image"].to(device)).argmax(1).tolist()
    return [labels or [best] for labels, best in zip(positives, top)]


def _attribute_batch(suite: MethodSuite, plan: Plan, batch: dict, rows: Sequence[Tuple[int, int]],
                     seed: int, device: torch.device) -> np.ndarray:
    """Maps of ``rows`` ((item position, target) pairs), shape (len(rows), 1, h, w)."""
    positions = [position for position, _ in rows]
    images = batch["image"][positions].to(device)
    options = {}
    if plan.label_key is None:
        target = None
        options["loss"] = plan.options["loss"]
        if plan.options["loss"] == "mse":
            options["target_values"] = batch["score"][positions].to(device)
    else:
        target = torch.tensor([t for _, t in rows], device=device)
    torch.manual_seed(seed)  # for methods that draw from the global generator
    return suite.attribute(plan.method, images, target, seed=seed, **options).cpu().numpy()


def _suite(model: nn.Module, plan: Plan, stats: Dict[str, FeatureStats]) -> MethodSuite:
    # MethodSuite builds every IBA-family method; those this run does not call need no statistics.
    every_layer = dict.fromkeys((*MULTILAYER_LAYERS, plan.layer))
    iba_options = {}
    if plan.options:
        iba_options = {"steps": plan.options["steps"], "batch_size": plan.options["noise_draws"]}
        if plan.options["beta"] is not None:
            iba_options["beta"] = plan.options["beta"]
    return MethodSuite(
        model,
        task="regression" if plan.label_key is None else "classification",
        stats={layer: stats.get(layer) for layer in every_layer},
        layer=plan.layer,
        multilayer_layers=MULTILAYER_LAYERS,
        multilayer_threshold=plan.options.get("threshold", DEFAULT_THRESHOLD),
        iba_options=iba_options,
    )


def _fail_after() -> Optional[int]:
    value = os.environ.get(FAIL_AFTER_ENV)
    return int(value) if value else None


@dataclass
class Tally:
    """One process's work in a run."""

    items: int = 0
    maps: int = 0
    seconds: float = 0.0


def attribute_shard(args: argparse.Namespace, plan: Plan, setup: Setup, processes: Processes,
                    writer: BatchWriter) -> Tally:
    """Compute and store this process's batches that are not done yet."""
    device = processes.device
    model = setup.model.to(device)
    suite = _suite(model, plan, setup.stats)
    pending = [(b, items) for b, items in shard(len(setup.items), args.batch_size, processes.rank, processes.world)
               if b not in setup.done]
    loader = DataLoader(setup.items, batch_sampler=[list(items) for _, items in pending],
                        collate_fn=collate, num_workers=args.workers)
    fail_after, tally = _fail_after(), Tally()
    description = plan.method_key + (f" (process 0 of {processes.world})" if processes.world > 1 else "")
    start = time.perf_counter()
    with tqdm(total=sum(len(items) for _, items in pending), desc=description, unit="img",
              disable=processes.rank != 0) as bar:
        for (b, _), batch in zip(pending, loader):
            rows = [(position, target) for position, targets in enumerate(_targets(batch, plan, model, device))
                    for target in targets]
            keys = [(batch["image_id"][position], target) for position, target in rows]
            writer.started(b, keys)
            maps = _attribute_batch(suite, plan, batch, rows, batch_seed(args.seed, b), device)
            writer.done(b, keys, maps)
            tally.items += len(batch["image_id"])
            tally.maps += len(keys)
            bar.update(len(batch["image_id"]))
            if fail_after is not None and tally.items >= fail_after:
                raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: test hook, stopping after {tally.items} items")
    tally.seconds = time.perf_counter() - start
    return tally


def _summarise(args: argparse.Namespace, plan: Plan, setup: Setup, tallies: List[Tally],
               store: MethodStore, processes: Processes) -> None:
    """Print the run's summary and log it in the store (process 0)."""
    items, maps = sum(t.items for t in tallies), sum(t.maps for t in tallies)
    seconds = max(t.seconds for t in tallies)
    skipped = sum(len(r) for b, r in shard(len(setup.items), args.batch_size, 0, 1) if b in setup.done)
    rate = maps / seconds if seconds > 0 else 0.0
    store.log_run({"run_id": setup.run_id, "processes": processes.world, "device": processes.device.type,
                   "items": items, "skipped": skipped, "maps": maps, "seconds": round(seconds, 3),
                   "maps_per_s": round(rate, 3)})
    print(f"captum-iba attribute: {plan.method_key} on {len(setup.items)} items: {items} computed, "
          f"{skipped} already done; {maps} maps in {seconds:.1f} s = {rate:.2f} maps/s "
          f"({processes.world} process{'es' if processes.world > 1 else ''}, {processes.device.type}); "
          f"store: {store.folder.parent} (captum_iba.io.read_maps)", flush=True)


def _plan_and_set_up(args: argparse.Namespace, device: torch.device) -> Tuple[Plan, Setup]:
    plan = make_plan(args)
    return plan, set_up(args, plan, device)


def _run(args: argparse.Namespace, processes: Processes) -> None:
    with _determinism(processes.device, args.threads):
        plan, setup = processes.share(lambda: _plan_and_set_up(args, processes.device))
        store = _attach(args.out, plan, setup.config_hash, processes.rank)
        writer = BatchWriter(store, setup.run_id, processes.rank)
        tallies = processes.gather(attribute_shard(args, plan, setup, processes, writer))
        if processes.rank == 0:
            _summarise(args, plan, setup, tallies, store, processes)


def run(args: argparse.Namespace) -> int:
    """Run ``captum-iba attribute`` with parsed arguments; returns the exit status.

    A refused request (an argument that does not fit, an output folder that
    cannot be used, a changed configuration, a missing or unreadable file)
    prints one line naming the cause on standard error and returns 2; under
    torchrun, process 0 reports what went wrong while it set the run up.
    """
    processes = None
    try:
        processes = Processes(args.device)
        _run(args, processes)
        return 0
    except SetupFailed:
        return 2
    except (ValueError, OSError, StoreError) as error:
        where = f" (process {processes.rank})" if processes is not None and processes.world > 1 else ""
        print(f"captum-iba attribute: error{where}: {error}", file=sys.stderr)
        return 2
    finally:
        if processes is not None:
            processes.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m captum_iba.scale ...``: the same as ``captum-iba attribute ...``."""
    parser = argparse.ArgumentParser(prog="captum-iba attribute", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
