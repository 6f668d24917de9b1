"""Bring your own model: a Python factory or a torchxrayvision model, wrapped for the 8 findings.

The library's images are 3 x H x W grey radiographs normalised with ImageNet's
mean and std (:func:`~captum_iba.cxr.schema.to_model_input`; the phantom and
the readers give them), and its classifiers output one logit per finding of
:data:`~captum_iba.cxr.schema.FINDINGS`. :class:`ExternalModel` puts any model
in that shape: it converts the images to the model's input format (grey or
three channels, value range, size), runs the model, and picks the model's
outputs of the 8 findings, in the paper's order.

The wrapper is *transparent*: the user's model's own layer names resolve on it
(``features.denseblock3`` of a DenseNet, ``layer3`` of a ResNet), because it
shares the model's children, parameters and buffers under their own names
(see :class:`ExternalModel`); the model itself is ``wrapper.wrapped``.

Nothing is downloaded: factories are the user's code, weights the user's
files, and torchxrayvision weights are read from its local cache only.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._view import ModelView
from .adapters import InputFormat, outputs_by_name, parse_input_format, parse_outputs
from ..schema import FINDINGS
from .timm_and_hf import HF, TIMM, hf_model, native_input_size, timm_model
from .xrv import xrv_model

__all__ = [
    "ExternalModel",
    "OwnOutputs",
    "model_from_factory",
    "load_weights",
    "wrap_model",
    "external_model",
    # re-exported: the pieces external_model puts together
    "InputFormat",
    "parse_input_format",
    "parse_outputs",
    "outputs_by_name",
    "xrv_model",
]

_XRV = "xrv:"
#: Input format and input size of each kind of model when the caller names none.
_DEFAULT_FORMAT = {"xrv": "xrv", "factory": "imagenet", "timm": "imagenet", "hf": "imagenet"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# --- the user's model -------------------------------------------------------------------------


def load_weights(model: nn.Module, weights: Union[str, os.PathLike]) -> nn.Module:
    """Load a state-dict file into ``model`` (``torch.load(..., weights_only=True)``).

    The file may hold the state dict itself or wrap it under ``"state_dict"``
    or ``"model_state_dict"``; a ``module.`` prefix (DataParallel) is dropped.
    Keys and shapes are checked before anything is loaded, so a file that does
    not fit leaves ``model`` unchanged.

    Returns
    -------
    nn.Module
        ``model``, with the weights.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file: absent, unreadable as a state dict, or not fitting.
    """
    path = os.fspath(weights)
    state = read_state_dict(weights)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshapen:
        raise ValueError(
            f"weights {path!r} do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(misshapen)} misshapen tensors (e.g. {'; '.join((misshapen + missing + unexpected)[:3])})"
        )
    model.load_state_dict(state)
    return model


def read_state_dict(weights: Union[str, os.PathLike]) -> Mapping[str, Tensor]:
    """The state dict in the file ``weights`` (unwrapped from ``"state_dict"``, ``module.`` dropped).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file: absent, or unreadable as a state dict.
    """
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no file at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors come in many types
        raise ValueError(
            f"weights {path!r} is not a state dict readable with weights_only=True "
            f"(save model.state_dict(), not the model): {_first_line(error)}"
        ) from None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights {path!r} does not hold a state dict (names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def model_from_factory(spec: str, weights: Optional[Union[str, os.PathLike]] = None) -> nn.Module:
    """Build a model by calling a Python factory named ``"package.module:function"``.

    Parameters
    ----------
    spec : str
        The module to import and the callable in it (``"pkg.mod:Class.build"``
        also works), called without arguments. Modules are found in the
        current folder too, as ``python -m`` finds them.
    weights : path, optional
        A state-dict file to load (see :func:`load_weights`).

    Returns
    -------
    nn.Module
        In eval mode.

    Raises
    ------
    ValueError, TypeError, RuntimeError
        One line naming ``spec``: a malformed spec, a module or name that does
        not import, a factory that fails or does not return an ``nn.Module``.

    Examples
    --------
    >>> model = model_from_factory("torchvision.models:resnet18")  # doctest: +SKIP
    """
    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model: expected 'package.module:function', got {spec!r}")
    # As `python -m` does: the user's package in the current folder imports without PYTHONPATH=.
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        factory = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} (looked in {here} and on sys.path): "
                         f"{_first_line(error)}") from None
    finally:
        if added:
            sys.path.remove(here)
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {spec!r}: {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"model {spec!r}: {attribute!r} is a {type(factory).__name__}, not a callable")
    try:
        model = factory()
    except Exception as error:
        raise RuntimeError(f"model {spec!r}: the factory failed: {_first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


# --- the wrapper ------------------------------------------------------------------------------


class ExternalModel(ModelView):
    """A model seen as the library's chest X-ray classifier: standard images in, 8 logits out.

    Use :func:`wrap_model` or :func:`external_model` to build one.

    Parameters
    ----------
    model : nn.Module
        The user's model, available as ``wrapped``.
    outputs : mapping of str to int
        Finding to the model's output index.
    input_format : InputFormat
    num_outputs : int
        The model's number of outputs.
    input_size : int, optional
        Images are resized (bilinear, anti-aliased) to this side first.
    output_names : sequence of str
        The model's own output names, if it has them.

    Attributes
    ----------
    findings : tuple of str
        The 8 findings, the order of the outputs.
    missing_findings : tuple of str
        Findings the model has no output for. Their output column is 0 (a
        constant): leave them out of evaluations; their attributions are void.
    output_index : dict
        Finding to the model's output index, for the findings it has.
    num_outputs : int
        The model's own number of outputs.
    output_names : tuple of str
        The model's own output names (``pathologies`` or ``targets``, as
        torchxrayvision's), empty when it has none.
    task : str
        ``"nih"``.

    Notes
    -----
    The wrapper is a *view* of the user's model, not a container: it shares
    the model's children, parameters and buffers under the model's own names,
    so the user's layer names resolve on it unchanged
    (``wrapper.get_submodule("features.denseblock3")`` is the model's
    ``features.denseblock3``), its ``state_dict`` has the model's keys, and
    ``.to()``, ``.eval()`` and ``.requires_grad_()`` act on the model. (The
    other choice, holding the model as a child ``model``, would have prefixed
    every layer name with ``model.`` and made tools that walk the children,
    as Captum's LRP does, meet every layer twice.) The model's ``forward`` is
    called directly, so forward hooks on the model's top-level module itself
    (not its layers) do not run.

    ``forward(images)`` takes ``(N, 3, H, W)`` images as
    :func:`~captum_iba.cxr.schema.to_model_input` makes them and returns
    ``(N, 8)`` logits, the order of :data:`FINDINGS`. It has no data-dependent
    control flow, so it traces with ``torch.fx`` when the model does.
    :meth:`own_outputs` is the same view with the model's own outputs.
    """

    _OWN = ("wrapped", "findings", "missing_findings", "task", "input_format", "input_size", "output_index",
            "num_outputs", "output_names")

    def __init__(self, model: nn.Module, outputs: Mapping[str, int], input_format: InputFormat, *,
                 num_outputs: int, input_size: Optional[int] = None, output_names: Sequence[str] = ()) -> None:
        names = [*model._modules, *model._parameters, *model._buffers]
        clashes = [name for name in names if name in self._OWN or hasattr(type(self), name)]
        if clashes:
            raise ValueError(f"model: its top-level layer name(s) {clashes} clash with the wrapper's attributes")
        super().__init__(model)
        self.output_index = {finding: outputs[finding] for finding in FINDINGS if finding in outputs}
        self.findings = FINDINGS
        self.missing_findings = tuple(finding for finding in FINDINGS if finding not in outputs)
        self.input_format = input_format
        self.input_size = input_size
        self.num_outputs = num_outputs
        self.output_names = tuple(output_names)
        self.task = "nih"
        self.train(model.training)

    def own_scores(self, images: Tensor) -> Tensor:
        """The model's own ``(N, num_outputs)`` scores of the library's images."""
        if self.input_size is not None:
            images = F.interpolate(images, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        # .forward, not __call__: torch.fx then traces into it, finding its layers under our names.
        return self._wrapped.forward(self.input_format(images))

    def own_outputs(self) -> "OwnOutputs":
        """This view of the model with its own outputs (see :class:`OwnOutputs`), in this one's mode."""
        return OwnOutputs(self._wrapped, self.output_index, self.input_format, num_outputs=self.num_outputs,
                          input_size=self.input_size, output_names=self.output_names).train(self.training)

    def forward(self, images: Tensor) -> Tensor:
        scores = self.own_scores(images)
        if not self.missing_findings:
            return scores[:, [self.output_index[finding] for finding in FINDINGS]]
        columns = [scores[:, self.output_index[f]] if f in self.output_index else torch.zeros_like(scores[:, 0])
                   for f in FINDINGS]
        return torch.stack(columns, dim=1)


class OwnOutputs(ExternalModel):
    """An :class:`ExternalModel` whose ``forward`` returns the model's own ``(N, num_outputs)`` scores.

    The images go in as the library makes them and are converted as the
    wrapper converts them; every output of the model comes out, in its own
    order, findings or not. ``output_index`` says which output holds which
    finding. Build it with :meth:`ExternalModel.own_outputs`.
    """

    def forward(self, images: Tensor) -> Tensor:
        return self.own_scores(images)


def _count_outputs(model: nn.Module, input_format: InputFormat, input_size: Optional[int], label: str) -> int:
    """The model's number of outputs, from one forward pass of a blank image in its format."""
    side = input_size or 64
    probe = input_format(torch.zeros(1, 3, side, side))
    training = model.training
    try:
        with torch.no_grad():
            scores = model.eval()(probe)
    except Exception as error:
        raise ValueError(
            f"model {label}: fails on a {tuple(probe.shape)} input "
            f"(input_format {input_format.name}): {_first_line(error)}"
        ) from None
    finally:
        model.train(training)
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"model {label}: returns {shape}; expected one (N, outputs) tensor of scores")
    return scores.shape[1]


