from __future__ import annotations

import json

import pytest

from secure_ai_mnist import common, report


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with common.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"], "temp file must be cleaned up"


def test_write_summary_refuses_invalid_summary(tmp_path):
    target = tmp_path / report.SUMMARY_FILENAME
    with pytest.raises(ValueError, match="schema_version"):
        report.write_summary({"schema_version": "x"}, target)
    assert not target.exists()


def test_unwritable_output_dir_is_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(common.UserError, match="--output-dir"):
        common.prepare_output_dir(blocker / "out")


def test_validate_summary_catches_inconsistent_confusion_matrix(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    report.validate_summary(summary)
    summary["models"]["poisoned"]["eval"]["clean"]["n"] += 1
    with pytest.raises(ValueError, match="confusion matrix"):
        report.validate_summary(summary)
    del summary["models"]["defense_fgsm"]["eval"]["fgsm_whitebox"]
    with pytest.raises(ValueError):
        report.validate_summary(summary)


def test_sanity_checks_flag_a_planted_violation(quick_run):
    from secure_ai_mnist.config import Config

    summary = json.loads(quick_run["json"].read_text())
    models = summary["models"]
    cfg = Config(fgsm_eps=0.3, pgd_eps=0.3)
    good = {"pgd": {"a": {"a": 0.0, "b": 0.5}, "b": {"a": 0.6, "b": 0.1}},
            "fgsm": {"a": {"a": 0.2, "b": 0.7}, "b": {"a": 0.8, "b": 0.3}}}
    curves = {"eps": [0.0, 0.3, 1.0], "pgd": {"a": [0.99, 0.0, 0.0], "b": [0.99, 0.1, 0.05]}}
    models["defense_fgsm"]["eval"]["fgsm_whitebox"]["accuracy"] = 0.1
    models["defense_fgsm"]["eval"]["fgsm_transfer_from_baseline"]["accuracy"] = 0.5
    checks = report.sanity_checks(models, good, curves, cfg)
    assert all(c["passed"] for c in checks.values()), checks

    # Planted violations: PGD weaker than FGSM on a, transfer stronger than white-box on b,
    # accuracy far above chance at eps 1, white-box FGSM weaker than transfer on the full test set.
    bad = json.loads(json.dumps(good))
    bad["pgd"]["a"]["a"] = 0.25
    bad["fgsm"]["a"]["b"] = 0.05
    bad_curves = {"eps": [0.0, 1.0], "pgd": {"a": [0.99, 0.6]}}
    models["defense_fgsm"]["eval"]["fgsm_whitebox"]["accuracy"] = 0.9
    checks = report.sanity_checks(models, bad, bad_curves, cfg)
    failed = {name for name, c in checks.items() if c["passed"] is False}
    assert failed == {"pgd_not_weaker_than_fgsm_a", "whitebox_not_weaker_than_transfer_fgsm_b",
                      "accuracy_near_chance_at_eps_1", "whitebox_not_weaker_than_transfer_full_test_set_defense_fgsm"}
    # Different eps for PGD and FGSM: the comparison does not apply.
    assert report.sanity_checks(models, bad, bad_curves, Config(pgd_eps=0.2))[
        "pgd_not_weaker_than_fgsm_a"]["passed"] is None
