"""The paper's evaluation as a report: it renders what :mod:`captum_iba.app.report.studies` computed.

:func:`run_report` runs the studies on the models and held-out data it is
given, judges the claims (:mod:`captum_iba.app.report.claims`) and writes into a
folder ``report.md`` (one function per section below), the PNG figures,
``results.json`` and one CSV per table, each file atomically. Parts whose model
or ground truth is missing are left out and the report says why.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..._files import atomic_path, disk_space
from ...cxr import DETECTORS, FINDINGS
from ..methods import METHODS
from . import paper
from .claims import MARGIN, claims, fmt
from .evaluation import IOU_THRESHOLD, EvaluationSettings
from .studies import MIN_CLAIM_PAIRS, ReportInputs, run_studies, method_label

__all__ = ["ReportInputs", "run_report", "write_report", "markdown_table", "headline_table"]

Table = tuple  # (csv file name, rows, columns)


def run_report(inputs: ReportInputs, out_dir: str, settings: Optional[EvaluationSettings] = None,
               progress: bool = True, log=print) -> dict:
    """Run every study the inputs allow and write the report to ``out_dir``.

    Returns
    -------
    dict
        Everything measured (also ``results.json``).
    """
    settings = settings or EvaluationSettings()
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    results, figures = run_studies(inputs, settings, progress, log)
    results.update(settings=asdict(settings), description=inputs.description)
    results["claims"] = claims(results)
    results["seconds_total"] = time.perf_counter() - started
    results["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "python": platform.python_version()}
    results["figures"] = {}
    for name, figure in figures.items():
        figure.draw(os.path.join(out_dir, f"{name}.png"))  # viz writes atomically
        results["figures"][name] = f"{name}.png"
    write_report(results, out_dir)
    return results


def markdown_table(rows: Dict[str, dict], columns: Sequence[str]) -> str:
    """A Markdown table: one row per key of ``rows``, one column per name in ``columns``."""
    lines = ["| method | " + " | ".join(map(str, columns)) + " |", "|---|" + "---|" * len(columns)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(values.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def headline_table(results: dict) -> str:
    """Table 1 (NIH-like) as Markdown: the report's headline."""
    rows = {METHODS[k].label: v for k, v in results["nih"]["scores"].items()}
    return markdown_table(rows, ["iou", "pointing", "insertion_auc", "deletion_auc", "seconds_per_map"])


# The sections of report.md: each returns its lines and the tables to write as CSV.


def _head(results: dict):
    s = results["settings"]
    return ["# captum_iba: the paper's evaluation", "", results["description"], "",
            f"Seed {s['seed']}; IoU thresholds each map with `{IOU_THRESHOLD}`; insertion/deletion "
            f"{s['insertion_steps']} steps with a blurred baseline; pointing game tolerance "
            f"{s['pointing_tolerance']} px at 224 px, scaled to the image. Wall time "
            f"{results['seconds_total']:.0f} s on {results['environment']['threads']} torch threads.", ""], []


def _headline(results: dict):
    """Plain sentences: does the IBA family beat Grad-CAM here, and Regression IBA a random map?"""
    lines = []
    scores = results.get("nih", {}).get("scores", {})
    if "gradcam" in scores:
        cam = scores["gradcam"]
        for name in ("iba", "inverse", "multilayer"):
            if name in scores:
                verdicts = [f"{metric} {fmt(scores[name][metric])} vs {fmt(cam[metric])} "
                            f"({'above' if scores[name][metric] > cam[metric] else 'NOT above'})"
                            for metric in ("iou", "pointing")]
                lines.append(f"- {METHODS[name].label} against Grad-CAM (Captum): {'; '.join(verdicts)}.")
    regression = results.get("regression", {}).get("scores", {})
    if "pcc" in regression.get("random", {}):
        chance = regression["random"]["pcc"]
        for key, value in regression.items():
            if key.startswith("regression_"):
                lines.append(f"- {method_label(key)} severity PCC {fmt(value['pcc'])} vs a random map {fmt(chance)} "
                             f"({'above' if value['pcc'] > chance else 'NOT above'}).")
    if not lines:
        return [], []
    return ["## Headline", "", _where(results), "", *lines, ""], []


