from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secure_ai_mnist import common, data, summary_schema
from secure_ai_mnist.detection import DETECTORS, IN_COMBINED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_run_writes_complete_consistent_outputs(quick_run):
    out = quick_run["out"]
    summary = json.loads(quick_run["json"].read_text())
    summary_schema.validate_summary(summary)
    assert summary["data"]["n_train"] == 2000 and summary["data"]["n_test"] == 500
    assert summary["data"]["n_train_available"] == 60000 and summary["data"]["n_test_available"] == 10000
    assert set(summary["data"]["sha256"].values()) <= set(data.MNIST_RAW_SHA256.values()) | {data.MNIST_NPZ_SHA256}

    for name, path in summary["images"].items():
        png = (out / "images" / (path.rsplit("/", 1)[-1])).read_bytes()
        assert png.startswith(PNG_MAGIC), name
    for name in ("baseline", "poisoned", "defense_fgsm"):
        model_file = summary["models"][name]["model_file"]
        assert common.sha256_file(Path(model_file["path"])) == model_file["sha256"]
    assert (out / "models" / "cnn_mnist_defense_fgsm.keras").is_file()
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    assert summary["timings_s"]["total"] > 0
    assert "| baseline |" in summary["results_table"]


def test_quick_run_attacks_stay_in_their_bounds_and_agree_across_tables(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    eps = summary["config"]["fgsm_eps"]
    for key in ("train_vs_baseline", "test_vs_baseline", "test_vs_defense_whitebox"):
        check = summary["fgsm"][key]["bound_check"]
        assert check["max_linf"] <= eps + 1e-6 and 0 <= check["min_pixel"] and check["max_pixel"] <= 1
    assert summary["fgsm"]["train_vs_baseline"]["n"] == 2000
    assert summary["pgd"]["n_test_images"] == 200
    for name, info in summary["pgd"]["per_model"].items():
        assert info["bound_check"]["max_linf"] <= summary["config"]["pgd_eps"] + 1e-6
        assert info["robust_accuracy"] == pytest.approx(summary["models"][name]["eval"]["pgd_whitebox"]["accuracy"])
    assert all(c["passed"] in (True, False, None) for c in summary["sanity_checks"].values())
    names = ["baseline", "poisoned", "defense_fgsm", "defense_fgsm_rs", "defense_pgd", "defense_robust"]
    for attack in ("fgsm", "pgd"):
        table = summary["transfer"]["accuracy"][attack]
        assert sorted(table) == sorted(names) and all(sorted(row) == sorted(names) for row in table.values())
    assert table["baseline"]["baseline"] == pytest.approx(summary["pgd"]["per_model"]["baseline"]["robust_accuracy"])
    curves = summary["accuracy_vs_eps"]
    assert curves["eps"][0] == 0.0 and curves["n"] == 50
    for name in ("baseline", "defense_fgsm"):
        assert len(curves["pgd"][name]) == len(curves["eps"]) == len(curves["fgsm"][name])

    robust = summary["autoattack"]
    assert sorted(robust["per_model"]) == sorted(names) and robust["n_test_images"] == 200
    assert robust["subset_sha256"] == summary["pgd"]["subset_sha256"]
    for name, result in robust["per_model"].items():
        after = result["per_attack"]
        # Quick mode's Square covers the first 50 PGD images: the headline is on those 50, and the
        # white-box figures on all 200 are kept apart.
        assert result["n"] == 50 and result["whitebox_all"]["n"] == 200
        assert result["ci95"][0] <= result["robust_accuracy"] <= result["ci95"][1]
        # each attack runs on the survivors of the one before: accuracy can only fall
        assert after["clean"] >= after["apgd_ce"] >= after["apgd_t"] >= after["fab_t"] >= after["square"], name
        assert after["square"] == result["robust_accuracy"], name
        assert f"attack_strength_order_{name}" in summary["sanity_checks"]
    assert "| AutoAttack acc" in summary["results_table"]


def test_quick_run_detection_is_blind_and_removal_matches_its_flags(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    asr = summary["backdoor"]["attack_success_rate"]
    assert 0.0 <= asr["baseline"] <= 1.0 and 0.0 <= asr["poisoned"] <= 1.0
    detection, removal = summary["backdoor"]["detection"], summary["backdoor"]["removal"]
    assert detection["selected"] == removal["detector"] == "combined"
    assert all(detection[name]["uses_ground_truth"] is False for name in (*DETECTORS, "random_filter"))
    assert detection["random_filter"]["flagged"] == detection["combined"]["flagged"]
    ours = [detection[name]["flagged"] for name in IN_COMBINED]
    assert max(ours) <= detection["combined"]["flagged"] <= sum(ours)
    # the unpoisoned control on a small real subset: the same detector on the clean baseline
    control = detection["unpoisoned_control"]
    assert control["flagged"] <= 10 and control["suspicious_classes"] == []
    kept = summary["models"]["poison_cleaned"]["training"]["n_train"]
    assert removal["removed"] == detection["combined"]["flagged"] == 2000 - kept
    base = summary["models"]["baseline"]["eval"]
    # A trained model must beat chance on clean data and lose accuracy under FGSM.
    assert base["clean"]["accuracy"] > 0.5
    assert base["fgsm"]["accuracy"] < base["clean"]["accuracy"]
    matrix = np.array(base["clean"]["confusion_matrix"])
    assert np.trace(matrix) / matrix.sum() == base["clean"]["accuracy"]


def test_quick_run_logs_progress_with_timestamps(quick_run, request):
    if getattr(request.config.option, "loadgroup", False):  # set by xdist under --dist loadgroup
        # conftest's grouping reached xdist: every test of the shared run is on this one worker
        assert request.node.nodeid.endswith("@quick_run"), request.node.nodeid
    lines = [line for line in quick_run["stderr"].splitlines() if "==" in line]
    assert any("train baseline done" in line for line in lines)
    assert all(line[:4].isdigit() for line in lines), "log lines carry timestamps"
    assert "Traceback" not in quick_run["stderr"]


def test_quick_run_leaves_tracked_files_untouched(quick_run):
    if quick_run["tracked_before"] is None:
        pytest.skip("not a git checkout")
    changed = [name for name, digest in quick_run["tracked_before"].items()
               if quick_run["tracked_after"].get(name) != digest]
    assert changed == [], "a --quick run rewrote committed files"
    assert quick_run["out"].relative_to(Path(__file__).resolve().parents[1]) == Path("secure_ai_outputs/quick")


def test_seed_figure_names_exist_with_the_seed_meaning(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    images = quick_run["out"] / "images"
    for name in ("baseline_confusion_clean", "baseline_confusion_triggered", "baseline_confusion_fgsm",
                 "defense_confusion_clean", "defense_confusion_fgsm", "method1_poison_examples",
                 "method2_clean_vs_fgsm"):
        assert (images / f"{name}.png").is_file() and summary["images"][name].endswith(f"{name}.png")
    # the seed's defense_confusion_fgsm is FGSM crafted on the baseline; the white-box set sits beside it
    defense = summary["models"]["defense_fgsm"]["eval"]
    assert defense["fgsm_transfer_from_baseline"]["confusion_png"].endswith("defense_confusion_fgsm.png")
    assert defense["fgsm_whitebox"]["confusion_png"].endswith("defense_confusion_fgsm_whitebox.png")
    assert not list(images.glob("cm_*.png"))
