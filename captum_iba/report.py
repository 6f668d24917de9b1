"""The paper's evaluation as a report: tables, figures, claims, timings.

:func:`run_report` runs the studies of :mod:`captum_iba.evaluation` on the
models and held-out data it is given, and writes ``report.md`` (tables and
linked figures), the PNG figures, ``results.json`` and one CSV per table.
Parts whose model or ground truth is missing (real BrixIA data has no zone
masks) are left out and the report says so.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import viz
from ._files import atomic_path
from .cxr import DETECTORS, FINDINGS, evaluate
from .evaluation import (
    IOU_THRESHOLD,
    EvaluationSettings,
    MethodMaps,
    attribute_all,
    component_coverage,
    detector_pairs,
    finding_pairs,
    items_with,
    localisation_scores,
    random_maps,
    regression_scores,
)
from .methods import METHODS, MethodSuite

REGRESSION_LOSSES = ("mse", "maximize", "deviation")
SMALL_FINDINGS = ("Nodule", "Mass")
# A claim "holds" only beyond this margin, so noise on a few images does not decide it.
MARGIN = 0.02
# Fewer pairs than this leave a claim "not measurable here".
MIN_CLAIM_PAIRS = 8


@dataclass
class ReportInputs:
    """What the report runs on.

    Attributes
    ----------
    nih : Dataset, optional
        Held-out NIH-style items (``labels``, ``masks``).
    brixia : Dataset, optional
        Held-out BrixIA-style items (``zone_masks``, ``severity_map`` where known).
    nih_estimation, brixia_estimation : Dataset, optional
        Items to estimate the IBA statistics from (training distribution).
    models : dict
        Any of ``"nih_bce"``, ``"nih_weighted_bce"``, ``"brixia_regression"``,
        ``"brixia_detectors"`` -> model.
    images : int
        Held-out images per study.
    auc_images : int
        Held-out images for the AUC/AP of Table 3.
    description : str
        One line on the data and models, for the report's head.
    """

    models: Dict[str, nn.Module]
    nih: Optional[Dataset] = None
    brixia: Optional[Dataset] = None
    nih_estimation: Optional[Dataset] = None
    brixia_estimation: Optional[Dataset] = None
    images: int = 16
    auc_images: int = 200
    description: str = ""
    suite_options: dict = field(default_factory=dict)


def _images_of(dataset: Dataset, n: int) -> List[int]:
    return list(range(min(n, len(dataset))))


def _stack_images(items) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])


def _suite(model, task, estimation, inputs: ReportInputs, progress) -> MethodSuite:
    loader = torch.utils.data.DataLoader(estimation, batch_size=64, collate_fn=_stack_images)
    return MethodSuite(model, task=task, data=loader, n_samples=min(len(estimation), 256),
                       progress=progress, **inputs.suite_options)


def run_report(inputs: ReportInputs, out_dir: str, settings: EvaluationSettings = EvaluationSettings(),
               progress: bool = True, log=print) -> dict:
    """Run every study the inputs allow and write the report to ``out_dir``.

    Returns
    -------
    dict
        Everything measured (also ``results.json``).
    """
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    results: dict = {"settings": asdict(settings), "description": inputs.description, "figures": {}}
    studies = [
        (_nih_studies, inputs.nih, "nih_bce"),
        (_detector_study, inputs.brixia, "brixia_detectors"),
        (_regression_study, inputs.brixia, "brixia_regression"),
    ]
    results["study_seconds"] = {}
    for study, data, model_name in studies:
        if data is not None and model_name in inputs.models:
            study_started = time.perf_counter()
            study(inputs, results, out_dir, settings, progress, log)
            results["study_seconds"][model_name] = time.perf_counter() - study_started
            log(f"  done in {results['study_seconds'][model_name]:.0f} s")
    results["claims"] = claims(results)
    results["seconds_total"] = time.perf_counter() - started
    results["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "python": platform.python_version()}
    write_report(results, out_dir)
    return results


def _nih_studies(inputs, results, out_dir, settings, progress, log) -> None:
    model = inputs.models["nih_bce"]
    pairs = finding_pairs(inputs.nih, items_with(inputs.nih, "labels", inputs.images), FINDINGS)
    log(f"NIH-like study: {len(pairs)} (image, finding) pairs from {inputs.images} images with findings")
    suite = _suite(model, "classification", inputs.nih_estimation, inputs, progress)
    maps = attribute_all(suite, suite.names, pairs.images, pairs.targets, settings, progress)
    scores = localisation_scores(model, pairs, maps, settings, progress)
    # Findings drawn in two places (bilateral effusion, two nodules) are rare: look for them in
    # the whole held-out pool, and run only the two methods the claim compares.
    pool = finding_pairs(inputs.nih, range(len(inputs.nih)), FINDINGS)
    two_part = pool.subset(pool.multipart()[: max(inputs.images, MIN_CLAIM_PAIRS)])
    two_part_maps = attribute_all(suite, ["iba", "inverse"], two_part.images, two_part.targets, settings, progress)
    coverage = {k: component_coverage(v.maps, two_part.masks) for k, v in two_part_maps.items()}
    results["nih"] = {"pairs": len(pairs), "images": inputs.images, "scores": scores,
                      "coverage": {k: {"coverage": c, "pairs": n} for k, (c, n) in coverage.items()}}
    log("  " + headline(scores))
    _figure_methods(results, out_dir, "fig4_methods", pairs, maps, count=4)
    _figure_inverse(results, out_dir, two_part, two_part_maps)
    results["figures"]["fig2_insertion_deletion"] = "fig2_insertion_deletion.png"
    viz.scatter({METHODS[k].label: v["deletion_auc"] for k, v in scores.items()},
                {METHODS[k].label: v["insertion_auc"] for k, v in scores.items()},
                xlabel="deletion AUC (lower is better)", ylabel="insertion AUC (higher is better)",
                title="Fig. 2: insertion vs deletion", path=os.path.join(out_dir, "fig2_insertion_deletion.png"))

    if "nih_weighted_bce" in inputs.models:
        weighted = inputs.models["nih_weighted_bce"]
        weighted_suite = _suite(weighted, "classification", inputs.nih_estimation, inputs, progress)
        weighted_maps = attribute_all(weighted_suite, ["inverse"], pairs.images, pairs.targets, settings, progress)
        weighted_scores = localisation_scores(weighted, pairs, weighted_maps, settings, progress, perturbation=False)
        auc_items = _images_of(inputs.nih, inputs.auc_images)
        held_out = torch.utils.data.Subset(inputs.nih, auc_items)
        results["table3"] = {
            "bce": {"class_iou": scores["inverse"]["class_iou"], "iou": scores["inverse"]["iou"],
                    **_classifier_quality(model, held_out)},
            "weighted_bce": {"class_iou": weighted_scores["inverse"]["class_iou"],
                             "iou": weighted_scores["inverse"]["iou"], **_classifier_quality(weighted, held_out)},
            "auc_images": len(auc_items),
        }


def _classifier_quality(model, dataset) -> dict:
    quality = evaluate(model, dataset, target="labels")
    return {"mean_auc": quality["mean_auc"], "mean_ap": quality["mean_ap"]}


def _detector_study(inputs, results, out_dir, settings, progress, log) -> None:
    item = inputs.brixia[0]
    if "zone_masks" not in item:
        results["detectors_skipped"] = "the BrixIA items have no zone masks (no lung segmentation)"
        return
    model = inputs.models["brixia_detectors"]
    pairs = detector_pairs(inputs.brixia, items_with(inputs.brixia, "detectors", inputs.images), DETECTORS)
    log(f"BrixIA-like detector study: {len(pairs)} (image, detector) pairs")
    suite = _suite(model, "classification", inputs.brixia_estimation, inputs, progress)
    maps = attribute_all(suite, suite.names, pairs.images, pairs.targets, settings, progress)
    scores = localisation_scores(model, pairs, maps, settings, progress, perturbation=False)
    results["detectors"] = {"pairs": len(pairs), "scores": scores}


def _regression_study(inputs, results, out_dir, settings, progress, log) -> None:
    model = inputs.models["brixia_regression"]
    items = [inputs.brixia[i] for i in _images_of(inputs.brixia, inputs.images)]
    images = torch.stack([item["image"] for item in items])
    has_severity = "severity_map" in items[0]
    log(f"BrixIA-like regression study: {len(items)} images")
    suite = _suite(model, "regression", inputs.brixia_estimation, inputs, progress)
    scores_true = torch.tensor([float(item["score"]) for item in items])
    maps: Dict[str, MethodMaps] = {}
    for loss in REGRESSION_LOSSES:
        maps[f"regression_{loss}"] = _single(attribute_all(
            suite, ["regression"], images, None, settings, progress,
            target_values=scores_true if loss == "mse" else None, loss=loss,
        ))
    baselines = [name for name in suite.names if name != "regression"]
    maps.update(attribute_all(suite, baselines, images, None, settings, progress))
    maps["random"] = MethodMaps(random_maps(maps["regression_deviation"].maps, settings.seed), 0.0)
    if not has_severity:
        results["regression_pcc_skipped"] = "the BrixIA items have no severity map (no zone masks)"
        severity = torch.zeros(len(items), *images.shape[-2:])
    else:
        severity = torch.stack([item["severity_map"] for item in items]).float()
    scores = regression_scores(model, images, severity, maps, settings,
                               sensitivity_methods=[f"regression_{loss}" for loss in REGRESSION_LOSSES] + ["random"],
                               progress=progress)
    if not has_severity:
        for value in scores.values():
            value.pop("pcc")
    results["regression"] = {"images": len(items), "scores": scores}
    curves = {_label(k): [v["sensitivity_n"][n] for n in sorted(v["sensitivity_n"])]
              for k, v in scores.items() if "sensitivity_n" in v}
    ns = sorted(next(v["sensitivity_n"] for v in scores.values() if "sensitivity_n" in v))
    results["figures"]["fig3b_sensitivity_n"] = "fig3b_sensitivity_n.png"
    viz.curves(ns, curves, xlabel="n (pixels removed)", ylabel="Pearson r (attribution sum vs output drop)",
               title="Fig. 3b: sensitivity-N of the regression losses", logx=True,
               path=os.path.join(out_dir, "fig3b_sensitivity_n.png"))
    if has_severity:
        shown = {_label(f"regression_{loss}"): maps[f"regression_{loss}"].maps[:4] for loss in REGRESSION_LOSSES}
        shown = {"severity map": severity[:4, None], **shown}
        results["figures"]["fig3a_regression"] = "fig3a_regression.png"
        viz.method_grid(images[:4], shown, row_labels=[f"score {int(s)}" for s in scores_true[:4]],
                        path=os.path.join(out_dir, "fig3a_regression.png"))


def _single(maps: Dict[str, MethodMaps]) -> MethodMaps:
    """The one method's result of an ``attribute_all`` call."""
    (only,) = maps.values()
    return only


