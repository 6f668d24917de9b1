"""`captum_iba.app.report.render.write_report` on hand-made results: what each section says, and the files it writes."""

import csv
import json
import pathlib

import pytest

from captum_iba.app.report import render as report
from captum_iba.app.report.claims import fmt
from captum_iba.app.report.render import headline_table, markdown_table, write_report
from captum_iba.cxr import DETECTORS, FINDINGS
from captum_iba.app.methods import METHODS
from captum_iba.objectives import REGRESSION_LOSSES


def localisation(iou, seconds=0.5):
    return {"iou": iou, "pointing": iou + 0.1, "insertion_auc": 0.6, "deletion_auc": 0.2, "seconds_per_map": seconds, "warmup_seconds": 2 * seconds,
            "class_iou": {f: iou for f in FINDINGS}, "class_pointing": {f: 1.0 for f in FINDINGS}}


def results_dict():
    """A results dict as ``run_report`` builds it, every study present, numbers chosen by hand."""
    regression = {f"regression_{loss}": {"pcc": 0.5 + i / 10, "seconds_per_map": 1.0,
                                          "sensitivity_n": {"16": 0.1 * i, "64": 0.2}}
                  for i, loss in enumerate(REGRESSION_LOSSES)}
    regression["random"] = {"pcc": 0.01, "seconds_per_map": 0.0, "sensitivity_n": {"16": 0.0, "64": 0.0}}
    regression["gradcam"] = {"pcc": 0.3, "seconds_per_map": 0.25}
    return {
        "settings": {"seed": 3, "insertion_steps": 16, "pointing_tolerance": 15, "batch_size": 8},
        "description": "Hand-made results.",
        "seconds_total": 12.0,
        "environment": {"threads": 1},
        "layers": {"bottleneck": "block.b", "multilayer": ["block.a", "block.b"], "cam": "block.c"},
        "nih": {"pairs": 5, "images": 4, "scores": {"iba": localisation(0.25), "inverse": localisation(0.375),
                                                     "gradcam": localisation(0.125, seconds=0.01)}},
        "detectors": {"pairs": 3, "scores": {"iba": {**localisation(0.5), "class_iou": {d: 0.5 for d in DETECTORS}}}},
        "table3": {"bce": {"iou": 0.2, "class_iou": {f: 0.2 for f in FINDINGS}, "mean_auc": 0.8, "mean_ap": 0.4},
                   "weighted_bce": {"iou": 0.3, "class_iou": {f: 0.3 for f in FINDINGS}, "mean_auc": 0.79,
                                    "mean_ap": 0.41},
                   "auc_images": 16},
        "regression": {"images": 4, "scores": regression},
        "claims": [{"id": "a", "claim": "A claim", "source": "Table 9", "published": "0.2",
                    "measured": "x 0.100", "verdict": "held", "experiment": "", "model": "AUC 0.871 (16 images)"},
                   {"id": "b", "claim": "B claim", "source": "Fig. 9", "published": "0.3",
                    "measured": "no premise", "verdict": "not testable here", "experiment": "a study with it",
                    "model": ""}],
        "figures": {"fig2_insertion_deletion": "fig2_insertion_deletion.png"},
    }


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_write_report_writes_the_markdown_the_json_and_one_csv_per_table(tmp_path):
    results = results_dict()
    write_report(results, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["report.md", "results.json", "table1_nih.csv", "table2_detectors.csv", "table3_bce_vs_weighted.csv",
         "severity_pcc.csv"])
    assert json.loads((tmp_path / "results.json").read_text()) == results
    table1 = read_csv(tmp_path / "table1_nih.csv")
    assert table1[0] == ["method", "iou", "paper_iou", "pointing", "insertion_auc", "deletion_auc"]
    assert {row[0]: row[2] for row in table1[1:]}[METHODS["iba"].label] == "0.114"  # the paper's Table 1
    assert {row[0]: float(row[1]) for row in table1[1:]} == {
        METHODS["iba"].label: 0.25, METHODS["inverse"].label: 0.375, METHODS["gradcam"].label: 0.125}
    assert read_csv(tmp_path / "table2_detectors.csv")[1][:5] == [METHODS["iba"].label, "0.5", "0.5", "0.5", "0.5"]
    table3 = read_csv(tmp_path / "table3_bce_vs_weighted.csv")
    assert [row[0] for row in table3[1:]] == ["BCE", "weighted BCE", "BCE (paper)", "weighted BCE (paper)"]
    assert table3[2][-1] == "0.3" and table3[4][-1] == "0.065"
    severity = {row[0]: row[1] for row in read_csv(tmp_path / "severity_pcc.csv")[1:]}
    assert severity["random map"] == "0.01" and severity["Regression IBA (mse)"] == "0.5"


