"""The paper's studies on held-out chest X-rays: they compute, :mod:`captum_iba.app.report.render` renders.

* :func:`nih_study` -- the 8-finding classifier: every method's map per
  (image, finding) pair scored by IoU (Table 1), the pointing game and
  insertion/deletion AUC (Fig. 2), Readout IBA included (trained on the
  estimation items, see :func:`trained_suite`); Inverse IBA vs IBA on findings drawn in two
  places (Fig. 1); Inverse IBA with BCE vs weighted BCE (Table 3).
* :func:`detector_study` -- BrixIA's three detectors: IoU per detector (Table 2).
* :func:`regression_study` -- the severity regressor: Regression IBA's losses
  and the baselines by severity-map PCC and sensitivity-N (Fig. 3).

The layer sweep (:mod:`.sweep`), the cue study (:mod:`.cue`) and the
redundant-evidence study (:mod:`.redundant`) have modules of their own.

Each study fills ``results`` (JSON-ready numbers) and ``figures`` (what to
draw: :class:`Figure`, a viz function and its data); :func:`run_studies` runs
every study the inputs allow.
"""

from __future__ import annotations

import time
import warnings
from typing import Dict

import torch

from ... import viz
from ..._hashing import tensor_digest
from ...cxr import DETECTORS, FINDINGS, collate
from ...cxr.models._cache import cache_dir
from ..methods import DEFAULT_LAYER, METHODS, MethodSuite
from ...objectives import REGRESSION_LOSSES
from ..attribute.plan import readout_layers
from ._study import Figure, ReportInputs, images_of, model_quality, study_suite
from .evaluation import (
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

__all__ = ["run_studies", "nih_study", "detector_study", "regression_study",
           "method_label", "trained_suite"]

#: A claim's verdict rests on at least this many pairs (images for the regression study); on fewer
#: it is "too few pairs". The default demo's 16 images give 26 NIH-like pairs.
MIN_CLAIM_PAIRS = 20


def run_studies(inputs: ReportInputs, settings: EvaluationSettings, progress: bool = True, log=print):
    """Every study the inputs allow (a study runs when its data and model are given).

    Returns
    -------
    (dict, dict)
        The results (JSON-ready: per-study numbers and ``study_seconds``) and
        the figures to draw (name -> :class:`Figure`).
    """
    from .cue import CUE_MODELS_NEEDED, cue_study
    from .redundant import REDUNDANT_MODELS_NEEDED, redundant_study
    from .sweep import sweep_study
    from .vit import vit_study

    results: dict = {"study_seconds": {}}
    figures: Dict[str, Figure] = {}
    # (study, the data it needs, the models it needs): a study runs when all are given.
    for study, data, needed in ((nih_study, inputs.nih, ("nih_bce",)),
                                (detector_study, inputs.brixia, ("brixia_detectors",)),
                                (regression_study, inputs.brixia, ("brixia_regression",)),
                                (vit_study, inputs.nih, ("nih_vit",)),
                                (sweep_study, inputs.nih if inputs.sweep_images else None, ("nih_bce",)),
                                (cue_study, inputs.cue, CUE_MODELS_NEEDED),
                                (redundant_study, inputs.redundant, REDUNDANT_MODELS_NEEDED)):
        if data is not None and all(name in inputs.models for name in needed):
            started = time.perf_counter()
            study(inputs, results, figures, settings, progress, log)
            results["study_seconds"][study.__name__] = seconds = time.perf_counter() - started
            log(f"  done in {seconds:.0f} s")
    return results, figures


def reported(suite: MethodSuite) -> list:
    """The suite's methods that the report runs (see ``Method.in_report``)."""
    return [name for name in suite.names if METHODS[name].in_report]


def nih_study(inputs, results, figures, settings, progress, log) -> None:
    """Table 1, Fig. 1, Fig. 2 and Table 3 on the NIH-style items (see the module notes)."""
    model = inputs.models["nih_bce"]
    pairs = finding_pairs(inputs.nih, items_with(inputs.nih, "labels", inputs.images), FINDINGS)
    missing = tuple(getattr(model, "missing_findings", ()))
    if missing:  # a model of the user's own may lack outputs for some findings: nothing to explain there
        pairs = pairs.subset([i for i, k in enumerate(pairs.targets.tolist()) if FINDINGS[k] not in missing])
    log(f"NIH-like study: {len(pairs)} (image, finding) pairs from {inputs.images} images with findings")
    suite, training = trained_suite(model, inputs.nih_estimation, "labels", inputs, progress, log,
                                    unused=[FINDINGS.index(name) for name in missing])
    failed: Dict[str, str] = {}
    maps = attribute_all(suite, reported(suite), pairs.images, pairs.targets, settings, progress, failures=failed)
    scores = localisation_scores(model, pairs, maps, settings, progress)
    results["layers"] = {"bottleneck": suite.layer, "multilayer": list(suite.multilayer_layers),
                         "cam": suite.cam_layer, "grid": list(maps["iba"].maps.shape[-2:]),  # in any layout
                         "readout": list(suite.readout_layers) if "readout" in suite.names else []}
    results["nih"] = {"pairs": len(pairs), "class_pairs": pairs.class_counts(), "images": inputs.images,
                      "scores": scores, "quality": model_quality(model, inputs.nih, inputs.auc_images, "labels"),
                      "missing_findings": list(missing), "failed": failed, "training": training}
    log("  mean IoU: " + ", ".join(f"{METHODS[k].label} {v['iou']:.3f}" for k, v in scores.items()))
    _figure_methods(figures, "fig4_methods", pairs, maps, count=4)
    figures["fig2_insertion_deletion"] = Figure(
        viz.scatter, {METHODS[k].label: v["deletion_auc"] for k, v in scores.items()},
        {METHODS[k].label: v["insertion_auc"] for k, v in scores.items()},
        xlabel="deletion AUC (lower is better)", ylabel="insertion AUC (higher is better)",
        title="Fig. 2: insertion vs deletion")
    _two_part_study(inputs, results, figures, suite, settings, progress)
    _weighted_bce_study(inputs, results, model, pairs, scores, settings, progress)


def _two_part_study(inputs, results, figures, suite, settings, progress) -> None:
    """Inverse IBA vs IBA where one finding is drawn in two separate places (Fig. 1)."""
    # Such findings (bilateral effusion, two nodules) are rare: look for them in the held-out
    # pool, and run only the two methods the claim compares.
    pool = finding_pairs(inputs.nih, range(min(len(inputs.nih), inputs.auc_images)), FINDINGS)
    chosen = pool.multipart()[: max(inputs.images, MIN_CLAIM_PAIRS)]
    if not chosen:
        results["nih"]["coverage_skipped"] = (
            f"none of the first {min(len(inputs.nih), inputs.auc_images)} held-out items has a finding whose "
            "ground truth is in two separate places (two boxes of one finding on one image)")
        return
    two_part = pool.subset(chosen)
    two_part_maps = attribute_all(suite, ["iba", "inverse"], two_part.images, two_part.targets, settings, progress)
    coverage = {k: component_coverage(v.maps, two_part.masks) for k, v in two_part_maps.items()}
    results["nih"]["coverage"] = {k: {"coverage": c, "pairs": n} for k, (c, n) in coverage.items()}
    _figure_inverse(figures, two_part, two_part_maps)


def _weighted_bce_study(inputs, results, model, pairs, scores, settings, progress) -> None:
    """Table 3: Inverse IBA on the BCE and the weighted-BCE model, with their AUC/AP."""
    if "nih_weighted_bce" not in inputs.models:
        return
    weighted = inputs.models["nih_weighted_bce"]
    weighted_suite = study_suite(weighted, "classification", inputs.nih_estimation, inputs, progress)
    weighted_maps = attribute_all(weighted_suite, ["inverse"], pairs.images, pairs.targets, settings, progress)
    weighted_scores = localisation_scores(weighted, pairs, weighted_maps, settings, progress, perturbation=False)
    # The BCE model's quality is the NIH study's, on the same held-out items: measured once.
    bce_quality = results["nih"]["quality"]
    weighted_quality = model_quality(weighted, inputs.nih, inputs.auc_images, "labels")
    results["table3"] = {
        "bce": {"class_iou": scores["inverse"]["class_iou"], "iou": scores["inverse"]["iou"],
                **_auc_and_ap(bce_quality)},
        "weighted_bce": {"class_iou": weighted_scores["inverse"]["class_iou"],
                         "iou": weighted_scores["inverse"]["iou"], **_auc_and_ap(weighted_quality)},
        "auc_images": bce_quality["images"],
    }


def trained_suite(model, estimation, label_key: str, inputs: ReportInputs, progress, log, unused=()):
    """A classification study's suite with its learning methods (Readout IBA) trained, and their records.

    They learn from the estimation items (all of them, batches of 32; one row
    per positive ``label_key``, the columns ``unused`` left out: outputs the
    model lacks) with ``inputs.suite_options["training_options"]`` (else the
    registry's defaults), reading every stage of the model. A trained state is
    kept in the user's cache (``<cache>/trained/<method>-<key>.pt``), keyed by
    the model's weights, the statistics, the options and the training items,
    so that a second report loads it instead of training again.

    Returns
    -------
    (MethodSuite, dict)
        The suite, and per learning method ``{"training_seconds", "epochs",
        "rows"}`` (the seconds of its training, also when loaded).
    """
    batches = []
    for batch in torch.utils.data.DataLoader(estimation, batch_size=32, collate_fn=collate):
        labels = batch[label_key].float().clone()
        labels[:, list(unused)] = 0
        batches.append((batch["image"], labels))
    size = batches[0][0].shape[-1]
    suite = study_suite(model, "classification", estimation, inputs, progress, training_data=batches,
                        readout_layers=readout_layers(model, size, inputs.suite_options.get("layer", DEFAULT_LAYER)))
    records = {}
    for name in (n for n in suite.names if METHODS[n].train is not None):
        path = cache_dir() / "trained" / f"{name}-{_training_key(suite, name, batches)}.pt"
        loaded = path.is_file() and _load_cached(suite, name, path)
        state = suite.train(name)
        if not loaded:
            _save_cached(state, path)
        history = getattr(state, "history", [])
        records[name] = {"training_seconds": getattr(state, "training_seconds", None), "epochs": len(history),
                         "rows": history[-1]["rows"] if history else None}
        log(f"  {METHODS[name].label}: {'loaded from the cache' if loaded else 'trained'} "
            f"({records[name]['training_seconds']:.1f} s of training)")
    return suite, records


def _training_key(suite: MethodSuite, name: str, batches) -> str:
    """What determines a trained state: the model's weights, the statistics, the options, the items."""
    stats = {f"stats/{layer}.{key}": getattr(suite.stats[layer], key)
             for layer in suite.stats_layers([name]) for key in ("mean", "m2", "nonzero")}
    data = {f"data/{i}.{j}": tensor for i, batch in enumerate(batches) for j, tensor in enumerate(batch)}
    text = repr((name, suite.layer, suite.readout_layers, sorted(suite.training_options.get(name, {}).items())))
    weights = {f"model/{key}": value for key, value in suite.model.state_dict().items()}
    return tensor_digest({**stats, **data, **weights}, prefix=text)[:16]


def _load_cached(suite: MethodSuite, name: str, path) -> bool:
    try:
        suite.load_trained(name, path)
    except (ValueError, OSError) as error:
        warnings.warn(f"ignoring the unreadable cache file {path} ({error}); it will be trained again",
                      RuntimeWarning)
        return False
    return True


def _save_cached(state, path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state.save(path)
    except OSError as error:  # the cache only saves training: go on without it
        warnings.warn(f"could not cache the trained method ({path}: {error}); it will be trained again next time",
                      RuntimeWarning)


def _auc_and_ap(quality: dict) -> dict:
    """Table 3's columns from a :func:`model_quality` of a classifier."""
    return {"mean_auc": quality["value"], "mean_ap": quality["mean_ap"]}


def detector_study(inputs, results, figures, settings, progress, log) -> None:
    item = inputs.brixia[0]
    if "zone_masks" not in item:
        results["detectors_skipped"] = "the BrixIA items have no zone masks (no lung segmentation)"
        return
    model = inputs.models["brixia_detectors"]
    pairs = detector_pairs(inputs.brixia, items_with(inputs.brixia, "detectors", inputs.images), DETECTORS)
    log(f"BrixIA-like detector study: {len(pairs)} (image, detector) pairs")
    suite, training = trained_suite(model, inputs.brixia_estimation, "detectors", inputs, progress, log)
    failed: Dict[str, str] = {}
    maps = attribute_all(suite, reported(suite), pairs.images, pairs.targets, settings, progress, failures=failed)
    scores = localisation_scores(model, pairs, maps, settings, progress, perturbation=False)
    results["detectors"] = {"pairs": len(pairs), "class_pairs": pairs.class_counts(), "lung_iou": pairs.region_iou(),
                            "scores": scores, "failed": failed, "training": training,
                            "quality": model_quality(model, inputs.brixia, inputs.auc_images, "detectors")}


def regression_study(inputs, results, figures, settings, progress, log) -> None:
    model = inputs.models["brixia_regression"]
    items = [inputs.brixia[i] for i in images_of(inputs.brixia, inputs.images)]
    images = torch.stack([item["image"] for item in items])
    has_severity = "severity_map" in items[0]
    log(f"BrixIA-like regression study: {len(items)} images")
    suite = study_suite(model, "regression", inputs.brixia_estimation, inputs, progress)
    scores_true = torch.tensor([float(item["score"]) for item in items])
    maps: Dict[str, MethodMaps] = {}
    for loss in REGRESSION_LOSSES:
        maps[f"regression_{loss}"] = _single(attribute_all(
            suite, ["regression"], images, None, settings, progress,
            target_values=scores_true if loss == "mse" else None, loss=loss,
        ))
    baselines = [name for name in reported(suite) if name != "regression"]
    failed: Dict[str, str] = {}
    maps.update(attribute_all(suite, baselines, images, None, settings, progress, failures=failed))
    maps["random"] = MethodMaps(random_maps(maps["regression_deviation"].maps, settings.seed), 0.0)
    if not has_severity:
        results["regression_pcc_skipped"] = "the BrixIA items have no severity map (no zone masks)"
        severity = torch.zeros(len(items), *images.shape[-2:])
    else:
        severity = torch.stack([item["severity_map"] for item in items]).float()
    grid = int(suite.stats[suite.layer].mean.shape[-1])
    scores = regression_scores(model, images, severity, maps, settings,
                               sensitivity_methods=[f"regression_{loss}" for loss in REGRESSION_LOSSES]
                               + ["random", "saliency"], progress=progress, grid=grid)
    if not has_severity:
        for value in scores.values():
            value.pop("pcc")
    results["regression"] = {"images": len(items), "scores": scores, "failed": failed,
                             "quality": model_quality(model, inputs.brixia, inputs.auc_images, "score")}
    for key, xlabel, title in (
            ("sensitivity_n", "n (pixels set to zero)", "Fig. 3b: sensitivity-N, the paper's setting (scattered pixels)"),
            ("sensitivity_cells", f"fraction of the {grid}x{grid} bottleneck cells set to zero",
             "Sensitivity-N over bottleneck cells, squared change of the score")):
        curves = {method_label(k): list(v[key].values()) for k, v in scores.items() if key in v}
        xs = list(next(v[key] for v in scores.values() if key in v))
        figures[f"fig3b_{key}"] = Figure(viz.curves, xs, curves, xlabel=xlabel, title=title, logx=True,
                                         ylabel="Pearson r (attribution sum vs output change)")
    if has_severity:
        shown = {method_label(f"regression_{loss}"): maps[f"regression_{loss}"].maps[:4] for loss in REGRESSION_LOSSES}
        shown = {"severity map": severity[:4, None], **shown}
        figures["fig3a_regression"] = Figure(viz.method_grid, images[:4], shown,
                                             row_labels=[f"score {int(s)}" for s in scores_true[:4]])


def _single(maps: Dict[str, MethodMaps]) -> MethodMaps:
    """The one method's result of an ``attribute_all`` call."""
    (only,) = maps.values()
    return only


def method_label(key: str) -> str:
    if key.startswith("regression_"):
        return f"Regression IBA ({key.split('_', 1)[1]})"
    if key == "random":
        return "random map"
    return METHODS[key].label


def _figure_methods(figures, name, pairs, maps, count) -> None:
    chosen = list(range(min(count, len(pairs))))
    shown = {METHODS[k].label.replace(" (", "\n("): v.maps[chosen] for k, v in maps.items()}
    figures[name] = Figure(viz.method_grid, pairs.images[chosen], shown, masks=pairs.masks[chosen],
                    row_labels=[f"{pairs.image_ids[i]}\n{pairs.class_names[pairs.targets[i]]}" for i in chosen])


def _figure_inverse(figures, pairs, maps) -> None:
    """Fig. 1: IBA and Inverse IBA where a finding is drawn in two places."""
    if not len(pairs):
        return
    chosen = list(range(min(3, len(pairs))))
    shown = {"IBA": maps["iba"].maps[chosen], "Inverse IBA": maps["inverse"].maps[chosen]}
    figures["fig1_inverse_vs_iba"] = Figure(viz.method_grid, pairs.images[chosen], shown, masks=pairs.masks[chosen],
                    row_labels=[pairs.class_names[pairs.targets[i]] for i in chosen])
