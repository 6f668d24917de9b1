"""Agreement of ``captum_iba.metrics`` with Quantus 0.6.0 on the embedded phantom and model.

IBA maps (``IBA(model, model.features.denseblock2, loss="bce")``: 12 x 12
cells of 8 pixels at 96 px) of the embedded ``nih_bce`` model (trained on
first use and cached, see :func:`captum_iba.cxr.load_embedded_model`) for
held-out phantom images, each explained for one of its findings, are scored
by both libraries, and a markdown table of the agreement is printed.

Where the definitions differ, Quantus is configured to ours (its baseline,
its perturbation function, the maps it is given), as in
``tests/test_metrics_quantus.py``, whose docstrings state each difference;
those rows must agree to float precision. Rows marked "native" run Quantus's
own definition beside ours and report how the two rank the images
(Spearman's rho over the images) or the difference of their means, not an
identity; so does the cascading randomisation, where the two libraries
draw other weights (their seeding differs).

Run from the repository root (``PYTHONPATH=.`` so that this checkout's
package is imported)::

    PYTHONPATH=. python benchmarks/quantus_agreement.py --images 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings

import numpy as np
import quantus
import scipy.stats
import torch
from quantus.functions.similarity_func import correlation_spearman, ssim
from torch import nn

from captum_iba import IBA
from captum_iba._hashing import tensor_digest
from captum_iba.cxr import FINDINGS, PhantomCXR, collate, load_embedded_model
from captum_iba.maps import binarize, resize_map
from captum_iba.metrics import (
    insertion_deletion,
    localization_iou,
    pointing_game,
    randomization_check,
    sensitivity_n,
)
from captum_iba.metrics._core import gaussian_blur

LAYER = "features.denseblock2"
HELD_OUT_SEED = 1000  # as the demo: the model trains on phantom seeds 0 (train) and 1 (test)
ESTIMATION_IMAGES = 128
# Insertion/deletion move the top quarter of the pixels, one 8 x 8 cell per step
# (36 steps): the informative part of the curves, at a quarter of the passes.
FRACTION, STEPS, CELL = 0.25, 36, 8
# Sensitivity-n pixel counts: Quantus needs H W to be a multiple of 3 n (3
# channels), and runs H W / n steps whatever it keeps, so large n are cheap.
COUNTS, NUM_MASKS = (1536, 3072), 16
QUANTUS_SEED = 7


def held_out_batch(n_images):
    """The first held-out phantom images that have a finding, each with its first finding.

    Parameters
    ----------
    n_images : int
        How many images.

    Returns
    -------
    images : torch.Tensor
        (N, 3, 96, 96) model inputs.
    targets : torch.Tensor
        (N,) the index of each image's first finding (in ``FINDINGS``).
    masks : torch.Tensor
        (N, H, W) bool, that finding's mask.
    """
    phantom = PhantomCXR(10 * n_images + 100, seed=HELD_OUT_SEED)
    indices = [i for i in range(len(phantom)) if phantom.findings_of(i)][:n_images]
    batch = collate([phantom[i] for i in indices])
    targets = torch.tensor([FINDINGS.index(phantom.findings_of(i)[0]) for i in indices])
    masks = batch["masks"][torch.arange(len(indices)), targets]
    assert masks.flatten(1).any(1).all()  # Quantus reads an empty mask as NaN (or, pointing, a hit)
    return batch["image"], targets, masks


def iba_bits(model, images, targets):
    """IBA maps (bits) at the bottleneck's grid, statistics estimated on ``model``.

    The maps depend on the weights only (seeded noise), so they are memoised
    by a digest of the state dict: a model that Quantus and
    ``randomization_check`` both draw (the same weights) is explained once.

    Parameters
    ----------
    model : nn.Module
        The model, or a randomised copy of it.
    images : torch.Tensor
        (N, 3, H, W) inputs.
    targets : torch.Tensor
        (N,) finding indices.

    Returns
    -------
    torch.Tensor
        (N, 1, 12, 12) bits.
    """
    key = tensor_digest(model.state_dict()) + str(images.shape) + str(targets.tolist())
    if key not in _MAPS:
        iba = IBA(model, model.get_submodule(LAYER), loss="bce")
        data = PhantomCXR(ESTIMATION_IMAGES, size=images.shape[-1], seed=0)
        loader = torch.utils.data.DataLoader(data, batch_size=64, collate_fn=collate)
        iba.estimate(loader, n_samples=ESTIMATION_IMAGES, progress=False)
        _MAPS[key] = iba.attribute(images, target=targets, seed=0)
    return _MAPS[key]


def iba_maps(model, images, targets):
    """:func:`iba_bits` resized to the images (bilinearly, keeping their total), (N, 1, H, W)."""
    return resize_map(iba_bits(model, images, targets), images.shape[-2:])


_MAPS = {}


def spearman(a, b):
    """Spearman's rho of two score vectors (NaN with fewer than three values)."""
    return scipy.stats.spearmanr(a, b)[0] if len(a) > 2 else float("nan")


