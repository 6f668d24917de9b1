"""`captum_iba.app.report.evaluation` piece by piece, on hand-made items, masks and maps."""

import math

import pytest
import torch

from captum_iba.app.report import evaluation
from captum_iba.app.report.evaluation import (
    EvaluationSettings,
    MethodMaps,
    Pairs,
    attribute_all,
    component_coverage,
    detector_pairs,
    finding_pairs,
    items_with,
    random_maps,
)

SIZE = 16


def square(top, left, side=4, size=SIZE):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


ONE_PART = square(2, 2)
TWO_PARTS = square(2, 2) | square(10, 10)


def make_pairs(masks):
    n = len(masks)
    return Pairs(images=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, SIZE, SIZE),
                 targets=torch.arange(n) % 3, masks=torch.stack(masks),
                 image_ids=[f"img{i}" for i in range(n)], class_names=["a", "b", "c"])


def test_pairs_subset_keeps_the_order_given_and_every_field_aligned():
    pairs = make_pairs([ONE_PART, TWO_PARTS, ONE_PART, TWO_PARTS])
    chosen = pairs.subset([3, 0, 1])
    assert len(chosen) == 3
    assert chosen.image_ids == ["img3", "img0", "img1"]
    assert chosen.targets.tolist() == [0, 0, 1]
    assert chosen.images[:, 0, 0, 0].tolist() == [3.0, 0.0, 1.0]
    assert torch.equal(chosen.masks, pairs.masks[[3, 0, 1]])
    assert chosen.class_names == pairs.class_names
    assert len(pairs.subset([])) == 0


def test_multipart_finds_the_masks_with_two_or_more_separate_parts():
    touching = square(2, 2) | square(6, 2)  # two squares sharing an edge: one part
    diagonal = square(2, 2) | square(6, 6)  # corners meet diagonally: one part (8-connectivity)
    pairs = make_pairs([ONE_PART, TWO_PARTS, touching, torch.zeros(SIZE, SIZE, dtype=torch.bool), diagonal,
                        square(1, 1, 2) | square(5, 5, 2) | square(12, 1, 2)])
    assert pairs.multipart() == [1, 5]


class LabelledItems(torch.utils.data.Dataset):
    """Items with a ``labels`` vector; counts the items it renders."""

    def __init__(self, labels, with_targets):
        self.labels = torch.tensor(labels, dtype=torch.float32)
        self.rendered = 0
        if with_targets:
            self.targets = lambda key: self.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        self.rendered += 1
        return {"labels": self.labels[index]}


@pytest.mark.parametrize("with_targets", [True, False])
def test_items_with_returns_the_first_n_positive_items(with_targets):
    data = LabelledItems([[0, 0], [1, 0], [0, 0], [0.4, 0.6], [0, 1], [1, 1]], with_targets)
    assert items_with(data, "labels", 2) == [1, 3]
    assert items_with(data, "labels", 10) == [1, 3, 4, 5]
    assert items_with(data, "labels", 0) == []
    # A dataset that lists its targets renders no image to answer.
    assert (data.rendered == 0) == with_targets


