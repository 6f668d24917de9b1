"""Datasets and models by name, as the command line names them: two registries.

:data:`DATASETS` has one :class:`DatasetSource` per reader and
:data:`MODEL_SOURCES` one :class:`ModelSource` per way of getting a model. The
CLI's choices, the attribute runner and the evaluation read them; a new reader
is one entry here plus its module in :mod:`captum_iba.cxr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from torch import Tensor, nn
from torch.utils.data import Dataset

from .._validate import find_layer
from ..cxr import BrixIA, NIHChestXray8, PhantomCXR, load_embedded_model
from ..cxr.models.adapters import finding_name
from ..cxr.models.checkpoints import TASKS, load_model
from ..cxr.models.external import ExternalModel, external_model
from ..cxr.schema import DETECTORS, FINDINGS
from ..cxr.models.layers import bottleneck_candidates, default_bottleneck
from ..cxr.phantom.dataset import DEFAULT_SIZE

__all__ = ["DatasetSource", "DATASETS", "ModelSource", "MODEL_SOURCES", "EMBEDDED_FOR_TASK",
           "TASKS", "TASK_LABELS", "register_dataset", "open_dataset", "open_model", "ModelOutputs", "task_outputs",
           "explained_model", "image_size", "Layers", "choose_layers"]

#: Seed of the phantom images the embedded models were trained on (and the statistics are estimated on).
TRAINING_PHANTOM_SEED = 0
#: Seed of held-out phantom images: apart from the embedded models' training (0) and test (1) seeds.
HELD_OUT_PHANTOM_SEED = 1000


@dataclass(frozen=True)
class DatasetSource:
    """A dataset the commands can read.

    Attributes
    ----------
    label : str
        Its name in messages and reports.
    task : str or None
        What its items carry: ``"nih"`` (8 findings with masks) or ``"brixia"``
        (zones, severity, detectors); None for a source that makes either
        (the phantom, by ``--task``).
    generated : bool
        True when nothing is read from disk (no ``root``, no official split).
    open : callable
        ``open(root=..., task=..., size=..., n=..., seed=..., split=...) -> Dataset``.
    """

    label: str
    task: Optional[str]
    generated: bool
    open: Callable[..., Dataset]


DATASETS: Dict[str, DatasetSource] = {}


def register_dataset(name: str, source: DatasetSource) -> DatasetSource:
    """Add a dataset reader under ``name`` (a new name)."""
    if name in DATASETS:
        raise ValueError(f"a dataset named {name!r} is registered already")
    DATASETS[name] = source
    return source


register_dataset("phantom", DatasetSource(
    "the embedded phantom", None, True,
    lambda root=None, task="nih", size=None, n=64, seed=0, split=None:
        PhantomCXR(n, size=size or DEFAULT_SIZE, seed=seed, task=task)))
register_dataset("nih", DatasetSource(
    "NIH ChestX-ray8", "nih", False,
    lambda root, split=None, size=None, boxed=False, **_: NIHChestXray8(root, split=split, size=size or 224,
                                                                      bbox_only=boxed)))
register_dataset("brixia", DatasetSource(
    "BrixIA", "brixia", False,
    lambda root, split=None, size=None, **_: BrixIA(root, split=split, size=size or 224)))


def open_dataset(name: str, root=None, *, task: str = "nih", size: Optional[int] = None, n: int = 64,
                 seed: int = 0, split: Optional[str] = None, boxed: bool = False) -> Dataset:
    """A chest X-ray dataset by name.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"phantom"``, ``"nih"``, ``"brixia"``).
    root : path, optional
        The dataset folder (required for the sources that read one).
    task : {"nih", "brixia"}
        Which phantom (generated sources only).
    size : int, optional
        Image side; defaults: the phantom's default size, 224 for real data.
    n, seed : int
        Number of phantom images and their seed (generated sources only).
    split : {None, "train", "test"}
        Official split of real data.
    boxed : bool
        Only the items with localisation ground truth (NIH: the images with boxes).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    source = DATASETS[name]
    if source.generated:
        return source.open(task=task, size=size, n=n, seed=seed)
    if root is None:
        raise ValueError(f"dataset {name!r} is read from a folder: pass its root (--root PATH)")
    return source.open(root, split=split, size=size, boxed=boxed)


#: The embedded model that stands in for each task when no model is given.
EMBEDDED_FOR_TASK = {
    "nih": "nih_bce",
    "brixia_regression": "brixia_regression",
    "brixia_detectors": "brixia_detectors",
}


@dataclass(frozen=True)
class ModelSource:
    """A way to get the model to explain: ``open(task, spec, **options) -> nn.Module``."""

    label: str
    open: Callable[..., nn.Module]


def _checkpoint(task: str, path, **_) -> nn.Module:
    model = load_model(path)
    if model.task != task:
        raise ValueError(f"checkpoint {path} holds a {model.task!r} model, but a {task!r} model is needed")
    return model


