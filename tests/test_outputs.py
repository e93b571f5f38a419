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
    pgd = {name: dict(info) for name, info in summary["pgd"]["per_model"].items()}
    cfg = Config(fgsm_eps=0.3, pgd_eps=0.3)
    # Plant: PGD "robust accuracy" above FGSM's on the same images, white-box FGSM weaker than transfer.
    pgd["baseline"]["robust_accuracy"] = 0.9
    models["defense_fgsm"]["eval"]["fgsm_whitebox"]["accuracy"] = 0.95
    models["defense_fgsm"]["eval"]["fgsm_transfer_from_baseline"]["accuracy"] = 0.5
    checks = report.sanity_checks(models, pgd, {"baseline": 0.1, "defense_fgsm": 1.0}, cfg)
    assert checks["pgd_not_weaker_than_fgsm_baseline"]["passed"] is False
    assert checks["whitebox_not_weaker_than_transfer_defense_fgsm"]["passed"] is False
    pgd["baseline"]["robust_accuracy"] = 0.05
    assert report.sanity_checks(models, pgd, {"baseline": 0.1, "defense_fgsm": 1.0}, cfg)[
        "pgd_not_weaker_than_fgsm_baseline"]["passed"] is True
    assert report.sanity_checks(models, pgd, {"baseline": 0.1}, Config(pgd_eps=0.2))[
        "pgd_not_weaker_than_fgsm_baseline"]["passed"] is None