def test_report_sections_say_what_was_measured(tmp_path):
    write_report(results_dict(), str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    order = ["# captum_iba", "## Table 1: localisation on NIH-like findings (5 pairs, 4 images)",
             "## Table 2: IoU per BrixIA-like detector (3 pairs)", "## Table 3", "## Severity-map correlation (4 images)",
             "## Sensitivity-N", "## The paper's claims", "## Seconds per map", "## Figures", "## Notes"]
    positions = [text.index(heading) for heading in order]
    assert positions == sorted(positions)
    assert "Seed 3;" in text and "16 steps" in text and "Hand-made results." in text
    assert f"| {METHODS['inverse'].label} | 0.375 | 0.088 | 0.475 |" in text
    assert "| A claim | Table 9 | 0.2 | x 0.100 | AUC 0.871 (16 images) | **held** |" in text
    assert "| no premise | n/a | **not testable here** (would be tested by a study with it) |" in text
    assert "![fig2_insertion_deletion](fig2_insertion_deletion.png)" in text
    # The notes name the layers the run used, not the library defaults.
    assert "Grad-CAM at `block.c`" in text and "`block.a`, `block.b`" in text
    assert "features.denseblock3" not in text
    # Seconds per map: every method of every study, the random map left out.
    seconds = text[text.index("## Seconds per map"):text.index("## Figures")]
    row = next(line for line in seconds.splitlines() if line.startswith(f"| {METHODS['gradcam'].label} |"))
    assert row.startswith(f"| {METHODS['gradcam'].label} | 0.010 | 0.020 |") and "| 0.250 |" in row
    assert "first call" in seconds  # the warm-up call, apart from the rate
    assert "random map" not in seconds


def redundant_section(tmp_path, follows=True):
    def entry(rule, iba, inverse):
        methods = {name: {"reached": reached, "both_reached": reached, "heavier_share": 0.75, "drop": reached / 2,
                          "drop_se": 0.01} for name, reached in (("iba", iba), ("inverse", inverse))}
        check = {"full": 0.9, "without_left": 0.8, "without_right": 0.7, "without_both": 0.1,
                 "one_removed_drop": 0.15, "both_removed_drop": 0.8}
        return {"rule": rule, "pairs": 20, "follows_rule": follows, "model_check": check, "methods": methods}

    results = results_dict()
    results["redundant"] = {"findings": {"Mass": entry("or", 0.5, 1.0), "Effusion": entry("and", 1.0, 0.5),
                                         "Nodule": {"rule": "or", "pairs": 0}},
                            "threshold": "otsu", "reached_fraction": 0.25, "rule_share": 0.5, "detected_drop": 0.3}
    results["nih"]["coverage"] = {"iba": {"coverage": 0.9, "pairs": 7}, "inverse": {"coverage": 1.0, "pairs": 7}}
    write_report(results, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    return text[text.index("## Sufficient or all evidence"):text.index("## The paper's claims")]


def test_the_redundant_evidence_section(tmp_path):
    section = redundant_section(tmp_path)
    assert section.startswith("## Sufficient or all evidence: findings drawn in two parts (40 held-out images)")
    assert ("in each lung: Mass (either lesion is the finding, OR), Effusion (both parts make the finding, "
            "AND)") in section
    assert "| Mass (OR; follows it, 20 images) | 0.900 | 0.800 | 0.700 | 0.100 | 0.150 | 0.800 |" in section
    assert "| Nodule" not in section  # no image with both parts: no row
    assert f"| {METHODS['iba'].label} | 0.500 | 0.500 | 0.750 | 0.250 | 0.010 | 1.000 | 1.000 |" in section
    assert ("on Mass (OR) IBA reaches 0.500 of the parts and removing them drops the output by 0.250, "
            "Inverse IBA 1.000 and 0.500") in section
    assert "over 7 pairs: Inverse IBA reaches 1.000 of the places, IBA 0.900" in section
    rows = read_csv(tmp_path / "redundant_methods.csv")
    assert rows[0][:3] == ["method", "Mass reached", "Mass both_reached"] and len(rows) == 3
    assert "does NOT follow it" in redundant_section(tmp_path, follows=False)


def test_a_section_left_out_says_why(tmp_path):
    results = results_dict()
    del results["detectors"]
    results["detectors_skipped"] = "the BrixIA items have no zone masks (no lung segmentation)"
    for value in results["regression"]["scores"].values():
        value.pop("pcc")
    results["regression_pcc_skipped"] = "the BrixIA items have no severity map (no zone masks)"
    write_report(results, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "## Table 2\n\nNot computed: the BrixIA items have no zone masks (no lung segmentation)." in text
    assert "## Severity-map correlation\n\nNot computed: the BrixIA items have no severity map" in text
    assert "## Sensitivity-N" in text  # still measured without severity maps
    assert not (tmp_path / "table2_detectors.csv").exists() and not (tmp_path / "severity_pcc.csv").exists()


def test_without_nih_study_its_tables_and_claims_are_absent(tmp_path):
    results = results_dict()
    for key in ("nih", "table3", "layers"):
        del results[key]
    results["claims"], results["figures"] = [], {}
    write_report(results, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    for heading in ("## Table 1", "## Table 3", "## The paper's claims", "## Figures"):
        assert heading not in text
    assert "Grad-CAM at" not in text  # no layers recorded, none claimed
    assert not (tmp_path / "table1_nih.csv").exists()


def test_an_interrupted_write_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    write_report(results_dict(), str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    original = pathlib.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    changed = results_dict()
    changed["nih"]["scores"]["iba"]["iou"] = 0.875
    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="no space left on device"):
        write_report(changed, str(tmp_path))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no half file, no temporary left


def test_every_file_goes_through_atomic_path(tmp_path, monkeypatch):
    written = []
    real = report.atomic_path

    def recording(path):
        written.append(pathlib.Path(path).name)
        return real(path)

    monkeypatch.setattr(report, "atomic_path", recording)
    write_report(results_dict(), str(tmp_path))
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())


def test_markdown_and_headline_tables():
    table = markdown_table({"A": {"x": 0.5, "y": float("nan")}, "B": {"x": 1}}, ["x", "y"])
    assert table.splitlines() == ["| method | x | y |", "|---|---|---|", "| A | 0.500 | n/a |", "| B | 1.000 | n/a |"]
    headline = headline_table(results_dict())
    assert headline.splitlines()[0] == "| method | iou | pointing | insertion_auc | deletion_auc | seconds_per_map |"
    assert f"| {METHODS['gradcam'].label} | 0.125 | 0.225 | 0.600 | 0.200 | {fmt(0.01)} |" in headline
