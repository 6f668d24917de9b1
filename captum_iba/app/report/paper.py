"""The paper's published numbers and claims, as plain data with their source.

Khakzar, Zhang, Mansour, Cai, Li, Zhang, Kim, Navab (2021): *Explaining
COVID-19 and Thoracic Pathology Model Predictions by Identifying Informative
Input Features*, MICCAI 2021, arXiv:2104.00411v1. Every value below is copied
from the arXiv text (``tests/test_paper_values.py`` checks them against it);
the report puts them beside the values measured here.

Methods and losses are keyed by this package's names (``captum_iba.app.methods``:
``"gradcam"``, ``"integrated_gradients"``, ``"lrp"``, ``"saliency"`` (the
paper's *Gradients*), ``"iba"``, ``"inverse"``, ``"multilayer"``;
``captum_iba.objectives``: ``"mse"``, ``"maximize"``, ``"deviation"``),
detectors by :data:`~captum_iba.cxr.schema.DETECTORS` and findings by
:data:`~captum_iba.cxr.schema.FINDINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Tuple

__all__ = [
    "CITATION",
    "TABLE1_IOU",
    "TABLE2_IOU",
    "SEVERITY_PCC",
    "TABLE3_IOU",
    "TABLE3_MEAN",
    "MODEL_QUALITY",
    "Claim",
    "CLAIMS",
    "SOURCES",
]

CITATION = (
    "Khakzar et al. 2021, Explaining COVID-19 and Thoracic Pathology Model Predictions by "
    "Identifying Informative Input Features, MICCAI 2021 (arXiv:2104.00411v1)"
)


def _frozen(mapping) -> Mapping:
    return MappingProxyType(
        {key: _frozen(value) if isinstance(value, dict) else value for key, value in mapping.items()}
    )


#: Table 1: mean IoU of the thresholded map with the boxes, NIH ChestX-ray8, all pathologies.
TABLE1_IOU: Mapping[str, float] = _frozen(
    {
        "gradcam": 0.077,
        "integrated_gradients": 0.076,
        "lrp": 0.025,
        "saliency": 0.114,
        "iba": 0.114,
        "inverse": 0.088,
        "multilayer": 0.189,
    }
)

#: Table 2: mean IoU on BrixIA per detector (a zone scored 3 / 2 / 0-or-1 exists) and method.
#: The text extraction prints the last two columns row by row: (Inverse IBA, Multi-layer IBA)
#: = (0.194, 0.171) for detector 0/1, (0.245, 0.257) for 2, (0.243, 0.257) for 3.
TABLE2_IOU: Mapping[str, Mapping[str, float]] = _frozen(
    {
        "gradcam": {"score_0_1": 0.11, "score_2": 0.0, "score_3": 0.011},
        "integrated_gradients": {"score_0_1": 0.176, "score_2": 0.13, "score_3": 0.14},
        "lrp": {"score_0_1": 0.0, "score_2": 0.0, "score_3": 0.0},
        "saliency": {"score_0_1": 0.04, "score_2": 0.019, "score_3": 0.052},
        "iba": {"score_0_1": 0.145, "score_2": 0.13, "score_3": 0.222},
        "inverse": {"score_0_1": 0.194, "score_2": 0.245, "score_3": 0.243},
        "multilayer": {"score_0_1": 0.171, "score_2": 0.257, "score_3": 0.257},
    }
)

#: Sec. 3.2, "Correlation Analysis": Pearson correlation of Regression IBA maps with the
#: severity maps on BrixIA, per Regression IBA loss, and of random maps. The text prints
#: the losses as "L_MSE, L_RM, L_MSE": the third is taken to be L_DV, the third loss of
#: Sec. 2.2 in that order (the text's repeated L_MSE is an extraction or typing slip).
SEVERITY_PCC: Mapping[str, float] = _frozen(
    {"mse": 0.4766, "maximize": 0.4766, "deviation": 0.4404, "random": 0.0004}
)

#: Table 3: mean IoU of Inverse IBA maps with the NIH boxes per pathology, for the model
#: trained with BCE and with weighted BCE (Eq. 8).
TABLE3_IOU: Mapping[str, Mapping[str, float]] = _frozen(
    {
        "bce": {
            "Atelectasis": 0.016, "Cardiomegaly": 0.071, "Effusion": 0.004, "Infiltration": 0.001,
            "Mass": 0.102, "Nodule": 0.011, "Pneumonia": 0.0, "Pneumothorax": 0.003,
        },
        "weighted_bce": {
            "Atelectasis": 0.073, "Cardiomegaly": 0.131, "Effusion": 0.032, "Infiltration": 0.058,
            "Mass": 0.097, "Nodule": 0.02, "Pneumonia": 0.066, "Pneumothorax": 0.016,
        },
    }
)

#: Table 3's "Mean" column as printed. It is not the mean of the eight printed values
#: (0.026 for BCE, 0.062 for weighted BCE): presumably a mean over boxes, not over classes.
TABLE3_MEAN: Mapping[str, float] = _frozen({"bce": 0.024, "weighted_bce": 0.065})

#: Sec. 4, "Imbalanced loss": mean AUC and AP of the BCE and weighted-BCE NIH models.
MODEL_QUALITY: Mapping[str, Mapping[str, float]] = _frozen(
    {"bce": {"auc": 0.790, "ap": 0.243}, "weighted_bce": {"auc": 0.788, "ap": 0.236}}
)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: an id, the claim in one line, where the paper shows it, its figure."""

    id: str
    claim: str
    source: str
    published: str