def grow(masks, radius):
    """Masks grown by the open disc of ``radius`` pixels (TorchRay's tolerance).

    Parameters
    ----------
    masks : numpy.ndarray
        (N, 1, H, W) 0/1 masks.
    radius : int
        Pixels; a pixel joins the mask when a mask pixel is strictly closer.

    Returns
    -------
    numpy.ndarray
        (N, 1, H, W) 0/1 masks.
    """
    height, width = masks.shape[-2:]
    padded = np.pad(masks, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    grown = np.zeros_like(masks)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            if dr * dr + dc * dc < radius * radius:
                window = padded[:, :, radius + dr:radius + dr + height, radius + dc:radius + dc + width]
                grown = np.maximum(grown, window)
    return grown


def copy_into(source):
    """A Quantus ``perturb_func`` that writes ``source``'s values at the given flat indices.

    Parameters
    ----------
    source : numpy.ndarray
        (N, C, H, W): the baseline (deletion) or the images (insertion).

    Returns
    -------
    callable
        ``perturb(arr, indices, **kwargs)`` on (N, C H W) arrays, as Quantus calls it.
    """
    flat = source.reshape(len(source), -1)

    def perturb(arr, indices, **kwargs):
        rows = np.arange(len(arr))[:, None]
        perturbed = arr.copy()
        perturbed[rows, indices] = flat[rows, indices]
        return perturbed

    return perturb


def localisation_rows(maps, masks):
    """Table rows of the pointing game and the localisation IoU (no model needed).

    Parameters
    ----------
    maps : torch.Tensor
        (N, 1, H, W) attribution maps.
    masks : torch.Tensor
        (N, H, W) bool ground truth.

    Returns
    -------
    list of tuple
        ``(metric, Quantus counterpart, ours, Quantus, agreement, n)`` per row.
    """
    n = len(maps)
    s_batch = masks[:, None].double().numpy()
    common = dict(model=None, x_batch=np.zeros_like(s_batch), y_batch=np.zeros(n, int), s_batch=s_batch)
    a_batch = maps.double().numpy()
    rows = []
    game = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)
    for tolerance in (1, 15):
        ours = pointing_game(maps, masks, tolerance=tolerance).hits.numpy()
        grown = s_batch if tolerance == 1 else grow(s_batch, tolerance)
        theirs = np.array(game(**{**common, "s_batch": grown}, a_batch=a_batch), dtype=bool)
        comparison = "max in mask" if tolerance == 1 else f"max in mask grown by a disc of {tolerance} px"
        rows.append((f"pointing game, tolerance {tolerance} px", f"PointingGame, {comparison}",
                     ours.mean(), theirs.mean(), f"same hit on {int((ours == theirs).sum())}/{n}", n))

    truth = masks.flatten(1).sum(1).double().numpy()
    k = int(np.floor(0.05 * masks[0].numel() + 0.5))
    ours = localization_iou(maps, masks, threshold="top:0.05").iou.numpy()
    inside = k * np.array(quantus.TopKIntersection(k=k, abs=False, normalise=False, disable_warnings=True)(
        a_batch=a_batch, **common))
    theirs = inside / (k + truth - inside)
    rows.append(("IoU, top 5 %", f"TopKIntersection k={k} -> IoU", ours.mean(), theirs.mean(),
                 f"max diff {np.abs(ours - theirs).max():.1e}", n))

    kept = binarize(maps, "otsu").double()
    size = kept.flatten(1).sum(1).numpy()
    ours = localization_iou(maps, masks, threshold="otsu").iou.numpy()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its advice to use abs
        localisation = quantus.AttributionLocalisation(abs=False, normalise=False, disable_warnings=True)
    share = np.array(localisation(a_batch=kept.numpy(), **common))
    theirs = share * size / (size + truth - share * size)
    rows.append(("IoU, Otsu", "AttributionLocalisation of the Otsu mask -> IoU", ours.mean(), theirs.mean(),
                 f"max diff {np.abs(ours - theirs).max():.1e}", n))
    # Quantus's defaults: abs, and normalised by the batch's maximum (a scale the share ignores).
    native = np.array(quantus.AttributionLocalisation(disable_warnings=True)(a_batch=a_batch, **common))
    rows.append(("IoU, Otsu", "native AttributionLocalisation (mass share of the map)",
                 ours.mean(), native.mean(),
                 f"Spearman {spearman(ours, native):.2f}", n))
    return rows