def wrap_model(
    model: nn.Module,
    *,
    outputs: Optional[Union[str, Mapping[str, int]]] = None,
    input_format: Union[str, InputFormat] = "imagenet",
    input_size: Optional[int] = None,
    name: str = "",
) -> ExternalModel:
    """Wrap ``model`` as the library's classifier of the 8 findings.

    Parameters
    ----------
    model : nn.Module
    outputs : str or mapping, optional
        Which output is which finding (see :func:`parse_outputs`). By default
        the model's own output names (``model.pathologies`` or
        ``model.targets``, as torchxrayvision's), else outputs 0-7 in the
        order of :data:`FINDINGS` for a model with exactly 8 outputs.
    input_format : str or InputFormat
        What the model takes (see :func:`parse_input_format`).
    input_size : int, optional
        Resize images to this side before the model (None: as they come).
    name : str
        The model's name in error messages.

    Returns
    -------
    ExternalModel
        In eval mode; ``missing_findings`` lists the findings without an output.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=14)
    >>> wrapped = wrap_model(net, outputs="Atelectasis=0,Cardiomegaly=1,Effusion=2")
    >>> wrapped(torch.zeros(2, 3, 64, 64)).shape, wrapped.missing_findings[0]
    (torch.Size([2, 8]), 'Infiltration')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    fmt = parse_input_format(input_format)
    if input_size is not None and (not isinstance(input_size, int) or input_size < 8):
        raise ValueError(f"input_size: expected None or an integer >= 8, got {input_size!r}")
    label = repr(name) if name else type(model).__name__
    count = _count_outputs(model, fmt, input_size, label)
    names = getattr(model, "pathologies", None) or getattr(model, "targets", None)
    named = isinstance(names, (list, tuple)) and len(names) == count and all(isinstance(n, str) for n in names)
    if outputs is not None:
        mapping = parse_outputs(outputs, count)
    elif named:
        mapping = outputs_by_name(names)
    elif count == len(FINDINGS):
        mapping = dict(zip(FINDINGS, range(count)))
    else:
        raise ValueError(
            f"outputs: the model {label} has {count} outputs and no names for them; say which is which, "
            f"e.g. outputs 'Atelectasis=0,Cardiomegaly=1,...'"
        )
    return ExternalModel(model, mapping, fmt, num_outputs=count, input_size=input_size,
                         output_names=names if named else ()).eval()


def external_model(
    spec: str,
    *,
    weights: Optional[Union[str, os.PathLike]] = None,
    outputs: Optional[Union[str, Mapping[str, int]]] = None,
    input_format: Optional[Union[str, InputFormat]] = None,
    input_size: Union[int, None, str] = "auto",
    pretrained: bool = True,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> ExternalModel:
    """The user's model by name, wrapped as the library's classifier of the 8 findings.

    Parameters
    ----------
    spec : str
        ``"package.module:function"`` (a factory, see :func:`model_from_factory`),
        ``"xrv:NAME"`` (a torchxrayvision model, see :func:`~captum_iba.cxr.models.xrv.xrv_model`,
        e.g. ``"xrv:densenet121-res224-all"``), ``"timm:NAME[,key=value,...]"``
        (built with ``pretrained=False``, see
        :func:`~captum_iba.cxr.models.timm_and_hf.timm_model`) or ``"hf:DIR"``
        (a HuggingFace image classifier saved in ``DIR``, see
        :func:`~captum_iba.cxr.models.timm_and_hf.hf_model`).
    weights : path, optional
        A state-dict file for a factory's or a timm model; without one they
        keep the weights they were built with (a warning says so: random,
        unless the factory loads its own). torchxrayvision and HuggingFace
        models read their own weights (its cache, the folder).
    outputs : str or mapping, optional
        Which output is which finding (see :func:`wrap_model` for the default).
    input_format : str or InputFormat, optional
        Default ``"imagenet"`` for a factory, ``"xrv"`` for torchxrayvision.
    input_size : int, None or "auto"
        Resize images to this side before the model; ``"auto"``: the
        resolution a torchxrayvision model was trained at (224 or 512), the
        image size a timm or HuggingFace model is built for (its position
        embeddings fix it), no resizing for a factory's model.
    pretrained, cache_dir
        torchxrayvision only: load the cached weights (False: random weights,
        for tests) and the cache folder.

    Returns
    -------
    ExternalModel
        In eval mode.

    Examples
    --------
    >>> model = external_model("xrv:densenet121-res224-all")  # doctest: +SKIP
    >>> model.missing_findings  # doctest: +SKIP
    ()
    """
    spec = str(spec)
    if spec.startswith(_XRV):
        if weights is not None:
            raise ValueError(
                f"weights: {spec!r} reads its weights from the torchxrayvision cache; pass no weights file"
            )
        model = xrv_model(spec[len(_XRV):], pretrained=pretrained, cache_dir=cache_dir)
        kind, native = "xrv", model.input_size
    elif spec.startswith(HF):
        model = hf_model(spec, weights)
        kind, native = "hf", native_input_size(model)
    elif spec.startswith(TIMM):
        model = timm_model(spec, weights, num_classes=len(FINDINGS))
        kind, native = "timm", native_input_size(model)
    else:
        model, kind, native = model_from_factory(spec, weights), "factory", None
    if weights is None and kind in ("factory", "timm"):
        warnings.warn(f"model {spec!r}: no weights file given (--weights): it runs with the weights it was "
                      "built with (random, unless the factory loads its own)", stacklevel=2)
    size = native if input_size == "auto" else input_size
    fmt = _DEFAULT_FORMAT[kind] if input_format is None else input_format
    return wrap_model(model, outputs=outputs, input_format=fmt, input_size=size, name=spec)