def _table1(results: dict):
    if "nih" not in results:
        return [], []
    nih = results["nih"]
    rows = {METHODS[k].label: {**v, "paper_iou": paper.TABLE1_IOU.get(k)} for k, v in nih["scores"].items()}
    columns = ["iou", "paper_iou", "pointing", "insertion_auc", "deletion_auc"]
    lines = [f"## Table 1: localisation on NIH-like findings ({nih['pairs']} pairs, {nih['images']} images)", "",
             _where(results), "", markdown_table(rows, columns), "",
             "IoU: thresholded map vs the finding's mask; paper_iou: the paper's Table 1 (NIH ChestX-ray8, "
             "DenseNet-121 at 224 px; n/a where the paper has no such row); pointing: TorchRay's pointing game; "
             "insertion (higher is better) and deletion (lower is better) AUC of the sigmoid output.", "",
             *([f"Left out: the model has no output for {', '.join(nih['missing_findings'])}.", ""]
               if nih.get("missing_findings") else []),
             *([f"Fig. 1 (Inverse IBA vs IBA on two-part findings) is left out: {nih['coverage_skipped']}.", ""]
               if "coverage_skipped" in nih else []),
             "### Per finding (IoU)", "",
             markdown_table({k: v["class_iou"] for k, v in rows.items()}, FINDINGS), "",
             "### Pointing game per finding", "",
             markdown_table({k: v["class_pointing"] for k, v in rows.items()}, FINDINGS), ""]
    return lines, [("table1_nih.csv", rows, columns)]


def _vit(results: dict):
    """Table 1 and the severity PCC of the embedded ViT, beside the DenseNet's, with its layer, layout and grid."""
    if "vit" not in results:
        return [], []
    vit, dense = results["vit"], results.get("nih", {}).get("scores", {})
    rows = {METHODS[k].label: {**v, "densenet_iou": dense.get(k, {}).get("iou")} for k, v in vit["scores"].items()}
    columns = ["iou", "densenet_iou", "pointing", "insertion_auc", "deletion_auc"]
    layers, quality = vit["layers"], vit.get("quality", {})
    lines = [f"## The Vision Transformer: Table 1 ({vit['pairs']} pairs, {vit['images']} images)", "",
             f"The embedded ViT (timm VisionTransformer on a convolutional stem, 4 blocks, width 64; mean AUC "
             f"{quality.get('mean_auc', float('nan')):.3f} on held-out phantom images). Layer of IBA, Inverse IBA "
             f"and Regression IBA: `{layers['layer']}`, {layers['layout']}; every token is restricted, the patch "
             f"tokens are the map. Multi-layer IBA: {', '.join(f'`{n}`' for n in layers['multilayer_layers'])} "
             f"(blocks on one grid: the intersection of their thresholded maps); pytorch-grad-cam: "
             f"`{layers['cam_layer']}` through the same layout. densenet_iou: the DenseNet's IoU above.", "",
             markdown_table(rows, columns), ""]
    if vit.get("failed"):
        lines += ["Failed on the ViT: " + "; ".join(f"{METHODS[k].label}: {e}" for k, e in vit["failed"].items()), ""]
    lines += ["Left out on the ViT: " + "; ".join(f"{METHODS[k].label}: {why}" for k, why in vit["left_out"].items()),
              ""]
    tables = [("table1_vit.csv", rows, columns)]
    if "severity" in vit:
        severity = vit["severity"]
        dense_pcc = results.get("regression", {}).get("scores", {})
        pcc_rows = {method_label(k): {"pcc": v, "densenet_pcc": dense_pcc.get(
            "regression_deviation" if k == "regression" else k, {}).get("pcc")} for k, v in severity["pcc"].items()}
        lines += [f"### Severity-map correlation, ViT regressor ({severity['images']} images)", "",
                  markdown_table(pcc_rows, ["pcc", "densenet_pcc"]), "",
                  "Regression IBA with the deviation loss; densenet_pcc: the DenseNet regressor's PCC above.", ""]
        tables.append(("severity_pcc_vit.csv", pcc_rows, ["pcc", "densenet_pcc"]))
    return lines, tables