def _label(key: str) -> str:
    if key.startswith("regression_"):
        return f"Regression IBA ({key.split('_', 1)[1]})"
    if key == "random":
        return "random map"
    return METHODS[key].label


def _figure_methods(results, out_dir, name, pairs, maps, count) -> None:
    chosen = list(range(min(count, len(pairs))))
    shown = {METHODS[k].label.replace(" (", "\n("): v.maps[chosen] for k, v in maps.items()}
    results["figures"][name] = f"{name}.png"
    viz.method_grid(pairs.images[chosen], shown, masks=pairs.masks[chosen],
                    row_labels=[f"{pairs.image_ids[i]}\n{pairs.class_names[pairs.targets[i]]}" for i in chosen],
                    path=os.path.join(out_dir, f"{name}.png"))


def _figure_inverse(results, out_dir, pairs, maps) -> None:
    """Fig. 1: IBA and Inverse IBA where a finding is drawn in two places."""
    if not len(pairs):
        return
    chosen = list(range(min(3, len(pairs))))
    shown = {"IBA": maps["iba"].maps[chosen], "Inverse IBA": maps["inverse"].maps[chosen]}
    results["figures"]["fig1_inverse_vs_iba"] = "fig1_inverse_vs_iba.png"
    viz.method_grid(pairs.images[chosen], shown, masks=pairs.masks[chosen],
                    row_labels=[pairs.class_names[pairs.targets[i]] for i in chosen],
                    path=os.path.join(out_dir, "fig1_inverse_vs_iba.png"))


