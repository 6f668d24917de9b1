"""The plan of a ``captum-iba attribute`` run: its arguments checked against each other and the registries.

:func:`make_plan` turns parsed arguments into a :class:`Plan` before anything
is read or written, so a request that cannot work is refused with one line
naming the argument at fault.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

from ..._validate import SEED_RANGE, check_number
from ...attr.options import MAX_BETA, MAX_LR
from ...maps import parse_threshold
from ..methods import DEFAULT_THRESHOLD, METHODS, READOUT_TRAINING
from ...objectives import REGRESSION_LOSSES
from ..sources import DATASETS, ModelOutputs, task_outputs

__all__ = ["Plan", "UsageError", "make_plan", "DEFAULT_STEPS", "DEFAULT_NOISE_DRAWS", "DEFAULT_REGRESSION_LOSS",
           "DEFAULT_READOUT_IMAGES", "readout_layers", "MAX_SIZE", "MAX_BATCH_SIZE", "MAX_ITEMS", "MAX_STEPS",
           "MAX_NOISE_DRAWS", "MAX_LR"]

#: Library defaults of the IBA options, written into a run's configuration.
DEFAULT_STEPS, DEFAULT_NOISE_DRAWS = 10, 10
DEFAULT_REGRESSION_LOSS = "deviation"
DEFAULT_PHANTOM_IMAGES = 64
#: Training items of the Readout Bottleneck (``--readout-images``).
DEFAULT_READOUT_IMAGES = 256
#: The options of ``attribute`` that belong to one method or family; refused for the others.
METHOD_OPTIONS = ("layer", "beta", "steps", "noise_draws", "threshold", "loss", "readout_epochs", "readout_images")


class UsageError(ValueError):
    """An argument that does not fit the others; the message names it."""


@dataclass(frozen=True)
class Plan:
    """A validated request.

    Attributes
    ----------
    method : str
        Key of :data:`captum_iba.app.methods.METHODS`.
    method_key : str
        The method as the store names it: ``method``, or ``"regression-<loss>"``.
    model_task : str
        The model's task: ``"nih"``, ``"brixia_detectors"`` or ``"brixia_regression"``.
    data_task : str
        Which labels the items carry: ``"nih"`` or ``"brixia"``.
    label_key : str or None
        Item entry whose positives are the default targets; None for the regressor.
    target_args : tuple of str or None
        The ``--target`` values as given: output indices or names.
    targets : tuple of int or None
        The ``--target`` outputs, indices of the model's own outputs; None
        (the default targets) without ``--target``, or until :meth:`with_outputs`
        resolves them.
    layer : str or None
        The IBA layer asked for (None: chosen by resolution, see
        :func:`captum_iba.app.sources.choose_layers`, once the model is loaded).
    multilayer : tuple of str or None
        Multi-layer IBA's layers asked for.
    model : dict
        How to open the model (:func:`captum_iba.app.sources.open_model`'s options).
    stats_layers : tuple of str
        Layers whose statistics the method needs (none for the baselines);
        empty until :meth:`with_layers` resolves them.
    options : dict
        The method's options as the configuration records them (a method
        that learns: its training options too, and ``readout_layers``).
    embedded_overrides : dict
        Recipe overrides of the embedded model.
    outputs : ModelOutputs or None
        The explained model's outputs (:func:`~captum_iba.app.sources.explained_model`); None until
        :meth:`with_outputs` sets them.
    """

    method: str
    method_key: str
    model_task: str
    data_task: str
    label_key: Optional[str]
    target_args: Optional[Tuple[str, ...]]
    targets: Optional[Tuple[int, ...]]
    layer: Optional[str]
    multilayer: Optional[Tuple[str, ...]]
    model: dict
    stats_layers: Tuple[str, ...]
    options: dict
    embedded_overrides: dict
    cam_layer: Optional[str] = None
    outputs: Optional[ModelOutputs] = None

    def with_outputs(self, outputs: ModelOutputs) -> "Plan":
        """This plan for a model with ``outputs``: ``--target`` resolved to its output indices.

        Raises
        ------
        UsageError
            Naming ``--target``: an index out of range, or a name the model has no output for.
        """
        return replace(self, outputs=outputs, targets=_parse_targets(self.target_args, outputs))

    def with_layers(self, layers, readout_layers: Sequence[str] = ()) -> "Plan":
        """This plan with the layers chosen for the loaded model (:class:`~captum_iba.app.sources.Layers`;
        ``readout_layers``: the Readout Bottleneck's, for ``--method readout``)."""
        kind = METHODS[self.method].layers
        stats_layers = {"bottleneck": (layers.bottleneck,), "multilayer": layers.multilayer, "": (),
                        "readout": tuple(dict.fromkeys((layers.bottleneck, *readout_layers)))}[kind]
        options = {**self.options, "layers": list(stats_layers)} if self.options else {}
        if kind == "readout":
            options["readout_layers"] = list(readout_layers)
        return replace(self, layer=layers.bottleneck, multilayer=layers.multilayer, cam_layer=layers.cam,
                       stats_layers=stats_layers, options=options)

    @property
    def task(self) -> str:
        """The method suite's task: ``"regression"`` for the score regressor, else ``"classification"``."""
        return "regression" if self.label_key is None else "classification"


def readout_layers(model, input_size: int, bottleneck: str) -> Tuple[str, ...]:
    """The Readout Bottleneck's readout layers in ``model``: every DenseNet dense block or ResNet stage
    (:func:`~captum_iba.cxr.models.layers.bottleneck_candidates`), else the bottleneck alone."""
    from ...cxr.models.layers import bottleneck_candidates

    try:
        return tuple(name for name, _ in bottleneck_candidates(model, input_size)) or (bottleneck,)
    except ValueError:  # no stage to read
        return (bottleneck,)


def refuse(args: argparse.Namespace, names: Sequence[str], reason: str) -> None:
    """Raise if any of the options ``names`` (attribute names) was given: they do not apply."""
    for name in names:
        if getattr(args, name, None) is not None:
            raise UsageError(f"--{name.replace('_', '-')} does not apply {reason}")


def at_least(name: str, value: Optional[int], minimum: int = 1) -> None:
    """Raise naming ``--name`` unless ``value`` is None or an integer >= ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"--{name}: expected an integer >= {minimum}, got {value}")


def model_options(args) -> dict:
    """The model-choosing options of ``evaluate``/``attribute`` as :func:`~captum_iba.app.sources.open_model` takes them."""
    if args.model is None:
        for name in ("weights", "outputs", "input_format"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} applies to --model only")
        if args.random_weights:
            raise UsageError("--random-weights applies to --model only")
        return {}
    return {"model": args.model, "weights": args.weights, "outputs": args.outputs,
            "input_format": args.input_format, "random_weights": args.random_weights}


def layer_options(args):
    """``--layer`` and ``--multilayer-layers`` as :func:`~captum_iba.app.sources.choose_layers` takes them."""
    layers = [name.strip() for name in (args.multilayer_layers or "").split(",") if name.strip()]
    return args.layer, layers or None


def _parse_targets(values: Optional[Sequence[str]], outputs: ModelOutputs) -> Optional[Tuple[int, ...]]:
    """``--target`` values (output indices or names, comma-separated) as sorted output indices."""
    if not values:
        return None
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not parts:
        raise UsageError(f"--target: expected output indices or names, got {','.join(values)!r}")
    last = outputs.count - 1
    targets = set()
    for part in parts:
        try:
            target = int(part)
        except ValueError:
            target = outputs.output_of(part)
            if target is None:
                raise UsageError(f"--target: expected an output index 0-{last} or a name the model has an output "
                                 f"for ({', '.join(outputs.named_outputs())}), got {part!r}") from None
        if not 0 <= target <= last:
            raise UsageError(f"--target: the model has {outputs.count} outputs (0-{last}), got {target}")
        targets.add(target)
    return tuple(sorted(targets))


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


def _tasks(args: argparse.Namespace, regression: bool) -> Tuple[str, str, Optional[str]]:
    """``(data_task, model_task, label_key)`` of the request."""
    source = DATASETS[args.dataset]
    if source.generated:
        refuse(args, ("root", "split"), f"to --dataset {args.dataset} (it is generated)")
        data_task = args.task or ("brixia" if regression else "nih")
    else:
        refuse(args, ("task", "phantom_seed"), f"to --dataset {args.dataset}")
        if args.root is None:
            raise UsageError(f"--dataset {args.dataset} is read from a folder: pass --root PATH")
        data_task = source.task
    if regression:
        if data_task != "brixia":
            raise UsageError(f"--method {args.method} explains the BrixIA severity score: use --dataset brixia, "
                             "or --dataset phantom --task brixia")
        return data_task, "brixia_regression", None
    if data_task == "nih":
        return data_task, "nih", "labels"
    return data_task, "brixia_detectors", "detectors"


def at_most(name: str, value: Optional[int], maximum: int, why: str) -> None:
    """Raise naming ``--name`` if ``value`` is above ``maximum`` (``why``: what the bound guards)."""
    if value is not None and value > maximum:
        raise UsageError(f"--{name}: expected at most {maximum} ({why}), got {value}")


#: Bounds that catch a mistyped number before it fills the memory: an image side, items per batch,
#: noise draws per image (each a copy of the batch's features).
MAX_SIZE, MAX_BATCH_SIZE, MAX_NOISE_DRAWS = 4096, 4096, 4096
#: Items (images, training or estimation samples): as many as Python can count in a sequence.
MAX_ITEMS = sys.maxsize
#: Optimisation steps or training epochs: a mistyped number would run for years.
MAX_STEPS = 1_000_000


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number against the bounds the library and the machine allow (``--beta`` as
    :class:`~captum_iba.attr.options.BottleneckOptions` checks it)."""
    for name in ("images", "size", "steps", "noise_draws", "batch_size", "threads", "readout_epochs",
                 "readout_images"):
        at_least(name.replace("_", "-"), getattr(args, name, None))
    at_least("stats-samples", args.stats_samples, 2)
    at_least("workers", args.workers, 0)
    for name in ("images", "readout_images", "stats_samples"):
        at_most(name.replace("_", "-"), getattr(args, name), MAX_ITEMS, "the most items Python can count")
    at_most("size", args.size, MAX_SIZE, "pixels per side")
    at_most("batch-size", args.batch_size, MAX_BATCH_SIZE, "items held in memory together")
    at_most("noise-draws", args.noise_draws, MAX_NOISE_DRAWS, "noisy copies of a batch held in memory together")
    at_most("steps", args.steps, MAX_STEPS, "optimisation steps per batch")
    at_most("readout-epochs", args.readout_epochs, MAX_STEPS, "passes over the training items")
    cores = os.cpu_count() or 1
    at_most("threads", args.threads, 4 * cores, f"4 per CPU core of this machine's {cores}")
    at_most("workers", args.workers, 4 * cores, f"4 per CPU core of this machine's {cores}")
    for name in ("seed", "phantom_seed"):
        at_least(name.replace("_", "-"), getattr(args, name), SEED_RANGE[0])
        at_most(name.replace("_", "-"), getattr(args, name), SEED_RANGE[1], "the seeds torch's generators take")
    if args.beta is not None:
        try:
            check_number(args.beta, "--beta", minimum=0.0, maximum=MAX_BETA, below=False)
        except ValueError as error:
            raise UsageError(str(error)) from None


def _method_options(args: argparse.Namespace, applies: Sequence[str], bottleneck: bool) -> dict:
    """The IBA-family options as the configuration records them (none for the other methods)."""
    if not bottleneck:
        return {}
    if "readout_epochs" in applies:  # the Readout Bottleneck: trained once per store with these
        return {"layers": [], "beta": READOUT_TRAINING["beta"] if args.beta is None else args.beta,
                "readout_epochs": args.readout_epochs or READOUT_TRAINING["epochs"],
                "readout_images": args.readout_images or DEFAULT_READOUT_IMAGES, "readout_lr": READOUT_TRAINING["lr"]}
    options = {"layers": [], "beta": args.beta, "steps": args.steps or DEFAULT_STEPS,
               "noise_draws": args.noise_draws or DEFAULT_NOISE_DRAWS}
    if "threshold" in applies:
        options["threshold"] = _threshold(args.threshold or DEFAULT_THRESHOLD)
    if "loss" in applies:
        options["loss"] = args.loss or DEFAULT_REGRESSION_LOSS
    return options


def make_plan(args: argparse.Namespace) -> Plan:
    """Check the arguments against each other and the registries, and resolve the defaults.

    Raises
    ------
    UsageError
        Naming the argument at fault.
    """
    if args.method not in METHODS:
        raise UsageError(f"--method: unknown method {args.method!r}; known: {', '.join(METHODS)}")
    method = METHODS[args.method]
    regression = method.tasks == ("regression",)
    data_task, model_task, label_key = _tasks(args, regression)
    if regression:
        refuse(args, ("target",), f"to --method {args.method} (one output, recorded as target -1)")
    reason = f"to --method {args.method}"
    refuse(args, [o for o in METHOD_OPTIONS if o not in method.options], reason)
    if args.stats is not None and not method.layers:
        raise UsageError(f"--stats does not apply {reason}: it needs no feature statistics")
    if method.layers != "multilayer":
        refuse(args, ("multilayer_layers",), reason)
    if args.loss is not None and args.loss not in REGRESSION_LOSSES:
        raise UsageError(f"--loss: expected one of {', '.join(REGRESSION_LOSSES)}, got {args.loss!r}")
    if args.checkpoint is not None or args.model is not None:
        refuse(args, ("embedded_overrides",), "with --checkpoint or --model")
    _check_numbers(args)
    layer, multilayer = layer_options(args)
    options = _method_options(args, method.options, bool(method.layers))
    plan = Plan(
        method=args.method,
        method_key=f"{args.method}-{options['loss']}" if "loss" in options else args.method,
        model_task=model_task,
        data_task=data_task,
        label_key=label_key,
        target_args=tuple(args.target) if args.target else None,
        targets=None,
        layer=layer,
        multilayer=tuple(multilayer) if multilayer else None,
        model=model_options(args),
        stats_layers=(),
        options=options,
        embedded_overrides=_parse_overrides(args.embedded_overrides),
    )
    # The library's models output the task's labels: --target is checked now; a --model's, once it is loaded.
    return plan if args.model is not None else plan.with_outputs(task_outputs(model_task))
