"""captum_iba.metrics cross-checked against Quantus 0.6.0 on the same maps, images and model.

Each test names, in its docstring, how Quantus's definition differs from ours
and what is therefore compared. Where the definitions differ, Quantus is
configured to compute our quantity (its baseline, its perturbation function,
the maps it is given), so that the two must agree to float precision; a
wrong implementation on either side (a pixel off, a sign, a wrong set of
pixels, a wrong seed or layer) breaks the stated tolerances by orders of
magnitude.
"""

import numpy as np
import pytest
import torch
from _toys import SmallCNN
from captum.attr import Saliency

quantus = pytest.importorskip("quantus")

from captum_iba.maps import binarize  # noqa: E402
from captum_iba.metrics import (  # noqa: E402
    insertion_deletion,
    localization_iou,
    pointing_game,
    randomization_check,
    sensitivity_n,
)
from captum_iba.metrics._core import gaussian_blur  # noqa: E402

# Quantus warns about its parameterisation and about unchanged perturbations.
pytestmark = pytest.mark.filterwarnings("ignore")

SIZE = 32


def box_masks(boxes, size=SIZE):
    """(N, 1, H, W) float masks of one [x, y, w, h] box per image, by numpy slicing.

    Built independently of ``captum_iba``'s rasterisation, which the tests
    feed with the boxes themselves.
    """
    masks = np.zeros((len(boxes), 1, size, size))
    for mask, (x, y, w, h) in zip(masks, boxes):
        mask[0, y:y + h, x:x + w] = 1.0
    return masks