def _where(results: dict) -> str:
    """One line: where the IBA family's bottleneck is, and its grid."""
    layers = results.get("layers")
    if not layers:
        return ""
    h, w = layers.get("grid", ("?", "?"))
    return (f"Bottleneck of IBA, Inverse IBA and Regression IBA: `{layers['bottleneck']}`, a {h}x{w} grid "
            f"(the stage whose map is closest to the paper's 14x14 at this image size); Multi-layer IBA: "
            f"{', '.join(f'`{n}`' for n in layers['multilayer'])}; Grad-CAM: `{layers['cam']}`."
            + (f" Readout IBA: the same bottleneck, alpha predicted from {', '.join(f'`{n}`' for n in layers['readout'])}."
               if layers.get("readout") else ""))


def _table2(results: dict):
    if "detectors" not in results:
        skipped = results.get("detectors_skipped")
        return (["## Table 2", "", f"Not computed: {skipped}.", ""] if skipped else []), []
    columns = [*DETECTORS, "mean", *(f"paper {d}" for d in DETECTORS)]
    rows = {METHODS[k].label: v["class_iou"] | {"mean": v["iou"]}
            | {f"paper {d}": paper.TABLE2_IOU.get(k, {}).get(d) for d in DETECTORS}
            for k, v in results["detectors"]["scores"].items()}
    lines = [f"## Table 2: IoU per BrixIA-like detector ({results['detectors']['pairs']} pairs)", "",
             markdown_table(rows, columns), "",
             "Ground truth: the zones whose score the detector looks for (3; 2; 0 or 1).", ""]
    return lines, [("table2_detectors.csv", rows, columns)]


def _table3(results: dict):
    if "table3" not in results:
        return [], []
    t3, columns = results["table3"], [*FINDINGS, "mean"]
    rows = {"BCE": t3["bce"]["class_iou"] | {"mean": t3["bce"]["iou"]},
            "weighted BCE": t3["weighted_bce"]["class_iou"] | {"mean": t3["weighted_bce"]["iou"]},
            "BCE (paper)": dict(paper.TABLE3_IOU["bce"]) | {"mean": paper.TABLE3_MEAN["bce"]},
            "weighted BCE (paper)": dict(paper.TABLE3_IOU["weighted_bce"]) | {"mean": paper.TABLE3_MEAN["weighted_bce"]}}
    quality = {"BCE": t3["bce"], "weighted BCE": t3["weighted_bce"],
               **{f"{name} (paper)": {"mean_auc": q["auc"], "mean_ap": q["ap"]}
                  for name, q in (("BCE", paper.MODEL_QUALITY["bce"]),
                                  ("weighted BCE", paper.MODEL_QUALITY["weighted_bce"]))}}
    lines = ["## Table 3: Inverse IBA IoU per finding, BCE vs weighted BCE", "", markdown_table(rows, columns), "",
             f"Classifier quality on {t3['auc_images']} held-out images:", "",
             markdown_table(quality, ["mean_auc", "mean_ap"]), ""]
    return lines, [("table3_bce_vs_weighted.csv", rows, columns)]


def _regression(results: dict):
    if "regression" not in results:
        return [], []
    scores = results["regression"]["scores"]
    rows = {method_label(k): {**v, "paper_pcc": paper.SEVERITY_PCC.get(k.replace("regression_", ""))}
            for k, v in scores.items()}
    lines, tables = [], []
    if "pcc" in next(iter(scores.values())):
        lines += [f"## Severity-map correlation ({results['regression']['images']} images)", "",
                  markdown_table(rows, ["pcc", "paper_pcc"]), "",
                  "Pearson correlation of each map with the per-pixel severity map "
                  "(each pixel its zone's score; the paper's PCC, paper_pcc its published value on BrixIA).", ""]
        tables.append(("severity_pcc.csv", rows, ["pcc", "paper_pcc"]))
    else:
        lines += ["## Severity-map correlation", "", f"Not computed: {results['regression_pcc_skipped']}.", ""]
    sensitivity = {k: v["sensitivity_n"] for k, v in rows.items() if "sensitivity_n" in v}
    cells = {k: v["sensitivity_cells"] for k, v in rows.items() if "sensitivity_cells" in v}
    lines += ["## Sensitivity-N of the regression losses (Fig. 3b)", "",
              "The paper's setting: n scattered pixels set to zero, Pearson correlation of the map's mass under "
              "the mask with the signed drop of the score.", "",
              markdown_table(sensitivity, list(next(iter(sensitivity.values())))), "",
              "![](fig3b_sensitivity_n.png)", ""]
    if cells:
        lines += ["Regression IBA's map is unsigned (bits), while the drop of a score is signed: masking a "
                  "severe zone lowers the score, masking a healthy one raises it, so in the paper's setting "
                  "any unsigned map sits at chance whatever it shows. Measured instead over whole cells of the "
                  "bottleneck's grid, with the squared change of the score (what the deviation loss "
                  "optimises), by fraction of the cells set to zero:", "",
                  markdown_table(cells, list(next(iter(cells.values())))), "",
                  "![](fig3b_sensitivity_cells.png)", ""]
    return lines, tables


