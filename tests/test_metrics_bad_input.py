"""Bad input gets a clear error that names the argument; edge cases get their documented result."""

import math

import pytest
import torch

from captum_iba.metrics import (
    insertion_deletion,
    localization_iou,
    map_correlation,
    pointing_game,
    sensitivity_n,
)

N, C, H, W = 2, 3, 8, 8


def model(x):
    """Two outputs per sample."""
    return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)


def single_output(x):
    return x.flatten(1).sum(dim=1)


INPUTS = torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(0))
MAPS = torch.rand(N, H, W, generator=torch.Generator().manual_seed(1))
MASKS = torch.zeros(N, H, W, dtype=torch.bool)
MASKS[:, 2:5, 2:5] = True



def with_defaults(metric, **defaults):
    """The metric, called with valid defaults that a test overrides one at a time."""
    return lambda **overrides: metric(**{**defaults, **overrides})


PERTURBATION_DEFAULTS = dict(forward_func=model, inputs=INPUTS, attributions=MAPS, target=0)
PERTURBATION_METRICS = {
    "insertion_deletion": with_defaults(insertion_deletion, **PERTURBATION_DEFAULTS, n_steps=4),
    "sensitivity_n": with_defaults(sensitivity_n, **PERTURBATION_DEFAULTS, n=4, num_masks=3),
}
MAP_METRICS = {
    **PERTURBATION_METRICS,
    "localization_iou": with_defaults(localization_iou, attributions=MAPS, masks_or_boxes=MASKS),
    "pointing_game": with_defaults(pointing_game, attributions=MAPS, masks_or_boxes=MASKS),
    "map_correlation": with_defaults(map_correlation, attributions=MAPS, reference_maps=MAPS),
}


@pytest.mark.parametrize("metric", MAP_METRICS)
def test_attributions_of_another_batch_size(metric):
    message = r"attributions has batch size 3 but (masks_or_boxes holds )?2"
    with pytest.raises(ValueError, match=message):
        MAP_METRICS[metric](attributions=torch.rand(3, H, W))


@pytest.mark.parametrize("metric", MAP_METRICS)
def test_nan_in_attributions(metric):
    maps = MAPS.clone()
    maps[1, 3, 3] = math.nan
    with pytest.raises(ValueError, match="attributions contain NaN or Inf"):
        MAP_METRICS[metric](attributions=maps)


@pytest.mark.parametrize("metric", PERTURBATION_METRICS)
@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"output_transform": "logsoftmax"}, ValueError, "output_transform must be 'sigmoid'"),
        ({"baseline": "noise"}, ValueError, "baseline must be one of"),
        ({"baseline": torch.zeros(5)}, ValueError, "baseline of shape"),
        ({"target": None}, ValueError, "target is required for a model with outputs of shape"),
        ({"target": 2}, ValueError, r"target indices must lie in \[-2, 1\]"),
        ({"target": (0, 1)}, ValueError, "must select one value per sample"),
        ({"target": True}, TypeError, "target must be"),
        ({"target": [0, 1, 0]}, ValueError, "a list target must hold one entry per sample"),
        ({"target": 0.5}, TypeError, "target must be"),
        ({"max_examples_per_batch": 0}, ValueError, "max_examples_per_batch: expected an int >= 1, got 0"),
        ({"inputs": INPUTS[0]}, ValueError, r"inputs: expected shape \(N, C, H, W\)"),
        ({"inputs": (INPUTS,)}, TypeError, "inputs: expected a torch.Tensor"),
        ({"additional_forward_args": (torch.zeros(3),)}, ValueError, r"forward_args\[0\]"),
    ],
)
def test_bad_perturbation_arguments(metric, arguments, error, message):
    with pytest.raises(error, match=message):
        PERTURBATION_METRICS[metric](**arguments)


