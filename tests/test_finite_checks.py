"""Nothing silent in the API: non-finite numbers and unusable inputs are refused in one line naming them.

Each case used to give NaN or all-zero maps, or a raw Python/torch error;
now it is one ``ValueError``/``TypeError`` whose message starts with the
argument's name, says what was expected and what was given.
"""

import pytest
import torch

from _toys import SmallCNN
from captum_iba import IBA, FeatureStats, RegressionIBA
from captum_iba.stats import estimate_stats

SIZE = 12


def _data(n=8, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(n_outputs=4).eval()
    (stats,) = estimate_stats(model, [model.layer], [_data(16)], 16, False)
    return model, stats


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_non_finite_estimation_data_stops_at_the_batch_and_names_it(cnn):
    model, _ = cnn
    batches = [_data(8, 0), _data(8, 1), _data(8, 2)]
    batches[1][3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError) as error:
        IBA(model, model.layer, loss="ce").estimate(batches, n_samples=24, progress=False)
    assert _one_line(error) == "data: expected finite inputs, got NaN or Inf in batch 1 (samples 8-15)"


@pytest.mark.parametrize("damage, problem", [
    (lambda s: s.mean.view(-1).__setitem__(0, float("nan")), "its mean or variance holds NaN or Inf"),
    (lambda s: s.m2.view(-1).__setitem__(3, -1.0), "its variance is negative somewhere"),
    (lambda s: s.nonzero.view(-1).__setitem__(0, 1e6), "its non-zero counts lie outside"),
])
def test_damaged_statistics_are_refused_on_load_and_when_given(cnn, tmp_path, damage, problem):
    model, stats = cnn
    bad = FeatureStats.from_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in stats.state_dict().items()})
    damage(bad)
    bad.save(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=problem):
        FeatureStats.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=rf"^stats: expected valid feature statistics, got statistics where {problem}"):
        IBA(model, model.layer, loss="ce", stats=bad).attribute(_data(1), target=0, seed=0)


def test_a_negative_count_is_refused(cnn, tmp_path):
    _, stats = cnn
    state = dict(stats.state_dict(), count=-5)
    torch.save({"format": "captum_iba.FeatureStats/1", **state}, tmp_path / "count.pt")
    with pytest.raises(ValueError, match="at least 2 samples, it has -5"):
        FeatureStats.load(tmp_path / "count.pt")


@pytest.mark.parametrize("option, value, expected", [
    ("beta", float("inf"), "beta: expected a finite number, got inf"),
    ("beta", 1e308, r"beta: expected a number <= 1000000.0, got 1e\+308"),
    ("lr", 1e30, r"lr: expected a number <= 10.0, got 1e\+30"),
    ("lr", float("nan"), "lr: expected a finite number, got nan"),
    ("sigma", float("inf"), "sigma: expected a finite number, got inf"),
    ("init_alpha", float("inf"), "init_alpha: expected a finite number, got inf"),
    ("init_alpha", 40.0, "init_alpha: expected a number <= 15.0, got 40.0"),
    ("relu", "yes", "relu: expected True or False, got 'yes'"),
    ("noise_draws", True, "noise_draws: expected an int, got True"),
])
def test_options_are_finite_in_range_and_of_their_type(cnn, option, value, expected):
    model, stats = cnn
    with pytest.raises((ValueError, TypeError), match=f"^{expected}"):
        IBA(model, model.layer, loss="ce", **{option: value})
    iba = IBA(model, model.layer, loss="ce", stats=stats)
    with pytest.raises((ValueError, TypeError), match=f"^{expected}"):
        iba.attribute(_data(1), target=0, **{option: value})


@pytest.mark.parametrize("seed, expected", [
    ("a", "seed: expected an int, got 'a'"),
    (2**70, r"seed: expected an int in \[0, 9223372036854775807\], got 1180591620717411303424"),
    (-1, r"seed: expected an int in \[0, 9223372036854775807\], got -1"),
    (1.5, "seed: expected an int, got 1.5"),
])
def test_seeds_are_ints_torch_takes(cnn, seed, expected):
    model, stats = cnn
    with pytest.raises((ValueError, TypeError), match=f"^{expected}"):
        IBA(model, model.layer, loss="ce", stats=stats).attribute(_data(1), target=0, seed=seed)


def test_target_values_are_numbers(cnn):
    model, stats = cnn
    regression = RegressionIBA(lambda x: model(x)[:, :1], model.layer, stats=stats, loss="mse")
    with pytest.raises(TypeError, match="^target_values: expected numbers"):
        regression.attribute(_data(1), target_values="3")
    with pytest.raises(ValueError, match="^target_values: expected finite scores"):
        regression.attribute(_data(1), target_values=float("inf"))


def test_a_model_with_a_nan_weight_is_named_before_any_optimisation(cnn):
    model, stats = cnn
    broken = SmallCNN(n_outputs=4).eval()
    with torch.no_grad():
        broken.head[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError) as error:
        IBA(broken, broken.layer, loss="ce", stats=stats).attribute(_data(1), target=0, seed=0)
    assert _one_line(error).startswith("forward_func: expected finite outputs on the given inputs, got NaN or Inf")


@pytest.mark.parametrize("inputs, expected", [
    (_data(1, dtype=torch.uint8), r"^inputs: expected inputs the model takes, got \(1, 3, 12, 12\) uint8 on cpu"),
    (_data(1, dtype=torch.int64), r"^inputs: expected inputs the model takes, got \(1, 3, 12, 12\) int64 on cpu"),
    (_data(1, dtype=torch.float64), r"^inputs: expected inputs the model takes, got \(1, 3, 12, 12\) float64 on cpu"),
    (torch.randn(1, 3, 2, SIZE, SIZE), r"^inputs: expected inputs the model takes, got \(1, 3, 2, 12, 12\) float32"),
    (torch.randn(2, SIZE, SIZE), r"^inputs: expected inputs the model takes, got \(2, 12, 12\) float32"),
    (torch.randn(1, 5, SIZE, SIZE), r"^inputs: expected inputs the model takes, got \(1, 5, 12, 12\) float32"),
    (torch.empty(1, 3, SIZE, SIZE, device="meta"), "^inputs: expected tensors with values, got a tensor on the meta"),
])
def test_inputs_the_model_cannot_take_are_one_line(cnn, inputs, expected):
    model, stats = cnn
    with pytest.raises((ValueError, TypeError)) as error:
        IBA(model, model.layer, loss="ce", stats=stats).attribute(inputs, target=0, seed=0)
    assert error.match(expected) and "\n" not in str(error.value)


def test_statistics_on_the_meta_device_are_refused(cnn):
    model, stats = cnn
    meta = FeatureStats()
    meta.count, meta.mean, meta.m2, meta.nonzero = 16, *(torch.empty(stats.shape, device="meta") for _ in range(3))
    with pytest.raises(ValueError, match="^stats: expected valid feature statistics, got statistics where its tensors "
                                         "are on the meta device"):
        IBA(model, model.layer, loss="ce", stats=meta).attribute(_data(1), target=0, seed=0)
