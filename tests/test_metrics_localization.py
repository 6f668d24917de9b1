"""Localisation IoU and the pointing game on hand-made maps and masks."""

import math

import pytest
import torch

from captum_iba.metrics import localization_iou, pointing_game


def box_mask(size, *boxes):
    """A (H, W) mask that is the union of [x, y, w, h] boxes (integers)."""
    mask = torch.zeros(size, dtype=torch.bool)
    for x, y, w, h in boxes:
        mask[y:y + h, x:x + w] = True
    return mask


# localization_iou


@pytest.mark.parametrize("threshold", [0.0, "top:0.125", "otsu"])
def test_map_equal_to_the_mask_scores_one(threshold):
    masks = torch.stack([box_mask((16, 16), (2, 3, 4, 8)), box_mask((16, 16), (8, 0, 8, 4))])
    result = localization_iou(masks.float(), masks, threshold=threshold)
    assert torch.equal(result.iou, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("threshold", [0.0, "top:0.125", "otsu"])
def test_disjoint_map_scores_zero(threshold):
    mask = box_mask((16, 16), (0, 0, 4, 8))
    maps = box_mask((16, 16), (8, 8, 4, 8))[None].float()
    result = localization_iou(maps, mask[None], threshold)
    assert result.iou.tolist() == [0.0]


def test_threshold_modes_on_a_hand_made_map():
    # Values 0 .. 15 in rows of 4; the ground truth is the bottom row (12 .. 15).
    maps = torch.arange(16.0).view(1, 4, 4)
    truth = box_mask((4, 4), (0, 3, 4, 1))[None]
    # top:0.25 keeps 12 .. 15 exactly; top:0.5 keeps 8 .. 15 (IoU 4 / 8).
    assert localization_iou(maps, truth, "top:0.25").iou.item() == 1.0
    assert localization_iou(maps, truth, "top:0.5").iou.item() == 0.5
    # L2 norm of 0 .. 15 is sqrt(1240) = 35.21: 0.3 keeps 11 .. 15 (IoU 4 / 5),
    # 0.4 keeps 15 only (IoU 1 / 4).
    assert localization_iou(maps, truth, 0.3).iou.item() == pytest.approx(4 / 5)
    assert localization_iou(maps, truth, 0.4).iou.item() == pytest.approx(1 / 4)
    # Otsu splits the even ramp in the middle: 8 .. 15.
    assert localization_iou(maps, truth, "otsu").iou.item() == 0.5


def test_boxes_and_their_masks_give_the_same_iou():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 20, 24, generator=generator)
    boxes = [[[2, 3, 5, 4], [4, 5, 10, 6]], [[0, 0, 24, 20]], torch.tensor([[23, 19, 1, 1]])]
    masks = torch.stack([
        box_mask((20, 24), (2, 3, 5, 4), (4, 5, 10, 6)),
        box_mask((20, 24), (0, 0, 24, 20)),
        box_mask((20, 24), (23, 19, 1, 1)),
    ])
    for threshold in (0.05, "top:0.2", "otsu"):
        from_boxes = localization_iou(maps, boxes, threshold)
        from_masks = localization_iou(maps, masks, threshold)
        assert torch.equal(from_boxes.iou, from_masks.iou)
        assert not from_boxes.iou.isnan().any()


def test_a_pixel_is_in_a_box_when_its_centre_is():
    # Centres at 0.5, 1.5, 2.5: [0.5, 2.5) holds columns 0 and 1, [0.5, 1.5) row 0.
    expected = box_mask((4, 4), (0, 0, 2, 1))[None]
    result = localization_iou(expected.float(), [[[0.5, 0.5, 2.0, 1.0]]], threshold=0.0)
    assert result.iou.item() == 1.0


def test_boxes_given_in_image_pixels_for_a_coarse_map():
    # A 4 x 4 map on a 16 x 16 image: the box covers the map's top-left cell.
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    result = localization_iou(maps, [[[0, 0, 4, 4]]], threshold="top:0.0625", size=(16, 16))
    assert result.iou.item() == 1.0


def test_ground_truth_masks_may_be_numeric_and_carry_a_channel():
    masks = box_mask((8, 8), (1, 1, 3, 3))[None, None]
    maps = masks.float() * 5
    assert localization_iou(maps, masks.long(), "otsu").iou.item() == 1.0


def test_empty_ground_truth_is_undefined_and_an_empty_map_scores_zero():
    truth = torch.stack([torch.zeros(8, 8, dtype=torch.bool), box_mask((8, 8), (0, 0, 2, 2))])
    maps = torch.stack([torch.rand(8, 8), torch.full((8, 8), 0.7)])  # constant: empty under Otsu
    result = localization_iou(maps, truth, "otsu")
    assert math.isnan(result.iou[0]) and result.iou[1].item() == 0.0
    assert math.isnan(localization_iou(torch.rand(1, 8, 8), [[]], "otsu").iou.item())


