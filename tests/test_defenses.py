from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_digits

from secure_ai_mnist import config, defenses


def test_mix_keeps_every_pair_once(rng):
    x = rng.uniform(size=(10, 28, 28, 1)).astype(np.float32)
    x_adv = x + 1.0
    y = np.arange(10)
    x_mix, y_mix = defenses.mix_clean_and_adversarial(x, x_adv, y, rng)
    assert len(x_mix) == 20
    np.testing.assert_array_equal(np.sort(y_mix), np.repeat(np.arange(10), 2))
    clean = x_mix.max(axis=(1, 2, 3)) <= 1.0
    assert clean.sum() == 10
    np.testing.assert_array_equal(np.sort(y_mix[clean]), y)


def test_attack_schedules_follow_the_papers():
    cfg = config.Config(pgd_eps=0.3, pgd_train_steps=10)
    assert defenses.attack_schedule("fgsm-rs", cfg) == (pytest.approx(0.375), 1)
    assert defenses.attack_schedule("pgd", cfg) == (pytest.approx(0.075), 10)
    with pytest.raises(ValueError):
        defenses.attack_schedule("nope", cfg)


def test_defense_flag_validation():
    assert config.Config(defense="fgsm,pgd,fgsm-rs").per_batch_defenses == ("fgsm-rs", "pgd")
    assert config.Config().per_batch_defenses == ()
    with pytest.raises(config.ConfigError):
        config.Config(defense="fgsm,trades")


@pytest.mark.parametrize("method", ["fgsm-rs", "pgd"])
def test_per_batch_training_runs_and_records_its_attack(method):
    x, y = synthetic_digits(np.random.default_rng(7), 192)
    cfg = config.Config(epochs=1, batch_size=64, pgd_train_steps=2)
    model, record = defenses.train_per_batch_adversarial(x, y, cfg, method, f"test_{method}")
    assert record["method"] == method and record["n_train"] == 192 and len(record["loss"]) == 1
    assert np.isfinite(record["loss"][0])
    assert model.predict_on_batch(x[:4]).shape == (4, 10)


def test_quick_run_covers_every_defense(quick_run):
    summary = json.loads(quick_run["json"].read_text())
    for name in ("defense_fgsm", "defense_fgsm_rs", "defense_pgd"):
        evals = summary["models"][name]["eval"]
        assert {"clean", "fgsm_transfer_from_baseline", "fgsm_whitebox", "pgd_whitebox"} <= evals.keys()
        assert f"| {name} |" in summary["results_table"]
        assert name in summary["transfer"]["accuracy"]["pgd"]
        assert name in summary["accuracy_vs_eps"]["pgd"]
        assert (quick_run["out"] / "models" / f"cnn_mnist_{name}.keras").is_file()
    assert summary["models"]["defense_pgd"]["training"]["method"] == "pgd"
