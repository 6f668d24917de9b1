"""Measurements behind issue 12: the cue study and the Sensitivity-N of Regression IBA.

Run from the repository root (the embedded models train on first use, about a
minute each on one CPU thread):

    OMP_NUM_THREADS=1 python benchmarks/evidence.py cue [--images 16] [--finding any|with|without]
    OMP_NUM_THREADS=1 python benchmarks/evidence.py sensitivity [--images 16]

``cue``: the intervention check on the three cue models (``nih_cue``,
``nih_cue_clean``, ``nih_cue_weighted_bce``), the share on the cue of IBA,
Inverse IBA (loss "bce", bottleneck ``features.denseblock2``: 12 x 12 cells at
96 px), Captum's Saliency and Integrated Gradients for the cue model and the
clean one, and the weighted-BCE comparison on the same images.

``sensitivity``: Sensitivity-N of Regression IBA (``features.denseblock2``) on
``brixia_regression`` under several settings: pixel masks as in Ancona et
al. (scattered pixels) with more masks and other baselines, and masks made of
whole cells of a k x k grid (k = 12 is the bottleneck's grid), beside
Saliency, Integrated Gradients and random maps (chance).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, Saliency
from torch import nn

from captum_iba import IBA, InverseIBA, RegressionIBA
from captum_iba.cxr import FINDINGS, PhantomCXR, collate, load_embedded_model
from captum_iba.cxr.phantom.cue import cue_images, cue_table, intervention_drop
from captum_iba.cxr.models.embedded import CUE_FINDING
from captum_iba.maps import resize_map
from captum_iba.metrics import sensitivity_n
from captum_iba.metrics._core import baseline_images
from captum_iba.app.methods import inplace_free_copy

LAYER = "features.denseblock2"
HELD_OUT_SEED = 1000  # as the demo: the models train on seeds 0 (train) and 1 (test)
ESTIMATION_IMAGES = 256


def _images(phantom: PhantomCXR, indices) -> Dict[str, torch.Tensor]:
    return collate([phantom[i] for i in indices])


def _bottleneck_method(kind, **options) -> Callable:
    """``f(model, images, target)`` for an IBA-family method, statistics estimated once per model."""
    fitted: Dict[int, IBA] = {}

    def attribute(model: nn.Module, images: torch.Tensor, target) -> torch.Tensor:
        if id(model) not in fitted:
            method = kind(model, model.get_submodule(LAYER), **options)
            data = PhantomCXR(ESTIMATION_IMAGES, size=images.shape[-1], seed=0, **model.phantom_options)
            loader = torch.utils.data.DataLoader(data, batch_size=64, collate_fn=collate)
            method.estimate(loader, n_samples=ESTIMATION_IMAGES, progress=False)
            fitted[id(model)] = method
        return fitted[id(model)].attribute(images, target=target, seed=0)

    return attribute


def _saliency(model, images, target):
    return Saliency(inplace_free_copy(model)).attribute(images, target=target, abs=True)


def _integrated_gradients(model, images, target):
    ig = IntegratedGradients(inplace_free_copy(model))
    return ig.attribute(images, target=target, baselines=0.0, n_steps=32, internal_batch_size=64)


def cue_study(n_images: int, with_finding=None) -> None:
    names = ("nih_cue", "nih_cue_clean", "nih_cue_weighted_bce")
    models = {name: load_embedded_model(name) for name in names}
    for model in models.values():
        model.phantom_options = {"cue": CUE_FINDING}
    phantom = PhantomCXR(4000, seed=HELD_OUT_SEED, cue=CUE_FINDING)
    indices = cue_images(phantom, n_images, with_finding=with_finding)
    batch = _images(phantom, indices)
    target = FINDINGS.index(CUE_FINDING)
    with_finding = int(batch["labels"][:, target].sum())
    print(f"{n_images} held-out cue images (phantom seed {HELD_OUT_SEED}), {with_finding} with {CUE_FINDING}; "
          f"cue area {batch['cue_mask'].float().mean():.4f} of the image (the share of an even map)")
    print("\nIntervention: P(%s) with the cue, without it (same seed), drop" % CUE_FINDING)
    for name, model in models.items():
        quality = model.metrics["auc"][CUE_FINDING]
        result = intervention_drop(model, phantom, indices)
        print(f"  {name:22s} AUC {quality:.3f}  with {result.with_cue.mean():.3f}  without "
              f"{result.without_cue.mean():.3f}  drop {result.drop.mean():.3f} +- {result.drop.std():.3f} "
              f"(min {result.drop.min():.3f})")
    methods = {
        "IBA": _bottleneck_method(IBA, loss="bce"),
        "Inverse IBA": _bottleneck_method(InverseIBA, loss="bce"),
        "Saliency": _saliency,
        "Integrated Gradients": _integrated_gradients,
    }
    images, masks = batch["image"], batch["cue_mask"]
    comparisons = (("cue model", "clean model", "nih_cue", "nih_cue_clean"),
                   ("weighted-BCE cue model", "BCE cue model", "nih_cue_weighted_bce", "nih_cue"))
    for first, second, one, other in comparisons:
        print(f"\nShare of the map's positive mass on the cue ({LAYER} for the IBA family)")
        print(f"| method | {first} | {second} | difference (+- se) | s |\n|---|---|---|---|---|")
        for name, attribute in methods.items():
            start = time.perf_counter()
            (row,) = cue_table({name: attribute}, models[one], models[other], images, masks, target)
            print(f"| {name} | {row['cue_model']:.3f} | {row['clean_model']:.3f} | {row['difference']:+.3f} "
                  f"(+- {row['difference_se']:.3f}) | {time.perf_counter() - start:.0f} |")


# ---------------------------------------------------------------- Sensitivity-N of Regression IBA


class _Probe(nn.Module):
    """The score Sensitivity-N probes: ``(x, index) -> model(x)`` with two optional changes.

    ``grid=k``: ``x`` is a (N, 1, k, k) tensor of gates (ones; Sensitivity-N's zero baseline
    closes them), and the model sees image ``index`` where its cell's gate is 1 and
    ``baseline`` elsewhere: masks of whole cells of a k x k grid, through the public
    :func:`sensitivity_n`. ``squared=True``: the score is ``-(model(x) - model(image))^2``, so
    that Sensitivity-N's drop is the squared change of the output (what an unsigned map of
    information, such as Regression IBA's with the deviation loss, can predict).
    """

    def __init__(self, model, images, baseline, grid=None, squared=False) -> None:
        super().__init__()
        self.model, self.images, self.baseline, self.grid, self.squared = model, images, baseline, grid, squared
        with torch.no_grad():
            self.clean = model(images)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.grid is not None:
            keep = F.interpolate(x, size=self.images.shape[-2:], mode="nearest")
            x = keep * self.images[index] + (1 - keep) * self.baseline[index]
        out = self.model(x)
        return -(out - self.clean[index]) ** 2 if self.squared else out


#: Sensitivity-N settings: name -> (grid or None for pixel masks, squared score, options).
SETTINGS = {
    "pixels": (None, False, {}),
    "pixels-400": (None, False, {"num_masks": 400}),
    "pixels-blur": (None, False, {"baseline": "blur"}),
    "pixels-mean": (None, False, {"baseline": "mean"}),
    "pixels-squared": (None, True, {}),
    "cells-6": (6, False, {}),
    "cells-12": (12, False, {}),
    "cells-24": (24, False, {}),
    "cells-6-squared": (6, True, {}),
    "cells-12-squared": (12, True, {}),
    "cells-24-squared": (24, True, {}),
    "cells-12-squared-blur": (12, True, {"baseline": "blur"}),
    "cells-12-blur": (12, False, {"baseline": "blur"}),
}


def _sensitivity(model, images, maps, setting, fractions):
    """Mean PCC over the images for each fraction of the pixels (or cells) masked."""
    grid, squared, options = SETTINGS[setting]
    options = dict(options)
    baseline = options.pop("baseline", "zero")
    if grid is None:
        inputs, cells, probe_baseline = images, maps, baseline
    else:  # the image baseline goes to the probe; the gates close to zero
        inputs, cells, probe_baseline = torch.ones(len(images), 1, grid, grid), resize_map(maps, grid), "zero"
        baseline = baseline_images(baseline, images)
    size = inputs.shape[-1] ** 2
    counts = sorted({max(1, round(f * size)) for f in fractions})
    probe = _Probe(model, images, baseline if grid is not None else None, grid, squared)
    pcc = sensitivity_n(probe, inputs, cells, None, additional_forward_args=torch.arange(len(images)), n=counts,
                        baseline=probe_baseline, max_examples_per_batch=256, **options)
    return pcc.nanmean(0).tolist()


def _regression_maps(model, images, scores) -> Dict[str, torch.Tensor]:
    data = PhantomCXR(ESTIMATION_IMAGES, size=images.shape[-1], seed=0, task="brixia")
    loader = torch.utils.data.DataLoader(data, batch_size=64, collate_fn=collate)
    riba = RegressionIBA(model, model.get_submodule(LAYER))
    riba.estimate(loader, n_samples=ESTIMATION_IMAGES, progress=False)
    maps = {f"Regression IBA ({loss})": riba.attribute(images, loss=loss, seed=0,
                                                        target_values=scores if loss == "mse" else None)
            for loss in ("deviation", "maximize", "mse")}
    maps["Saliency"] = _saliency(model, images, None)
    maps["Integrated Gradients"] = _integrated_gradients(model, images, None)
    maps["random"] = torch.rand(len(images), 1, *images.shape[-2:], generator=torch.Generator().manual_seed(0))
    return maps


def _header(fractions):
    print("| map | " + " | ".join(str(f) for f in fractions) + " |\n" + "|---" * (len(fractions) + 1) + "|")


def _row(label, values):
    return f"| {label} | " + " | ".join(f"{v:+.3f}" for v in values) + " |"


def sensitivity_study(n_images: int, settings) -> None:
    model = load_embedded_model("brixia_regression")
    phantom = PhantomCXR(n_images, seed=HELD_OUT_SEED, task="brixia")
    batch = _images(phantom, range(n_images))
    maps = _regression_maps(model, batch["image"], batch["score"])
    fractions = (0.01, 0.05, 0.1, 0.25, 0.5)
    print(f"brixia_regression, {n_images} held-out images, maps at {LAYER}; mean PCC over images; "
          f"columns: fraction of the pixels (or grid cells) masked")
    for setting in settings:
        start = time.perf_counter()
        print(f"\n{setting}: grid, squared score, options = {SETTINGS[setting]}")
        _header(fractions)
        for name, values in maps.items():
            print(_row(name, _sensitivity(model, batch["image"], values, setting, fractions)))
        print(f"({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=("cue", "sensitivity"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"sensitivity study: comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--finding", choices=("any", "with", "without"), default="any",
                        help="cue study: images with the cue and with / without its finding, or any")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.study == "cue":
        cue_study(args.images, {"any": None, "with": True, "without": False}[args.finding])
    else:
        sensitivity_study(args.images, args.settings.split(","))


if __name__ == "__main__":
    main()