def test_class_means_over_a_dataset():
    size = (8, 8)
    truth = torch.stack([box_mask(size, (0, 0, 4, 8))] * 5)
    maps = torch.stack([
        box_mask(size, (0, 0, 4, 8)).float(),  # IoU 1
        box_mask(size, (0, 0, 2, 8)).float(),  # IoU 0.5
        box_mask(size, (4, 0, 4, 8)).float(),  # IoU 0
        box_mask(size, (0, 0, 4, 8)).float(),  # IoU 1
        box_mask(size, (0, 0, 4, 8)).float(),  # IoU 1, but no ground truth below
    ])
    truth[4] = False
    result = localization_iou(maps, truth, threshold=0.0, labels=[0, 0, 1, 2, 2], num_classes=4)
    expected_class = torch.tensor([0.75, 0.0, 1.0, math.nan], dtype=torch.float64)
    assert torch.allclose(result.class_iou, expected_class, equal_nan=True)
    assert result.mean_iou.item() == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    unlabelled = localization_iou(maps, truth, threshold=0.0)
    assert unlabelled.class_iou.shape == (1,)
    assert unlabelled.mean_iou.item() == pytest.approx((1 + 0.5 + 0 + 1) / 4)


# pointing_game


def peak_map(size, row, column):
    maps = torch.zeros(size)
    maps[row, column] = 1.0
    return maps


@pytest.mark.parametrize(
    "mask_box, expected_hit",
    [
        ((8, 8, 5, 5), True),      # the maximum (row 10, column 10) is inside the mask
        ((10, 25, 1, 1), False),   # straight below, exactly at the tolerance (15)
        ((10, 24, 1, 1), True),    # one pixel closer
        ((19, 22, 2, 2), False),   # nearest pixel (22, 19): 12 and 9 away, exactly 15
        ((18, 22, 1, 1), True),    # (22, 18): 12 and 8 away, 14.4
        ((40, 40, 5, 5), False),   # far outside
    ],
)
def test_pointing_game_tolerance_is_a_strict_disc(mask_box, expected_hit):
    maps = peak_map((48, 48), 10, 10)[None]
    mask = box_mask((48, 48), mask_box)[None]
    assert pointing_game(maps, mask, tolerance=15).hits.tolist() == [expected_hit]


def test_pointing_game_tolerance_values():
    maps = peak_map((32, 32), 10, 10)[None]
    below = box_mask((32, 32), (10, 25, 1, 1))[None]
    assert pointing_game(maps, below, tolerance=15.5).hits.item()
    inside = box_mask((32, 32), (8, 8, 5, 5))[None]
    assert pointing_game(maps, inside, tolerance=1).hits.item()
    assert not pointing_game(maps, inside, tolerance=0).hits.item()  # TorchRay's empty disc


def test_pointing_game_takes_the_first_of_equal_maxima():
    maps = torch.zeros(1, 32, 32)
    maps[0, 2, 30] = maps[0, 30, 2] = 1.0  # flat index 94 comes before 962
    near_first = box_mask((32, 32), (28, 0, 4, 4))[None]
    near_second = box_mask((32, 32), (0, 28, 4, 4))[None]
    assert pointing_game(maps, near_first, tolerance=3).hits.item()
    assert not pointing_game(maps, near_second, tolerance=3).hits.item()


def test_pointing_game_resizes_coarse_maps_to_the_mask():
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 1.0  # the bottom-right cell of a 32 x 32 image
    assert pointing_game(maps, box_mask((32, 32), (24, 24, 8, 8))[None], tolerance=1).hits.item()
    assert not pointing_game(maps, box_mask((32, 32), (0, 0, 8, 8))[None], tolerance=1).hits.item()


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside TorchRay
def test_pointing_game_matches_torchray():
    torchray_pointing_game = pytest.importorskip("torchray.benchmark.pointing_game")
    generator = torch.Generator().manual_seed(0)
    n, size, num_classes, tolerance = 40, (24, 20), 5, 4
    maps = torch.rand(n, 1, 12, 10, generator=generator)
    maps[::7] = 0.0  # all-equal maps: ties
    masks = torch.zeros(n, *size, dtype=torch.bool)
    for i in range(n):
        if i % 9 == 4:
            continue  # an empty mask
        x, y = torch.randint(0, 16, (2,), generator=generator).tolist()
        w, h = torch.randint(1, 5, (2,), generator=generator).tolist()
        masks[i] = box_mask(size, (x, y, w, h))
    labels = torch.randint(0, num_classes - 1, (n,), generator=generator)  # the last class empty

    result = pointing_game(
        maps, masks, tolerance=tolerance, labels=labels, num_classes=num_classes
    )

    reference = torchray_pointing_game.PointingGame(num_classes, tolerance=tolerance)
    resized = torch.nn.functional.interpolate(maps, size, mode="bilinear", align_corners=False)
    for i in range(n):
        flat = int(torch.argmax(resized[i].flatten()))
        point = (flat % size[1], flat // size[1])  # TorchRay's (u, v) = (column, row)
        hit = reference.evaluate(masks[i], point)
        assert (hit == 1) == result.hits[i].item()
        reference.aggregate(hit, int(labels[i]))
    assert 0 < result.hits.sum() < n  # both outcomes are exercised
    assert torch.equal(result.class_hits, reference.hits)
    assert torch.equal(result.class_misses, reference.misses)
    present = (reference.hits + reference.misses) > 0
    assert torch.allclose(result.class_accuracy[present], reference.class_accuracies[present])
    assert result.class_accuracy[~present].isnan().all()
    expected_accuracy = reference.class_accuracies[present].mean().item()
    assert result.accuracy.item() == pytest.approx(expected_accuracy)


def test_pointing_game_empty_mask_is_a_miss():
    maps = peak_map((8, 8), 4, 4)[None]
    result = pointing_game(maps, torch.zeros(1, 8, 8, dtype=torch.bool), tolerance=15)
    assert result.hits.tolist() == [False] and result.class_misses.tolist() == [1.0]
    assert pointing_game(maps, [[]], tolerance=15).hits.tolist() == [False]
