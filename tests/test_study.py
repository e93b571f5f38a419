"""Studies across seeds: each seed's run is the single run with that seed, and the aggregate is
the right statistic of the per-seed numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secure_ai_mnist import config, study


def fake_summary(seed: int) -> dict:
    """The parts of a metrics JSON that hold headline numbers, varied by seed."""
    rng = np.random.default_rng(seed)
    acc = lambda: {"accuracy": float(rng.uniform(0.9, 1.0))}  # noqa: E731
    return {"models": {"baseline": {"eval": {"clean": acc(), "pgd_whitebox": acc(), "fgsm": acc()}},
                       "defense_fgsm": {"eval": {"clean": acc(), "fgsm_transfer_from_baseline": acc(),
                                                 "fgsm_whitebox": acc()}}},
            "autoattack": {"per_model": {"baseline": {"robust_accuracy": 0.0}}},
            "backdoor": {"attack_success_rate": {"poisoned": 0.98, "poison_cleaned": float(rng.uniform(0, 0.01))},
                         "detection": {"selected": "combined", "combined": {"precision": 1.0, "recall": 1.0, "f1": 1.0},
                                       "unpoisoned_control": {"flagged_share": 0.0}}}}


def test_seed_config_is_the_single_run_with_that_seed(tmp_path):
    cfg = config.parse_config(["--seeds", "5,7", "--output-dir", str(tmp_path), "--epochs", "2"])
    single = config.parse_config(["--seed", "7", "--output-dir", str(tmp_path / "seed_7"), "--epochs", "2"])
    assert study.seed_config(cfg, 7) == single
    assert study.seed_list(cfg.seeds) == [5, 7]


def test_headline_metrics_read_every_measured_number_and_skip_the_rest():
    metrics = study.headline_metrics(fake_summary(1))
    assert metrics["baseline.autoattack_accuracy"] == 0.0
    assert metrics["detection.combined.f1"] == 1.0 and metrics["detection.control_flagged_share"] == 0.0
    summary = fake_summary(1)
    # the baseline's FGSM set is crafted on the baseline, so it is the baseline's white-box FGSM
    assert metrics["baseline.fgsm_whitebox_accuracy"] == summary["models"]["baseline"]["eval"]["fgsm"]["accuracy"]
    assert "baseline.fgsm_transfer_from_baseline_accuracy" not in metrics and "poisoned.clean_accuracy" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_spread_matches_numpy_and_scipy():
    from scipy import stats

    values = [0.91, 0.93, 0.97, 0.95]
    s = study.spread(values)
    assert s["mean"] == pytest.approx(np.mean(values)) and s["sd"] == pytest.approx(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert s["ci95"] == pytest.approx([low, high])
    assert (s["min"], s["max"]) == (0.91, 0.97) and study.spread([0.5])["ci95"] is None


def test_run_study_runs_each_seed_in_its_own_directory_and_writes_the_aggregate(tmp_path):
    cfg = config.Config(seeds="3,4,5", output_dir=tmp_path)
    seen = []

    def run_one(job: tuple[config.Config, list[str]]) -> dict:
        one, argv = job
        seen.append((one.seed, one.output_dir, one.seeds))
        assert argv == ["--seeds", "3,4,5"]
        return {"seed": one.seed, "headlines": study.headline_metrics(fake_summary(one.seed)),
                "summary_path": str(tmp_path / "elsewhere.json"), "summary_sha256": "0" * 64, "host": "node-b"}

    result = study.run_study(cfg, ["--seeds", "3,4,5"], run_one)
    assert seen == [(s, tmp_path / f"seed_{s}", "") for s in (3, 4, 5)]
    written = json.loads((tmp_path / study.STUDY_FILENAME).read_text())
    assert written == json.loads(json.dumps(result))
    clean = written["metrics"]["baseline.clean_accuracy"]
    per_seed = [study.headline_metrics(fake_summary(s))["baseline.clean_accuracy"] for s in (3, 4, 5)]
    assert clean["per_seed"] == {"3": per_seed[0], "4": per_seed[1], "5": per_seed[2]}
    assert clean["mean"] == pytest.approx(np.mean(per_seed)) and clean["ci95"][0] < clean["mean"] < clean["ci95"][1]
    # a run whose files are not on this disk is said to be elsewhere, with its numbers kept
    assert written["runs"]["4"] == {"summary": str(tmp_path / "elsewhere.json"), "sha256": "0" * 64, "host": "node-b",
                                    "on_driver_disk": False} and written["executor"] == "serial"
    text = (tmp_path / study.STUDY_REPORT).read_text()
    assert "| baseline.clean_accuracy |" in text and (tmp_path / "images" / "study_seeds.png").stat().st_size > 0
    html = (tmp_path / study.STUDY_HTML).read_text()
    assert "<td>baseline.clean_accuracy</td>" in html and "data:image/png;base64," in html


def test_serial_executor_keeps_the_order_and_the_default_run_never_imports_ray():
    import subprocess  # nosec B404 - this interpreter, a fixed program
    import sys

    from secure_ai_mnist import executor

    assert executor.run_tasks(lambda x: x * x, [3, 1, 2]) == [9, 1, 4]
    program = ("import sys, secure_ai_mnist_main\nfrom secure_ai_mnist import executor, study\n"
               "with executor.ray_session():\n    assert executor.run_tasks(abs, [-1]) == [1]\n"
               "assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", program], cwd=executor.PROJECT_ROOT, capture_output=True, text=True,
                          check=False, timeout=300)  # nosec B603 - this interpreter, fixed program
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_prepare_output_dir_removes_what_a_killed_run_left_half_written(tmp_path):
    from secure_ai_mnist import common

    (tmp_path / "models").mkdir()
    stale = tmp_path / "models" / ".baseline.x1y2.tmp.keras"
    stale.write_bytes(b"half")
    finished, live_log = tmp_path / "metrics.json", tmp_path / ".run.abcd.log.tmp"
    finished.write_text("{}")
    live_log.write_text("log so far")
    common.prepare_output_dir(tmp_path)
    assert not stale.exists() and finished.read_text() == "{}" and live_log.exists()
