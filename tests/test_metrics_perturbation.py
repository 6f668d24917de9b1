"""Insertion/deletion and sensitivity-n on models whose answers are known."""

import numpy as np
import pytest
import scipy.ndimage
import torch
from captum.attr import InputXGradient

from captum_iba.maps import resize_map
from captum_iba.metrics import insertion_deletion, sensitivity_n
from captum_iba.metrics._core import gaussian_blur

CHANNELS, HEIGHT, WIDTH = 2, 12, 12
PIXELS = HEIGHT * WIDTH


class Linear(torch.nn.Module):
    """f(x) = <w, x>: with a zero baseline, gradient * input is exact."""

    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(dim=1)


class CountingModel(torch.nn.Module):
    """Wraps a model and records the size of each batch it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.batch_sizes = []

    def forward(self, x, *args):
        self.batch_sizes.append(len(x))
        return self.model(x, *args)


@pytest.fixture(scope="module")
def linear_case():
    generator = torch.Generator().manual_seed(0)
    model = Linear(torch.randn(CHANNELS, HEIGHT, WIDTH, generator=generator))
    inputs = torch.randn(4, CHANNELS, HEIGHT, WIDTH, generator=generator)
    attributions = model.weight * inputs
    random_maps = [torch.randn(4, HEIGHT, WIDTH, generator=generator) for _ in range(4)]
    return model, inputs, attributions, random_maps


def sorted_attribution_sums(attributions):
    """Cumulative attribution mass of the top-k pixels, k = 0 .. PIXELS."""
    per_pixel = attributions.sum(dim=1).flatten(1)
    cumulative = per_pixel.sort(dim=1, descending=True).values.cumsum(dim=1)
    return torch.cat([torch.zeros(len(per_pixel), 1), cumulative], dim=1)


def test_gradient_times_input_is_exact_for_the_linear_model(linear_case):
    model, inputs, attributions, _ = linear_case
    captum_attributions = InputXGradient(model).attribute(inputs.clone().requires_grad_())
    assert torch.allclose(captum_attributions, attributions)
    completeness = model(inputs) - model(torch.zeros_like(inputs))
    assert torch.allclose(attributions.flatten(1).sum(1), completeness)


@pytest.mark.parametrize("n_steps, fraction", [(10, 1.0), (7, 0.5), (400, 1.0)])
def test_curves_follow_the_attribution_mass_of_a_linear_model(linear_case, n_steps, fraction):
    model, inputs, attributions, _ = linear_case
    result = insertion_deletion(
        model, inputs, attributions, baseline="zero", n_steps=n_steps, fraction=fraction
    )
    steps = torch.arange(n_steps + 1)
    # Equal steps up to `fraction`, to the nearest pixel.
    assert torch.allclose(result.fractions, steps * fraction / n_steps, atol=0.5 / PIXELS + 1e-7)
    moved = (result.fractions * PIXELS).round().long()
    mass = sorted_attribution_sums(attributions)[:, moved]
    clean = model(inputs)[:, None]
    # Deleting the top-k pixels removes exactly their attribution mass;
    # inserting them into the zero baseline adds exactly it.
    assert torch.allclose(result.deletion_curve, clean - mass, atol=1e-4)
    assert torch.allclose(result.insertion_curve, mass, atol=1e-4)
    expected_area = torch.from_numpy(np.trapezoid(mass.numpy(), dx=1 / n_steps, axis=1))
    assert torch.allclose(result.insertion_auc, expected_area.float(), atol=1e-4)


def test_curves_start_and_end_at_the_clean_and_baseline_scores(linear_case):
    model, inputs, attributions, _ = linear_case
    result = insertion_deletion(model, inputs, attributions, baseline="zero", n_steps=10)
    clean, baseline = model(inputs), torch.zeros(len(inputs))
    assert torch.allclose(result.deletion_curve[:, 0], clean)
    assert torch.allclose(result.deletion_curve[:, -1], baseline, atol=1e-5)
    assert torch.allclose(result.insertion_curve[:, 0], baseline)
    assert torch.allclose(result.insertion_curve[:, -1], clean, atol=1e-5)


def test_exact_map_beats_random_maps_by_a_clear_margin(linear_case):
    model, inputs, attributions, random_maps = linear_case
    exact = insertion_deletion(model, inputs, attributions, baseline="zero", n_steps=20)
    margin = 0.1 * attributions.abs().flatten(1).sum(dim=1)
    for random_map in random_maps:
        random = insertion_deletion(model, inputs, random_map, baseline="zero", n_steps=20)
        assert (exact.deletion_auc < random.deletion_auc - margin).all()
        assert (exact.insertion_auc > random.insertion_auc + margin).all()


def test_steps_cost_two_forward_passes_each_in_bounded_batches(linear_case):
    model, inputs, attributions, _ = linear_case
    counting = CountingModel(model)
    whole = insertion_deletion(counting, inputs, attributions, n_steps=10)
    assert counting.batch_sizes == [len(inputs) * 2 * 10]
    counting.batch_sizes.clear()
    batched = insertion_deletion(
        counting, inputs, attributions, n_steps=10, max_examples_per_batch=7
    )
    assert sum(counting.batch_sizes) == len(inputs) * 2 * 10
    assert max(counting.batch_sizes) == 7
    for got, expected in zip(batched, whole):
        assert torch.allclose(got, expected, atol=1e-5)


def test_each_input_scores_as_it_would_alone(linear_case):
    model, inputs, attributions, _ = linear_case
    together = insertion_deletion(model, inputs, attributions, n_steps=5, max_examples_per_batch=3)
    for i in range(len(inputs)):
        alone = insertion_deletion(model, inputs[i:i + 1], attributions[i:i + 1], n_steps=5)
        assert torch.allclose(together.deletion_curve[i], alone.deletion_curve[0], atol=1e-5)
        assert torch.allclose(together.insertion_curve[i], alone.insertion_curve[0], atol=1e-5)


def test_blur_baseline_is_the_papers_gaussian():
    images = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    expected = scipy.ndimage.gaussian_filter(
        images.numpy(), sigma=(0, 0, 5, 5), mode="nearest", truncate=1.0  # 11 x 11 kernel
    )
    assert np.allclose(gaussian_blur(images).numpy(), expected)


@pytest.mark.parametrize(
    "baseline, end_image",
    [
        ("blur", gaussian_blur),
        ("mean", lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x)),
        (torch.tensor(0.5), lambda x: torch.full_like(x, 0.5)),
        (torch.linspace(0, 1, WIDTH), lambda x: torch.linspace(0, 1, WIDTH).expand_as(x)),
    ],
)
def test_baselines_are_where_deletion_ends(linear_case, baseline, end_image):
    model, inputs, attributions, _ = linear_case
    result = insertion_deletion(model, inputs, attributions, baseline=baseline, n_steps=4)
    assert torch.allclose(result.deletion_curve[:, -1], model(end_image(inputs)), atol=1e-4)
    assert torch.allclose(result.insertion_curve[:, 0], model(end_image(inputs)), atol=1e-4)


def test_classification_scores_the_targets_probability():
    generator = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(CHANNELS * PIXELS, 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), layer)
    inputs = torch.randn(3, CHANNELS, HEIGHT, WIDTH, generator=generator)
    maps = torch.randn(3, HEIGHT, WIDTH, generator=generator)
    target = [2, 0, 1]
    with torch.no_grad():
        logits = model(inputs)
        blurred = model(gaussian_blur(inputs))
    for transform, probabilities in [
        ("softmax", lambda z: z.softmax(dim=1)),
        ("sigmoid", torch.sigmoid),
        (None, lambda z: z),
    ]:
        result = insertion_deletion(
            model, inputs, maps, target=target, output_transform=transform, n_steps=4
        )
        chosen = torch.arange(3), torch.tensor(target)
        clean, baseline = probabilities(logits)[chosen], probabilities(blurred)[chosen]
        assert torch.allclose(result.deletion_curve[:, 0], clean, atol=1e-5)
        assert torch.allclose(result.deletion_curve[:, -1], baseline, atol=1e-5)


def test_additional_forward_args_follow_their_input(linear_case):
    model, inputs, attributions, _ = linear_case
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def scaled_model(x, factor, offset):
        return model(x) * factor + offset

    result = insertion_deletion(
        scaled_model, inputs, attributions, additional_forward_args=(scale, 1.0),
        n_steps=5, max_examples_per_batch=3,
    )
    plain = insertion_deletion(model, inputs, attributions, n_steps=5)
    expected = plain.deletion_curve * scale[:, None] + 1
    assert torch.allclose(result.deletion_curve, expected, atol=1e-4)


def test_low_resolution_maps_are_resized_to_the_inputs(linear_case):
    model, inputs, _, random_maps = linear_case
    coarse = random_maps[0][:, :4, :4]
    result = insertion_deletion(model, inputs, coarse, n_steps=6)
    resized = insertion_deletion(model, inputs, resize_map(coarse, (HEIGHT, WIDTH)), n_steps=6)
    assert torch.allclose(result.deletion_curve, resized.deletion_curve)


def test_metrics_leave_inputs_and_attributions_untouched(linear_case):
    model, inputs, attributions, _ = linear_case
    inputs_before, attributions_before = inputs.clone(), attributions.clone()
    insertion_deletion(model, inputs, attributions, n_steps=3)
    sensitivity_n(model, inputs, attributions, n=[3], num_masks=4)
    assert torch.equal(inputs, inputs_before) and torch.equal(attributions, attributions_before)


# sensitivity-n


def test_sensitivity_n_is_one_for_the_exact_attribution(linear_case):
    model, inputs, attributions, _ = linear_case
    counts = [1, 7, 50, PIXELS - 1]
    correlation = sensitivity_n(model, inputs, attributions, n=counts, num_masks=30)
    assert correlation.shape == (len(inputs), len(counts))
    assert torch.allclose(correlation, torch.ones_like(correlation), atol=1e-5)


def test_sensitivity_n_of_random_maps_is_far_from_one(linear_case):
    model, inputs, _, random_maps = linear_case
    correlation = sensitivity_n(model, inputs, random_maps[0], n=[1, 20], num_masks=30)
    assert correlation.abs().mean() < 0.5


def test_sensitivity_n_masks_are_seeded_and_shared_across_inputs(linear_case):
    model, inputs, _, random_maps = linear_case
    maps = random_maps[1]
    def correlation(inputs, maps, seed):
        return sensitivity_n(model, inputs, maps, n=[5, 30], num_masks=10, seed=seed)

    first = correlation(inputs, maps, seed=3)
    assert torch.equal(first, correlation(inputs, maps, seed=3))
    assert not torch.allclose(first, correlation(inputs, maps, seed=4))
    alone = correlation(inputs[2:3], maps[2:3], seed=3)
    assert torch.allclose(alone[0], first[2])


def test_sensitivity_n_with_a_baseline_and_classification(linear_case):
    model, inputs, attributions, _ = linear_case
    # Under a constant baseline b the exact attribution of <w, x> is w * (x - b).
    shifted = model.weight * (inputs - 0.3)
    correlation = sensitivity_n(
        model, inputs, shifted, n=[4, 40], num_masks=12, baseline=torch.tensor(0.3)
    )
    assert torch.allclose(correlation, torch.ones_like(correlation), atol=1e-5)

    def two_class(x):
        score = model(x) / 20  # keeps the softmax away from saturation
        return torch.stack([score, -score], dim=1)

    counting = CountingModel(two_class)
    probabilities = sensitivity_n(
        counting, inputs, attributions, target=0, n=[4, 40], num_masks=12,
        output_transform="softmax", max_examples_per_batch=20,
    )
    assert sum(counting.batch_sizes) == len(inputs) * (1 + 2 * 12)
    # Softmax is monotone in the linear score: correlation stays strongly positive.
    assert (probabilities > 0.9).all() and (probabilities <= 1).all()


def test_sensitivity_n_of_every_pixel_is_undefined(linear_case):
    model, inputs, attributions, _ = linear_case
    assert sensitivity_n(model, inputs, attributions, n=PIXELS, num_masks=3).isnan().all()


def test_the_metrics_run_a_train_mode_model_in_eval_mode_and_leave_it_as_found():
    """BatchNorm's running statistics unchanged, dropout off (two calls agree), the train flag kept."""
    from captum_iba.metrics import insertion_deletion, sensitivity_n

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).train()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = insertion_deletion(model, images, maps, target=1, n_steps=4, output_transform="softmax")
    second = insertion_deletion(model, images, maps, target=1, n_steps=4, output_transform="softmax")
    assert torch.equal(first.insertion_auc, second.insertion_auc) and torch.equal(first.deletion_auc, second.deletion_auc)
    sensitivity_n(model, images, maps, n=[4], num_masks=3, target=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
