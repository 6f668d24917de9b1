"""Draw the README's method figures from the embedded phantom models.

Run:  .venv/bin/python docs/make_figures.py      (trains the embedded models on first use)

Writes docs/iba.png, docs/inverse_iba.png, docs/regression_iba.png and
docs/multilayer_iba.png: held-out phantom images (seed 1000) with the ground
truth outlined and each method's map.
"""

from __future__ import annotations

import os

import torch
from skimage.measure import label as connected_components

from captum_iba import IBA, InverseIBA, MultiLayerIBA, RegressionIBA
from captum_iba.cxr import FINDINGS, PhantomCXR, load_embedded_model
from captum_iba.stats import estimate_stats
from captum_iba.viz import method_grid

HERE = os.path.dirname(os.path.abspath(__file__))
HELD_OUT = 1000


def _loader(task, size):
    train = PhantomCXR(256, size=size, seed=0, task=task)
    return torch.utils.data.DataLoader(train, batch_size=64,
                                       collate_fn=lambda items: torch.stack([i["image"] for i in items]))


def _first(dataset, finding, parts=1):
    """First held-out item whose ``finding`` mask has at least ``parts`` separate parts."""
    k = FINDINGS.index(finding)
    for i in range(len(dataset)):
        if dataset.targets("labels")[i, k] > 0:
            item = dataset[i]
            if connected_components(item["masks"][k].numpy()).max() >= parts:
                return item, k
    raise LookupError(f"no held-out {finding} with {parts} parts")


def main():
    torch.manual_seed(0)
    classifier = load_embedded_model("nih_bce")
    size = classifier.input_size
    nih = PhantomCXR(300, size=size, seed=HELD_OUT, task="nih")
    blocks = [classifier.features.denseblock1, classifier.features.denseblock2, classifier.features.denseblock3]
    stats = dict(zip(["db1", "db2", "db3"], estimate_stats(classifier, blocks, _loader("nih", size), 256, False)))
    iba = IBA(classifier, blocks[2], loss="bce", stats=stats["db3"])
    inverse = InverseIBA(classifier, blocks[2], loss="bce", stats=stats["db3"])
    multilayer = MultiLayerIBA(classifier, blocks, loss="bce", threshold="top:0.3",
                               stats=[stats["db1"], stats["db2"], stats["db3"]])

    bilateral = [_first(nih, "Effusion", parts=2), _first(nih, "Nodule", parts=2)]
    images = torch.stack([item["image"] for item, _ in bilateral])
    targets = [k for _, k in bilateral]
    masks = torch.stack([item["masks"][k] for item, k in bilateral])
    labels = [FINDINGS[k] for k in targets]
    method_grid(images, {"IBA": iba.attribute(images, targets, seed=0)}, masks=masks, row_labels=labels,
                path=os.path.join(HERE, "iba.png"))
    method_grid(images, {"IBA": iba.attribute(images, targets, seed=0),
                         "Inverse IBA": inverse.attribute(images, targets, seed=0)},
                masks=masks, row_labels=labels, path=os.path.join(HERE, "inverse_iba.png"))

    small = [_first(nih, "Nodule"), _first(nih, "Mass")]
    images = torch.stack([item["image"] for item, _ in small])
    targets = [k for _, k in small]
    combined, per_layer = multilayer.attribute(images, targets, seed=0, return_layer_maps=True)
    shown = {f"IBA at dense block {i + 1}": m for i, m in enumerate(per_layer)}
    shown["Multi-layer IBA"] = combined
    method_grid(images, shown, masks=torch.stack([item["masks"][k] for item, k in small]),
                row_labels=[FINDINGS[k] for k in targets], path=os.path.join(HERE, "multilayer_iba.png"))

    regressor = load_embedded_model("brixia_regression")
    brixia = PhantomCXR(2, size=size, seed=HELD_OUT, task="brixia")
    items = [brixia[i] for i in range(2)]
    images = torch.stack([item["image"] for item in items])
    (stats,) = estimate_stats(regressor, [regressor.features.denseblock3], _loader("brixia", size), 256, False)
    regression = RegressionIBA(regressor, regressor.features.denseblock3, stats=stats)
    scores = torch.tensor([float(item["score"]) for item in items])
    shown = {"severity map": torch.stack([item["severity_map"] for item in items])[:, None]}
    shown.update({f"Regression IBA ({loss})": regression.attribute(
        images, seed=0, loss=loss, **({"target_values": scores} if loss == "mse" else {}))
        for loss in ("deviation", "maximize", "mse")})
    method_grid(images, shown, row_labels=[f"BrixIA score {int(s)}" for s in scores],
                path=os.path.join(HERE, "regression_iba.png"))
    print("wrote", ", ".join(f"docs/{n}" for n in ("iba.png", "inverse_iba.png", "multilayer_iba.png",
                                                     "regression_iba.png")))


if __name__ == "__main__":
    main()