def perturbation_rows(model, images, targets, bits):
    """Table rows of insertion/deletion against Quantus's RegionPerturbation.

    Both score sigmoid probabilities, with the blurred image as baseline.
    The "cells" rows use the maps upsampled by nearest neighbour, one value
    per 8 x 8 cell, so that our pixel ranking is Quantus's patch ranking; the
    "native" row uses the bilinear maps, ranked by pixel (ours) and by patch
    sum (Quantus).

    Parameters
    ----------
    model : nn.Module
        The embedded model (logits).
    images : torch.Tensor
        (N, 3, H, W) inputs.
    targets : torch.Tensor
        (N,) finding indices.
    bits : torch.Tensor
        (N, 1, 12, 12) IBA maps at the bottleneck's grid.

    Returns
    -------
    list of tuple
        ``(metric, Quantus counterpart, ours, Quantus, agreement, n)`` per row.
    """
    n, size = len(images), images.shape[-1]
    scored = nn.Sequential(model, nn.Sigmoid()).eval()  # Quantus scores raw outputs or softmax only
    labels = targets.numpy()
    blurred = gaussian_blur(images)
    rows = []
    # Blocky maps (each cell one value) make the pixel ranking the cell ranking: an identity.
    blocky = resize_map(bits, size, mode="nearest")
    smooth = resize_map(bits, size)
    for maps, kind in ((blocky, "cells"), (smooth, "native")):
        ours = insertion_deletion(model, images, maps, target=targets, n_steps=STEPS, fraction=FRACTION,
                                  baseline="blur", output_transform="sigmoid", max_examples_per_batch=64)
        curves = {"deletion": (images, blurred, ours.deletion_curve, ours.deletion_auc),
                  "insertion": (blurred, images, ours.insertion_curve, ours.insertion_auc)}
        for name, (start, end, curve, area) in curves.items():
            if kind == "native" and name == "insertion":
                continue  # Quantus has no insertion of its own
            metric = quantus.RegionPerturbation(patch_size=CELL, regions_evaluation=STEPS, abs=False,
                                                normalise=False, perturb_func=copy_into(end.numpy()),
                                                disable_warnings=True)
            theirs = np.array(metric(model=scored, x_batch=start.numpy(), y_batch=labels,
                                     a_batch=maps.float().numpy(), softmax=False))
            curve, area = curve.numpy(), area.numpy()
            # Quantus's AUC (trapezoid, dx = 1, of y(x) - y(x_k)) on our [0, 1] scale.
            their_auc = np.trapezoid(theirs, dx=1, axis=1)
            implied = ((STEPS - 0.5) * curve[:, 0] + 0.5 * (curve[:, 0] - theirs[:, 0]) - their_auc) / STEPS
            if kind == "cells":
                gap = np.abs(curve[:, 1:] - (curve[:, :1] - theirs)).max()
                rows.append((f"{name} AUC, blur, top 25 %", "RegionPerturbation, 8 px cells (blocky maps)",
                             area.mean(), implied.mean(), f"max curve diff {gap:.1e}", n))
            else:
                rows.append((f"{name} AUC, blur, top 25 %", "native: pixel vs 8 px patch ranking",
                             area.mean(), implied.mean(), f"Spearman {spearman(area, implied):.2f}", n))
    return rows