@pytest.mark.parametrize("metric", PERTURBATION_METRICS)
def test_a_model_with_one_output_needs_no_target(metric):
    result = PERTURBATION_METRICS[metric](forward_func=single_output, target=None)
    scores = result.deletion_auc if isinstance(result, tuple) else result
    assert scores.shape[0] == N and not scores.isnan().any()


@pytest.mark.parametrize("n_steps, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_n_steps_below_one(n_steps, error):
    with pytest.raises(error, match="n_steps"):
        PERTURBATION_METRICS["insertion_deletion"](n_steps=n_steps)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_fraction_outside_the_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\]"):
        PERTURBATION_METRICS["insertion_deletion"](fraction=fraction)


@pytest.mark.parametrize("n", [H * W + 1, 0, [4, 1000], []])
def test_sensitivity_n_pixel_counts_out_of_range(n):
    with pytest.raises(ValueError, match="n must hold"):
        PERTURBATION_METRICS["sensitivity_n"](n=n)


def test_sensitivity_n_needs_two_masks():
    with pytest.raises(ValueError, match="num_masks: expected an int >= 2, got 1"):
        PERTURBATION_METRICS["sensitivity_n"](num_masks=1)


@pytest.mark.parametrize("metric", ["localization_iou", "pointing_game"])
@pytest.mark.parametrize(
    "boxes",
    [
        [[[6, 6, 4, 4]], []],   # runs over the right and bottom edges
        [[[-1, 0, 2, 2]], []],  # starts left of the image
        [[[9, 9, 1, 1]], []],   # entirely outside
        [[[2, 2, 0, 3]], []],   # empty box
    ],
)
def test_boxes_outside_the_image(metric, boxes):
    message = r"box \[x, y, w, h\] = .* of image 0 is not a non-empty box inside"
    with pytest.raises(ValueError, match=message):
        MAP_METRICS[metric](masks_or_boxes=boxes)


@pytest.mark.parametrize("metric", ["localization_iou", "pointing_game"])
@pytest.mark.parametrize(
    "ground_truth, error, message",
    [
        ([[[1, 1, 2, 2]]], ValueError, "attributions has batch size 2 but masks_or_boxes holds 1"),
        (MASKS[:1], ValueError, "attributions has batch size 2 but masks_or_boxes holds 1"),
        (MASKS[0], ValueError, r"masks of shape \(N, H, W\)"),
        (MASKS.float() * 2, ValueError, "only 0 and 1"),
        ("boxes", TypeError, "masks_or_boxes must be"),
    ],
)
def test_bad_ground_truth(metric, ground_truth, error, message):
    with pytest.raises(error, match=message):
        MAP_METRICS[metric](masks_or_boxes=ground_truth)


@pytest.mark.parametrize("metric", ["localization_iou", "pointing_game"])
@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        ([0], None, "labels must hold one class per sample"),
        ([0, -1], None, "non-negative"),
        ([0, 3], 2, "num_classes is 2"),
    ],
)
def test_bad_labels(metric, labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        MAP_METRICS[metric](labels=labels, num_classes=num_classes)


def test_empty_masks_have_documented_results():
    empty = torch.zeros(N, H, W, dtype=torch.bool)
    assert localization_iou(MAPS, empty).iou.isnan().all()
    assert localization_iou(MAPS, empty).mean_iou.isnan()
    assert not pointing_game(MAPS, empty).hits.any()


@pytest.mark.parametrize("threshold", ["top:2", "mean", 1.5])
def test_unknown_threshold(threshold):
    with pytest.raises(ValueError, match="threshold must be"):
        localization_iou(MAPS, MASKS, threshold=threshold)


@pytest.mark.parametrize("tolerance", [-1, math.nan, "15"])
def test_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance must be"):
        pointing_game(MAPS, MASKS, tolerance=tolerance)


def test_size_is_for_boxes_only():
    with pytest.raises(ValueError, match="size is only for boxes"):
        localization_iou(MAPS, MASKS, size=(8, 8))
