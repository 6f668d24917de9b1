"""``captum-iba attribute``: one method's maps for a whole dataset, sharded and resumable.

The dataset's items, in their fixed order, are cut into batches
(:mod:`captum_iba.app.attribute.distributed`). Process 0 sets the run up -- it checks the
output folder, loads the model, takes the method's writer lock (held until
the run ends; the other processes check that their run holds it), opens the
store (refusing a changed configuration), loads or estimates the feature
statistics and, for a method that learns (``--method readout``), loads or
trains it (once per store: ``OUT/<method>/trained/<method>.pt``) -- and shares
the model, the items and the statistics with the others. Every process then
computes its batches that are not done yet and writes them to the store
(:mod:`captum_iba.app.store`): a rerun of the same command completes what is
missing.

Run it as ``captum-iba attribute ...``, ``python -m captum_iba attribute ...``
or ``torchrun --nproc_per_node=K -m captum_iba attribute ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..._files import error_line
from ..._progress import progress as progress_lines
from ...cxr import collate
from ..methods import METHODS, MethodSuite
from ...stats import FeatureStats
from .distributed import Processes, SetupFailed, Shard, batch_seed, determinism, quiet_worker, shard
from .plan import Plan, make_plan, readout_layers
from .config import estimate_run_stats, estimation_data, load_stats_option, run_config, run_items, run_plan
from ..sources import choose_layers, explained_model, image_size, open_model
from ..store import BatchWriter, MethodStore, StoreError, check_out_dir, check_writer, open_method_store, writer_lock

__all__ = ["run", "set_up", "attribute_shard"]


@dataclass
class Setup:
    """What process 0 prepares and shares: the same plan (layers and targets resolved), explained model
    (:func:`~captum_iba.app.sources.explained_model`), items and statistics for all."""

    plan: Plan
    model: nn.Module
    items: Dataset
    stats: Dict[str, FeatureStats]
    config_hash: str
    done: set
    run_id: str
    trained_path: Optional[str] = None


def set_up(args: argparse.Namespace, plan: Plan, device: torch.device, stack: contextlib.ExitStack) -> Setup:
    """Process 0's part: folder check, model, configuration, writer lock, store, statistics.

    Everything that can refuse the request (the folder, the model, ``--target``
    against the model's outputs, the layer, ``--stats``) is checked before the
    first write: the writer lock, taken
    next and held in ``stack`` for the run, creates the store folder.
    """
    out = check_out_dir(args.out)  # before the model, which may take minutes to train
    model, outputs = explained_model(open_model(plan.model_task, args.checkpoint, **plan.model,
                                                **plan.embedded_overrides), plan.model_task)
    plan = plan.with_outputs(outputs)
    size = image_size(model, args.size)
    layers = choose_layers(model, size, plan.layer, plan.multilayer)
    plan = plan.with_layers(layers, readout_layers(model, size, layers.bottleneck))
    items = run_items(args, plan, size)
    given = load_stats_option(args.stats, plan.stats_layers) if args.stats else None
    config = run_config(args, plan, model, items, size, given)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    lock = stack.enter_context(writer_lock(out, plan.method_key, run_id))
    store = open_method_store(out, plan.method_key, config, plan=run_plan(args, plan, items),
                              overwrite=args.overwrite, lock=lock)
    damaged_lines = [line for line in store.repaired if line.damaged]
    if damaged_lines:
        print(f"captum-iba attribute: {len(damaged_lines)} damaged index line(s) dropped, their batches computed "
              f"again ({damaged_lines[0]})", file=sys.stderr, flush=True)
    done, damaged = store.resume(verify=args.verify)
    if damaged:
        name, problem = sorted(damaged.items())[0]
        print(f"captum-iba attribute: {len(damaged)} done batch(es) missing or damaged, computing them again "
              f"({name}: {problem})", file=sys.stderr, flush=True)
    # A resumed run uses the statistics its first run stored, never a new estimate.
    stats = store.load_stats(plan.stats_layers)
    if stats is None:
        stats = given or estimate_run_stats(model.to(device), args, plan, size, device)
        store.save_stats(stats)
    trained = _trained(model.to(device), args, plan, stats, store, size, device) if METHODS[plan.method].train else None
    return Setup(plan, model.cpu(), items, stats, store.config_hash, done, run_id, trained)


def _trained(model: nn.Module, args: argparse.Namespace, plan: Plan, stats: Dict[str, FeatureStats],
             store: MethodStore, size: int, device: torch.device) -> str:
    """The method's trained state in the store: trained and saved by the store's first run, checked and
    reused by the later ones (a rerun never trains again)."""
    path = store.folder / "trained" / f"{plan.method}.pt"
    suite = _suite(model, plan, stats, seed=args.seed)
    if path.is_file():
        try:
            suite.load_trained(plan.method, path)
        except ValueError as error:
            raise StoreError(f"{error}; rerun with --overwrite to train it again") from error
        print(f"captum-iba attribute: {plan.method}: reusing the trained state in {path}", flush=True)
        return str(path)
    n, epochs = plan.options["readout_images"], plan.options["readout_epochs"]
    loader = DataLoader(estimation_data(args, plan, size, n), batch_size=32, collate_fn=collate,
                        num_workers=args.workers, worker_init_fn=quiet_worker)
    suite.training_data = [(batch["image"].to(device), plan.outputs.output_labels(batch[plan.label_key]))
                           for batch in loader]  # read once, labels in the model's output columns
    started = time.perf_counter()
    state = suite.train(plan.method)
    seconds = time.perf_counter() - started
    path.parent.mkdir(exist_ok=True)
    state.save(path)
    store.record_files([str(path.relative_to(store.folder))])
    print(f"captum-iba attribute: {plan.method}: trained on {n} items x {epochs} epochs in {seconds:.1f} s, "
          f"kept in {path}", flush=True)
    return str(path)


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
    """The outputs to explain per item, indices of the model's own outputs: ``--target``, else the
    outputs of its positive labels, else the output of its top-scoring label."""
    n = len(batch["image_id"])
    if plan.label_key is None:
        return [[-1]] * n
    if plan.targets is not None:
        return [list(plan.targets)] * n
    positives = [plan.outputs.positives(row) for row in batch[plan.label_key]]
    if all(positives):
        return positives
    with torch.no_grad():
        top = plan.outputs.top(model(batch["image"].to(device)))
    return [outputs or [best] for outputs, best in zip(positives, top)]


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


def _suite(model: nn.Module, plan: Plan, stats: Dict[str, FeatureStats], seed: int = 0) -> MethodSuite:
    """The suite of the run's method (``seed``: of a training, for a method that learns)."""
    layers = {"layer": plan.layer, "multilayer_layers": plan.multilayer, "cam_layer": plan.cam_layer}
    if METHODS[plan.method].train is not None:  # the Readout Bottleneck, with its training options
        o = plan.options
        training = {"epochs": o["readout_epochs"], "lr": o["readout_lr"], "beta": o["beta"], "seed": seed}
        return MethodSuite(model, task=plan.task, stats=stats, readout_layers=o["readout_layers"],
                           training_options={plan.method: training}, **layers)
    iba_options = {}
    if plan.options:
        iba_options = {"steps": plan.options["steps"], "noise_draws": plan.options["noise_draws"]}
        if plan.options["beta"] is not None:
            iba_options["beta"] = plan.options["beta"]
    threshold = {"multilayer_threshold": plan.options["threshold"]} if "threshold" in plan.options else {}
    return MethodSuite(model, task=plan.task, stats=stats, iba_options=iba_options, **layers, **threshold)


@dataclass
class Tally:
    """One process's work in a run."""

    items: int = 0
    maps: int = 0
    seconds: float = 0.0


class _Pending:
    """The batches of a shard not done yet; iterated, the DataLoader's batch sampler (item index lists)."""

    def __init__(self, batches: Shard, done: set) -> None:
        self.batches, self.done = batches, done

    def entries(self) -> Iterator[Tuple[int, range]]:
        """``(batch index, item indices)`` of each batch to compute, in order (made on access)."""
        return ((b, items) for b, items in self.batches if b not in self.done)

    def __iter__(self) -> Iterator[List[int]]:
        return (list(items) for _, items in self.entries())

    def __len__(self) -> int:
        return len(self.batches) - sum(1 for b in self.done if b in self.batches.batches)

    def count_items(self) -> int:
        return self.batches.count_items() - self.batches.count_items(self.done)


def attribute_shard(args: argparse.Namespace, plan: Plan, setup: Setup, processes: Processes,
                    writer: BatchWriter) -> Tally:
    """Compute and store this process's batches that are not done yet."""
    device = processes.device
    model = setup.model.to(device)
    suite = _suite(model, plan, setup.stats)
    if setup.trained_path is not None:
        suite.load_trained(plan.method, setup.trained_path)
    pending = _Pending(shard(len(setup.items), args.batch_size, processes.rank, processes.world), setup.done)
    loader = DataLoader(setup.items, batch_sampler=pending, collate_fn=collate, num_workers=args.workers,
                        worker_init_fn=quiet_worker)
    tally = Tally()
    description = plan.method_key + (f" (process 0 of {processes.world})" if processes.world > 1 else "")
    start = time.perf_counter()
    # Progress is shown by process 0 only (a bar on a terminal, plain lines in a log).
    batches = progress_lines(zip(pending.entries(), loader), desc=description, total=len(pending), unit="batch",
                             enabled=processes.rank == 0,
                             postfix=lambda: f"{tally.items} images, {tally.maps} maps")
    for (b, _), batch in batches:
        rows = [(position, target) for position, targets in enumerate(_targets(batch, plan, model, device))
                for target in targets]
        keys = [(batch["image_id"][position], target) for position, target in rows]
        writer.started(b, keys)
        maps = _attribute_batch(suite, plan, batch, rows, batch_seed(args.seed, b), device)
        writer.done(b, keys, maps)
        tally.items += len(batch["image_id"])
        tally.maps += len(keys)
    tally.seconds = time.perf_counter() - start
    return tally


def _summarise(args: argparse.Namespace, plan: Plan, setup: Setup, tallies: List[Tally],
               store: MethodStore, processes: Processes) -> None:
    """Print the run's summary and log it in the store (process 0)."""
    items, maps = sum(t.items for t in tallies), sum(t.maps for t in tallies)
    seconds = max(t.seconds for t in tallies)
    skipped = shard(len(setup.items), args.batch_size, 0, 1).count_items(setup.done)
    rate = maps / seconds if seconds > 0 else 0.0
    store.log_run({"run_id": setup.run_id, "processes": processes.world, "device": processes.device.type,
                   "items": items, "skipped": skipped, "maps": maps, "seconds": round(seconds, 3),
                   "maps_per_s": round(rate, 3)})
    print(f"captum-iba attribute: {plan.method_key} on {len(setup.items)} items: {items} computed, "
          f"{skipped} already done; {maps} maps in {seconds:.1f} s = {rate:.2f} maps/s "
          f"({processes.world} process{'es' if processes.world > 1 else ''}, {processes.device.type}); "
          f"store: {store.folder.parent} (captum_iba.app.store.read_maps)", flush=True)


def _run(args: argparse.Namespace, plan: Plan, processes: Processes) -> None:
    # Process 0 holds the writer lock in `stack` until the run ends, by return, error or Ctrl-C.
    with contextlib.ExitStack() as stack, determinism(processes.device, args.threads):
        setup = processes.share(lambda: set_up(args, plan, processes.device, stack))
        plan = setup.plan  # with the layers process 0 chose for the model
        store = _attach(args.out, plan, setup.config_hash, processes.rank)
        if processes.rank != 0:
            check_writer(args.out, plan.method_key, setup.run_id)
        writer = BatchWriter(store, setup.run_id, processes.rank, locked=True)
        tallies = processes.gather(attribute_shard(args, plan, setup, processes, writer))
        if processes.rank == 0:
            _summarise(args, plan, setup, tallies, store, processes)


def run(args: argparse.Namespace) -> int:
    """Run ``captum-iba attribute`` with parsed arguments; returns the exit status.

    A refused request (an argument that does not fit, an output folder that
    cannot be used, a changed configuration, another run writing the store, a
    missing or unreadable file, a full disk) prints one line naming the cause
    on standard error and returns 2; the arguments are all checked before
    anything is written. Under torchrun, process 0 reports what went wrong
    while it set the run up. Ctrl-C and SIGTERM (``KeyboardInterrupt`` and
    :class:`captum_iba.app.cli.Terminated`) propagate after the writer lock is
    released.
    """
    processes = plan = None
    try:
        plan = make_plan(args)  # every process: it reads nothing and writes nothing
        processes = Processes(args.device)
        _run(args, plan, processes)
        return 0
    except SetupFailed:
        return 2
    except (ValueError, OSError, StoreError) as error:
        if plan is None and os.environ.get("RANK", "0") != "0":
            return 2  # the same arguments: process 0 says what is wrong with them
        where = f" (process {processes.rank})" if processes is not None and processes.world > 1 else ""
        print(f"captum-iba attribute: error{where}: {error_line(error)}", file=sys.stderr)
        return 2
    finally:
        if processes is not None:
            processes.close()