def _failures(results: dict):
    lines = [f"- {METHODS[name].label} on the {study} study: {error}"
             for study in ("nih", "detectors", "regression", "redundant")
             for name, error in results.get(study, {}).get("failed", {}).items()]
    if not lines:
        return [], []
    return ["## Methods that could not explain this model", "",
            "Left out of the tables above (their library raised on this model):", "", *lines, ""], []


def _claims(results: dict):
    if not results["claims"]:
        return [], []
    lines = ["## The paper's claims, measured here", "",
             f"Paper: {paper.CITATION}. A comparison holds only beyond its margin (stated per row; {MARGIN} unless "
             f"said) and on at least {MIN_CLAIM_PAIRS} pairs (else \"too few pairs\"). A claim whose premise the "
             "data lack is \"not testable here\", with the rule that found it so and the experiment that would "
             "test it. Beside each, the quality of the model it is measured on (held-out images): a claim "
             "about what a model uses says little of a model near chance.", "",
             "| claim | where | the paper | measured here | model | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['source']} | {c['published']} | {c['measured']} | {c['model'] or 'n/a'} | "
              f"**{c['verdict']}**" + (f" (would be tested by {c['experiment']})" if c["experiment"] else "") + " |"
              for c in results["claims"]]
    return lines + [""], []


def _sweep(results: dict):
    sweep = results.get("sweep")
    if not sweep:
        return [], []
    metrics = ["iou", "pointing", "insertion_auc", "deletion_auc", "pcc"]
    rows = {}
    for stage in sweep["stages"]:
        h, w = sweep["grids"][stage]
        for row, values in sweep["rows"].items():
            if stage in values:
                label = "Regression IBA (deviation)" if row.startswith("regression") else METHODS[row].label
                rows[f"{label} at `{stage}` ({h}x{w})"] = values[stage]
    return [f"## Layer sweep: the bottleneck at every stage ({sweep['images']} images)", "",
            "IBA and Inverse IBA at each stage; Multi-layer IBA over the stages up to it; Regression IBA "
            "(deviation) against the severity maps. The paper fixes dense block 3 at 224 px (14x14 cells).", "",
            markdown_table(rows, metrics), "", "![](sweep_layers.png)", ""], [("sweep_layers.csv", rows, metrics)]


def _cue(results: dict):
    cue = results.get("cue")
    if not cue:
        return [], []
    drops = {name: values for name, values in cue["intervention"].items()}
    methods = {METHODS[name].label: values for name, values in cue["methods"].items()}
    lines = [f"## What the model uses: the cue study ({cue['images']} held-out images)", "",
             f"A side marker ({100 * cue['cue_area']:.1f}% of the image) drawn on {100 * cue['rates'][0]:.0f}% of "
             f"the training images with {cue['finding']} and {100 * cue['rates'][1]:.0f}% of the others; "
             "`nih_cue` is trained with it, `nih_cue_clean` on the same images without it. Intervention: the "
             f"probability of {cue['finding']} with the marker and with it removed (same image otherwise):", "",
             markdown_table(drops, ["with_cue", "without_cue", "drop", "drop_min"]), "",
             "Share of each method's map on the marker, for the model that uses it and the one that cannot "
             f"(an even map puts {cue['cue_area']:.3f} there); a faithful method moves to the marker exactly "
             "when the model relies on it:", "",
             markdown_table(methods, ["cue_model", "clean_model", "difference", "difference_se"]), ""]
    weighted = cue.get("weighted_bce_inverse_share")
    if weighted:
        lines += [f"Weighted BCE on the same data: Inverse IBA's share on the marker {fmt(weighted['weighted_bce'])} "
                  f"(weighted BCE) vs {fmt(weighted['bce'])} (BCE); intervention drop "
                  f"{fmt(drops['nih_cue_weighted_bce']['drop'])} vs {fmt(drops['nih_cue']['drop'])}.", ""]
    return lines, [("cue_methods.csv", methods, ["cue_model", "clean_model", "difference", "difference_se"])]


