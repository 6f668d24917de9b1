"""The shared, batched optimisation loop of the bottleneck attributions.

One loop serves IBA, Inverse IBA and Regression IBA; they differ only in the
fraction of the signal that ``lambda`` keeps (:meth:`_signal_fraction`), the
sign of the model loss (``_loss_sign``), their default ``beta`` and the losses
they accept.

N inputs are optimised together: ``alpha`` has shape ``(N, C, h, w)``, every
step pushes ``N x noise_draws`` noisy feature maps through the network after
the layer, and the objective is the sum over samples of each sample's own
objective. Adam updates every element on its own, so each sample follows the
trajectory it would follow alone; the noise of a step is drawn once (from
``seed``) and shared by all samples, so a sample's map does not depend on
which other samples share its batch.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn
from tqdm.auto import trange

from .._validate import check_number, check_output, check_positive_int, flat_targets, format_target
from ..bottleneck import capacity, lambda_from_alpha, mean_capacity, noisy_features, to_bits
from ..objectives import CLASSIFICATION_LOSSES, Objective, get_objective, select_outputs
from ..split import SPLIT_MODES, check_layer_in_model, frozen_model, make_split
from ..suffix import SuffixRunner, check_channels_last, check_compile, check_precision
from ..stats import FeatureStats, estimate_stats
from ._inputs import check_stats, format_additional_args, format_inputs


@dataclasses.dataclass(frozen=True)
class BottleneckOptions:
    """Hyper-parameters of the bottleneck optimisation, validated on creation.

    Attributes
    ----------
    beta : float
        Weight of the information loss ``L_I`` (>= 0).
    steps : int
        Adam steps (>= 1).
    lr : float
        Adam learning rate (> 0).
    noise_draws : int
        Noise draws of the same input per step (>= 1); formerly ``batch_size``.
    sigma : float or None
        Std of the Gaussian smoothing of ``lambda``, in feature-map cells;
        None or 0 disables it.
    min_std : float
        Lower clamp of the per-neuron std (> 0).
    init_alpha : float
        Initial ``alpha``; ``lambda = sigmoid(alpha)``.
    active_neurons_threshold : float
        A neuron is active if non-zero in more than this fraction of the
        estimation samples, in [0, 1).
    loss : str or callable
        Model loss name or ``(outputs, target) -> per-sample loss``.
    relu : bool
        Clamp ``Z`` at 0 (for layers followed by non-negative activations).
    channels_last : bool or "auto"
        Build ``Z`` channels-last for the network after the layer (default
        False); "auto" does where the traced suffix allows it (see
        :mod:`captum_iba.suffix`).
    precision : str
        "fp32", "bf16" (autocast) or "fp16" (autocast, CUDA only).
    compile : bool or str
        ``torch.compile`` the suffix (True: inductor; or a backend name).
    fuse : bool
        Run the suffix with exact algebraic rewrites (default True; fx split
        only, and not under ``compile``): see :func:`captum_iba.suffix.fuse_suffix`.
    """

    beta: float
    steps: int = 10
    lr: float = 1.0
    noise_draws: int = 10
    sigma: Optional[float] = 1.0
    min_std: float = 0.01
    init_alpha: float = 5.0
    active_neurons_threshold: float = 0.01
    loss: Union[str, Callable] = "ce"
    relu: bool = False
    channels_last: Union[bool, str] = False
    precision: str = "fp32"
    compile: Union[bool, str] = False
    fuse: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.steps, "steps")
        check_positive_int(self.noise_draws, "noise_draws")
        check_number(self.beta, "beta", minimum=0.0)
        check_number(self.lr, "lr", minimum=0.0, strict=True)
        check_number(self.min_std, "min_std", minimum=0.0, strict=True)
        check_number(self.init_alpha, "init_alpha")
        if self.sigma is not None:
            check_number(self.sigma, "sigma", minimum=0.0)
        check_number(self.active_neurons_threshold, "active_neurons_threshold", minimum=0.0, maximum=1.0)
        check_channels_last(self.channels_last)
        check_precision(self.precision)
        check_compile(self.compile)
        if not isinstance(self.fuse, bool):
            raise ValueError(f"fuse must be True or False, got {self.fuse!r}")

    @property
    def batch_size(self) -> int:
        """Deprecated name of :attr:`noise_draws`."""
        return self.noise_draws


_OPTION_NAMES = {field.name for field in dataclasses.fields(BottleneckOptions)}


def rename_deprecated_options(options: dict) -> dict:
    """``options`` with the deprecated ``batch_size`` renamed ``noise_draws`` (and a warning)."""
    if "batch_size" not in options:
        return options
    options = dict(options)
    value = options.pop("batch_size")
    warnings.warn(
        "the IBA option batch_size (noise draws per step) is renamed noise_draws; "
        "batch_size will be removed",
        DeprecationWarning,
        stacklevel=3,
    )
    if "noise_draws" in options and options["noise_draws"] != value:
        raise TypeError("pass noise_draws or its deprecated alias batch_size, not both")
    options["noise_draws"] = value
    return options


class BottleneckAttribution(LayerAttribution):
    """Base of the bottleneck attributions: options, estimation and the loop.

    Subclasses set ``_default_beta``, ``_default_loss``, ``_losses`` (the
    allowed loss names), and, where their formula differs,
    :meth:`_signal_fraction` and ``_loss_sign``.
    """

    _default_beta: float = 10.0
    _default_loss: str = "ce"
    _losses: dict = CLASSIFICATION_LOSSES
    _loss_sign: float = 1.0

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        *,
        beta: Optional[float] = None,
        steps: int = 10,
        lr: float = 1.0,
        noise_draws: int = 10,
        sigma: Optional[float] = 1.0,
        min_std: float = 0.01,
        init_alpha: float = 5.0,
        active_neurons_threshold: float = 0.01,
        loss: Union[str, Callable, None] = None,
        relu: bool = False,
        channels_last: Union[bool, str] = False,
        precision: str = "fp32",
        compile: Union[bool, str] = False,
        fuse: bool = True,
        stats: Optional[FeatureStats] = None,
        split: str = "auto",
        batch_size: Optional[int] = None,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        check_layer_in_model(forward_func, layer)
        if split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
        super().__init__(forward_func, layer)
        options = dict(
            beta=self._default_beta if beta is None else beta,
            steps=steps,
            lr=lr,
            noise_draws=noise_draws,
            sigma=sigma,
            min_std=min_std,
            init_alpha=init_alpha,
            active_neurons_threshold=active_neurons_threshold,
            loss=self._default_loss if loss is None else loss,
            relu=relu,
            channels_last=channels_last,
            precision=precision,
            compile=compile,
            fuse=fuse,
        )
        if batch_size is not None:
            # noise_draws at its default does not conflict with the alias.
            given = {"batch_size": batch_size} if noise_draws == 10 else {"batch_size": batch_size, "noise_draws": noise_draws}
            options.update(rename_deprecated_options(given))
        self.options = BottleneckOptions(**options)
        get_objective(self.options.loss, self._losses)
        self.stats = check_stats(stats)
        self.split_mode = split
        self._split = None

    @staticmethod
    def _signal_fraction(lam: Tensor) -> Tensor:
        """Fraction of the feature map that ``Z`` keeps: ``lambda`` for IBA."""
        return lam

    @property
    def split(self):
        """The prefix/suffix split in use (built on first use; ``.mode`` is "fx" or "hooks")."""
        if self._split is None:
            with frozen_model(self.forward_func):
                self._split = make_split(self.forward_func, self.layer, self.split_mode)
        return self._split

    def estimate(
        self,
        data,
        n_samples: int = 1000,
        progress: bool = True,
        *,
        additional_forward_args: Any = None,
        batch_inputs: Optional[Callable] = None,
    ) -> FeatureStats:
        """Estimate the layer's per-neuron statistics from data and keep them.

        ``data`` takes what :meth:`attribute` takes as ``inputs``, or many
        batches of it. The model runs in eval mode, without gradients, up to
        the layer only, and is restored exactly.

        Args:
            data: one batch (a tensor ``(n, ...)`` or a tuple of tensors for a
                multi-input model), or an iterable of batches (a DataLoader, a
                list, a map-style Dataset): tensors, ``(input, label, ...)``
                tuples (the first element is the input), or dicts with an
                ``"image"`` entry.
            n_samples (int): stop after this many samples (>= 2).
            progress (bool): show a progress bar.
            additional_forward_args (Any, optional): extra model arguments
                after the inputs, as in :meth:`attribute`, passed with every
                batch; tensors with one row per sample of a batch are cut with it.
            batch_inputs (callable, optional): ``batch -> inputs`` (a tensor or
                a tuple of tensors) for batches of another form, e.g.
                ``lambda b: (b["image"], b["age"])``.

        Returns:
            FeatureStats: the statistics, also stored as ``self.stats``.

        Examples::

            >>> iba.estimate(loader, n_samples=500)           # (image, label) batches
            >>> iba.estimate((images, masks), additional_forward_args=(2,))
        """
        (self.stats,) = estimate_stats(
            self.forward_func, [self.layer], data, n_samples, progress,
            additional_forward_args=additional_forward_args, batch_inputs=batch_inputs,
        )
        return self.stats

    def _resolve_options(self, overrides: dict) -> Tuple[BottleneckOptions, FeatureStats]:
        overrides = rename_deprecated_options(overrides)
        stats = check_stats(overrides.pop("stats", self.stats))
        unknown = set(overrides) - _OPTION_NAMES
        if unknown:
            raise TypeError(
                f"attribute() got unexpected keyword arguments {sorted(unknown)}; options that "
                f"may be overridden: {sorted(_OPTION_NAMES | {'stats'})}"
            )
        if stats is None:
            raise ValueError(
                "no feature statistics: call estimate(data) first or pass stats= (a FeatureStats)"
            )
        return dataclasses.replace(self.options, **overrides), stats

    def _attribute(
        self,
        inputs,
        target,
        additional_forward_args,
        overrides: dict,
        reduce: str,
        return_lambda: bool,
        seed: Optional[int],
        progress: bool,
        target_values=None,
        prepared=None,
    ):
        """The loop around one call; ``prepared``: ``(features, context)`` computed by the caller."""
        options, stats = self._resolve_options(dict(overrides))
        objective = get_objective(options.loss, self._losses)
        if reduce not in ("sum", "none"):
            raise ValueError(f"reduce must be 'sum' or 'none', got {reduce!r}")
        inputs = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        n = inputs[0].shape[0]
        if target_values is not None and objective.reference != "target_values":
            raise ValueError(f"target_values is only used by loss 'mse', not {objective.name!r}")
        with frozen_model(self.forward_func):
            split = self.split
            with torch.no_grad():
                features, context = split.features(inputs, args) if prepared is None else prepared
                if stats.shape != tuple(features.shape[1:]):
                    raise ValueError(
                        f"stats were estimated for features of shape {stats.shape}, but the layer "
                        f"outputs {tuple(features.shape[1:])} per sample: estimate them at this "
                        "layer and input size"
                    )
                # The network may update the layer output in place (``y += skip``): pass a copy.
                clean_outputs = check_output(split.outputs(features.clone(), context))
            target = flat_targets(format_target(target, n, clean_outputs.device), clean_outputs.shape[1:])
            reference = _reference(objective, clean_outputs, target, target_values, n)
            feature_stats = _feature_stats(stats, options, features)
            lam = self._optimise(
                split, features, context, target, reference, objective, options, feature_stats,
                seed, progress,
            )
        bits = to_bits(capacity(features, lam, *feature_stats))
        if reduce == "sum":
            bits = bits.sum(1, keepdim=True)
        device = inputs[0].device
        if return_lambda:
            return bits.to(device), lam.to(device)
        return bits.to(device)

    @torch.enable_grad()  # also when the caller runs under torch.no_grad()
    def _optimise(
        self,
        split,
        features: Tensor,
        context,
        target: Optional[Tensor],
        reference: Optional[Tensor],
        objective: Objective,
        options: BottleneckOptions,
        feature_stats: Tuple[Tensor, Tensor, Tensor],
        seed: Optional[int],
        progress: bool,
    ) -> Tensor:
        """Minimise ``sign * L_model + beta * L_I`` over alpha; return the final lambda."""
        n, draws = features.shape[0], options.noise_draws
        mean, std, active = feature_stats
        runner = SuffixRunner(
            split, channels_last=options.channels_last, precision=options.precision,
            compile=options.compile, fuse=options.fuse, relu_z=options.relu, features=features,
        )
        expanded = runner.prepare(split.expand(context, n, draws))
        # The suffix's leading BatchNorm (+ReLU, +pool), when folded, is applied
        # to the per-sample maps: the mixing then writes its output directly.
        leading = runner.leading
        signal = features if leading is None else leading.apply(features, active)
        mix_active, mix_relu, pool = (
            (active, options.relu, 1) if leading is None else (None, leading.relu, leading.pool)
        )
        # One buffer for Z, rewritten every step (the previous step's graph is gone by then).
        buffer = features.new_empty(n * draws * features[0].numel())
        target_rows = None if target is None else target.repeat_interleave(draws)
        reference_rows = None if reference is None else reference.repeat_interleave(draws)
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator(device=features.device).manual_seed(seed)
        alpha = torch.full_like(features, float(options.init_alpha), requires_grad=True)
        optimizer = torch.optim.Adam([alpha], lr=options.lr)
        for _ in trange(options.steps, disable=not progress, desc=type(self).__name__, leave=False):
            lam = lambda_from_alpha(alpha, options.sigma)
            noise = mean + std * torch.randn(
                (draws, *features.shape[1:]),
                generator=generator,
                device=features.device,
                dtype=features.dtype,
            )
            if leading is not None:
                noise = leading.apply(noise, active)
            z = noisy_features(
                signal, self._signal_fraction(lam), noise, mix_active, mix_relu,
                # Channels-last maps differ from today's anyway: take the cheaper form there.
                channels_last=runner.channels_last, out=buffer, exact=not runner.channels_last,
                pool=pool,
            )
            outputs = runner(z, expanded)
            model_loss = objective(outputs, target_rows, reference_rows).view(n, draws).mean(1)
            information_loss = mean_capacity(capacity(features, lam, mean, std, active), active)
            loss = (self._loss_sign * model_loss + options.beta * information_loss).sum()
            optimizer.zero_grad()
            (alpha.grad,) = torch.autograd.grad(loss, [alpha])
            optimizer.step()
        return lambda_from_alpha(alpha.detach(), options.sigma)


def _feature_stats(stats: FeatureStats, options: BottleneckOptions, like: Tensor):
    """``(mean, std, active)`` on ``like``'s device and dtype."""
    mean = stats.mean.to(device=like.device, dtype=like.dtype)
    std = stats.std(options.min_std).to(device=like.device, dtype=like.dtype)
    active = stats.active_mask(options.active_neurons_threshold).to(like.device)
    return mean, std, active


def _reference(
    objective: Objective, clean_outputs: Tensor, target: Optional[Tensor], target_values, n: int
) -> Optional[Tensor]:
    """Per-sample reference score of the objective, shape (n,), or None."""
    if objective.reference == "clean":
        return select_outputs(clean_outputs, target).detach()
    if objective.reference != "target_values":
        return None
    if target_values is None:
        raise ValueError(f"loss {objective.name!r} needs target_values: the score y per sample")
    values = torch.as_tensor(target_values, dtype=clean_outputs.dtype, device=clean_outputs.device)
    if values.dim() == 0:
        values = values.expand(n)
    if values.shape != (n,):
        raise ValueError(
            f"target_values must hold one score per sample, shape ({n},); got {tuple(values.shape)}"
        )
    if not torch.isfinite(values).all():
        raise ValueError("target_values contain NaN or Inf")
    return values
