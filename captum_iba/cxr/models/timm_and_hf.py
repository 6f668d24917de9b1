"""Models of timm and HuggingFace ``transformers`` by name, built offline.

``timm:NAME[,key=value,...]`` builds ``timm.create_model(NAME, pretrained=False,
key=value, ...)``, with its weights from a local file only; ``hf:DIR`` loads an
image classifier from a local folder (``save_pretrained``'s config and weights)
with ``local_files_only=True``. Nothing is downloaded. Both libraries are
extras (``pip install 'captum-iba[timm,hf]'``), imported when a model asks for
them.
"""

from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path
from typing import Optional, Tuple, Union

from torch import Tensor, nn

from ._view import ModelView

TIMM, HF = "timm:", "hf:"

__all__ = ["TIMM", "HF", "timm_model", "hf_model", "HFLogits", "native_input_size"]


def _import(module: str, extra: str, spec: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"model {spec!r}: needs {module}: pip install 'captum-iba[{extra}]'") from None


def _options(text: str, spec: str) -> dict:
    """``key=value,...`` as keyword arguments; values are Python literals (``depth=2``, ``img_size=64``)."""
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"model {spec!r}: expected timm:NAME[,key=value,...], got the option {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain word: a string (act_layer=gelu)
    return options


def timm_model(spec: str, weights: Optional[Union[str, os.PathLike]] = None, num_classes: int = 8) -> nn.Module:
    """``timm:NAME[,key=value,...]`` built with ``pretrained=False``; weights from ``weights`` only.

    Parameters
    ----------
    spec : str
        ``"timm:vit_base_patch16_224"``; options after commas go to
        ``timm.create_model`` (``"timm:vit_small_patch16_224,img_size=512"``).
    weights : path, optional
        A state-dict file (see :func:`~captum_iba.cxr.models.external.load_weights`);
        its classifier's size sets the number of outputs.
    num_classes : int
        Outputs of a model without weights (or options that set it).

    Raises
    ------
    ValueError
        One line: an unknown name (with close names), bad options, a missing extra.
    """
    from .external import load_weights, read_state_dict

    timm = _import("timm", "timm", spec)
    name, _, rest = spec[len(TIMM):].partition(",")
    options = _options(rest, spec)
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; timm.list_models() lists them"
        raise ValueError(f"model {spec!r}: timm has no model {name!r}{hint}")
    if weights is not None and "num_classes" not in options:
        options["num_classes"] = _classifier_size(read_state_dict(weights)) or num_classes
    options.setdefault("num_classes", num_classes)
    try:
        model = timm.create_model(name, pretrained=False, **options)
    except Exception as error:  # bad keyword or value: the user's input
        raise ValueError(f"model {spec!r}: timm.create_model failed: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _classifier_size(state: dict) -> Optional[int]:
    """The number of outputs of the classifier in ``state`` (timm's ViT/DeiT, Swin/ConvNeXt, ResNet, DenseNet heads)."""
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if isinstance(state.get(key), Tensor):
            return int(state[key].shape[0])
    return None


class HFLogits(ModelView):
    """A HuggingFace image classifier that returns its logits tensor, under the model's own layer names
    (a :class:`~captum_iba.cxr.models._view.ModelView`: ``vit.layers.6`` is a layer of this module too)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        object.__setattr__(self, "config", model.config)
        self.train(model.training)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self._wrapped.forward(pixel_values=pixel_values).logits


def hf_model(spec: str, weights: Optional[Union[str, os.PathLike]] = None) -> nn.Module:
    """``hf:DIR``: the image classifier saved in the folder ``DIR``, loaded without any download.

    Raises
    ------
    ValueError
        One line: a folder without ``config.json`` or weights, a weights
        file given (the folder holds them), a missing extra.
    """
    if weights is not None:
        raise ValueError(f"weights: {spec!r} reads its weights from its folder; pass no weights file")
    folder = Path(spec[len(HF):]).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"model {spec!r}: expected a folder with config.json and the weights "
                         f"(what save_pretrained writes), found no {folder / 'config.json'}")
    transformers = _import("transformers", "hf", spec)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise ValueError(f"model {spec!r}: cannot load it: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    return HFLogits(model.eval()).eval()


def native_input_size(model: nn.Module) -> Optional[int]:
    """The image side a timm or HuggingFace model is built for (position embeddings fix it), else None."""
    config = getattr(model, "config", None)
    if config is not None and isinstance(getattr(config, "image_size", None), int):
        return config.image_size
    size: Optional[Tuple[int, ...]] = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size:
        return int(size[-1]) if size[0] == size[-1] else None
    return None
