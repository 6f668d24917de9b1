r"""The Readout Bottleneck (Schulz et al., ICLR 2020, section 3.2): IBA maps in one pass.

The per-sample bottleneck optimises ``alpha`` for every input. The readout
bottleneck learns it instead: a first, clean pass collects the features of
several *readout layers* (any depth, also after the bottleneck), each
normalised by its per-neuron statistics and resized bilinearly to the
bottleneck's ``h x w`` grid; a small network of 1x1 convolutions maps them,
location by location, to ``alpha`` at the bottleneck. It is trained once on a
dataset with IBA's objective, averaged over the data,

.. math:: \mathbb{E}_{x}\big[L_{model}(\phi(Z_x), t_x) + \beta\, L_I(x)\big],

with the terms of :class:`~captum_iba.bottleneck.Bottleneck`. After training
a map costs one forward pass to the deepest readout layer: no optimisation loop.

The network, and how the target enters it: :class:`~captum_iba.attr._readout_net.ReadoutNetwork`.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import LayerAttribution
from torch import Tensor, nn

from .._engine import SPEEDS, Engine, capture_layer_outputs, find_layout, frozen_model, make_split, owning_module
from .._engine.split import verified_split
from .._progress import progress as progress_bar
from .._validate import (check_choice, check_layers, check_number, check_positive_int, check_stats, flat_targets,
                         format_additional_args, format_inputs, format_target, layer_names)
from ..bottleneck import Bottleneck
from ..objectives import CLASSIFICATION_LOSSES, get_objective
from ..stats import FeatureStats, estimate_stats
from ._readout_net import (FirstPasses, ReadoutNetwork, first_passes, read_readout, readout_maps, same_batches,
                           training_batches, write_readout)
from .options import ReadoutOptions

__all__ = ["ReadoutIBA", "ReadoutNetwork", "COLLAPSE_NATS"]

#: ``fit`` warns when the last epoch's information loss falls below this (nats per active neuron): the
#: maps have collapsed to noise (measured 0.004 on the embedded phantom model at beta 10, 3.6 clean).
COLLAPSE_NATS = 0.01
#: Options saved with a trained readout: what defines its maps.
_SAVED_OPTIONS = ("loss", "beta", "noise_draws", "sigma", "min_std", "init_alpha", "active_neurons_threshold",
                  "relu", "hidden", "alpha_bound")


class ReadoutIBA(LayerAttribution):
    r"""Readout Bottleneck: IBA maps from a trained network, one forward pass per map.

    A small network reads the features of ``readout_layers`` (from a clean
    forward pass) and predicts the bottleneck's ``alpha`` at ``layer``;
    :meth:`fit` trains it on a dataset with IBA's objective (model loss +
    ``beta`` x mean capacity, averaged over the data); :meth:`attribute` then
    returns IBA's map (capacity in bits summed over channels) without any
    per-sample optimisation.

    Examples::

        >>> from captum_iba import ReadoutIBA
        >>> f = model.features
        >>> readout = ReadoutIBA(model, f.denseblock2, [f.denseblock1, f.denseblock2, f.denseblock3, f.denseblock4],
        ...                      loss="bce")
        >>> readout.estimate(loader, n_samples=500)
        >>> readout.fit(loader)                  # 10 epochs, labels from the loader
        >>> readout.save("readout.pt")           # ReadoutIBA.load("readout.pt", model, ...) next time
        >>> bits = readout.attribute(images, target=2)   # (N, 1, h, w), one pass
    """

    _losses = CLASSIFICATION_LOSSES

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        readout_layers: Sequence[nn.Module],
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        *,
        loss: Union[str, Callable, None] = None,
        beta: float = ReadoutOptions.beta,
        noise_draws: int = ReadoutOptions.noise_draws,
        sigma: Optional[float] = ReadoutOptions.sigma,
        min_std: float = ReadoutOptions.min_std,
        init_alpha: float = ReadoutOptions.init_alpha,
        active_neurons_threshold: float = ReadoutOptions.active_neurons_threshold,
        relu: bool = ReadoutOptions.relu,
        hidden: Optional[Tuple[int, int]] = ReadoutOptions.hidden,
        alpha_bound: float = ReadoutOptions.alpha_bound,
        stats: Optional[FeatureStats] = None,
        readout_stats: Optional[Sequence[FeatureStats]] = None,
    ) -> None:
        r"""
        Args:
            forward_func (nn.Module or callable): the model (as :class:`IBA` takes it).
            layer (nn.Module): the bottleneck layer, any layout :class:`IBA` takes.
            readout_layers (sequence of nn.Module): distinct layers at any
                depth (``layer`` itself may be one), e.g. DenseNet's
                ``features.denseblock1`` ... ``denseblock4``; their layouts are
                found from the model, or are ``reshape_transform``'s where their
                output has the bottleneck's shape.
            reshape_transform (callable, optional): the bottleneck layer's
                output to ``(N, C, h, w)``, as :class:`IBA` takes it.
            loss (str or callable): ``"bce"`` (multilabel), ``"ce"`` or a
                callable, required.
            beta (float): weight of the information loss in training (default
                1: a readout averages over the data, and IBA's 10 trains the
                embedded phantom model's readout to all-noise maps).
            noise_draws (int): noise draws per sample per training step (default 1).
            sigma, min_std, init_alpha, active_neurons_threshold, relu: as :class:`IBA`.
            hidden (tuple of int, optional): the network's two hidden widths;
                default the reference's ``(in // 2, 2 * C)``, each at least 16.
            alpha_bound (float): soft bound of ``alpha`` (default 10, above ``|init_alpha|``).
            stats (FeatureStats, optional): statistics of ``layer``.
            readout_stats (sequence of FeatureStats, optional): one per
                readout layer; otherwise :meth:`estimate` fills both.
        """
        if not callable(forward_func):
            raise TypeError(f"forward_func: expected the model or a function of it, got {type(forward_func).__name__}")
        self.readout_layers = check_layers(forward_func, readout_layers, "readout_layers")
        check_layers(forward_func, [layer], "layer")
        super().__init__(forward_func, layer)
        if loss is None:
            raise TypeError("loss: expected a loss, got none: ReadoutIBA(..., loss='bce') for a multilabel model, "
                            "loss='ce' for a softmax classifier")
        self.options = ReadoutOptions(loss=loss, beta=beta, noise_draws=noise_draws, sigma=sigma, min_std=min_std,
                                      init_alpha=init_alpha, active_neurons_threshold=active_neurons_threshold,
                                      relu=relu, hidden=hidden, alpha_bound=alpha_bound)
        get_objective(self.options.loss, self._losses)
        self.reshape_transform = reshape_transform
        self.stats = check_stats(stats)
        if readout_stats is not None and (not isinstance(readout_stats, (list, tuple))
                                          or len(readout_stats) != len(self.readout_layers)):
            raise ValueError(f"readout_stats: expected one FeatureStats per readout layer ({len(self.readout_layers)})")
        self.readout_stats = None if readout_stats is None else [
            check_stats(s, f"readout_stats[{i}]") for i, s in enumerate(readout_stats)]
        self.network: Optional[ReadoutNetwork] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._split = None
        self.epochs_trained = 0
        self.history: List[dict] = []

    def estimate(self, data, n_samples: int = 1000, progress: bool = True, *,
                 additional_forward_args: Any = None, batch_inputs: Optional[Callable] = None) -> FeatureStats:
        """Estimate the statistics of ``layer`` and of every readout layer in one pass.

        Arguments as :meth:`IBA.estimate`. Returns the bottleneck layer's
        FeatureStats (``self.stats``); the readout layers' are ``self.readout_stats``.
        """
        stats = estimate_stats(self.forward_func, [self.layer, *self.readout_layers], data, n_samples, progress,
                               additional_forward_args=additional_forward_args, batch_inputs=batch_inputs)
        model = owning_module(self.forward_func)
        for layer_stats in stats:  # a layer whose output has no grid is refused now, not in fit()
            same = self.reshape_transform if layer_stats.shape == stats[0].shape else None
            find_layout(model, layer_stats.mean[None], same)
        self.stats, self.readout_stats = stats[0], stats[1:]
        return self.stats

    # ------------------------------------------------------------------ the first pass

    def _first_pass(self, inputs: Tuple, args: Tuple):
        """Bottleneck features ``F``, its layout, and the normalised readout maps on ``F``'s grid."""
        if self.stats is None or self.readout_stats is None:
            raise ValueError("stats: expected feature statistics, got none: call estimate(data) first "
                             "or pass stats= and readout_stats=")
        features, *readouts = capture_layer_outputs(self.forward_func, [self.layer, *self.readout_layers], inputs, args)
        check_stats(self.stats, features=features)
        model = owning_module(self.forward_func)
        layout = find_layout(model, features, self.reshape_transform)
        layouts = []
        for i, (readout, stats) in enumerate(zip(readouts, self.readout_stats)):
            check_stats(stats, f"readout_stats[{i}]", readout, f"readout_layers[{i}]")
            same = self.reshape_transform if readout.shape == features.shape else None
            layouts.append(find_layout(model, readout, same))
        maps = readout_maps(readouts, layouts, self.readout_stats, self.options.min_std, layout.grid[1:])
        return features, layout, maps

    def _bottleneck(self, features: Tensor, layout) -> Bottleneck:
        o = self.options
        return Bottleneck(features, self.stats, min_std=o.min_std, active_neurons_threshold=o.active_neurons_threshold,
                          sigma=o.sigma, layout=layout)

    def _lambda(self, bottleneck: Bottleneck, readout: Tensor, target: Optional[Tensor]) -> Tensor:
        """``lambda`` in the layer's layout from the network's ``alpha`` on the grid.

        Elements outside the grid (leading tokens) take each sample's mean
        ``alpha``: restricted as much as the average location.
        """
        alpha = self.network(readout, target)
        layout = bottleneck.layout
        if layout.index is not None:
            alpha = layout.to_output(alpha, alpha.mean((1, 2, 3))[:, None].expand(-1, layout.leading))
        return bottleneck.lambda_of(alpha)

    def _target(self, target, n: int, device) -> Optional[Tensor]:
        """Captum's target as (n,) indices into the trained readout's outputs (None for one output)."""
        n_targets = self.network.config["n_targets"]
        target = format_target(target, n, device)
        if target is None and n_targets:
            raise ValueError(f"target: expected an output index, got none: the readout was trained on a model "
                             f"with {n_targets} outputs")
        if not n_targets:
            return None  # a single-output model has nothing to condition on
        return flat_targets(target, (n_targets,))

    # ------------------------------------------------------------------ training

    @property
    def training_seconds(self) -> float:
        """Wall time of every epoch trained so far (``self.history``), also across save/load."""
        return float(sum(record.get("seconds", 0.0) for record in self.history))

    def fit(self, data: Iterable, epochs: int = 10, target: TargetType = None, lr: float = 3e-3,
            seed: Optional[int] = None, progress: bool = True, cache: Union[bool, str] = "auto") -> List[dict]:
        """Train the readout network with IBA's objective, averaged over ``data``.

        The model is run in eval mode without parameter gradients and left as
        found; only the readout network learns (Adam). Calling ``fit`` again
        continues training (the network and Adam's state are kept, also
        through :meth:`save` / :meth:`load`). Warns when the maps collapse
        to noise (information below :data:`COLLAPSE_NATS`): lower ``beta``.

        Args:
            data (iterable): re-iterable batches (a DataLoader or a list):
                a tensor ``(n, ...)`` of inputs (then pass ``target``),
                an ``(inputs, labels, ...)`` tuple or list, or a dict with
                ``"image"`` and ``"labels"`` (:mod:`captum_iba.cxr` batches).
                Labels are class indices ``(n,)`` (integer), or multi-hot
                ``(n, K)`` (float or bool, K = the model's outputs): each
                positive label is one training row (its image explained for
                that output); images without one are skipped.
            epochs (int): passes over ``data`` (default 10, the recipe tuned
                on the embedded phantom models).
            target (int, list of int, or Tensor, optional): the output to
                explain, one for all samples or one per sample of ``data`` in
                the order it yields them (each epoch from the start); None
                takes the labels of the batches.
            lr (float): Adam's learning rate (default 3e-3).
            seed (int, optional): seed of the noise draws and the network's initialisation.
            progress (bool): progress over the batches.
            cache (bool or "auto"): keep the clean first pass of every batch
                from the first epoch and train the later epochs of this call
                on it (the same result in about half the time per epoch) when
                ``data`` yields the same batches every epoch. ``"auto"``
                (default): for a list or tuple, or a DataLoader that does not
                shuffle. Given up past 2 GiB.

        Returns:
            list of dict: per epoch of this call, ``loss``, ``model_loss`` and
            ``information_loss`` (nats, mean over training rows), ``rows``
            and ``seconds``. The whole record is ``self.history``.
        """
        epochs = check_positive_int(epochs, "epochs")
        check_number(lr, "lr", minimum=0.0, strict=True)
        if iter(data) is data and epochs > 1:
            raise ValueError("data: expected re-iterable batches (a DataLoader or a list) to train several epochs, "
                             "got an iterator")
        if target is not None and not isinstance(target, int) and not (isinstance(target, Tensor) and target.dim() == 0):
            target = format_target(target, len(target), "cpu")  # one per sample of data
        if cache not in (True, False, "auto"):
            raise ValueError(f"cache: expected True, False or 'auto', got {cache!r}")
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        passes = FirstPasses() if (cache is True or cache == "auto" and same_batches(data)) else None
        records = []
        with frozen_model(self.forward_func):
            for _ in range(epochs):
                records.append(self._train_epoch(data, target, lr, generator, progress, passes))
        self.history.extend(records)
        if records[-1]["information_loss"] < COLLAPSE_NATS:
            warnings.warn(f"ReadoutIBA.fit: the maps collapsed to noise (information {records[-1]['information_loss']:.4f} "
                          f"nats per neuron, below {COLLAPSE_NATS}): train again with a lower beta "
                          f"(now {self.options.beta})", RuntimeWarning, stacklevel=2)
        return records

    def _train_epoch(self, data, target, lr: float, generator, progress: bool, passes) -> dict:
        started = time.perf_counter()
        objective = get_objective(self.options.loss, self._losses)
        totals, rows = torch.zeros(3, dtype=torch.float64), 0
        description = f"ReadoutIBA epoch {self.epochs_trained + 1}"
        if passes is not None and passes.complete:
            batches = progress_bar(passes.entries, desc=description, enabled=progress)
        else:
            batches = first_passes(training_batches(progress_bar(data, desc=description, enabled=progress), target),
                                   lambda inputs: self._prepare(inputs, lr, generator), passes)
        for features, layout, readout, context, batch_target in batches:
            for group in self._optimizer.param_groups:
                group["lr"] = lr
            terms = self._step(features, layout, readout, context, batch_target, objective, generator)
            totals += terms * features.shape[0]
            rows += features.shape[0]
        if rows == 0:
            raise ValueError("data: expected training rows, got none (no samples, or no positive labels)")
        if passes is not None:
            passes.complete = passes.entries is not None
        self.epochs_trained += 1
        loss, model_loss, information_loss = (totals / rows).tolist()
        return dict(epoch=self.epochs_trained, loss=loss, model_loss=model_loss, information_loss=information_loss,
                    rows=rows, seconds=time.perf_counter() - started)

    def split(self):
        """The prefix/suffix split of the model at the bottleneck layer, built once."""
        if self._split is None:
            self._split = make_split(self.forward_func, self.layer)
        return self._split

    @torch.no_grad()
    def _prepare(self, inputs: Tensor, lr: float, generator):
        """The clean first pass of a training batch: ``F``, its layout, the readout maps, the suffix's context."""
        features, layout, readout = self._first_pass((inputs,), ())
        self._split = verified_split(self.split(), self.forward_func, (inputs,), ())
        _, context = self.split().features((inputs,), ())
        if self.network is None:
            clean = self.split().outputs(features.clone(), context)
            with torch.random.fork_rng(devices=[]):  # the network's init follows the seed
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                self._build(readout, layout.grid[0], clean[0].numel(), lr, features.device)
        return features, layout, readout, context

    @torch.enable_grad()
    def _step(self, features, layout, readout, context, target, objective, generator) -> Tensor:
        """One Adam step of the readout; returns the mean loss, model loss and information loss."""
        n, draws = features.shape[0], self.options.noise_draws
        target = self._target(target, n, features.device)
        bottleneck = self._bottleneck(features, layout)
        engine = Engine(self.split(), SPEEDS["default"], features, context, draws, bottleneck.active,
                        self.options.relu, channels_first=layout.index is None)
        noise = bottleneck.noise(draws, generator, per_sample=True)
        lam = self._lambda(bottleneck, readout, target)
        outputs = engine(lam, noise)
        rows = None if target is None else target.repeat_interleave(draws)
        model_loss = objective(outputs, rows, None).view(n, draws).mean(1)
        information = bottleneck.information(lam)
        loss = (model_loss + self.options.beta * information).mean()
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        return torch.stack([loss, model_loss.mean(), information.mean()]).detach().double().cpu()

    def _build(self, readout: Tensor, channels: int, n_outputs: int, lr: float, device) -> None:
        in_channels = readout.shape[1]
        hidden = self.options.hidden or (max(in_channels // 2, 16), max(2 * channels, 16))
        self.network = ReadoutNetwork(in_channels, channels, n_outputs if n_outputs > 1 else 0, hidden,
                                      float(self.options.init_alpha), self.options.alpha_bound).to(device)
        self._optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)

    # ------------------------------------------------------------------ attribution

    @torch.no_grad()
    def attribute(self, inputs: TensorOrTupleOfTensorsGeneric, target: TargetType = None,
                  additional_forward_args: Any = None, *, reduce: str = "sum",
                  return_lambda: bool = False) -> Union[Tensor, tuple]:
        r"""Bits per location of the layer's grid, from the trained readout: one forward pass.

        The model runs (clean, in eval mode, restored afterwards) up to the
        deepest of ``layer`` and ``readout_layers``; the readout network gives
        ``lambda``, and the map is the capacity at that ``lambda`` in bits,
        IBA's map definition. No noise is drawn: the map is deterministic.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs, batch first, ``(N, ...)``; finite.
            target (int, list of int, or Tensor, optional): the output to
                explain, one for all or one per sample (Captum's convention);
                required unless the model has a single output.
            additional_forward_args (Any, optional): extra model arguments.
            reduce (str): ``"sum"`` over channels (default) or ``"none"``.
            return_lambda (bool): also return the predicted ``lambda``.

        Returns:
            Tensor: bits, ``(N, 1, h, w)`` (``reduce="sum"``) or ``(N, C, h, w)``,
            on the inputs' device; with ``return_lambda`` the tuple ``(bits, lambda)``.

        Raises:
            ValueError: not trained (call :meth:`fit` or :meth:`load`), no
                statistics, statistics of another shape, targets out of
                range, NaN/Inf inputs.
            TypeError: inputs or target of the wrong type.

        Examples::

            >>> readout = ReadoutIBA.load("r.pt", model, f.denseblock2, [f.denseblock2, f.denseblock3])
            >>> bits = readout.attribute(images, target=[0, 3])
            >>> heatmap = ReadoutIBA.interpolate(bits, images.shape[-2:])
        """
        check_choice(reduce, "reduce", ("sum", "none"))
        if self.network is None:
            raise ValueError("the readout is not trained: call fit(data) first, or ReadoutIBA.load(path, ...)")
        inputs = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        with frozen_model(self.forward_func):
            features, layout, readout = self._first_pass(inputs, args)
        target = self._target(target, features.shape[0], features.device)
        self.network.to(features.device)
        bottleneck = self._bottleneck(features, layout)
        lam = self._lambda(bottleneck, readout, target)
        bits = bottleneck.bits(lam)
        bits = bits.sum(1, keepdim=True) if reduce == "sum" else bits
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
        options = {name: getattr(self.options, name) for name in _SAVED_OPTIONS}
        if callable(options["loss"]):
            raise ValueError("loss: a readout trained with a callable loss cannot be saved; use a loss name")
        write_readout(path, layers=layer_names(self.forward_func, [self.layer, *self.readout_layers]),
                      network=self.network, optimizer=self._optimizer, options=options,
                      epochs_trained=self.epochs_trained, history=self.history,
                      stats=[self.stats, *self.readout_stats])

    @classmethod
    def load(cls, path: Union[str, os.PathLike], forward_func: Callable, layer: nn.Module,
             readout_layers: Sequence[nn.Module], reshape_transform: Optional[Callable] = None,
             loss: Union[str, Callable, None] = None) -> "ReadoutIBA":
        """A trained readout written by :meth:`save` (``weights_only=True``), ready to :meth:`attribute`.

        Its network, statistics, options and training state come from the
        file; the model and the layers are the caller's. ``loss`` is needed
        only for a file that does not name its loss (to train further).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is corrupt or not a ReadoutIBA file, or it
                was trained at other layers (by name) than the ones given.
        """
        readout_layers = list(readout_layers) if isinstance(readout_layers, (list, tuple)) else readout_layers
        names = layer_names(forward_func, [layer, *readout_layers]) if isinstance(readout_layers, list) else None
        payload, network, optimizer, stats = read_readout(path, names, len(readout_layers))
        options = {"loss": loss, **payload["options"]}
        if options["loss"] is None:
            raise ValueError(f"{os.fspath(path)!r} does not name its loss: pass loss= ('bce' or 'ce')")
        if "hidden" in options and options["hidden"] is not None:
            options["hidden"] = tuple(options["hidden"])
        readout = cls(forward_func, layer, readout_layers, reshape_transform, stats=stats[0],
                      readout_stats=stats[1:], **options)
        readout.network, readout._optimizer = network, optimizer
        readout.epochs_trained, readout.history = int(payload["epochs_trained"]), list(payload["history"])
        return readout
