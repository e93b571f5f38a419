from __future__ import annotations

import json

import pytest

from secure_ai_mnist import checks as literature
from secure_ai_mnist import common, report, summary_schema


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
    target = tmp_path / summary_schema.SUMMARY_FILENAME
    with pytest.raises(ValueError, match="schema_version"):
        summary_schema.write_summary({"schema_version": "x"}, target)
    assert not target.exists()


def test_unwritable_output_dir_is_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(common.UserError, match="--output-dir"):
        common.prepare_output_dir(blocker / "out")


def test_validate_summary_catches_inconsistent_confusion_matrix(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    summary_schema.validate_summary(summary)
    summary["models"]["poisoned"]["eval"]["clean"]["n"] += 1
    with pytest.raises(ValueError, match="confusion matrix"):
        summary_schema.validate_summary(summary)
    del summary["models"]["defense_fgsm"]["eval"]["fgsm_whitebox"]
    with pytest.raises(ValueError):
        summary_schema.validate_summary(summary)


def test_sanity_checks_flag_a_planted_violation(quick_run):
    from secure_ai_mnist.config import Config

    summary = json.loads(quick_run["json"].read_text())
    models = summary["models"]
    cfg = Config(fgsm_eps=0.3, pgd_eps=0.3)
    good = {"pgd": {"a": {"a": 0.0, "b": 0.5}, "b": {"a": 0.6, "b": 0.1}},
            "fgsm": {"a": {"a": 0.2, "b": 0.7}, "b": {"a": 0.8, "b": 0.3}}}
    curves = {"eps": [0.0, 0.3, 1.0], "n": 100, "pgd": {"a": [0.99, 0.0, 0.0], "b": [0.99, 0.1, 0.05]}}
    models["defense_fgsm"]["eval"]["fgsm_whitebox"]["accuracy"] = 0.1
    models["defense_fgsm"]["eval"]["fgsm_transfer_from_baseline"]["accuracy"] = 0.5
    checks = literature.sanity_checks(models, good, curves, cfg)
    assert all(c["passed"] for c in checks.values()), checks

    # Planted violations: PGD weaker than FGSM on a, transfer stronger than white-box on b,
    # accuracy far above chance at eps 1 and rising with eps, white-box FGSM weaker than transfer
    # on the full test set.
    bad = json.loads(json.dumps(good))
    bad["pgd"]["a"]["a"] = 0.25
    bad["fgsm"]["a"]["b"] = 0.05
    bad_curves = {"eps": [0.0, 0.5, 1.0], "n": 100, "pgd": {"a": [0.99, 0.3, 0.6]}}
    models["defense_fgsm"]["eval"]["fgsm_whitebox"]["accuracy"] = 0.9
    checks = literature.sanity_checks(models, bad, bad_curves, cfg)
    failed = {name for name, c in checks.items() if c["passed"] is False}
    assert failed == {"pgd_not_weaker_than_fgsm_a", "whitebox_not_weaker_than_transfer_fgsm_b",
                      "accuracy_near_chance_at_eps_1", "eps_curve_monotone",
                      "whitebox_not_weaker_than_transfer_full_test_set_defense_fgsm"}
    # Different eps for PGD and FGSM: the comparison does not apply.
    assert literature.sanity_checks(models, bad, bad_curves, Config(pgd_eps=0.2))[
        "pgd_not_weaker_than_fgsm_a"]["passed"] is None


def test_manifest_hashes_every_written_file_and_records_the_run(quick_run):
    from secure_ai_mnist.common import sha256_file

    summary = json.loads(quick_run["json"].read_text())
    manifest = summary["manifest"]
    assert manifest["started_utc"] <= manifest["finished_utc"]
    assert manifest["command_line"][0] == "secure_ai_mnist_main.py" and "--quick" in manifest["command_line"]
    assert manifest["data_sha256"] == summary["data"]["sha256"]
    files = manifest["files_sha256"]
    pngs = list((quick_run["out"] / "images").glob("*.png"))
    models = [*(quick_run["out"] / "models").glob("*.keras"), quick_run["out"] / "models" / "trigger_check.npz"]
    datasets = list((quick_run["out"] / "datasets").glob("*.npz"))
    assert len(datasets) == 4 and len(files) == len(pngs) + len(models) + len(datasets)
    for path in pngs + models + datasets:
        assert files[str(path.relative_to(quick_run["out"]))] == sha256_file(path)
    assert len(manifest["code"].get("commit") or "0" * 40) == 40


def test_run_log_has_timestamps_and_the_whole_run(quick_run):
    log = (quick_run["out"] / "run.log").read_text()
    first = log.splitlines()[0]
    assert first[:4].isdigit() and "T" in first[:20]
    assert "== train baseline" in log and "wrote " in log


def test_report_is_built_from_the_json(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    text = (quick_run["out"] / report.REPORT_FILENAME).read_text()
    sections = ("## 1. Results and verdicts", "## 2. Deliverables map", "## 4. Clean metrics",
                "## 5. Threat model (STRIDE) and Bandit", "## 7. Adversarial metrics")
    assert [text.index(section) for section in sections] == sorted(text.index(section) for section in sections)
    # what a reader sees first: the results table and the verdicts, before the map
    assert text.index(summary["results_table"]) < text.index("## 2. Deliverables map")
    assert text.index("The backdoor is ") < text.index("## 2. Deliverables map")
    assert summary["results_table"] in text
    assert "Bandit 1." in text or "Bandit: not run" in text
    for target in __import__("re").findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (quick_run["out"] / target).is_file(), f"report links a missing figure {target}"
    # The judgement follows the number: the same run with a 55% ASR reads "partial".
    summary["backdoor"]["attack_success_rate"]["poisoned"] = 0.55
    rebuilt = report.build_report(summary, quick_run["out"], None)
    assert "The backdoor is partial by its ASR of 55.00%" in rebuilt
    assert "THREAT_MODEL.md was not found" in rebuilt


def test_most_confused_and_strength_rules():
    matrix = [[5, 2, 0], [0, 7, 9], [1, 0, 3]]
    assert report.most_confused(matrix) == [(1, 2, 9), (0, 1, 2), (2, 0, 1)]
    assert [report.backdoor_strength(v) for v in (0.95, 0.6, 0.2, 0.01)] == ["strong", "partial", "weak", "absent"]


def test_report_names_apgd_ce_restarts_only_when_there_are_several():
    entry = {"attacks": "APGD-CE, ...", "eps": 0.3, "iterations": 100, "target_classes": 5, "square_queries": 5000,
             "per_model": {}}
    assert "random starts" not in report.autoattack_lines(entry)[0]  # older summaries: no key, one start
    assert "random starts" not in report.autoattack_lines({**entry, "apgd_ce_restarts": 1})[0]
    assert "APGD-CE from 5 random starts" in report.autoattack_lines({**entry, "apgd_ce_restarts": 5})[0]