class FindingItems(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def nih_item(image_id, labels, masks):
    return {"image": torch.full((3, SIZE, SIZE), float(len(image_id))), "image_id": image_id,
            "labels": torch.tensor(labels, dtype=torch.float32), "masks": torch.stack(masks)}


EMPTY = torch.zeros(SIZE, SIZE, dtype=torch.bool)


def test_finding_pairs_one_pair_per_positive_finding_with_a_mask():
    data = FindingItems([
        nih_item("a", [1, 0, 1], [ONE_PART, EMPTY, TWO_PARTS]),  # two boxed findings
        nih_item("bb", [0, 1, 0], [EMPTY, EMPTY, ONE_PART]),  # positive but unboxed; boxed but negative
        nih_item("ccc", [0, 1, 1], [EMPTY, square(8, 8), EMPTY]),  # one boxed finding
    ])
    pairs = finding_pairs(data, [0, 1, 2], ["x", "y", "z"])
    assert pairs.image_ids == ["a", "a", "ccc"]
    assert pairs.targets.tolist() == [0, 2, 1]
    assert torch.equal(pairs.masks, torch.stack([ONE_PART, TWO_PARTS, square(8, 8)]))
    assert pairs.images[:, 0, 0, 0].tolist() == [1.0, 1.0, 3.0]
    assert list(pairs.class_names) == ["x", "y", "z"]
    assert finding_pairs(data, [2, 0], ["x", "y", "z"]).image_ids == ["ccc", "a", "a"]
    with pytest.raises(ValueError, match="no positive finding"):
        finding_pairs(data, [1], ["x", "y", "z"])


def zone_masks():
    """Six zones: the left and right thirds of a 16-px image, top to bottom."""
    masks = torch.zeros(6, SIZE, SIZE, dtype=torch.bool)
    for zone in range(6):
        rows = slice(5 * (zone % 3), 5 * (zone % 3) + 5)
        masks[zone, rows, :7] = zone < 3
        masks[zone, rows, 9:] = zone >= 3
    return masks


def brixia_item(image_id, scores, detectors):
    return {"image": torch.zeros(3, SIZE, SIZE), "image_id": image_id, "zone_scores": torch.tensor(scores),
            "zone_masks": zone_masks(), "detectors": torch.tensor(detectors, dtype=torch.float32)}


def test_detector_pairs_mark_the_zones_of_each_positive_detectors_scores():
    zones = zone_masks()
    data = FindingItems([
        brixia_item("p", [3, 2, 0, 1, 3, 2], [1, 1, 1]),
        brixia_item("q", [2, 2, 2, 2, 2, 2], [0, 1, 0]),
    ])
    pairs = detector_pairs(data, [0, 1], ["score_3", "score_2", "score_0_1"])
    assert pairs.image_ids == ["p", "p", "p", "q"]
    assert pairs.targets.tolist() == [0, 1, 2, 1]
    assert torch.equal(pairs.masks[0], zones[0] | zones[4])  # scored 3
    assert torch.equal(pairs.masks[1], zones[1] | zones[5])  # scored 2
    assert torch.equal(pairs.masks[2], zones[2] | zones[3])  # scored 0 or 1
    assert torch.equal(pairs.masks[3], zones.any(0))


def test_detector_pairs_skip_a_positive_detector_without_zones():
    # Detector 0 (a zone scored 3) is labelled positive but no zone scores 3: no ground truth, no pair.
    data = FindingItems([brixia_item("r", [1, 1, 1, 1, 1, 1], [1, 0, 1])])
    pairs = detector_pairs(data, [0], ["score_3", "score_2", "score_0_1"])
    assert pairs.targets.tolist() == [2]


def map_on(*masks, size=SIZE):
    """A map bright on the union of ``masks`` (a smooth low background elsewhere)."""
    background = torch.linspace(0, 0.05, size * size).view(size, size)
    on = torch.stack(masks).any(0).float()
    return (background + on)[None]


def test_component_coverage_counts_the_parts_a_thresholded_map_reaches():
    left, right = square(2, 2), square(10, 10)
    maps = torch.stack([map_on(left), map_on(left, right), map_on(right), map_on(left)])
    masks = torch.stack([left | right, left | right, left | right, left])  # the last has one part
    coverage, counted = component_coverage(maps, masks)
    assert counted == 3
    assert coverage == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # Maps at a coarser resolution are resized to the masks first.
    coarse = torch.nn.functional.avg_pool2d(maps, 2)
    assert component_coverage(coarse, masks) == (pytest.approx(coverage), 3)


def test_component_coverage_without_two_part_masks_is_nan_over_zero_pairs():
    coverage, counted = component_coverage(map_on(ONE_PART)[None], ONE_PART[None])
    assert counted == 0 and math.isnan(coverage)


def test_random_maps_are_uniform_shaped_like_and_seeded():
    like = torch.zeros(5, 1, 7, 9)
    first = random_maps(like, seed=3)
    assert first.shape == like.shape and first.dtype == torch.float32
    assert torch.equal(first, random_maps(like, seed=3))
    assert not torch.equal(first, random_maps(like, seed=4))
    assert 0 <= first.min() and first.max() < 1
    torch.manual_seed(0)
    state = torch.get_rng_state()
    random_maps(like, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is not drawn from


class Clock:
    """A stand-in for ``time`` whose ``perf_counter`` moves only when the stub suite works."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


class StubSuite:
    """Records each call; its 'map' of an image is the image's first pixel plus the method's offset."""

    SECONDS_PER_CALL = {"iba": 1.5, "gradcam": 0.25}
    OFFSET = {"iba": 0.0, "gradcam": 100.0}

    def __init__(self, clock):
        self.clock, self.calls = clock, []

    def attribute(self, name, images, target, *, seed, **options):
        self.calls.append({"name": name, "n": len(images), "target": target, "seed": seed, **options})
        self.clock.now += self.SECONDS_PER_CALL[name]
        return images[:, :1, :2, :2] + self.OFFSET[name]


def test_attribute_all_batches_every_method_keeps_the_order_and_times_each(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(evaluation, "time", clock)
    suite = StubSuite(clock)
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    targets = torch.tensor([4, 3, 2, 1, 0])
    settings = EvaluationSettings(batch_size=2, seed=7)
    results = attribute_all(suite, ["iba", "gradcam"], images, targets, settings, progress=False)
    assert list(results) == ["iba", "gradcam"]
    for name, offset in StubSuite.OFFSET.items():
        assert results[name].maps.shape == (5, 1, 2, 2)
        assert results[name].maps[:, 0, 0, 0].tolist() == [offset + i for i in range(5)]
        batches = -(-5 // settings.batch_size)
        # The warm-up call on the first image is timed apart from the batched run.
        assert results[name].seconds == pytest.approx(StubSuite.SECONDS_PER_CALL[name] * batches)
        assert results[name].warmup_seconds == pytest.approx(StubSuite.SECONDS_PER_CALL[name])
        assert results[name].seconds_per_map == pytest.approx(results[name].seconds / 5)
    iba_calls = [c for c in suite.calls if c["name"] == "iba"]
    assert [c["n"] for c in iba_calls] == [1, 2, 2, 1]
    assert [c["target"].tolist() for c in iba_calls] == [[4], [4, 3], [2, 1], [0]]
    assert {c["seed"] for c in suite.calls} == {7}


def test_attribute_all_slices_target_values_and_passes_options(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(evaluation, "time", clock)
    suite = StubSuite(clock)
    images = torch.zeros(3, 3, 4, 4)
    scores = torch.tensor([10.0, 11.0, 12.0])
    attribute_all(suite, ["iba"], images, None, EvaluationSettings(batch_size=2), progress=False,
                  target_values=scores, loss="mse")
    assert [c["target"] for c in suite.calls] == [None, None, None]
    assert [c["target_values"].tolist() for c in suite.calls] == [[10.0], [10.0, 11.0], [12.0]]  # warm-up first
    assert {c["loss"] for c in suite.calls} == {"mse"}


def test_method_maps_seconds_per_map_of_no_maps_is_the_total():
    assert MethodMaps(torch.zeros(4, 1, 2, 2), 2.0).seconds_per_map == 0.5
    assert MethodMaps(torch.zeros(0, 1, 2, 2), 2.0).seconds_per_map == 2.0