def _external(task: str, spec: str, weights=None, outputs=None, input_format=None, random_weights=False,
              **_) -> nn.Module:
    if task != "nih":
        raise ValueError(f"--model {spec}: a model of your own explains the 8 NIH findings; the {task!r} task "
                         "needs a model from `captum-iba train` (--checkpoint)")
    try:
        return external_model(spec, weights=weights, outputs=outputs, input_format=input_format,
                              pretrained=not random_weights)
    except TypeError as error:  # e.g. a factory that returns no nn.Module: the user's input, one line
        raise ValueError(str(error)) from error


def image_size(model: nn.Module, size: Optional[int] = None) -> int:
    """The side to read images at: ``size``, else the model's ``input_size``, else 224 (the paper's)."""
    return size or getattr(model, "input_size", None) or 224


MODEL_SOURCES: Dict[str, ModelSource] = {
    "embedded": ModelSource("the embedded phantom model (trained on first use, then cached)",
                            lambda task, spec=None, **overrides: load_embedded_model(EMBEDDED_FOR_TASK[task],
                                                                                     **overrides)),
    "checkpoint": ModelSource("a file written by `captum-iba train`", _checkpoint),
    "factory": ModelSource("a function of yours, package.module:function, returning an nn.Module", _external),
    "xrv": ModelSource("a torchxrayvision model, xrv:NAME, weights from its local cache", _external),
    "timm": ModelSource("a timm model, timm:NAME[,key=value,...], built with pretrained=False, "
                        "weights from --weights", _external),
    "hf": ModelSource("a HuggingFace image classifier saved in a folder, hf:DIR (nothing downloaded)", _external),
}


def open_model(task: str, checkpoint=None, *, model: Optional[str] = None, **options) -> nn.Module:
    """The model for ``task``: from ``checkpoint``, a ``model`` spec, else the embedded phantom model.

    Parameters
    ----------
    task : {"nih", "brixia_regression", "brixia_detectors"}
    checkpoint : path, optional
        A file written by ``captum-iba train``; its task must be ``task``.
    model : str, optional
        ``"package.module:function"``, ``"xrv:NAME"``, ``"timm:NAME"`` or ``"hf:DIR"`` (see
        :func:`captum_iba.cxr.models.external.external_model`); ``task`` must be ``"nih"``.
    **options
        For ``model``: ``weights``, ``outputs``, ``input_format``,
        ``random_weights``; for the embedded model: recipe overrides (see
        ``load_embedded_model``).

    Returns
    -------
    nn.Module
        In eval mode; its ``input_size``, where it has one, is the side it
        was trained at (see :func:`image_size`).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
    if checkpoint is not None and model is not None:
        raise ValueError("--checkpoint and --model name two models: pass one")
    if model is not None:
        prefix = model.partition(":")[0]
        source = prefix if prefix in ("xrv", "timm", "hf") else "factory"
        return MODEL_SOURCES[source].open(task, model, **options)
    if checkpoint is None:
        return MODEL_SOURCES["embedded"].open(task, **options)
    return MODEL_SOURCES["checkpoint"].open(task, checkpoint)


#: The labels of each task, in the order of the items' label columns (the regressor has one unnamed output).
TASK_LABELS = {"nih": FINDINGS, "brixia_detectors": DETECTORS, "brixia_regression": ()}


def _key(name: str) -> str:
    """A name as names are compared: a finding's own spelling, any case, ``_`` for a space."""
    return (finding_name(name) or str(name)).strip().replace("_", " ").lower()


@dataclass(frozen=True)
class ModelOutputs:
    """The outputs of the model a run explains, and which of them holds each label of the task.

    Attributes
    ----------
    count : int
        The model's number of outputs: an output index is 0 to ``count - 1``.
    names : tuple of str
        The model's own output names, empty when it has none.
    labels : tuple of str
        The task's labels (:data:`TASK_LABELS`), in the order of the items' label columns.
    label_outputs : tuple of (int or None)
        Per label column, the output that holds it (None: the model has no output for it).
    """

    count: int
    names: Tuple[str, ...]
    labels: Tuple[str, ...]
    label_outputs: Tuple[Optional[int], ...]

    def named_outputs(self) -> Dict[str, int]:
        """Name to output index: the labels the model has an output for, then the model's own names of
        outputs that are no label (or finding) of the task."""
        named = {label: output for label, output in zip(self.labels, self.label_outputs) if output is not None}
        taken = {_key(name) for name in (*self.labels, *FINDINGS)}
        named.update({name: index for index, name in enumerate(self.names) if _key(name) not in taken})
        return named

    def output_of(self, name: str) -> Optional[int]:
        """The output that ``name`` (see :meth:`named_outputs`; findings under any alias) names, or None."""
        return next((index for known, index in self.named_outputs().items() if _key(known) == _key(name)), None)

    def positives(self, labels: Tensor) -> List[int]:
        """The outputs that hold the positive labels of one item's label row (labels without an output left out)."""
        return [self.label_outputs[c] for c in torch.nonzero(labels).flatten().tolist()
                if self.label_outputs[c] is not None]

    def held_columns(self) -> List[int]:
        """The label columns the model has an output for."""
        return [column for column, output in enumerate(self.label_outputs) if output is not None]

    def top(self, scores: Tensor) -> List[int]:
        """Per row of ``scores`` (N, count), the output of its highest-scoring label (of all outputs
        when the model holds no label)."""
        held = [self.label_outputs[c] for c in self.held_columns()] or list(range(self.count))
        return [held[i] for i in scores[:, held].argmax(1).tolist()]

    def output_labels(self, labels: Tensor) -> Tensor:
        """Label rows (N, labels) as rows over the outputs (N, count): each label in its output's column."""
        rows = torch.zeros(labels.shape[0], self.count, dtype=labels.dtype, device=labels.device)
        columns = self.held_columns()
        rows[:, [self.label_outputs[c] for c in columns]] = labels[:, columns]
        return rows

    def record(self) -> dict:
        """As a store's configuration records it: ``count``, ``names`` and the output of each ``label``."""
        return {"count": self.count, "names": list(self.names),
                "labels": {label: output for label, output in zip(self.labels, self.label_outputs)}}