def sensitivity_rows(model, images, targets, maps):
    """Table rows of sensitivity-n against Quantus's SensitivityN fed our masks.

    As in the test: per image, Quantus gets one copy of the image per mask,
    with the map raised on the mask so that its first step removes exactly
    that mask; its first-step correlation over the copies is ours.

    Parameters
    ----------
    model : nn.Module
        The embedded model (logits).
    images : torch.Tensor
        (N, 3, H, W) inputs.
    targets : torch.Tensor
        (N,) finding indices.
    maps : torch.Tensor
        (N, 1, H, W) attribution maps.

    Returns
    -------
    list of tuple
        ``(metric, Quantus counterpart, ours, Quantus, agreement, n)`` per row.
    """
    n, channels = images.shape[:2]
    seen = []

    def recording(x):
        seen.append(x)
        return model(x)

    # Logits, not probabilities: near a probability of 1 the float32 drops of a
    # sigmoid keep few digits, and the two libraries' batches round differently.
    ours = sensitivity_n(recording, images, maps, target=targets, n=list(COUNTS), num_masks=NUM_MASKS,
                         baseline="zero").numpy()
    inputs = torch.cat(seen).view(n, 1 + len(COUNTS) * NUM_MASKS, *images.shape[1:])
    masks = (inputs[:, 1:] != images[:, None]).any(dim=2)  # no pixel is 0 in all three channels
    rows = []
    for position, count in enumerate(COUNTS):
        metric = quantus.SensitivityN(features_in_step=count * channels, n_max_percentage=1.0,
                                      perturb_baseline=0.0, abs=False, normalise=False,
                                      return_aggregate=False, disable_warnings=True)
        theirs = []
        for i in range(n):
            chosen = masks[i, position * NUM_MASKS:(position + 1) * NUM_MASKS].double()
            assert (chosen.flatten(1).sum(1) == count).all()
            # Mask m's pixels first in the ranking; the offset is an affine change of the masses.
            offset = 2 * (maps[i].max() - maps[i].min()) + 1
            shifted = maps[i].double() + offset * chosen[:, None]
            scores = metric(model=model, x_batch=images[i:i + 1].expand(NUM_MASKS, -1, -1, -1).numpy(),
                            y_batch=np.full(NUM_MASKS, int(targets[i])), a_batch=shifted.numpy(),
                            softmax=False, batch_size=NUM_MASKS)
            theirs.append(scores[0])
        theirs = np.array(theirs)
        gap = np.abs(ours[:, position] - theirs).max()
        rows.append((f"sensitivity-n, n = {count}", f"SensitivityN fed our {NUM_MASKS} masks per image",
                     ours[:, position].mean(), theirs.mean(), f"max diff {gap:.1e}", n))
    return rows