def _redundant(results: dict):
    study = results.get("redundant")
    if not study:
        return [], []
    findings = {name: entry for name, entry in study["findings"].items() if entry["pairs"]}
    rules = {name: entry["rule"].upper() for name, entry in study["findings"].items()}
    total = sum(entry["pairs"] for entry in study["findings"].values())
    lines = [f"## Sufficient or all evidence: findings drawn in two parts ({total} held-out images)", "",
             "`nih_redundant` is trained on phantom images with findings drawn as one lesion in each lung: "
             + ", ".join(f"{name} ({'either lesion is' if rule == 'OR' else 'both parts make'} the finding, {rule})"
                         for name, rule in rules.items())
             + ". The study's images show both parts. Intervention: the "
             "finding's probability as drawn and with parts removed (the chest drawn behind them); the model "
             f"follows OR when removing one costs under {study['rule_share']} of what removing both costs, AND "
             f"when it costs more (removing both must cost at least {study['detected_drop']}):", ""]
    checks = {f"{name} ({rules[name]}; {'follows it' if entry['follows_rule'] else 'does NOT follow it'}, "
              f"{entry['pairs']} images)": entry["model_check"] for name, entry in findings.items()}
    check_columns = ["full", "without_left", "without_right", "without_both", "one_removed_drop", "both_removed_drop"]
    columns = [f"{name} {key}" for name in findings
               for key in ("reached", "both_reached", "heavier_share", "drop", "drop_se")]
    methods: Dict[str, dict] = {}
    for name, entry in findings.items():
        for method, values in entry["methods"].items():
            methods.setdefault(METHODS[method].label, {}).update({f"{name} {k}": v for k, v in values.items()})
    lines += [markdown_table(checks, check_columns), "",
              f"Per method: the share of the parts its map reaches (thresholded with `{study['threshold']}`; a part "
              f"is reached when the map covers {study['reached_fraction']} of its pixels), how often it reaches "
              "both, the share of its mass on the parts that lies on the heavier part (0.5: both alike, 1: one "
              "only; no threshold), and the drop of the probability when exactly the parts it reaches are removed "
              "(with its standard error over the images):", "", markdown_table(methods, columns), ""]
    if {"iba", "inverse"} <= set(next(iter(findings.values()), {}).get("methods", {})):
        sentences = []
        for name, entry in findings.items():
            iba, inverse = entry["methods"]["iba"], entry["methods"]["inverse"]
            sentences.append(f"on {name} ({rules[name]}) IBA reaches {fmt(iba['reached'])} of the parts and removing "
                             f"them drops the output by {fmt(iba['drop'])}, Inverse IBA {fmt(inverse['reached'])} "
                             f"and {fmt(inverse['drop'])}")
        lines += ["A sufficient region is one lesion of an OR finding: its removal keeps the output. All the "
                  "evidence is both lesions: their removal drops it. Of an AND finding, a sufficient region holds "
                  "both parts, while removing either part already drops the output. Here "
                  + "; ".join(sentences) + ".", ""]
    coverage = results.get("nih", {}).get("coverage")
    if coverage:
        lines += [f"On the plain phantom, findings drawn in two places (bilateral effusion, two nodules; not "
                  f"checked as OR or AND) over {coverage['inverse']['pairs']} pairs: Inverse IBA reaches "
                  f"{fmt(coverage['inverse']['coverage'])} of the places, IBA {fmt(coverage['iba']['coverage'])} "
                  "(any pixel of a place counts; Fig. 1).", ""]
    return lines, [("redundant_methods.csv", methods, columns)]


