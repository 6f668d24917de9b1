"""The Readout Bottleneck (Schulz et al., ICLR 2020, section 3.2): IBA maps in one pass.

The per-sample bottleneck optimises ``alpha`` for every input. The readout
bottleneck learns it instead: a first, clean pass collects the feature maps
of several *readout layers* (any depth, also after the bottleneck), each
normalised by its per-neuron statistics and resized bilinearly to the
bottleneck's ``h x w`` grid; a small network of 1x1 convolutions maps them,
location by location, to ``alpha`` at the bottleneck. It is trained once on a
dataset with IBA's objective, averaged over the data,

.. math:: \mathbb{E}_{x}\big[L_{model}(\phi(Z_x), t_x) + \beta\, L_I(x)\big],

where ``Z = lambda * F + (1 - lambda) * eps`` and ``L_I`` is the mean KL
capacity (the functions of :mod:`captum_iba.bottleneck`). After training a map
costs one forward pass to the deepest readout layer: no optimisation loop.

The network, and how the target enters it: :class:`~captum_iba.attr._readout_parts.ReadoutNetwork`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validate import check_number
from ..bottleneck import capacity, lambda_from_alpha, mean_capacity, noisy_features, to_bits
from ..objectives import get_objective
from ..split import capture_layer_outputs, frozen_model
from ..stats import FeatureStats, estimate_stats
from ._base import BottleneckAttribution, _feature_stats, format_additional_args, format_inputs, format_target
from ._readout_parts import (FirstPasses, ReadoutNetwork, check_readout_layers, check_readout_stats, check_shape,
                             check_target, inputs_and_labels, read_readout, readout_maps, same_batches,
                             training_rows, write_readout)

__all__ = ["ReadoutIBA", "ReadoutNetwork"]

class ReadoutIBA(BottleneckAttribution):
    r"""Readout Bottleneck: IBA maps from a trained network, one forward pass per map.

    A small network reads the feature maps of ``readout_layers`` (from a
    clean forward pass) and predicts the bottleneck's ``alpha`` at ``layer``;
    :meth:`fit` trains it on a dataset with IBA's objective (model loss +
    ``beta`` x mean capacity, averaged over the data); :meth:`attribute` then
    returns IBA's map (capacity in bits summed over channels) without any
    per-sample optimisation. See the module notes for the network.

    Args:
        forward_func (nn.Module or callable): the model.
        layer (nn.Module): the bottleneck layer, one ``(N, C, h, w)`` output.
        readout_layers (sequence of nn.Module): distinct submodules with 4-D
            outputs, at any depth (``layer`` itself may be one), e.g.
            DenseNet's ``features.denseblock1`` ... ``denseblock4``.
        beta (float): weight of the information loss in training (default 10,
            as IBA). A readout averages over the data, and where the model
            loss can fall little (the phantom's BCE: 2.4 nats on noise, 1.5
            clean) beta 10 trains it to all-noise maps; beta 1 worked there.
        noise_draws (int): noise draws per sample per training step (default
            1: the data supplies the average, as in the reference).
        sigma, min_std, init_alpha, active_neurons_threshold, loss, relu:
            as :class:`IBA` (``loss``: ``"ce"``, ``"bce"`` or a callable).
        hidden (tuple of int, optional): hidden widths; default the
            reference's ``(in // 2, 2 * C)``, each at least 16.
        alpha_bound (float): soft bound of ``alpha`` (default 10, above
            ``|init_alpha|``); see the module notes.
        stats (FeatureStats, optional): statistics of ``layer``.
        readout_stats (sequence of FeatureStats, optional): one per readout
            layer; otherwise :meth:`estimate` fills both.
        split (str): ``"auto"``, ``"fx"`` or ``"hooks"``, as :class:`IBA`.

    Examples::

        >>> from captum_iba import ReadoutIBA
        >>> f = model.features
        >>> readout = ReadoutIBA(model, f.denseblock2, [f.denseblock2, f.denseblock3, f.denseblock4],
        ...                      loss="bce")
        >>> readout.estimate(loader, n_samples=500)
        >>> readout.fit(loader, epochs=3)        # labels from the loader
        >>> readout.save("readout.pt")
        >>> bits = readout.attribute(images, target=2)   # (N, 1, h, w), one pass
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        readout_layers: Sequence[nn.Module],
        *,
        beta: Optional[float] = None,
        noise_draws: int = 1,
        sigma: Optional[float] = 1.0,
        min_std: float = 0.01,
        init_alpha: float = 5.0,
        active_neurons_threshold: float = 0.01,
        loss: Union[str, Callable, None] = None,
        relu: bool = False,
        hidden: Optional[Tuple[int, int]] = None,
        alpha_bound: float = 10.0,
        stats: Optional[FeatureStats] = None,
        readout_stats: Optional[Sequence[FeatureStats]] = None,
        split: str = "auto",
    ) -> None:
        super().__init__(
            forward_func, layer, beta=beta, noise_draws=noise_draws, sigma=sigma, min_std=min_std,
            init_alpha=init_alpha, active_neurons_threshold=active_neurons_threshold, loss=loss,
            relu=relu, stats=stats, split=split,
        )
        self.readout_layers = check_readout_layers(forward_func, readout_layers)
        self.readout_stats = check_readout_stats(readout_stats, len(self.readout_layers))
        if hidden is not None and not (
            isinstance(hidden, (tuple, list)) and len(hidden) == 2
            and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
        ):
            raise ValueError(f"hidden must be two integers >= 1, got {hidden!r}")
        self.hidden = None if hidden is None else tuple(hidden)
        check_number(alpha_bound, "alpha_bound", minimum=abs(self.options.init_alpha), strict=True)
        self.alpha_bound = float(alpha_bound)
        self.network: Optional[ReadoutNetwork] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self.epochs_trained = 0
        self.history: List[dict] = []

    def estimate(self, data, n_samples: int = 1000, progress: bool = True) -> FeatureStats:
        """Estimate the statistics of ``layer`` and of every readout layer in one pass.

        Arguments as :meth:`IBA.estimate`. Returns the bottleneck layer's
        FeatureStats (``self.stats``); the readout layers' are ``self.readout_stats``.
        """
        stats = estimate_stats(
            self.forward_func, [self.layer, *self.readout_layers], data, n_samples, progress
        )
        self.stats, self.readout_stats = stats[0], stats[1:]
        return self.stats

    # ------------------------------------------------------------------ the first pass

    def _first_pass(self, inputs: Tuple, args: Tuple) -> Tuple[Tensor, Tensor]:
        """Bottleneck features ``F`` and the normalised readout maps on ``F``'s grid."""
        if self.stats is None or self.readout_stats is None:
            raise ValueError(
                "no feature statistics: call estimate(data) first or pass stats= and readout_stats="
            )
        features, *readouts = capture_layer_outputs(
            self.forward_func, [self.layer, *self.readout_layers], inputs, args
        )
        check_shape(self.stats, features, "stats", "layer")
        return features, readout_maps(readouts, self.readout_stats, self.options.min_std, features.shape[-2:])

    def _lambda(self, readout: Tensor, target: Optional[Tensor]) -> Tensor:
        return lambda_from_alpha(self.network(readout, target), self.options.sigma)

    def _target(self, target, n: int, device) -> Optional[Tensor]:
        """Captum's target as (n,) indices, checked against the trained readout's outputs."""
        return check_target(format_target(target, n, device), self.network.config["n_targets"])

    # ------------------------------------------------------------------ training

    @property
    def training_seconds(self) -> float:
        """Wall time of every epoch trained so far (``self.history``), also across save/load."""
        return float(sum(record.get("seconds", 0.0) for record in self.history))

    def fit(
        self,
        data: Iterable,
        epochs: int = 1,
        target: TargetType = None,
        lr: float = 1e-3,
        seed: Optional[int] = None,
        progress: bool = True,
        cache: Union[bool, str] = "auto",
    ) -> List[dict]:
        """Train the readout network with IBA's objective, averaged over ``data``.

        The model is run in eval mode without parameter gradients and left as
        found; only the readout network learns (Adam). Calling ``fit`` again
        continues training (the network and Adam's state are kept, also
        through :meth:`save` / :meth:`load`).

        Args:
            data (iterable): re-iterable batches (a DataLoader or a list):
                a tensor ``(n, ...)`` of inputs (then pass ``target``),
                an ``(inputs, labels, ...)`` tuple or list, or a dict with
                ``"image"`` and ``"labels"`` (:mod:`captum_iba.cxr` batches).
                Labels are class indices ``(n,)`` (integer), or multi-hot
                ``(n, K)`` (float or bool, K = the model's outputs): each
                positive label is one training row (its image explained for
                that output); images without one are skipped.
            epochs (int): passes over ``data`` (>= 1).
            target (int, list of int, or Tensor, optional): the output to
                explain, one for all samples or one per sample of ``data`` in
                the order it yields them (each epoch from the start); None
                takes the labels of the batches.
            lr (float): Adam's learning rate (default 1e-3).
            seed (int, optional): seed of the noise draws.
            progress (bool): progress bar over the batches.
            cache (bool or "auto"): keep the clean first pass of every batch
                (bottleneck features, readout maps) from the first epoch and
                train the later epochs of this call on it: the same result
                in about half the time per epoch, when ``data`` yields the
                same batches every epoch. ``"auto"`` (default): for a list or
                tuple, or a DataLoader that does not shuffle. Given up (and
                the first pass run every epoch) past
                :data:`~captum_iba.attr._readout_parts.FIRST_PASS_CACHE_BYTES` (2 GiB).

        Returns:
            list of dict: per epoch of this call, ``loss``, ``model_loss`` and
            ``information_loss`` (nats, mean over training rows), ``rows``
            and ``seconds`` (the epoch's wall time).
            The whole record is ``self.history``.

        Raises:
            ValueError: no statistics, labels or targets that do not fit the
                model, no training rows, invalid arguments.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        check_number(lr, "lr", minimum=0.0, strict=True)
        if iter(data) is data and epochs > 1:
            raise ValueError("data must be re-iterable (a DataLoader or a list) to train several epochs")
        if target is not None and not isinstance(target, int) and not (
            isinstance(target, Tensor) and target.dim() == 0
        ):
            target = format_target(target, len(target), "cpu")  # one per sample of data
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        if cache not in (True, False, "auto"):
            raise ValueError(f"cache must be True, False or 'auto', got {cache!r}")
        passes = FirstPasses() if (cache is True or cache == "auto" and same_batches(data)) else None
        records = []
        with frozen_model(self.forward_func):
            for _ in range(epochs):
                records.append(self._train_epoch(data, target, lr, generator, progress, passes))
        self.history.extend(records)
        return records

    def _train_epoch(self, data, target, lr: float, generator, progress: bool, passes) -> dict:
        started = time.perf_counter()
        objective = get_objective(self.options.loss, self._losses)
        totals, rows = torch.zeros(3, dtype=torch.float64), 0
        description = f"ReadoutIBA epoch {self.epochs_trained + 1}"
        if passes is not None and passes.complete:
            batches = tqdm(passes.entries, disable=not progress, desc=description, leave=False)
        else:
            batches = self._first_passes(data, target, lr, generator, progress, description, passes)
        for features, readout, context, batch_target in batches:
            for group in self._optimizer.param_groups:
                group["lr"] = lr
            terms = self._step(features, readout, context, batch_target, objective, generator)
            totals += terms * features.shape[0]
            rows += features.shape[0]
        if rows == 0:
            raise ValueError("data yielded no training rows (no samples, or no positive labels)")
        if passes is not None:
            passes.complete = passes.entries is not None
        self.epochs_trained += 1
        loss, model_loss, information_loss = (totals / rows).tolist()
        return dict(epoch=self.epochs_trained, loss=loss, model_loss=model_loss, information_loss=information_loss,
                    rows=rows, seconds=time.perf_counter() - started)

    def _first_passes(self, data, target, lr, generator, progress, description, passes):
        """``(features, readout maps, context, target)`` of each training batch of ``data``, kept in ``passes``."""
        per_sample, offset = isinstance(target, Tensor) and target.dim() == 1, 0
        for batch in tqdm(data, disable=not progress, desc=description, leave=False):
            inputs, labels = inputs_and_labels(batch)
            batch_target = target
            if per_sample:
                batch_target = target[offset : offset + len(inputs)]
                if len(batch_target) != len(inputs):
                    raise ValueError(f"target holds {len(target)} entries, but data yields more samples")
                offset += len(inputs)
            inputs, batch_target = training_rows(inputs, batch_target, labels)
            if inputs.shape[0]:
                entry = (*self._prepare(inputs, lr, generator), batch_target)
                if passes is not None:
                    passes.add(entry)
                yield entry

    @torch.no_grad()
    def _prepare(self, inputs: Tensor, lr: float, generator):
        """The clean first pass of a training batch: ``F``, readout maps, the suffix's context."""
        features, readout = self._first_pass((inputs,), ())
        _, context = self.split.features((inputs,), ())
        if self.network is None:
            clean = self.split.outputs(features.clone(), context)
            with torch.random.fork_rng(devices=[]):  # the network's init follows the seed
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                self._build(readout, features, clean[0].numel(), lr)
        return features, readout, context

    @torch.enable_grad()
    def _step(self, features, readout, context, target, objective, generator) -> Tensor:
        """One Adam step of the readout; returns the mean loss, model loss and information loss."""
        n, draws = features.shape[0], self.options.noise_draws
        target = self._target(target, n, features.device)
        mean, std, active = _feature_stats(self.stats, self.options, features)
        noise = torch.randn((n, draws, *features.shape[1:]), generator=generator, dtype=features.dtype)
        noise = mean + std * noise.to(features.device)
        lam = self._lambda(readout, target)
        z = noisy_features(features, lam, noise, active, self.options.relu)
        outputs = self.split.outputs(z, self.split.expand(context, n, draws))
        rows = None if target is None else target.repeat_interleave(draws)
        model_loss = objective(outputs, rows, None).view(n, draws).mean(1)
        information_loss = mean_capacity(capacity(features, lam, mean, std, active), active)
        loss = (model_loss + self.options.beta * information_loss).mean()
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        return torch.stack([loss, model_loss.mean(), information_loss.mean()]).detach().double().cpu()

    def _build(self, readout: Tensor, features: Tensor, n_outputs: int, lr: float) -> None:
        in_channels, out_channels = readout.shape[1], features.shape[1]
        hidden = self.hidden or (max(in_channels // 2, 16), max(2 * out_channels, 16))
        self.network = ReadoutNetwork(
            in_channels, out_channels, n_outputs if n_outputs > 1 else 0, hidden,
            float(self.options.init_alpha), self.alpha_bound,
        ).to(features.device)
        self._optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)

    # ------------------------------------------------------------------ attribution

    @torch.no_grad()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        reduce: str = "sum",
        return_lambda: bool = False,
    ) -> Union[Tensor, tuple]:
        r"""Bits per feature-map location, from the trained readout: one forward pass.

        The model runs (clean, in eval mode, restored afterwards) up to the
        deepest of ``layer`` and ``readout_layers``; the readout network gives
        ``lambda``, and the map is the capacity at that ``lambda`` in bits,
        IBA's map definition. No noise is drawn: the map is deterministic.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs, batch first,
                ``(N, ...)``; finite.
            target (int, list of int, or Tensor, optional): the output to
                explain, one for all or one per sample (Captum's convention);
                required unless the model has a single output.
            additional_forward_args (Any, optional): extra model arguments.
            reduce (str): ``"sum"`` over channels (default) or ``"none"``.
            return_lambda (bool): also return the predicted ``lambda``.

        Returns:
            Tensor: bits, ``(N, 1, h, w)`` (``reduce="sum"``) or ``(N, C, h, w)``,
            on the inputs' device; with ``return_lambda`` the tuple
            ``(bits, lambda)``.

        Raises:
            ValueError: not trained (call :meth:`fit` or :meth:`load`), no
                statistics, statistics of another shape, targets out of
                range, NaN/Inf inputs.
            TypeError: inputs or target of the wrong type.

        Examples::

            >>> readout = ReadoutIBA(model, f.denseblock2, [f.denseblock2, f.denseblock3]).load("r.pt")
            >>> bits = readout.attribute(images, target=[0, 3])
            >>> heatmap = ReadoutIBA.interpolate(bits, images.shape[-2:])
        """
        if reduce not in ("sum", "none"):
            raise ValueError(f"reduce must be 'sum' or 'none', got {reduce!r}")
        if self.network is None:
            raise ValueError("the readout is not trained: call fit(data) or load(path) first")
        inputs = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        with frozen_model(self.forward_func):
            features, readout = self._first_pass(inputs, args)
        target = self._target(target, features.shape[0], features.device)
        self.network.to(features.device)
        lam = self._lambda(readout, target)
        bits = to_bits(capacity(features, lam, *_feature_stats(self.stats, self.options, features)))
        if reduce == "sum":
            bits = bits.sum(1, keepdim=True)
        device = inputs[0].device
        return (bits.to(device), lam.to(device)) if return_lambda else bits.to(device)

    # ------------------------------------------------------------------ files

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the trained readout, its statistics and its options to ``path`` atomically.

        The file holds everything :meth:`attribute` needs and Adam's state,
        so training resumes where it stopped.
        """
        if self.network is None:
            raise ValueError("the readout is not trained: nothing to save (call fit(data) first)")
        write_readout(self, path)

    def load(self, path: Union[str, os.PathLike]) -> "ReadoutIBA":
        """Restore a readout written by :meth:`save` (``weights_only=True``); returns ``self``.

        The network, the statistics, the options that define its maps
        (``beta``, ``sigma``, ``min_std``, ``init_alpha``,
        ``active_neurons_threshold``, ``noise_draws``, ``relu``) and the
        training state replace this instance's.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is corrupt or not a ReadoutIBA file, or it
                was trained at other layers (by name) than this instance's.
        """
        payload, network, optimizer, stats = read_readout(self, path)
        self.options = dataclasses.replace(self.options, **payload["options"])
        self.network, self._optimizer, self.alpha_bound = network, optimizer, network.config["alpha_bound"]
        self.stats, self.readout_stats = stats[0], stats[1:]
        self.epochs_trained, self.history = int(payload["epochs_trained"]), list(payload["history"])
        return self