def randomisation_rows(model, images, targets):
    """Table rows of the randomisation check against Quantus's MPRT, IBA re-estimated per model.

    The classifier re-drawn alone (independent order: the same draw on both
    sides), and every layer re-drawn (cascading: other draws).

    Parameters
    ----------
    model : nn.Module
        The embedded model (logits).
    images : torch.Tensor
        (N, 3, H, W) inputs.
    targets : torch.Tensor
        (N,) finding indices.

    Returns
    -------
    list of tuple
        ``(metric, Quantus counterpart, ours, Quantus, agreement, n)`` per row.
    """
    n = len(images)
    labels = targets.numpy()
    quantus_ssim = []

    def explain(model, inputs, targets, **kwargs):
        return iba_maps(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    def similarity(a, b, batched=True, **kwargs):
        # Spearman, as Quantus's default; its SSIM recorded beside it.
        quantus_ssim.append(np.array(ssim(a, b, batched=True)))
        return correlation_spearman(a, b, batched=True)

    original = explain(model, images.numpy(), labels)

    def mprt(order):
        metric = quantus.MPRT(layer_order=order, seed=QUANTUS_SEED, skip_layers=True, abs=False,
                              normalise=False, similarity_func=similarity, disable_warnings=True)
        with torch.random.fork_rng():  # Quantus seeds torch's global generator
            scores = metric(model=model, x_batch=images.numpy(), y_batch=labels, a_batch=original,
                            explain_func=explain, batch_size=n)
        return np.array(list(scores.values())[-1]), quantus_ssim[-1]

    rows = []
    # In independent order Quantus's last layer is the classifier; skip_layers explains that one only.
    theirs, their_ssim = mprt("independent")
    ours = randomization_check(lambda m, x, t: iba_maps(m, x, t), model, images, targets,
                               layers=["classifier"], mode="independent", seed=QUANTUS_SEED + 1)
    rows.append(("randomisation, Spearman", "MPRT independent, classifier (same draw)",
                 ours.spearman[0].mean().item(), theirs.mean(),
                 f"max diff {np.abs(ours.spearman[0].numpy() - theirs).max():.1e}", n))
    rows.append(("randomisation, SSIM", "native: ours 2-D on scaled maps vs Quantus's 1-D ssim, same draw",
                 ours.ssim[0].mean().item(), their_ssim.mean(),
                 f"diff {ours.ssim[0].mean().item() - their_ssim.mean():+.3f}", n))
    # Top down with skip_layers: every layer random. Ours: the classifier, then all of features.
    theirs, _ = mprt("top_down")
    ours = randomization_check(lambda m, x, t: iba_maps(m, x, t), model, images, targets,
                               layers=["classifier", "features"], mode="cascading", seed=QUANTUS_SEED + 1)
    rows.append(("randomisation, Spearman", "MPRT top down, all layers (other draws)",
                 ours.spearman[-1].mean().item(), theirs.mean(),
                 f"diff {ours.spearman[-1].mean().item() - theirs.mean():+.3f}", n))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="held-out phantom images (default 8)")
    parser.add_argument("--mprt-images", type=int, default=4,
                        help="of those, for the randomisation rows (IBA re-estimated per model; default 4)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Quantus warns about its parameterisation and unchanged inputs
    start = time.perf_counter()

    model = load_embedded_model("nih_bce")
    images, targets, masks = held_out_batch(args.images)
    bits = iba_bits(model, images, targets)
    maps = resize_map(bits, images.shape[-2:])
    seconds = {"IBA maps": time.perf_counter() - start}
    rows = []
    m = args.mprt_images
    parts = {
        "localisation": lambda: localisation_rows(maps, masks),
        "insertion/deletion": lambda: perturbation_rows(model, images, targets, bits),
        "sensitivity-n": lambda: sensitivity_rows(model, images, targets, maps),
        "randomisation": lambda: randomisation_rows(model, images[:m], targets[:m]),
    }
    for name, part in parts.items():
        begin = time.perf_counter()
        rows += part()
        seconds[name] = time.perf_counter() - begin

    print(f"captum_iba.metrics vs Quantus {quantus.__version__}: embedded nih_bce, IBA at {LAYER} "
          f"(loss bce), {args.images} held-out phantom images (seed {HELD_OUT_SEED}) of "
          f"{images.shape[-1]} px, each explained for its first finding; "
          f"{torch.get_num_threads()} CPU thread(s), {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()) + ")\n")
    print("| metric | Quantus counterpart | ours (mean) | Quantus (mean) | agreement | n |")
    print("|---|---|---|---|---|---|")
    for metric, counterpart, ours, theirs, agreement, n in rows:
        print(f"| {metric} | {counterpart} | {ours:.4f} | {theirs:.4f} | {agreement} | {n} |")


if __name__ == "__main__":
    main()