def _timings(results: dict):
    timings: Dict[str, dict] = {}
    trained: List[str] = []
    for study in ("nih", "detectors", "regression"):
        part = results.get(study, {})
        for key, value in part.get("scores", {}).items():
            if key != "random":
                row = timings.setdefault(method_label(key), {})
                row[study] = value["seconds_per_map"]
                row[f"{study} first call"] = value.get("warmup_seconds")
                training = part.get("training", {}).get(key)
                if training and training.get("training_seconds") is not None:
                    # A learning method's training, spread over the study's maps.
                    spread = training["training_seconds"] / part["pairs"]
                    row[f"{study} incl. training"] = value["seconds_per_map"] + spread
                    trained.append(f"{method_label(key)} in the {study} study: {training['rows']} rows x "
                                   f"{training['epochs']} epochs, {training['training_seconds']:.1f} s")
    if not timings:
        return [], []
    studies = [s for s in ("nih", "detectors", "regression") if any(s in row for row in timings.values())]
    columns = [c for s in studies for c in (s, f"{s} first call", f"{s} incl. training")
               if not c.endswith("incl. training") or any(c in row for row in timings.values())]
    lines = ["## Seconds per map", "", markdown_table(timings, columns), "",
             "Seconds per map of the batched run after one warm-up call per method (on one image); the "
             "warm-up call's own seconds (tracing, first allocations) are the \"first call\" columns. "
             "Batched where the method batches (the IBA family, Captum's methods); TorchRay's "
             "extremal perturbation takes one image at a time.", ""]
    if trained:
        lines += ["A method that learns before it explains is trained once per model on the study's estimation "
                  "items (one row per positive label; a second report loads it from the cache): "
                  + "; ".join(trained) + ". \"incl. training\" adds the training seconds divided by the study's "
                  "maps; without it, a map costs one forward pass.", ""]
    return lines, []


def _figures(results: dict):
    figures = results["figures"]
    if not figures:
        return [], []
    return ["## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()] + [""], []


def _notes(results: dict):
    layers = results.get("layers")
    where = []
    if layers:
        where = [f"- Grad-CAM at `{layers['cam']}`; excitation backprop, IBA, Inverse IBA and Regression IBA at "
                 f"`{layers['bottleneck']}`; Multi-layer IBA at {', '.join(f'`{n}`' for n in layers['multilayer'])} "
                 "(`masked`, threshold from the method suite)."]
    return ["## Notes", "",
            "- TorchRay's methods and Captum's LRP run on an in-place-free copy of each model "
            "(same weights, same function; `captum_iba.app.methods.inplace_free_copy`): TorchRay 1.0's "
            "grad_cam at `features.norm5` fails on torchvision DenseNet's in-place ReLU otherwise.",
            *where, ""], []


SECTIONS = (_head, _headline, _table1, _table2, _table3, _regression, _vit, _sweep, _cue, _redundant, _failures, _claims,
            _timings, _figures, _notes)


def write_report(results: dict, out_dir: str) -> None:
    """Write ``report.md``, ``results.json`` and the tables as CSV into ``out_dir``, each atomically."""
    lines: List[str] = []
    tables: List[Table] = []
    for section in SECTIONS:
        section_lines, section_tables = section(results)
        lines += section_lines
        tables += section_tables
    for name, rows, columns in tables:
        _atomic_write(os.path.join(out_dir, name), _csv(rows, columns))
    _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2, default=_json_default))
    _atomic_write(os.path.join(out_dir, "report.md"), "\n".join(lines))


def _csv(rows: Dict[str, dict], columns: Sequence[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", *columns])
    for label, values in rows.items():
        writer.writerow([label, *[values.get(c) for c in columns]])
    return text.getvalue()


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all; a full disk is one line (NoSpaceError) naming both."""
    with disk_space(path, len(text.encode()), advice="the files written before it are complete"), \
            atomic_path(path) as temporary:
        temporary.write_text(text)