def claims(results: dict) -> List[dict]:
    """The paper's claims with the numbers measured here and whether each held."""
    found = []
    nih = results.get("nih")
    if nih:
        iba, inverse = nih["coverage"]["iba"], nih["coverage"]["inverse"]
        measured = (f"share of a two-part finding's parts reached by the thresholded map, over {inverse['pairs']} "
                    f"pairs: Inverse IBA {_fmt(inverse['coverage'])}, IBA {_fmt(iba['coverage'])}; "
                    f"mean IoU Inverse {_fmt(nih['scores']['inverse']['iou'])}, IBA {_fmt(nih['scores']['iba']['iou'])}")
        enough = inverse["pairs"] >= MIN_CLAIM_PAIRS
        found.append(_claim("Inverse IBA finds all informative regions, IBA a sufficient subset", measured,
                            inverse["coverage"] > iba["coverage"] + MARGIN if enough else None))
        small = [f for f in SMALL_FINDINGS if f in nih["scores"]["iba"]["class_iou"]]
        multi = _nanmean([nih["scores"]["multilayer"]["class_iou"][f] for f in small])
        single = _nanmean([nih["scores"]["iba"]["class_iou"][f] for f in small])
        measured = (f"IoU on {' and '.join(small)}: Multi-layer IBA {_fmt(multi)}, IBA {_fmt(single)}; "
                    f"map resolution: Multi-layer at dense block 1, IBA at dense block 3")
        found.append(_claim("Multi-layer IBA is finer and localises small findings better", measured,
                            None if math.isnan(multi) or math.isnan(single) else multi > single + MARGIN))
    table3 = results.get("table3")
    if table3:
        bce, weighted = table3["bce"], table3["weighted_bce"]
        measured = (f"Inverse IBA mean IoU: weighted BCE {_fmt(weighted['iou'])}, BCE {_fmt(bce['iou'])}; "
                    f"mean AUC {_fmt(weighted['mean_auc'])} vs {_fmt(bce['mean_auc'])}")
        same_auc = abs(weighted["mean_auc"] - bce["mean_auc"]) < 0.05
        found.append(_claim("Weighted BCE aligns features with findings at (about) equal AUC", measured,
                            weighted["iou"] > bce["iou"] + MARGIN and same_auc))
    regression = results.get("regression")
    if regression and "pcc" in regression["scores"]["random"]:
        pcc = {k: regression["scores"][f"regression_{k}"]["pcc"] for k in REGRESSION_LOSSES}
        chance = regression["scores"]["random"]["pcc"]
        best = max((k for k in regression["scores"] if not k.startswith("regression_") and k != "random"),
                   key=lambda k: regression["scores"][k]["pcc"])
        measured = (", ".join(f"{k} {_fmt(v)}" for k, v in pcc.items()) + f"; random map {_fmt(chance)}; "
                    f"best other method: {_label(best)} {_fmt(regression['scores'][best]['pcc'])}")
        found.append(_claim("Regression IBA maps follow the zone severities (severity-map PCC above chance)",
                            measured, all(v > chance + 0.1 for v in pcc.values())))
    return found


