"""The options of the bottleneck attributions: validated on creation, every default defined here once."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple, Union

from .._engine import Speed, as_speed
from .._validate import check_flag, check_number, check_positive_int

#: Largest ``beta``: beyond it ``beta * L_I`` leaves float32's useful range (NaN maps at 1e308).
MAX_BETA = 1e6
#: Largest Adam learning rate: beyond it the first steps saturate every ``lambda`` (all-zero maps at 1e30).
MAX_LR = 10.0
#: Largest ``|init_alpha|``: beyond it ``sigmoid`` rounds to 0 or 1 in float32 and passes no gradient.
MAX_INIT_ALPHA = 15.0
#: Largest smoothing std, in grid cells (a kernel of 4x that side).
MAX_SIGMA = 100.0


@dataclasses.dataclass(frozen=True)
class BottleneckOptions:
    """The bottleneck at a layer, shared by the per-sample loop and the readout.

    Attributes
    ----------
    loss : str or callable
        The model loss ``L_model``: ``"ce"`` (softmax cross-entropy, one class
        per image), ``"bce"`` (one sigmoid per output, the target labelled 1:
        multilabel chest X-ray models), a regression loss of
        :class:`~captum_iba.RegressionIBA`, or ``(outputs, target) -> per-row loss``.
    beta : float
        Weight of the information loss ``L_I``, in [0, 1e6].
    noise_draws : int
        Noise draws of each input per step (>= 1).
    sigma : float or None
        Std of the Gaussian smoothing of ``lambda`` in grid cells, in [0, 100]; None or 0 disables it.
    min_std : float
        Lower clamp of the per-neuron std (> 0).
    init_alpha : float
        Initial ``alpha`` (``lambda = sigmoid(alpha)``), in [-15, 15].
    active_neurons_threshold : float
        A neuron is active if non-zero in more than this fraction of the estimation samples, in [0, 1).
    relu : bool
        Clamp ``Z`` at 0 (for layers followed by non-negative activations).
    """

    loss: Union[str, Callable]
    beta: float = 10.0
    noise_draws: int = 10
    sigma: Optional[float] = 1.0
    min_std: float = 0.01
    init_alpha: float = 5.0
    active_neurons_threshold: float = 0.01
    relu: bool = False

    def __post_init__(self) -> None:
        if not (callable(self.loss) or isinstance(self.loss, str)):
            raise TypeError(f"loss: expected a loss name or a callable (outputs, target) -> per-sample loss, "
                            f"got {type(self.loss).__name__}")
        check_number(self.beta, "beta", minimum=0.0, maximum=MAX_BETA, below=False)
        check_positive_int(self.noise_draws, "noise_draws")
        if self.sigma is not None:
            check_number(self.sigma, "sigma", minimum=0.0, maximum=MAX_SIGMA, below=False)
        check_number(self.min_std, "min_std", minimum=0.0, strict=True)
        check_number(self.init_alpha, "init_alpha", minimum=-MAX_INIT_ALPHA, maximum=MAX_INIT_ALPHA, below=False)
        check_number(self.active_neurons_threshold, "active_neurons_threshold", minimum=0.0, maximum=1.0)
        check_flag(self.relu, "relu")


@dataclasses.dataclass(frozen=True)
class IBAOptions(BottleneckOptions):
    """:class:`BottleneckOptions` and the per-sample optimisation of IBA, Inverse and Regression IBA.

    Attributes
    ----------
    steps : int
        Adam steps (>= 1).
    lr : float
        Adam's learning rate, in (0, 10].
    speed : str or Speed
        How the network after the layer runs: ``"default"``, ``"fast"`` or a
        :class:`~captum_iba.Speed` (see its tolerances); stored as a Speed.
    """

    steps: int = 10
    lr: float = 1.0
    speed: Union[str, Speed] = "default"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.steps, "steps")
        check_number(self.lr, "lr", minimum=0.0, strict=True, maximum=MAX_LR, below=False)
        object.__setattr__(self, "speed", as_speed(self.speed))


@dataclasses.dataclass(frozen=True)
class ReadoutOptions(BottleneckOptions):
    """:class:`BottleneckOptions` of the Readout Bottleneck, and its network.

    Its own defaults: ``beta`` 1 (averaged over the data, a readout trained
    with IBA's 10 collapses to all-noise maps on the embedded phantom model:
    information 3.6 -> 0.004 nats) and one noise draw per sample and step
    (the data supplies the average, as in the reference).

    Attributes
    ----------
    hidden : tuple of int or None
        The network's two hidden widths; None: the reference's ``(in // 2, 2 * C)``, each at least 16.
    alpha_bound : float
        Soft bound of ``alpha``, ``bound * tanh(a / bound)``, above ``|init_alpha|``.
    """

    beta: float = 1.0
    noise_draws: int = 1
    hidden: Optional[Tuple[int, int]] = None
    alpha_bound: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden is not None:
            if not (isinstance(self.hidden, (tuple, list)) and len(self.hidden) == 2):
                raise ValueError(f"hidden: expected two integers >= 1, got {self.hidden!r}")
            object.__setattr__(self, "hidden", tuple(check_positive_int(h, "hidden") for h in self.hidden))
        check_number(self.alpha_bound, "alpha_bound", minimum=abs(self.init_alpha), strict=True)


def option_names(options_class) -> frozenset:
    return frozenset(field.name for field in dataclasses.fields(options_class))
