"""IBA and Inverse IBA on toy models whose ground truth is known.

The toys (tests/_toys.py) read one channel of the feature map inside known
regions; the estimation data has no finding anywhere (findings are rare, as in
real data). Each test is written so that a flipped loss sign, a swapped
lambda or a capacity computed from the wrong term fails it: with any of
those, the bits leave the informative region (measured while writing them).
"""

import pytest

from _toys import RegionModel, background, region_mask, with_findings
from captum_iba import IBA, InverseIBA

SIZE = 16
LEFT = region_mask(SIZE, 2, 2, 6)
RIGHT = region_mask(SIZE, 9, 9, 6)


def _attribute(method, model, x, **options):
    attribution = method(model, model.features, loss="ce", **options)
    attribution.estimate([background(64, size=SIZE)], progress=False)
    return attribution.attribute(x, target=1, seed=0, reduce="none")[0]


@pytest.mark.parametrize("method", [IBA, InverseIBA])
def test_bits_concentrate_where_the_model_reads(method):
    # The finding is drawn in both regions and in every channel; the model
    # reads channel 0 in LEFT only.
    model = RegionModel([LEFT], gain=10.0)
    bits = _attribute(method, model, with_findings([LEFT, RIGHT], [4.0, 4.0]), beta=10)
    per_location = bits.sum(0)
    assert per_location[LEFT].sum() >= 0.9 * per_location.sum()
    assert per_location[LEFT].mean() > 1.0  # real information, not a vanishing map
    # Channels the model ignores keep almost no bits, even where the finding is.
    assert bits[1:].sum() <= 0.05 * bits[0].sum()


def test_iba_keeps_one_sufficient_region_of_two_redundant_detectors():
    # max over two detectors of the same evidence: either region alone keeps
    # the prediction, so IBA's minimal sufficient answer keeps one of them.
    model = RegionModel([LEFT, RIGHT], combine="max", gain=10.0)
    bits = _attribute(IBA, model, with_findings([LEFT, RIGHT], [4.0, 3.5]), beta=10).sum(0)
    assert bits[LEFT].sum() >= 5 * bits[RIGHT].sum()
    assert bits[LEFT].mean() > 0.2  # and it does keep that one