#: The paper's claims, in the order of its sections.
CLAIMS: Tuple[Claim, ...] = (
    Claim(
        "iba_feature_importance",
        "IBA (and its variants) satisfy feature-importance metrics: high insertion and low deletion AUC",
        "Fig. 2",
        "insertion/deletion AUC plot only (no numbers in the text)",
    ),
    Claim(
        "inverse_all_regions",
        "Inverse IBA highlights all regions with predictive information; IBA only a sufficient subset",
        "Fig. 1, Sec. 4",
        "qualitative: both sides of Cardiomegaly; all BrixIA zones scored 3 (IBA: two of them)",
    ),
    Claim(
        "inverse_deletion",
        "Removing Inverse IBA's regions changes the output more than removing IBA's (deletion)",
        "Fig. 2, Sec. 4",
        "lower deletion AUC for Inverse IBA than IBA (plot only)",
    ),
    Claim(
        "regression_severity",
        "Regression IBA shows that a model trained on the global score implicitly learns the zones' severity",
        "Fig. 3a, Sec. 3.2",
        "severity-map PCC 0.4766 (MSE), 0.4766 (RM), 0.4404 (DV); random maps 0.0004",
    ),
    Claim(
        "regression_sensitivity_n",
        "Regression IBA's maps are faithful to the regressor by Sensitivity-N, compared across its losses",
        "Fig. 3b",
        "Sensitivity-N curves per loss (plot only)",
    ),
    Claim(
        "multilayer_best_iou",
        "Multi-layer IBA localises NIH pathologies best of all methods",
        "Table 1",
        "mean IoU 0.189 (next: IBA and Gradients 0.114)",
    ),
    Claim(
        "multilayer_fine_grained",
        "Multi-layer IBA gives finer maps than IBA (subtle findings such as Mass; Cardiomegaly's corners)",
        "Fig. 4, Sec. 4",
        "qualitative",
    ),
    Claim(
        "brixia_iou",
        "Inverse IBA and Multi-layer IBA localise BrixIA severity regions best, for every detector",
        "Table 2",
        "IoU 0.171-0.257 against at most 0.222 (IBA, detector 3) for the others",
    ),
    Claim(
        "weighted_bce_alignment",
        "Weighted BCE aligns the model's features with the pathologies at equal AUC and AP",
        "Table 3, Sec. 4",
        "Inverse IBA mean IoU 0.065 vs 0.024 (BCE); AUC 0.788 vs 0.790, AP 0.236 vs 0.243",
    ),
)

#: Where each data table above comes from in the paper.
SOURCES: Mapping[str, str] = _frozen(
    {
        "TABLE1_IOU": "Table 1",
        "TABLE2_IOU": "Table 2",
        "SEVERITY_PCC": "Sec. 3.2, Correlation Analysis",
        "TABLE3_IOU": "Table 3",
        "TABLE3_MEAN": "Table 3",
        "MODEL_QUALITY": "Sec. 4, Imbalanced loss",
    }
)
