"""Information Bottleneck Attribution (Schulz et al., ICLR 2020), and the call that every variant shares."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._engine import Engine, Speed, find_layout, frozen_model, make_split, owning_module
from .._engine.split import cut_per_sample, required_arguments, verified_split
from .._validate import (check_choice, check_inputs_for_model, check_layer_in_model, check_output, check_positive_int, check_seed,
                         check_stats, flat_targets, format_additional_args, format_inputs, format_target,
                         model_runs_on, select_targets)
from ..bottleneck import Bottleneck
from ..objectives import CLASSIFICATION_LOSSES, Objective, get_objective
from ..stats import FeatureStats, estimate_stats
from ._loop import optimise
from .options import IBAOptions, option_names

_OPTIONS = option_names(IBAOptions)


class IBA(LayerAttribution):
    r"""Information Bottleneck Attribution: the regions *sufficient* for a prediction.

    A bottleneck at ``layer`` replaces its features ``F`` by
    ``Z = lambda * F + (1 - lambda) * eps`` with ``eps ~ N(mu, sigma^2)``
    (the layer's estimated per-neuron statistics), and ``lambda`` is
    optimised per input to minimise

    .. math:: L = L_{model}(\phi(Z), t) + \beta \, L_I,

    where ``L_I`` is the mean KL capacity of ``Z`` over active neurons: as
    much noise as possible while the prediction for ``target`` survives. The
    attribution is that capacity in bits per location of the layer's grid.

    Examples::

        >>> from captum_iba import IBA
        >>> iba = IBA(model, model.features.denseblock3, loss="bce")   # multilabel CXR model
        >>> iba.estimate(loader, n_samples=500)
        >>> bits = iba.attribute(images, target=2, seed=0)             # (N, 1, h, w), bits
        >>> heatmap = IBA.interpolate(bits, images.shape[-2:])          # Captum's resize
        >>> vit_bits = IBA(vit, vit.blocks[6], loss="ce").attribute(...)  # timm ViT: (N, 1, 14, 14)
    """

    #: Options this method sets when the caller does not (InverseIBA: ``beta`` 30).
    _defaults: dict = {}
    _losses: dict = CLASSIFICATION_LOSSES
    #: The sign of ``L_model`` in the objective (Inverse IBA maximises it: -1).
    _sign: float = 1.0
    #: Inverse IBA's ``Z = lambda * eps + (1 - lambda) * F``.
    _inverse: bool = False

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        *,
        loss: Union[str, Callable, None] = None,
        beta: Optional[float] = None,
        steps: int = IBAOptions.steps,
        lr: float = IBAOptions.lr,
        noise_draws: int = IBAOptions.noise_draws,
        sigma: Optional[float] = IBAOptions.sigma,
        min_std: float = IBAOptions.min_std,
        init_alpha: float = IBAOptions.init_alpha,
        active_neurons_threshold: float = IBAOptions.active_neurons_threshold,
        relu: bool = IBAOptions.relu,
        speed: Union[str, Speed] = IBAOptions.speed,
        stats: Optional[FeatureStats] = None,
    ) -> None:
        r"""
        Args:
            forward_func (nn.Module or callable): the model, or a function of
                it such as ``lambda x: model(x)["logits"]`` (the Captum idiom
                for dict outputs: it is traced with the model it calls). It
                must return one tensor. The parts before ``layer`` run once
                per call, only the rest during the optimisation (models that
                do not trace with ``torch.fx`` run whole, with hooks).
            layer (nn.Module): the bottleneck layer. Its output is a map
                ``(N, C, h, w)``, a channels-last map ``(N, h, w, C)`` (timm
                Swin stages), a token sequence ``(N, L, D)`` (ViT blocks), or
                a tuple whose first element is one of these (HuggingFace blocks).
            reshape_transform (callable, optional): the layer's output to
                ``(N, C, h, w)``, pytorch-grad-cam's meaning, e.g.
                ``captum_iba.token_transform(1, (14, 14))``. Found from the model
                for timm and HuggingFace ViT, DeiT, Swin and ConvNeXt layers;
                where it cannot be, the error says so. Leading tokens (class,
                distillation, registers) are restricted like every other
                feature -- a class token left untouched would carry the
                prediction around the bottleneck -- but are not on the map.
            loss (str or callable): the model loss, required: ``"bce"`` for a
                multilabel model (one sigmoid per output: chest X-ray
                findings), ``"ce"`` for a softmax classifier, or
                ``(outputs, target) -> per-row loss``.
            beta (float): weight of the information loss (default 10; Inverse IBA 30).
            steps (int): Adam steps (default 10).
            lr (float): Adam's learning rate (default 1).
            noise_draws (int): noise draws of each input per step (default 10).
            sigma (float or None): std of the Gaussian smoothing of ``lambda``
                in grid cells (default 1; None or 0 disables it).
            min_std (float): lower clamp of the estimated std (default 0.01).
            init_alpha (float): initial ``alpha``, ``lambda = sigmoid(alpha)`` (default 5).
            active_neurons_threshold (float): a neuron is active if non-zero
                in more than this fraction of the estimation samples (default 0.01).
            relu (bool): clamp ``Z`` at 0 (default False).
            speed (str or Speed): ``"default"`` or ``"fast"`` (compile, bf16,
                channels-last: maps within 5e-2 of the default's), or a
                :class:`~captum_iba.Speed`; see its tolerances.
            stats (FeatureStats, optional): the layer's statistics; otherwise
                call :meth:`estimate`.
        """
        if not callable(forward_func):
            raise TypeError(f"forward_func: expected the model or a function of it, got {type(forward_func).__name__}")
        check_layer_in_model(forward_func, layer)
        super().__init__(forward_func, layer)
        given = dict(loss=loss, beta=beta, steps=steps, lr=lr, noise_draws=noise_draws, sigma=sigma,
                     min_std=min_std, init_alpha=init_alpha, active_neurons_threshold=active_neurons_threshold,
                     relu=relu, speed=speed)
        chosen = {**self._defaults, **{k: v for k, v in given.items() if v is not None or k == "sigma"}}
        if chosen.get("loss") is None:
            raise TypeError(f"loss: expected a loss, got none: {type(self).__name__}(..., loss='bce') for a "
                            "multilabel model (one sigmoid per output), loss='ce' for a softmax classifier")
        self.options = IBAOptions(**chosen)
        get_objective(self.options.loss, self._losses)
        self.reshape_transform = reshape_transform
        self.stats = check_stats(stats)
        self._splits: dict = {}

    def split(self, mode: Optional[str] = None, arity: Optional[int] = None):
        """The prefix/suffix split of the model at the layer, built once per mode and number of arguments.

        ``.mode`` says which it is: ``"fx"`` (the traced parts) or ``"hooks"``
        (the whole model). ``mode`` defaults to ``speed.split``, ``arity`` to
        the model's required positional arguments.
        """
        mode = self.options.speed.split if mode is None else mode
        arity = required_arguments(self.forward_func) if arity is None else arity
        if (mode, arity) not in self._splits:
            with frozen_model(self.forward_func):
                self._splits[mode, arity] = make_split(self.forward_func, self.layer, mode, arity)
        return self._splits[mode, arity]

    def estimate(self, data, n_samples: int = 1000, progress: bool = True, *,
                 additional_forward_args: Any = None, batch_inputs: Optional[Callable] = None) -> FeatureStats:
        """Estimate the layer's per-neuron statistics from data and keep them.

        The model runs in eval mode, without gradients, up to the layer only,
        and is restored exactly.

        Args:
            data: one batch as :meth:`attribute` takes ``inputs`` (a tensor
                ``(n, ...)`` or a tuple of tensors), or an iterable of batches
                (a DataLoader, a list, a map-style Dataset): tensors,
                ``(input, label, ...)`` tuples (the first element is the
                input), or dicts with an ``"image"`` entry. Finite values.
            n_samples (int): stop after this many samples (>= 2).
            progress (bool): show progress (a bar on a terminal, lines otherwise).
            additional_forward_args (Any, optional): extra model arguments
                after the inputs, passed with every batch; tensors with one row
                per sample of a batch are cut with it.
            batch_inputs (callable, optional): ``batch -> inputs`` for batches
                of another form, e.g. ``lambda b: (b["image"], b["age"])``.

        Returns:
            FeatureStats: the statistics (per element of one sample's layer
            output), also stored as ``self.stats``.

        Examples::

            >>> iba.estimate(loader, n_samples=500)           # (image, label) batches
        """
        (stats,) = estimate_stats(self.forward_func, [self.layer], data, n_samples, progress,
                                  additional_forward_args=additional_forward_args, batch_inputs=batch_inputs)
        # A layer whose output has no grid is refused now, not at the first attribute().
        find_layout(owning_module(self.forward_func), stats.mean[None], self.reshape_transform)
        self.stats = stats
        return stats

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        internal_batch_size: Optional[int] = None,
        reduce: str = "sum",
        return_lambda: bool = False,
        seed: Optional[int] = None,
        progress: bool = False,
        **options: Any,
    ) -> Union[Tensor, tuple]:
        r"""Bits per location of the layer's grid that the prediction needs.

        All N inputs are optimised in one batched loop (or in batches of
        ``internal_batch_size``); each map equals the map the input would get
        alone with the same ``seed``. The model is run in eval mode without
        parameter gradients and left exactly as found, also on errors.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs, batch first,
                ``(N, ...)``, finite, of the model's dtype and device.
            target (int, tuple, Tensor, list of int or list of tuple,
                optional): the output to explain, exactly as in Captum: an
                int (or one-element tensor) for every sample; a tuple, one
                index into a multi-dimensional output for every sample; a 1-D
                tensor or list of ints, one per sample; a list of tuples, one
                per sample. Negative indices count from the end. Required
                unless the model has a single output.
            additional_forward_args (Any, optional): extra arguments after the
                inputs; tensors with N rows are treated as per-sample.
            internal_batch_size (int, optional): optimise at most this many
                inputs at once (memory grows with it: about 0.9 / 1.2 / 1.6
                GiB at 1 / 4 / 8 images on DenseNet-121 at 224 px); the maps
                equal those of one batch. Default: all N at once.
            reduce (str): ``"sum"`` over channels (default) or ``"none"``.
            return_lambda (bool): also return the optimised ``lambda``.
            seed (int, optional): seed of the noise, in [0, 2**63 - 1]; the
                same seed gives the same map. None draws one from torch's
                global generator.
            progress (bool): show progress over the steps.
            **options: any constructor option (``beta``, ``steps``, ``lr``,
                ``noise_draws``, ``sigma``, ``min_std``, ``init_alpha``,
                ``active_neurons_threshold``, ``loss``, ``relu``, ``speed``,
                ``stats``) for this call only.

        Returns:
            Tensor: capacity in bits, ``(N, 1, h, w)`` with ``reduce="sum"``
            or ``(N, C, h, w)`` with ``reduce="none"`` (channels of the grid),
            on the inputs' device. With ``return_lambda``, the tuple
            ``(bits, lambda)``; ``lambda`` has the shape of the layer's
            output, in [0, 1]. ``IBA.interpolate(bits, size)`` resizes a map
            to the input; multiply by ``h*w/(H*W)`` to keep its total in bits.

        Raises:
            ValueError: no statistics, statistics of another shape, targets
                out of range, NaN/Inf inputs or model outputs, invalid
                options, a layer that runs more than once, a layout that is
                not found (pass ``reshape_transform``), speed options the
                suffix does not allow.
            TypeError: inputs of the wrong type, dtype or device, unknown
                options, a model that returns a tuple or dict (wrap it in a
                function that returns the logits), no ``loss``.

        Examples::

            >>> iba = IBA(model, model.features.denseblock3, loss="bce", stats=FeatureStats.load("db3.pt"))
            >>> bits = iba.attribute(images, target=[0, 3, 3], seed=0)
            >>> bits.shape
            torch.Size([3, 1, 14, 14])
            >>> fast = iba.attribute(images, target=2, speed="fast", internal_batch_size=4)
        """
        return self._explain(inputs, target, additional_forward_args, options, internal_batch_size, reduce,
                             return_lambda, seed, progress)

    def _explain(self, inputs, target, additional_forward_args, overrides: dict, internal_batch_size, reduce: str,
                 return_lambda: bool, seed, progress: bool, target_values=None):
        """One call: arguments checked once, then the optimisation per batch of ``internal_batch_size``."""
        options, stats = self._options_and_stats(dict(overrides))
        objective = get_objective(options.loss, self._losses)
        check_choice(reduce, "reduce", ("sum", "none"))
        inputs = format_inputs(inputs)
        check_inputs_for_model(inputs, owning_module(self.forward_func))
        args = format_additional_args(additional_forward_args)
        n = inputs[0].shape[0]
        size = n if internal_batch_size is None else check_positive_int(internal_batch_size, "internal_batch_size")
        seed = check_seed(seed)
        seed = int(torch.randint(2**62, ())) if seed is None else seed  # one seed for every batch
        target = format_target(target, n)
        values = _target_values(objective, target_values, n)
        results = []
        for start in range(0, n, size):
            rows = slice(start, min(start + size, n))
            cut = lambda value: cut_per_sample(value, n, rows)  # noqa: E731
            results.append(self._optimise_batch(cut(inputs), cut(target), cut(args), cut(values), options, stats,
                                                objective, seed, progress))
        bits, lam = (torch.cat(parts) for parts in zip(*results))
        bits = bits.sum(1, keepdim=True) if reduce == "sum" else bits
        device = inputs[0].device
        return (bits.to(device), lam.to(device)) if return_lambda else bits.to(device)

    def _optimise_batch(self, inputs, target, args, target_values, options: IBAOptions, stats: FeatureStats,
                        objective: Objective, seed: int, progress: bool):
        """``(bits (n, C, h, w), lambda)`` of one batch of inputs."""
        n, draws = inputs[0].shape[0], options.noise_draws
        with frozen_model(self.forward_func):
            with torch.no_grad(), model_runs_on(inputs):
                key = (options.speed.split, len(inputs) + len(args))
                split = self._splits[key] = verified_split(self.split(*key), self.forward_func, inputs, args, key[0])
                features, context = split.features(inputs, args)
                layout = find_layout(owning_module(self.forward_func), features, self.reshape_transform)
                check_stats(stats, features=features)
                # The network may update the layer output in place (``y += skip``): pass a copy.
                clean = check_output(split.outputs(features.clone(), context))
                if clean.is_floating_point() and not torch.isfinite(clean).all():
                    raise ValueError("forward_func: expected finite outputs on the given inputs, got NaN or Inf "
                                     "(check the model's weights and the inputs' range)")
            flat_targets(target, clean.shape[1:])  # targets within the outputs, one per sample
            reference = _reference(objective, clean, target, target_values)
            bottleneck = Bottleneck(features, stats, min_std=options.min_std, sigma=options.sigma, layout=layout,
                                    active_neurons_threshold=options.active_neurons_threshold, inverse=self._inverse)
            engine = Engine(split, options.speed, features, context, draws, bottleneck.active, options.relu,
                            channels_first=layout.index is None)
            target_rows = None if target is None else target.repeat_interleave(draws, 0)
            reference_rows = None if reference is None else reference.repeat_interleave(draws)
            model_loss = lambda outputs: objective(outputs, target_rows, reference_rows).view(n, draws).mean(1)  # noqa: E731
            lam = optimise(bottleneck, engine, model_loss, options, self._sign, seed, progress)
        return bottleneck.bits(lam), lam

    def _options_and_stats(self, overrides: dict):
        stats = check_stats(overrides.pop("stats", self.stats))
        unknown = set(overrides) - _OPTIONS
        if unknown:
            raise TypeError(f"attribute() got unexpected keyword arguments {sorted(unknown)}; options that "
                            f"may be overridden: {sorted(_OPTIONS | {'stats'})}")
        if stats is None:
            raise ValueError("stats: expected feature statistics, got none: call estimate(data) first "
                             "or pass stats= (a FeatureStats)")
        return dataclasses.replace(self.options, **overrides), stats


def _target_values(objective: Objective, target_values, n: int) -> Optional[Tensor]:
    """The scores ``y`` of loss ``"mse"``, (n,) float64, checked; None for the other losses."""
    if objective.reference != "target_values":
        if target_values is not None:
            raise ValueError(f"target_values: expected none with loss {objective.name!r} (only 'mse' uses them)")
        return None
    if target_values is None:
        raise ValueError(f"target_values: expected the score y per sample for loss {objective.name!r}, got none")
    if isinstance(target_values, (str, bytes, bool)):
        raise TypeError(f"target_values: expected numbers (a tensor, a float or a list), got {target_values!r}")
    try:
        values = torch.as_tensor(target_values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"target_values: expected numbers (a tensor, a float or a list), got {target_values!r}") from error
    values = values.expand(n) if values.dim() == 0 else values
    if values.shape != (n,):
        raise ValueError(f"target_values: expected one score per sample, shape ({n},), got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("target_values: expected finite scores, got NaN or Inf")
    return values


def _reference(objective: Objective, clean: Tensor, target: Optional[Tensor], values: Optional[Tensor]):
    """The per-sample score the objective compares against, (n,), or None."""
    if objective.reference == "clean":
        return select_targets(clean, target).detach()
    if objective.reference == "target_values":
        return values.to(dtype=clean.dtype, device=clean.device)
    return None