def _claim(claim: str, measured: str, held: Optional[bool]) -> dict:
    verdict = "not measurable here" if held is None else ("held" if held else "did not hold")
    return {"claim": claim, "measured": measured, "verdict": verdict}


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def headline(scores: Dict[str, dict]) -> str:
    """One line: mean IoU per method, best first."""
    ordered = sorted(scores.items(), key=lambda kv: -np.nan_to_num(kv[1]["iou"], nan=-1))
    return "mean IoU: " + ", ".join(f"{METHODS[k].label} {_fmt(v['iou'])}" for k, v in ordered)


def headline_table(results: dict) -> str:
    """Table 1 (NIH-like) as Markdown: the report's headline."""
    scores = results["nih"]["scores"]
    rows = {METHODS[k].label: v for k, v in scores.items()}
    return markdown_table(rows, ["iou", "pointing", "insertion_auc", "deletion_auc", "seconds_per_map"])


def markdown_table(rows: Dict[str, dict], columns: Sequence[str]) -> str:
    """A Markdown table: one row per key of ``rows``, one column per name in ``columns``."""
    lines = ["| method | " + " | ".join(map(str, columns)) + " |", "|---|" + "---|" * len(columns)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _write_csv(path: str, rows: Dict[str, dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", *columns])
        for label, values in rows.items():
            writer.writerow([label, *[values.get(c) for c in columns]])


def write_report(results: dict, out_dir: str) -> None:
    """Write ``report.md``, ``results.json`` and the tables as CSV into ``out_dir``."""
    s = results["settings"]
    lines = ["# captum_iba: the paper's evaluation", "", results["description"], "",
             f"Seed {s['seed']}; IoU thresholds each map with `{IOU_THRESHOLD}`; insertion/deletion "
             f"{s['insertion_steps']} steps with a blurred baseline; pointing game tolerance "
             f"{s['pointing_tolerance']} px at 224 px, scaled to the image. Wall time "
             f"{results['seconds_total']:.0f} s on {results['environment']['threads']} torch threads.", ""]
    tables = []
    if "nih" in results:
        nih = results["nih"]
        rows = {METHODS[k].label: v for k, v in nih["scores"].items()}
        columns = ["iou", "pointing", "insertion_auc", "deletion_auc"]
        lines += [f"## Table 1: localisation on NIH-like findings ({nih['pairs']} pairs, {nih['images']} images)", "",
                  markdown_table(rows, columns), "",
                  "IoU: thresholded map vs the finding's mask; pointing: TorchRay's pointing game; "
                  "insertion (higher is better) and deletion (lower is better) AUC of the sigmoid output.", "",
                  "### Per finding (IoU)", "",
                  markdown_table({k: v["class_iou"] for k, v in rows.items()}, FINDINGS), "",
                  "### Pointing game per finding", "",
                  markdown_table({k: v["class_pointing"] for k, v in rows.items()}, FINDINGS), ""]
        tables.append(("table1_nih.csv", rows, columns))
    if "detectors" in results:
        rows = {METHODS[k].label: v["class_iou"] | {"mean": v["iou"]} for k, v in results["detectors"]["scores"].items()}
        lines += [f"## Table 2: IoU per BrixIA-like detector ({results['detectors']['pairs']} pairs)", "",
                  markdown_table(rows, [*DETECTORS, "mean"]), "",
                  "Ground truth: the zones whose score the detector looks for (3; 2; 0 or 1).", ""]
        tables.append(("table2_detectors.csv", rows, [*DETECTORS, "mean"]))
    elif "detectors_skipped" in results:
        lines += ["## Table 2", "", f"Not computed: {results['detectors_skipped']}.", ""]
    if "table3" in results:
        t3 = results["table3"]
        rows = {"BCE": t3["bce"]["class_iou"] | {"mean": t3["bce"]["iou"]},
                "weighted BCE": t3["weighted_bce"]["class_iou"] | {"mean": t3["weighted_bce"]["iou"]}}
        quality = {"BCE": t3["bce"], "weighted BCE": t3["weighted_bce"]}
        lines += ["## Table 3: Inverse IBA IoU per finding, BCE vs weighted BCE", "",
                  markdown_table(rows, [*FINDINGS, "mean"]), "",
                  f"Classifier quality on {t3['auc_images']} held-out images:", "",
                  markdown_table(quality, ["mean_auc", "mean_ap"]), ""]
        tables.append(("table3_bce_vs_weighted.csv", rows, [*FINDINGS, "mean"]))
    if "regression" in results:
        reg = results["regression"]["scores"]
        rows = {_label(k): v for k, v in reg.items()}
        if "pcc" in next(iter(reg.values())):
            lines += [f"## Severity-map correlation ({results['regression']['images']} images)", "",
                      markdown_table(rows, ["pcc"]), "",
                      "Pearson correlation of each map with the per-pixel severity map "
                      "(each pixel its zone's score; the paper's PCC).", ""]
            tables.append(("severity_pcc.csv", rows, ["pcc"]))
        else:
            lines += ["## Severity-map correlation", "", f"Not computed: {results['regression_pcc_skipped']}.", ""]
        sens = {k: v["sensitivity_n"] for k, v in rows.items() if "sensitivity_n" in v}
        ns = sorted(next(iter(sens.values())))
        lines += ["## Sensitivity-N of the regression losses (Fig. 3b)", "",
                  markdown_table(sens, ns), "", "![](fig3b_sensitivity_n.png)", ""]
    if results["claims"]:
        lines += ["## The paper's claims, measured here", "", "| claim | measured | verdict |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {c['measured']} | **{c['verdict']}** |" for c in results["claims"]]
        lines += [""]
    timings = {}
    for study in ("nih", "detectors", "regression"):
        for key, value in results.get(study, {}).get("scores", {}).items():
            if key != "random":
                timings.setdefault(_label(key), {})[study] = value["seconds_per_map"]
    if timings:
        lines += ["## Seconds per map", "", markdown_table(timings, ["nih", "detectors", "regression"]), "",
                  "Batched where the method batches (the IBA family, Captum's methods); TorchRay's "
                  "extremal perturbation takes one image at a time.", ""]
    figures = results["figures"]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()] + [""]
    lines += ["## Notes", "",
              "- TorchRay's methods and Captum's LRP run on an in-place-free copy of each model "
              "(same weights, same function; `captum_iba.methods.inplace_free_copy`): TorchRay 1.0's "
              "grad_cam at `features.norm5` fails on torchvision DenseNet's in-place ReLU otherwise.",
              "- Grad-CAM at `features.norm5`; excitation backprop at `features.denseblock3`; IBA, "
              "Inverse IBA and Regression IBA at `features.denseblock3`; Multi-layer IBA at dense blocks 1-3 "
              "(`masked`, threshold from the method suite).", ""]
    for name, rows, columns in tables:
        _write_csv(os.path.join(out_dir, name), rows, columns)
    _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2, default=_json_default))
    _atomic_write(os.path.join(out_dir, "report.md"), "\n".join(lines))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic_write(path: str, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