def peaked_maps(boxes, generator):
    """Noise maps whose maximum sits inside, on the edge of or just outside each box.

    Maximum positions cycle through: the box centre, the last column inside,
    the first column outside (right), the first row outside (below) and
    anywhere (noise only), so that an off-by-one in the box edges changes hits.
    """
    maps = torch.rand(len(boxes), SIZE, SIZE, generator=generator, dtype=torch.float64)
    for i, (x, y, w, h) in enumerate(boxes):
        row, column = [
            (y + h // 2, x + w // 2),
            (y + h // 2, x + w - 1),
            (y + h // 2, x + w),
            (y + h, x + w // 2),
            (None, None),
        ][i % 5]
        if row is not None:
            maps[i, row, column] = 2.0
    return maps


def random_boxes(n, generator):
    """Boxes [x, y, w, h] that leave room for a pixel outside them on the right and below."""
    boxes = []
    for _ in range(n):
        w, h = torch.randint(3, 12, (2,), generator=generator).tolist()
        x = int(torch.randint(0, SIZE - w - 1, (1,), generator=generator))
        y = int(torch.randint(0, SIZE - h - 1, (1,), generator=generator))
        boxes.append([x, y, w, h])
    return boxes


def test_pointing_game_matches_quantus():
    """Pointing game against ``quantus.PointingGame``.

    Differences: Quantus hits when *any* pixel holding the maximum lies in
    the mask and has no tolerance; ours (TorchRay's) takes the first maximum
    (lowest flat index) and hits when a mask pixel is strictly closer than
    ``tolerance`` pixels. With ``tolerance=1`` our disc is the point alone,
    so for maps with a unique maximum the two agree; with ``tolerance=t``
    ours equals Quantus run on the masks dilated by the open disc of radius
    ``t`` (built here in numpy). Two differences are asserted as such: tied
    maxima (Quantus counts any, we count the first) and an empty mask
    (Quantus 0.6.0 sets NaN into a bool array, which reads True: a hit; ours
    is a miss, as TorchRay).

    Tolerance: the hit vectors must be identical (the maps hold hits,
    near-misses one pixel outside the boxes and misses).
    """
    generator = torch.Generator().manual_seed(0)
    boxes = random_boxes(20, generator)
    maps = peaked_maps(boxes, generator)
    masks = box_masks(boxes)
    metric = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)

    def quantus_hits(s_batch):
        scores = metric(model=None, x_batch=np.zeros_like(masks), y_batch=np.zeros(len(boxes), int),
                        a_batch=maps[:, None].numpy(), s_batch=s_batch)
        return np.array(scores, dtype=bool)

    ours = pointing_game(maps, [[box] for box in boxes], tolerance=1).hits.numpy()
    theirs = quantus_hits(masks)
    assert 0 < ours.sum() < len(ours)  # both hits and misses are tested
    np.testing.assert_array_equal(ours, theirs)

    # A tolerance of t pixels is Quantus's game on masks grown by the open disc of radius t.
    tolerance = 4
    offsets = [(dr, dc) for dr in range(-tolerance, tolerance + 1) for dc in range(-tolerance, tolerance + 1)
               if dr * dr + dc * dc < tolerance ** 2]
    grown = np.zeros_like(masks)
    padded = np.pad(masks, ((0, 0), (0, 0), (tolerance, tolerance), (tolerance, tolerance)))
    for dr, dc in offsets:
        grown = np.maximum(grown, padded[:, :, tolerance + dr:tolerance + dr + SIZE,
                                         tolerance + dc:tolerance + dc + SIZE])
    ours = pointing_game(maps, [[box] for box in boxes], tolerance=tolerance).hits.numpy()
    assert 0 < ours.sum() < len(ours)
    np.testing.assert_array_equal(ours, quantus_hits(grown))

    # Where the definitions differ. Two equal maxima, the first outside the box, the second inside:
    tied = torch.zeros(1, SIZE, SIZE, dtype=torch.float64)
    tied[0, 0, 0] = tied[0, 20, 20] = 1.0
    tied_mask = box_masks([[18, 18, 5, 5]])
    assert not pointing_game(tied, [[[18, 18, 5, 5]]], tolerance=1).hits.item()
    assert bool(metric(model=None, x_batch=np.zeros_like(tied_mask), y_batch=np.zeros(1, int),
                       a_batch=tied[:, None].numpy(), s_batch=tied_mask)[0])
    # An empty mask: ours a miss, Quantus 0.6.0 a hit (NaN stored in a bool array).
    empty = np.zeros((1, 1, SIZE, SIZE))
    assert not pointing_game(tied, torch.zeros(1, SIZE, SIZE), tolerance=1).hits.item()
    assert bool(metric(model=None, x_batch=empty, y_batch=np.zeros(1, int),
                       a_batch=tied[:, None].numpy(), s_batch=empty)[0])


def test_localization_iou_matches_quantus_localisation():
    """Localisation IoU against ``quantus.TopKIntersection`` and ``quantus.AttributionLocalisation``.

    Differences: Quantus's AttributionLocalisation (Kohlbrenner et al.) is
    the share of the attribution mass inside the mask, of the continuous
    map; TopKIntersection is the share of the k highest pixels that lie in
    the mask. Ours is the IoU of the thresholded map with the mask. The IoU
    follows from either once the sizes are known: with P the kept pixels, G
    the mask and r = |P & G| / |P|, IoU = r|P| / (|P| + |G| - r|P|).

    - ``threshold="top:F"``: Quantus's TopKIntersection with k = round(F H W)
      ranks the continuous maps itself (numpy argsort), so this checks our
      top-k selection and our IoU from boxes against an independent path.
    - ``threshold="otsu"``: AttributionLocalisation fed our 0/1 mask of kept
      pixels (its mass share is then |P & G| / |P|, up to its 1e-9 in the
      denominator), which checks the intersection and union of ours.

    Tolerance: 1e-6 on the IoU (the maps have no ties).
    """
    generator = torch.Generator().manual_seed(1)
    boxes = random_boxes(12, generator)
    # Gaussian blobs shifted by 0 to 11 pixels from the box centres, on noise: the IoU varies.
    axis = torch.arange(SIZE, dtype=torch.float64)
    rows, columns = torch.meshgrid(axis, axis, indexing="ij")
    maps = 0.2 * torch.rand(len(boxes), SIZE, SIZE, generator=generator, dtype=torch.float64)
    for i, (x, y, w, h) in enumerate(boxes):
        shift = i % 4 * 11 / 3
        centre_row, centre_column = y + h / 2, x + w / 2 + shift
        maps[i] += torch.exp(-((rows - centre_row) ** 2 + (columns - centre_column) ** 2) / (2 * 3.0 ** 2))
    masks = box_masks(boxes)
    ground_truth = masks.reshape(len(boxes), -1).sum(1)
    common = dict(model=None, x_batch=np.zeros_like(masks), y_batch=np.zeros(len(boxes), int), s_batch=masks)

    fraction = 0.05
    k = int(np.floor(fraction * SIZE * SIZE + 0.5))
    ours = localization_iou(maps, [[box] for box in boxes], threshold=f"top:{fraction}").iou.numpy()
    share = np.array(quantus.TopKIntersection(k=k, abs=False, normalise=False, disable_warnings=True)(
        a_batch=maps[:, None].numpy(), **common))
    inside = share * k
    np.testing.assert_allclose(ours, inside / (k + ground_truth - inside), rtol=0, atol=1e-6)
    assert ours.std() > 0.05  # the IoU varies over the maps

    kept = binarize(maps, "otsu")[:, 0].double()
    ours = localization_iou(maps, [[box] for box in boxes], threshold="otsu").iou.numpy()
    share = np.array(quantus.AttributionLocalisation(abs=False, normalise=False, disable_warnings=True)(
        a_batch=kept[:, None].numpy(), **common))
    size = kept.flatten(1).sum(1).numpy()
    np.testing.assert_allclose(ours, share * size / (size + ground_truth - share * size), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def net_and_images():
    """SmallCNN (random weights, eval mode, 4 logits) and four 3-channel 32 px images."""
    with torch.random.fork_rng():
        model = SmallCNN(n_outputs=4, seed=0).eval()
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    return model, images, np.array([0, 1, 2, 3])


def copy_into(source):
    """A Quantus ``perturb_func`` that writes ``source``'s values at the given flat indices."""
    flat = source.reshape(len(source), -1)

    def perturb(arr, indices, **kwargs):
        rows = np.arange(len(arr))[:, None]
        perturbed = arr.copy()
        perturbed[rows, indices] = flat[rows, indices]
        return perturbed

    return perturb


@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_insertion_deletion_matches_quantus_region_perturbation(net_and_images, baseline):
    """Insertion and deletion curves against ``quantus.RegionPerturbation`` (MoRF).

    Differences: Quantus (Samek et al.) moves square patches of
    ``patch_size`` pixels (all channels), ranked by their attribution sum,
    one patch per step, and records ``y(x) - y(x_k)`` for k = 1..K (no
    point at k = 0); its "black" baseline is the image minimum; it scores
    softmax probabilities by default; its AUC is the trapezoid rule with
    dx = 1 (``get_auc_score`` calls ``np.trapz``, gone from NumPy 2.4, so
    the rule is applied here). It has no insertion. Ours ranks single
    pixels (ties: lower flat index first), moves ``H W / n_steps`` of them
    per step, records the score itself from k = 0, and integrates over
    [0, 1].

    Comparable: maps constant on 4 x 4 blocks with distinct values, so that
    ranking pixels ranks the blocks; ``patch_size=4``, K = ``n_steps`` = 64
    blocks. Then our deletion curve is ``y(x) - quantus`` after the first
    point. The zero baseline is Quantus's ``perturb_baseline=0.0``; the blur
    baseline is a ``perturb_func`` copying our blurred image in. Insertion is
    Quantus run from the baseline (``x_batch``) with a ``perturb_func`` that
    copies the image in. The areas then satisfy, per image with K steps and
    c0, c1 our first two points and Q Quantus's AUC,
    ``ours = ((K - 1/2) c0 + c1/2 - Q) / K``.

    Tolerance: 1e-6 on softmax probabilities and areas (float32 forward
    passes in batches of different composition differ by about 3e-8).
    """
    model, images, labels = net_and_images
    blocks = 8
    coarse = torch.randperm(blocks * blocks, generator=torch.Generator().manual_seed(3)).double()
    coarse = torch.stack([coarse, coarse.flip(0), coarse.roll(7), coarse.roll(-11)])
    coarse = coarse.view(4, 1, blocks, blocks)
    maps = coarse.repeat_interleave(SIZE // blocks, 2).repeat_interleave(SIZE // blocks, 3)
    baselines = torch.zeros_like(images) if baseline == "zero" else gaussian_blur(images)
    ours = insertion_deletion(model, images, maps, target=torch.from_numpy(labels), n_steps=blocks * blocks,
                              baseline=baseline, output_transform="softmax")

    def region_perturbation(start, perturb):
        metric = quantus.RegionPerturbation(patch_size=SIZE // blocks, regions_evaluation=blocks * blocks,
                                            abs=False, normalise=False, disable_warnings=True, **perturb)
        curves = metric(model=model, x_batch=start.numpy(), y_batch=labels,
                        a_batch=maps.float().numpy(), softmax=True)
        return np.array(curves)

    deletion_perturb = ({"perturb_baseline": 0.0} if baseline == "zero"
                        else {"perturb_func": copy_into(baselines.numpy())})
    for name, start, perturb, curve, area in [
        ("deletion", images, deletion_perturb, ours.deletion_curve, ours.deletion_auc),
        ("insertion", baselines, {"perturb_func": copy_into(images.numpy())}, ours.insertion_curve,
         ours.insertion_auc),
    ]:
        theirs = region_perturbation(start, perturb)
        curve = curve.numpy()
        np.testing.assert_allclose(curve[:, 1:], curve[:, :1] - theirs, rtol=0, atol=1e-6, err_msg=name)
        steps = blocks * blocks
        # Quantus's AUC, as its calculate_auc (whose np.trapz is gone from NumPy >= 2.4).
        their_area = np.trapezoid(theirs, dx=1, axis=1)
        implied = ((steps - 0.5) * curve[:, 0] + 0.5 * (curve[:, 0] - theirs[:, 0]) - their_area) / steps
        np.testing.assert_allclose(area.numpy(), implied, rtol=0, atol=1e-6, err_msg=name)
        assert np.ptp(curve) > 0.05  # the curves move: the check is not between constants


def test_sensitivity_n_matches_quantus_configured_to_random_subsets(net_and_images):
    """Sensitivity-n against ``quantus.SensitivityN`` set up to our definition.

    Differences: Quantus removes features (each channel of each pixel is
    one) cumulatively in order of attribution, ``features_in_step`` at a
    time, and for each step correlates, *across the images of the batch*,
    ``y(x) - y(x_k)`` with the attribution of that step's features alone
    (only the first batch is kept); its "black" baseline is the image
    minimum; it scores softmax probabilities unless ``softmax=False``; and
    it asserts ``H W % features_in_step == 0`` though it counts C H W
    features. Ours (Ancona et al.) draws, per image, random sets of n pixels
    (all channels) and correlates, *across the sets*, the drop with the
    attribution mass of the set; baseline zero. The two are different
    quantities; Quantus's own one is not compared.

    Comparable: Quantus's first step is the drop of removing exactly the top
    ``features_in_step`` features from the clean image. For image i and each
    of our masks m (read off the inputs our metric scores), Quantus gets one
    batch of copies of image i, copy m with the map ``a_i + c mask_m``:
    with c above the map's range and ``features_in_step = n C``, the
    first step removes mask m, and the attribution it sums is
    ``C (mass_m + c n)``, an affine change that Pearson ignores. Its
    first-step score is then our correlation for image i.

    Tolerance: 1e-4 on the correlation (scipy correlates Quantus's float32
    drops; the differences are about 1e-5), while the correlations span
    more than 0.2 over images and counts.
    """
    model, _, labels = net_and_images
    # For Quantus's assertion H W % (n C) == 0: 24 px images, H W = 576.
    size = 24
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(4, 3, size, size, generator=generator)
    n_inputs, channels = images.shape[:2]
    maps = torch.rand(n_inputs, 1, size, size, generator=generator, dtype=torch.float64)
    num_masks = 24
    seen = []

    def recording_model(x):
        seen.append(x)
        return model(x)

    counts = [16, 96]
    ours = sensitivity_n(recording_model, images, maps, target=torch.from_numpy(labels), n=counts,
                         num_masks=num_masks, baseline="zero").numpy()
    # One pass, per image: the clean image, then its masks, count after count.
    scored = torch.cat(seen).view(n_inputs, 1 + len(counts) * num_masks, channels, size, size)
    masks = (scored[:, 1:] != images[:, None]).any(dim=2)  # images hold no exact zeros
    worst = 0.0
    for position, count in enumerate(counts):
        metric = quantus.SensitivityN(features_in_step=count * channels, n_max_percentage=1.0,
                                      perturb_baseline=0.0, abs=False, normalise=False,
                                      return_aggregate=False, disable_warnings=True)
        for i in range(n_inputs):
            image_masks = masks[i, position * num_masks:(position + 1) * num_masks].double()
            assert (image_masks.flatten(1).sum(1) == count).all()
            shifted = maps[i] + 2.0 * image_masks[:, None]  # the map lies in [0, 1)
            theirs = metric(model=model, x_batch=images[i:i + 1].expand(num_masks, -1, -1, -1).numpy(),
                            y_batch=np.full(num_masks, labels[i]), a_batch=shifted.numpy(),
                            softmax=False, batch_size=num_masks)
            worst = max(worst, abs(ours[i, position] - theirs[0]))
    assert worst < 1e-4, worst
    assert np.ptp(ours) > 0.2  # the correlations differ over images and counts


def test_randomization_check_matches_quantus_mprt(net_and_images):
    """Model-parameter randomisation against ``quantus.MPRT``.

    Differences: Quantus randomises every module that has
    ``reset_parameters``, in reverse ``named_modules`` order (top down),
    re-seeding torch's global generator with ``seed + 1`` before *every*
    layer; abs and normalisation are on by default; its similarity is
    Spearman (scipy, average ranks). Ours randomises the model's stages by
    default (here ``head``, ``layer``, ``stem``), so it is given Quantus's
    list (the modules that own parameters and have ``reset_parameters``),
    layer k with ``seed + k`` in a forked generator, and reports Spearman
    (average ranks) and SSIM.

    Comparable: the layer list; in ``independent`` mode, Quantus's layer k
    equals ours with ``layers=[k]`` and our seed = Quantus's seed + 1 (the
    same draw); in cascading mode the first step is the same draw, later
    ones are other draws of the same layers (different seeds), so there only
    the end is compared: with every layer random, the mean Spearman is below
    0.3 in both. Quantus's SSIM option (``similarity_func=ssim``) is another
    quantity: skimage on the *flattened* maps (1-D windows), with the pair's
    joint data range; ours is 2-D (7 x 7 windows) on maps each min-max
    scaled to [0, 1]. It is not compared here (the benchmark prints both
    means).

    Tolerance: 1e-9 on Spearman where the draws are the same (observed:
    1e-16).
    """
    model, images, labels = net_and_images

    def saliency(model, inputs, targets):
        # Channel-summed absolute gradients, (N, 1, H, W), for both libraries.
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        targets = torch.as_tensor(targets, dtype=torch.long)
        return Saliency(model).attribute(inputs, target=targets, abs=True).sum(1, keepdim=True).detach()

    def quantus_explain(model, inputs, targets, **kwargs):
        return saliency(model, inputs, targets).numpy()

    original = quantus_explain(model, images.numpy(), labels)
    target = torch.from_numpy(labels)

    def run_quantus(order):
        metric = quantus.MPRT(layer_order=order, seed=10, abs=False, normalise=False, disable_warnings=True)
        with torch.random.fork_rng():  # Quantus seeds the global generator
            scores = metric(model=model, x_batch=images.numpy(), y_batch=labels, a_batch=original,
                            explain_func=quantus_explain, batch_size=len(labels))
        scores.pop("original")
        return scores

    independent = run_quantus("independent")
    assert randomization_check(saliency, model, images, target).layers == ["head", "layer", "stem"]
    names = ["head.5", "head.0", "layer.0", "stem.1", "stem.0"]
    assert names == list(independent)[::-1] or names == list(independent)
    for name, theirs in independent.items():
        ours = randomization_check(saliency, model, images, target, layers=[name], mode="independent",
                                   seed=11)
        np.testing.assert_allclose(ours.spearman[0].numpy(), theirs, rtol=0, atol=1e-9, err_msg=name)

    cascading = run_quantus("top_down")
    assert list(cascading) == names
    ours = randomization_check(saliency, model, images, target, layers=names, mode="cascading", seed=11)
    np.testing.assert_allclose(ours.spearman[0].numpy(), cascading[names[0]], rtol=0, atol=1e-9)
    theirs = np.array(list(cascading.values()))
    assert ours.spearman[0].mean() > 0.4  # the first step leaves some similarity to lose
    assert ours.spearman[-1].mean() < 0.3 and theirs[-1].mean() < 0.3
