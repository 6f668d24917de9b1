"""Information Bottleneck Attribution (Schulz et al., ICLR 2020)."""

from __future__ import annotations

from typing import Any, Optional, Union

from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage
from torch import Tensor

from ._base import BottleneckAttribution


class IBA(BottleneckAttribution):
    r"""Information Bottleneck Attribution: the regions *sufficient* for a prediction.

    A bottleneck at ``layer`` replaces its feature map ``F`` by
    ``Z = lambda * F + (1 - lambda) * eps`` with ``eps ~ N(mu, sigma^2)``
    (the layer's estimated per-neuron statistics), and ``lambda`` is
    optimised per input to minimise

    .. math:: L = L_{model}(\phi(Z), t) + \beta \, L_I,

    where ``L_I`` is the mean KL capacity of ``Z`` over active neurons: as
    much noise as possible while the prediction for ``target`` survives. The
    attribution is that capacity in bits per feature-map location.

    Args:
        forward_func (nn.Module or callable): the model. An ``nn.Module`` that
            traces with ``torch.fx`` runs the layers before ``layer`` once per
            call and only the rest during the optimisation; other models run
            whole, with ``layer``'s output swapped by a hook. It must return
            one tensor: wrap a model with dict or tuple outputs in a function,
            ``lambda x: model(x)["logits"]``; the modules such a function runs
            are frozen (eval mode, no parameter gradients) and restored just
            as an ``nn.Module``'s are.
        layer (nn.Module): a submodule whose output is one ``(N, C, h, w)``
            feature map (e.g. ``model.features.denseblock3``).
        beta (float): weight of the information loss (default 10).
        steps (int): Adam steps (default 10).
        lr (float): Adam learning rate (default 1.0).
        noise_draws (int): noise draws of each input per step (default 10).
            ``batch_size``, its former name, still works but is deprecated.
        sigma (float or None): std of the Gaussian smoothing of ``lambda``, in
            feature-map cells (default 1.0; None or 0 disables it).
        min_std (float): lower clamp of the estimated std (default 0.01).
        init_alpha (float): initial ``alpha``; ``lambda = sigmoid(alpha)`` (default 5).
        active_neurons_threshold (float): a neuron is active if non-zero in
            more than this fraction of the estimation samples (default 0.01).
        loss (str or callable): ``"ce"`` (softmax cross-entropy, default),
            ``"bce"`` (one sigmoid per output, target labelled 1), or
            ``(outputs, target) -> per-row loss``.
        relu (bool): clamp ``Z`` at 0 (default False).
        fuse (bool): run the network after the layer with exact algebraic
            rewrites of its traced graph (default True; fx split only): an
            eval-mode ``BatchNorm2d`` becomes one multiply-add, an average
            pool moves before the 1x1 convolution it follows, and a leading
            BatchNorm (+ReLU, +pool) is folded into the noise mixing
            (:func:`captum_iba.suffix.fuse_suffix`). The same function summed
            in another order: maps within 1e-3 of ``fuse=False`` (measured
            on DenseNet-121: about 1e-6 at beta 10, 1.4e-4 at beta 0.01, the
            size of float32's own spread there between 1 and 2 threads).
            Modules with hooks are left as they are; with ``compile`` the
            compiler gets the graph as traced (it fuses on its own).
        channels_last (bool or str): build ``Z`` in ``torch.channels_last``
            memory format for the network after the layer, which CPU
            convolutions may run faster. ``False`` (default), ``True``, or
            ``"auto"``: where the traced suffix allows it, contiguous
            otherwise (a ``.view`` after a convolution, or the hook split;
            ``True`` raises ``ValueError`` with the reason there). Opt-in:
            maps within 1e-3 of the default's (largest difference over the
            map's peak; measured on DenseNet-121: 1.5e-6 at beta 10, 5.1e-4
            at beta 0.01, where the model loss dominates).
        precision (str): ``"fp32"`` (default), ``"bf16"`` (the model under
            ``torch.autocast``, CPU or CUDA) or ``"fp16"`` (CUDA only). The
            bottleneck, loss and Adam stay float32. Opt-in: maps within 5e-2
            of float32 (measured on DenseNet-121: 4.6e-5 at beta 10, 4.7e-3
            at beta 0.01); fp16 is not yet measured.
        compile (bool or str): ``torch.compile`` the network after the layer
            (``True``: inductor; or a backend name). Compiled once per
            (model, layer, input shapes and options) and reused by later
            calls and instances; the first call pays the compilation (tens of
            seconds to minutes on a CPU). Opt-in; maps within 1e-3 of the
            default's. Needs the fx split.
        stats (FeatureStats, optional): the layer's statistics; otherwise call
            :meth:`estimate`.
        split (str): ``"auto"`` (default), ``"fx"`` or ``"hooks"``; see
            :mod:`captum_iba.split`.

    Examples::

        >>> from captum_iba import IBA
        >>> iba = IBA(model, model.features.denseblock3, loss="bce")
        >>> iba.estimate(loader, n_samples=500)
        >>> bits = iba.attribute(images, target=2)          # (N, 1, h, w), bits
        >>> heatmap = IBA.interpolate(bits, images.shape[-2:])  # Captum's resize
    """

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        reduce: str = "sum",
        return_lambda: bool = False,
        seed: Optional[int] = None,
        progress: bool = False,
        **options: Any,
    ) -> Union[Tensor, tuple]:
        r"""Bits per feature-map location that the prediction needs.

        All N inputs are optimised in one batched loop; each map equals the
        map the input would get alone with the same ``seed``. The model is
        run in eval mode without parameter gradients and restored exactly.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs, batch first,
                ``(N, ...)``; finite.
            target (int, tuple, Tensor, list of int or list of tuple,
                optional): the output to explain, exactly as in Captum: an
                int (or one-element tensor) for every sample; a tuple, one
                index into a multi-dimensional output for every sample
                (``output[:, i, j]``); a 1-D tensor or list of ints, one per
                sample; a list of tuples, one per sample. Negative indices
                count from the end. Required unless the model has a single
                output.
            additional_forward_args (Any, optional): extra arguments after the
                inputs; tensors with N rows are treated as per-sample.
            reduce (str): ``"sum"`` over channels (default) or ``"none"``.
            return_lambda (bool): also return the optimised ``lambda``.
            seed (int, optional): seed of the noise; the same seed gives the
                same map. None draws one from torch's global generator.
            progress (bool): show a progress bar over the steps.
            **options: any constructor option (``beta``, ``steps``, ``lr``,
                ``noise_draws``, ``sigma``, ``min_std``, ``init_alpha``,
                ``active_neurons_threshold``, ``loss``, ``relu``, ``stats``,
                and the speed options ``channels_last``, ``precision``,
                ``compile`` with their tolerances as documented in the class)
                for this call only. The model is left exactly as found with
                every option: parameters keep their values, dtype and memory
                format.

        Returns:
            Tensor: capacity in bits, ``(N, 1, h, w)`` with ``reduce="sum"``
            or ``(N, C, h, w)`` with ``reduce="none"``, on the inputs' device.
            With ``return_lambda``, the tuple ``(bits, lambda)``; ``lambda``
            is ``(N, C, h, w)`` in [0, 1]. ``IBA.interpolate(bits, size)``
            resizes a map to the input; multiply by ``h*w/(H*W)`` to keep its
            total in bits.

        Raises:
            ValueError: no statistics, statistics of another shape, targets
                out of range or not selecting one output per sample, NaN/Inf
                inputs, invalid options, a layer that runs more than once,
                ``channels_last=True`` or ``compile`` where the suffix does not
                allow it, ``precision="fp16"`` without CUDA.
            TypeError: inputs or target of the wrong type, unknown options,
                a model that returns a tuple or dict (wrap it in a function
                that returns the logits).

        Examples::

            >>> iba = IBA(model, model.features.denseblock3, stats=FeatureStats.load("db3.pt"))
            >>> bits = iba.attribute(images, target=[0, 3, 3], seed=0)
            >>> bits.shape
            torch.Size([3, 1, 14, 14])
            >>> fast = iba.attribute(images, target=2, compile=True, precision="bf16")
        """
        return self._attribute(
            inputs, target, additional_forward_args, options, reduce, return_lambda, seed, progress
        )
