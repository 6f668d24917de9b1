"""The paper's numbers in ``captum_iba.app.report.paper`` are the ones its text prints.

The values are parsed from the paper's text (``../shared/paper/`` next to the
repository, or ``$CAPTUM_IBA_PAPER``), so a typo in the module fails here.
"""

import os
import re
from pathlib import Path

import pytest

from captum_iba.app.report import paper
from captum_iba.cxr.schema import DETECTORS, FINDINGS
from captum_iba.app.methods import METHODS
from captum_iba.objectives import REGRESSION_LOSSES

NAME = "khakzar2021-chexplain-iba.txt"
NUMBER = r"\d+\.\d+"


def _paper_text():
    candidates = [Path(os.environ["CAPTUM_IBA_PAPER"])] if "CAPTUM_IBA_PAPER" in os.environ else []
    candidates += [parent / "shared" / "paper" / NAME for parent in Path(__file__).resolve().parents]
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    pytest.skip(f"the paper's text ({NAME}) is not next to the repository; set CAPTUM_IBA_PAPER")


@pytest.fixture(scope="module")
def text():
    return _paper_text()


def _between(text, start, end):
    return text[text.index(start) : text.index(end, text.index(start))]


def _numbers(block):
    return [float(value) for value in re.findall(NUMBER, block)]


def test_table1(text):
    block = _between(text, "Table 1.", "Table 2.").split("\n", 2)[2]  # the caption and column names
    columns = ["gradcam", "integrated_gradients", "lrp", "saliency", "iba", "inverse", "multilayer"]
    assert dict(zip(columns, _numbers(block))) == dict(paper.TABLE1_IOU)
    assert len(_numbers(block)) == len(columns)


def test_table2(text):
    block = _between(text, "Table 2.", "and the map.")
    values = _numbers(block.split("\n", 1)[1])
    # Printed column by column (3 detectors: 0/1, 2, 3) for five methods, then the last two row by row.
    columns = ["gradcam", "integrated_gradients", "lrp", "saliency", "iba"]
    order = ["score_0_1", "score_2", "score_3"]
    expected = {method: dict(zip(order, values[3 * k : 3 * k + 3])) for k, method in enumerate(columns)}
    pairs = values[15:]
    expected["inverse"] = dict(zip(order, pairs[0::2]))
    expected["multilayer"] = dict(zip(order, pairs[1::2]))
    assert len(values) == 21
    assert {m: dict(v) for m, v in paper.TABLE2_IOU.items()} == expected


def test_severity_pcc(text):
    sentence = _between(text, "The PCC results are as follows", "Table 3.")
    assert _numbers(sentence) == [paper.SEVERITY_PCC[key] for key in ("mse", "maximize", "deviation", "random")]


def test_table3_and_model_quality(text):
    block = _between(text, "Table 3.", "Discussion")
    bce, weighted = block.index("\nBCE"), block.index("W. BCE")
    for key, row in (("bce", block[bce:weighted]), ("weighted_bce", block[weighted:])):
        values = _numbers(row)
        assert len(values) == 9
        assert dict(zip(FINDINGS, values[:8])) == dict(paper.TABLE3_IOU[key])
        assert values[8] == paper.TABLE3_MEAN[key]
    quality = _numbers(_between(text, "The AUCs (BCE=", "approximately"))
    assert quality == [paper.MODEL_QUALITY["bce"]["auc"], paper.MODEL_QUALITY["weighted_bce"]["auc"],
                       paper.MODEL_QUALITY["bce"]["ap"], paper.MODEL_QUALITY["weighted_bce"]["ap"]]


def test_keys_are_the_package_names():
    assert set(paper.TABLE1_IOU) <= set(METHODS) and set(paper.TABLE2_IOU) == set(paper.TABLE1_IOU)
    assert all(set(row) == set(DETECTORS) for row in paper.TABLE2_IOU.values())
    assert set(paper.SEVERITY_PCC) - {"random"} <= set(REGRESSION_LOSSES)
    assert all(set(row) == set(FINDINGS) for row in paper.TABLE3_IOU.values())
    assert set(paper.SOURCES) <= set(paper.__all__)


def test_claims_are_unique_and_sourced(text):
    ids = [claim.id for claim in paper.CLAIMS]
    assert len(ids) == len(set(ids)) >= 8
    for claim in paper.CLAIMS:
        assert claim.claim and claim.published
        for ref in re.findall(r"(Fig\. \d|Table \d)", claim.source):
            assert ref in text, f"{claim.id}: the paper has no {ref}"
        for value in re.findall(NUMBER, claim.published):
            assert value in text, f"{claim.id}: {value} is not a number the paper prints"