def task_outputs(task: str) -> ModelOutputs:
    """The outputs of a model of ``task`` made by the library (embedded, ``captum-iba train``): its labels."""
    labels = TASK_LABELS[task]
    return ModelOutputs(TASKS[task][1], labels, labels, tuple(range(len(labels))))


def explained_model(model: nn.Module, task: str) -> Tuple[nn.Module, ModelOutputs]:
    """The model whose outputs a run explains, and what its outputs are.

    A user's model (:class:`~captum_iba.cxr.models.external.ExternalModel`)
    is explained on its own outputs, findings or not
    (:meth:`~captum_iba.cxr.models.external.ExternalModel.own_outputs`); the
    library's models output the task's labels and are explained as they are.
    """
    if isinstance(model, ExternalModel):
        return model.own_outputs(), ModelOutputs(model.num_outputs, model.output_names, FINDINGS,
                                                 tuple(model.output_index.get(f) for f in FINDINGS))
    return model, task_outputs(task)


@dataclass(frozen=True)
class Layers:
    """Where each method of the suite looks in a model.

    Attributes
    ----------
    bottleneck : str
        The IBA family's layer.
    multilayer : tuple of str
        Multi-layer IBA's layers, finest first, ending at ``bottleneck``.
    cam : str
        Grad-CAM's layer (the last feature map).
    grid : (int, int)
        Cells of the bottleneck's map at the input size.
    """

    bottleneck: str
    multilayer: Tuple[str, ...]
    cam: str
    grid: Tuple[int, int]

    def suite_options(self) -> dict:
        """The :class:`~captum_iba.app.methods.MethodSuite` arguments for these layers."""
        return {"layer": self.bottleneck, "multilayer_layers": self.multilayer, "cam_layer": self.cam}


def choose_layers(model: nn.Module, input_size: int, layer: Optional[str] = None,
                  multilayer: Optional[Sequence[str]] = None) -> Layers:
    """The layers of :class:`Layers` for ``model`` at ``input_size`` px.

    The bottleneck is ``layer``, else the DenseNet dense block or ResNet stage
    whose map grid is closest to the paper's 14 cells per side
    (:func:`captum_iba.cxr.models.layers.default_bottleneck`: dense block 3 at 224 px,
    dense block 2 at 96 px). Multi-layer IBA takes ``multilayer``, else the
    stages from the finest up to the bottleneck. Grad-CAM takes
    ``features.norm5`` where the model has it (DenseNets), else the last stage.

    Raises
    ------
    ValueError
        Naming ``--layer`` / ``--multilayer-layers`` and the close layer names
        when the model lacks a layer.
    """
    for option, names in (("--layer", [layer] if layer else []), ("--multilayer-layers", multilayer or [])):
        for name in names:
            find_layer(model, name, option)
    try:
        stages = dict(bottleneck_candidates(model, input_size))
    except ValueError:
        if layer is None:  # no DenseNet/ResNet stage to choose from
            raise
        stages = {}
    names = list(stages)
    bottleneck = layer or default_bottleneck(model, input_size)
    if multilayer:
        chain = tuple(multilayer)
    elif bottleneck in stages:
        chain = tuple(names[: names.index(bottleneck) + 1])
    else:  # a layer outside the stages: Multi-layer IBA gets it alone unless told otherwise
        chain = (bottleneck,)
    cam = "features.norm5" if "features.norm5" in dict(model.named_modules()) else (names or [bottleneck])[-1]
    grid = stages[bottleneck][1:] if bottleneck in stages else _grid(model, bottleneck, input_size)
    return Layers(bottleneck, chain, cam, tuple(grid))


def _grid(model: nn.Module, name: str, input_size: int) -> Tuple[int, int]:
    """The (h, w) of layer ``name``'s output for one ``input_size`` image."""
    shape = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda module, args, output: shape.extend(output.shape[-2:]))
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(training)
        handle.remove()
    return tuple(shape[:2])
