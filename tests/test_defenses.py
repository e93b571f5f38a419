from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_digits

from secure_ai_mnist import common, config, defenses, detect_art, detection


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
    # Same seed, same model: the examples are crafted inside the training step, so no input
    # pipeline running ahead of the weights can change them (Keras's prefetching did).
    again, _ = defenses.train_per_batch_adversarial(x, y, cfg, method, f"test_{method}")
    for ours, theirs in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


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


def test_holdout_is_disjoint_and_complete(rng):
    train, hold = defenses.split_holdout(50, 10, rng)
    assert len(hold) == 10 and len(train) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), np.arange(50))


def test_one_cycle_learning_rate_peaks_at_40_percent():
    schedule = defenses.cyclic_learning_rate(5e-3, 100)
    values = [float(schedule(step)) for step in (0, 20, 40, 70, 100)]
    assert values == pytest.approx([0.0, 2.5e-3, 5e-3, 2.5e-3, 0.0], abs=1e-9)


def test_robust_training_keeps_the_best_full_eps_epoch_and_records_the_guard():
    x, y = synthetic_digits(np.random.default_rng(3), 300)
    cfg = config.Config(batch_size=64, robust_epochs=3, robust_ramp_epochs=1, robust_holdout=50, robust_pgd_epochs=0,
                        robust_guard="pgd10")
    model, record = defenses.train_per_batch_adversarial(x, y, cfg, "robust", "test_robust")
    assert record["n_train"] == 250 and record["n_holdout"] == 50
    assert record["epochs_run"] == len(record["holdout_robust"]) == 3
    assert record["epoch_eps"][0] == pytest.approx(0.3 * (1 - 1 / 4), abs=1e-6)  # last batch of the ramp epoch
    full = [acc for acc, eps in zip(record["holdout_robust"], record["epoch_eps"]) if eps >= 0.3 - 1e-9]
    assert record["kept_holdout_robust"] == max(full)
    assert record["epoch_eps"][record["kept_epoch"] - 1] == pytest.approx(0.3)
    assert model.predict_on_batch(x[:4]).shape == (4, 10)


def test_robust_pgd_phase_and_apgd_guard_are_recorded():
    x, y = synthetic_digits(np.random.default_rng(4), 200)
    cfg = config.Config(batch_size=64, robust_epochs=2, robust_ramp_epochs=0, robust_holdout=40,
                        robust_pgd_epochs=1, robust_pgd_steps=3, robust_guard="apgd", robust_net="seed")
    _, record = defenses.train_per_batch_adversarial(x, y, cfg, "robust", "test_robust_pgd")
    assert record["guard_attack"] == "apgd" and record["method"].endswith("PGD-3 in the last 1 epochs")
    assert len(record["holdout_robust"]) == 2 and all(0 <= a <= 1 for a in record["holdout_robust"])
    with pytest.raises(common.ConfigError):
        config.Config(robust_pgd_epochs=-1)


def test_kl_divergence_matches_keras_and_stays_finite_when_softmax_underflows(rng):
    import keras

    p = rng.dirichlet(np.ones(10), size=6).astype(np.float32)
    logits = rng.normal(scale=3.0, size=(6, 10)).astype(np.float32)
    ours = defenses.kl_divergence(p, logits).numpy()
    expected = keras.losses.KLDivergence(reduction=None)(p, keras.ops.softmax(logits)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    saturated = np.array([[200.0] + [0.0] * 9], np.float32)  # softmax gives exact zeros in float32
    assert np.isfinite(defenses.kl_divergence(p[:1], saturated).numpy()).all()
    assert defenses.kl_divergence(p[:1], np.log(p[:1])).numpy()[0] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", ["ce", "trades"])
def test_the_training_attack_raises_its_own_objective(loss):
    """From the same weights, random start and dropout draws, the attack's steps must raise the
    step's training loss above that of the random start alone (a sign error would lower it)."""
    import keras
    import tensorflow as tf

    from secure_ai_mnist.model import build_baseline_cnn, seed_everything

    x, y = synthetic_digits(np.random.default_rng(6), 64)
    losses = []
    for steps in (0, 5):
        seed_everything(11)
        step_fn = defenses.robust_step(build_baseline_cnn(), keras.optimizers.Adam(1e-3), loss, beta=10.0)
        batch_loss, _ = step_fn(tf.constant(x), tf.constant(y, tf.int64), tf.constant(0.3), tf.constant(0.15),
                                tf.constant(steps))
        losses.append(float(batch_loss))
    # Summed over 64 images; trades's clean cross-entropy is the same in both, so the gap is the attack's.
    assert losses[1] - losses[0] > 2.0


def test_trades_recipe_is_wired_deterministic_and_recorded():
    x, y = synthetic_digits(np.random.default_rng(7), 160)
    recipe = dict(batch_size=64, robust_epochs=2, robust_ramp_epochs=0, robust_holdout=32, robust_pgd_epochs=1,
                  robust_pgd_steps=2, robust_guard="pgd10", robust_net="seed")  # seed: the suffix stays last
    runs = [defenses.train_per_batch_adversarial(x, y, config.Config(**recipe, **extra), "robust", "trades")
            for extra in ({"robust_loss": "trades"}, {"robust_loss": "trades"}, {})]
    weights = [np.concatenate([w.ravel() for w in model.get_weights()]) for model, _ in runs]
    np.testing.assert_array_equal(weights[0], weights[1])
    assert not np.array_equal(weights[0], weights[2])  # the loss flag reaches the training step
    assert runs[0][1]["method"].endswith("TRADES loss (beta 1)") and "TRADES" not in runs[2][1]["method"]
    with pytest.raises(common.ConfigError):
        config.Config(robust_trades_beta=0.0)


def test_robust_net_smallcnn_is_the_default_trained_by_the_robust_recipe_and_named_in_its_record():
    x, y = synthetic_digits(np.random.default_rng(8), 160)
    recipe = dict(batch_size=64, robust_epochs=1, robust_ramp_epochs=0, robust_holdout=32, robust_pgd_epochs=1,
                  robust_pgd_steps=2, robust_guard="pgd10")
    model, record = defenses.train_per_batch_adversarial(x, y, config.Config(**recipe), "robust", "small")  # default
    assert model.name == "mnist_small_cnn" and model.count_params() == 312_202  # TRADES's SmallCNN
    assert [layer.name for layer in model.layers[-2:]] == ["logits", "probabilities"]  # what the attacks read
    assert record["network"] == "smallcnn" and record["method"].endswith("SmallCNN (not the seed CNN)")
    _, seed_record = defenses.train_per_batch_adversarial(x, y, config.Config(**recipe, robust_net="seed"),
                                                          "robust", "small")
    assert seed_record["network"] == "seed" and "SmallCNN" not in seed_record["method"]
    with pytest.raises(SystemExit):
        config.parse_config(["--robust-net", "resnet"])


def test_robust_bf16_trains_in_bfloat16_and_returns_the_float32_network():
    from secure_ai_mnist.model import build_network, float32_model

    x, y = synthetic_digits(np.random.default_rng(9), 160)
    recipe = dict(batch_size=64, robust_epochs=2, robust_ramp_epochs=0, robust_holdout=32, robust_pgd_epochs=1,
                  robust_pgd_steps=2, robust_guard="pgd10")
    runs = {p: defenses.train_per_batch_adversarial(x, y, config.Config(**recipe, robust_precision=p), "robust", "bf16")
            for p in ("fp32", "bf16")}
    model, record = runs["bf16"]
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)  # every evaluation runs in fp32
    assert model.name == "mnist_small_cnn" and model.count_params() == 312_202
    assert record["precision"] == "bf16" and record["method"].endswith("bf16 training steps")
    assert runs["fp32"][1]["precision"] == "fp32" and "bf16" not in runs["fp32"][1]["method"]
    weights = {p: np.concatenate([w.ravel() for w in m.get_weights()]) for p, (m, _) in runs.items()}
    assert not np.array_equal(weights["bf16"], weights["fp32"])  # the flag reaches the training step
    assert np.isfinite(weights["bf16"]).all() and all(np.isfinite(record["loss"]))
    mixed = build_network("smallcnn", precision="bf16")
    assert mixed.get_layer("logits").dtype_policy.name == "mixed_bfloat16"
    assert float32_model(mixed).name == "mnist_small_cnn"  # a SmallCNN stays a SmallCNN in fp32
    with pytest.raises(SystemExit):
        config.parse_config(["--robust-precision", "fp16"])


def test_robust_train_eps_reaches_the_training_attacks_and_the_guard_stays_at_the_evaluated_eps():
    x, y = synthetic_digits(np.random.default_rng(7), 160)
    recipe = dict(batch_size=64, robust_epochs=2, robust_ramp_epochs=1, robust_holdout=32, robust_pgd_epochs=1,
                  robust_pgd_steps=2, robust_guard="pgd10", robust_net="seed")  # seed: the suffix stays last
    runs = {eps: defenses.train_per_batch_adversarial(x, y, config.Config(**recipe, robust_train_eps=eps), "robust",
                                                      "train_eps") for eps in (0.0, 0.3, 0.4)}
    weights = {eps: np.concatenate([w.ravel() for w in model.get_weights()]) for eps, (model, _) in runs.items()}
    np.testing.assert_array_equal(weights[0.0], weights[0.3])  # 0 means --pgd-eps (0.3)
    assert not np.array_equal(weights[0.3], weights[0.4])
    record = runs[0.4][1]
    assert record["epoch_eps"][-1] == pytest.approx(0.4) and record["eps"] == 0.4 and record["guard_eps"] == 0.3
    assert record["kept_epoch"] == 2 and record["method"].endswith("trained at eps 0.4")
    assert "trained at eps" not in runs[0.0][1]["method"]
    with pytest.raises(common.ConfigError):
        config.Config(robust_train_eps=1.5)


def test_a_collapse_right_after_the_ramp_switches_to_pgd_from_the_peak_weights(monkeypatch):
    """Training eps 0.4 on 2026-12-04: held-out robust accuracy .012, .238 (last ramp epoch), .011,
    .000 (full eps), and the guard, counting only full-eps epochs, saw no collapse."""
    x, y = synthetic_digits(np.random.default_rng(8), 160)
    scripted = iter([(0.9, 0.05), (0.9, 0.30), (0.9, 0.01), (0.9, 0.40), (0.9, 0.45)])
    after_epoch, restored = [], []

    def flat(weights):
        return np.concatenate([w.ravel() for w in weights])

    def guard(model, *_args):
        set_weights = model.set_weights
        model.set_weights = lambda weights: (restored.append(flat(weights)), set_weights(weights))

        def measure():
            after_epoch.append(flat(model.get_weights()))
            return next(scripted)
        return measure

    monkeypatch.setattr(defenses, "holdout_guard", guard)
    cfg = config.Config(batch_size=64, robust_epochs=5, robust_ramp_epochs=2, robust_holdout=32, robust_pgd_epochs=1,
                        robust_pgd_steps=2, robust_guard="pgd10")
    _, record = defenses.train_per_batch_adversarial(x, y, cfg, "robust", "collapse")
    assert record["epoch_eps"][1] < 0.3 <= record["epoch_eps"][2]  # epoch 2 is a ramp epoch; its peak counts
    assert record["switched_to_pgd_after_epoch"] == 3 and record["epoch_steps"] == [1, 1, 1, 2, 2]
    np.testing.assert_array_equal(restored[0], after_epoch[1])  # back to epoch 2's weights, not epoch 3's
    assert not np.array_equal(after_epoch[1], after_epoch[2])
    assert record["kept_epoch"] == 5 and record["stop_reason"] == "planned epochs done"


class _Weights:
    """A stand-in model: its weights are one number, the epoch that wrote them."""

    def __init__(self) -> None:
        self.value = -1

    def get_weights(self):
        return [np.array(self.value)]

    def set_weights(self, weights) -> None:
        self.value = int(weights[0])


def test_kept_weights_keeps_the_best_full_eps_epoch_and_stops_on_a_full_eps_collapse():
    model, record = _Weights(), {}
    keeper = defenses.KeptWeights(model.get_weights(), 0.3, pgd_from=0, has_pgd=True)
    outcomes = []
    for epoch, (eps, robust) in enumerate([(0.15, 0.9), (0.3, 0.5), (0.3, 0.7), (0.3, 0.6), (0.3, 0.45)]):
        model.value = epoch
        outcomes.append(keeper.observe(model, epoch, eps, robust, record, "t"))
    # The ramp epoch's 0.9 is no candidate; a full-eps drop of 0.25 from 0.7 is a collapse; PGD from epoch 0
    # means no FGSM-RS switch, and nothing is restored into the model.
    assert keeper.best[:2] == (0.7, 2) and int(keeper.best[2][0]) == 2 and keeper.peak[:2] == (0.9, 0)
    assert outcomes[:4] == [None] * 4 and outcomes[4].startswith("catastrophic overfitting: held-out robust "
                                                                 "accuracy fell from 0.700 to 0.450")
    assert model.value == 4 and "switched_to_pgd_after_epoch" not in record


def test_kept_weights_switches_to_pgd_from_the_peak_on_an_fgsm_collapse_and_not_without_pgd_epochs():
    for has_pgd in (True, False):
        model, record = _Weights(), {}
        keeper = defenses.KeptWeights(model.get_weights(), 0.3, pgd_from=4, has_pgd=has_pgd)
        for epoch, (eps, robust) in enumerate([(0.3, 0.5), (0.3, 0.6), (0.3, 0.35)]):
            model.value = epoch
            outcome = keeper.observe(model, epoch, eps, robust, record, "t")
        if has_pgd:  # restored epoch 1's weights, PGD from epoch 3, training goes on
            assert outcome is None and model.value == 1 and keeper.pgd_from == 3
            assert record["switched_to_pgd_after_epoch"] == 3
        else:  # no PGD epochs to switch to: the same drop stops training
            assert outcome.startswith("catastrophic overfitting") and model.value == 2 and keeper.pgd_from == 4


def test_robust_training_refuses_a_budget_it_cannot_hold_and_never_shortens_the_recipe(caplog):
    x, y = synthetic_digits(np.random.default_rng(5), 200)
    recipe = dict(batch_size=64, robust_epochs=3, robust_ramp_epochs=0, robust_holdout=40, robust_pgd_epochs=1,
                  robust_pgd_steps=3, robust_guard="pgd10")
    assert issubclass(common.TimeBudgetError, common.UserError)  # one error line and exit code 2, no traceback
    with pytest.raises(common.TimeBudgetError, match=r"would take about .* over --robust-budget-min 1e-05; rerun"):
        defenses.train_per_batch_adversarial(x, y, config.Config(**recipe, robust_budget_min=1e-5), "robust", "budget")
    _, record = defenses.train_per_batch_adversarial(x, y, config.Config(**recipe), "robust", "budget")
    assert record["epochs_run"] == 3 and record["stop_reason"] == "planned epochs done"
    assert record["epoch_steps"] == [1, 1, 3]
    assert len(record["projected_min"]) == 2  # measured after the first FGSM-RS and the first PGD epoch
    assert all(0 < minutes < 30 for minutes in record["projected_min"])


def test_projected_minutes_scale_unmeasured_pgd_epochs_by_their_gradient_count():
    cfg = config.Config(robust_epochs=10, robust_pgd_epochs=4, robust_pgd_steps=5)
    record = {"epoch_steps": [1], "epoch_time_s": [70.0], "guard_time_s": [10.0]}
    # 6 FGSM-RS epochs of 70 s; 4 PGD-5 epochs of 60 s x (0.6 + 0.4 x 5) + 10 s guard = 166 s
    assert defenses.projected_minutes(record, cfg, pgd_from=6) == pytest.approx((6 * 70 + 4 * 166) / 60)
    record = {"epoch_steps": [1, 5], "epoch_time_s": [70.0, 250.0], "guard_time_s": [10.0, 10.0]}
    assert defenses.projected_minutes(record, cfg, pgd_from=6) == pytest.approx((6 * 70 + 4 * 250) / 60)


@pytest.mark.parametrize("record_file, section", [
    ("bench_robust_screens/smallcnn_pgd10/training.json", None),
    ("bench_robust_screens/smallcnn_eps035_26ep/training.json", None),
    ("bench_robust_screens/train_eps035/training.json", None),
    ("bench_robust_screens/pgd10_steps/training.json", None),
    ("bench_robust_profile.json", "previous_recipe_smallcnn_pgd5")])
def test_projection_from_the_first_epoch_holds_for_the_committed_fp32_recipes(record_file, section):
    """The budget check's first projection (after one FGSM-RS epoch) against the whole training
    each committed fp32 recipe measured: PGD-5 and PGD-10, seed CNN and SmallCNN, within 10%."""
    import json

    from conftest import ROOT

    committed = json.loads((ROOT / "secure_ai_outputs" / record_file).read_text())
    record = (committed[section] if section else committed)["training"]
    assert record["stop_reason"] == "planned epochs done" and record["epoch_steps"][0] == 1
    cfg = config.Config(robust_epochs=record["epochs_run"], robust_pgd_epochs=record["pgd_epochs"],
                        robust_pgd_steps=record["pgd_steps"])
    first = {key: record[key][:1] for key in ("epoch_steps", "epoch_time_s", "guard_time_s")}
    projected = defenses.projected_minutes(first, cfg, pgd_from=cfg.robust_epochs - cfg.robust_pgd_epochs)
    assert projected == pytest.approx(record["train_time_s"] / 60, rel=0.10)


def test_robust_profile_presets_and_explicit_flags_win():
    cfg = config.parse_config(["--profile", "robust"])
    assert cfg.per_batch_defenses == ("robust",) and cfg.pgd_limit == 0 and cfg.pgd_restarts == 3
    assert cfg.autoattack_targets == 5 and config.parse_config([]).autoattack_targets == 9
    assert config.parse_config(["--profile", "robust", "--pgd-restarts", "1"]).pgd_restarts == 1
    assert config.parse_config(["--profile", "robust", "--quick"]).pgd_limit == 200


def test_detection_metrics_on_a_planted_case():
    is_poison = np.zeros(100, bool)
    is_poison[:10] = True
    flagged = np.zeros(100, bool)
    flagged[5:20] = True  # 5 poisons found, 10 clean samples flagged, 5 poisons missed
    m = detection.detection_metrics(flagged, is_poison)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"], m["flagged"]) == (5, 10, 5, 15)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4)
    assert detection.detection_metrics(np.zeros(100, bool), is_poison)["f1"] == 0.0


def test_detectors_analyse_the_penultimate_layer(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(11), 400)
    odd = np.flatnonzero(y == 8)[:12]
    x[odd, 20:26, 20:26, 0] = 1.0
    y = y.copy()
    y[odd] = 3
    assert detect_art.activations_record(tiny_model, x) == {"layer": "penultimate", "dim": 128,
                                                            "equal_to_model_penultimate": True}
    for name, detect in detection.REFERENCES.items():
        found = detect(tiny_model, x, y, config.Config())
        assert found.flags.shape == (400,) and found.flags.dtype == bool and found.check is None
        assert found.report["time_s"] >= 0 and "f1" not in found.report  # scored elsewhere, against the truth


def test_silhouette_analysis_flags_only_a_small_well_separated_cluster(rng):
    """Class 0: 90 points plus a far cluster of 10 (poison). Class 1: one blob split in halves
    (large clusters, never poison). Class 2: a small cluster inside the blob (low silhouette:
    the case ART 1.20.1 crashes on)."""
    blob = rng.normal(size=(100, 2))
    far = np.concatenate([blob[:90], rng.normal(size=(10, 2)) + 20])
    clusters = [np.r_[np.zeros(90, int), np.ones(10, int)], (blob[:, 0] > 0).astype(int),
                (np.arange(100) < 10).astype(int)]
    flagged, report = detect_art.silhouette_analysis(clusters, [far, blob, blob])
    np.testing.assert_array_equal(flagged[0], np.arange(100) >= 90)
    assert not flagged[1].any() and not flagged[2].any()
    assert [r["suspicious"] for r in report] == [True, False, False]


def test_the_time_budget_is_no_part_of_the_robust_defense_key():
    import secure_ai_mnist_main as main

    stage = next(s for s in main.pipeline(config.Config(defense="fgsm,robust")) if s.name == "defense_robust")
    assert "robust_epochs" in stage.config and "robust_pgd_steps" in stage.config
    assert "robust_budget_min" not in stage.config  # it refuses a run, never changes the model


def test_robust_net_smallcnn_silu_is_the_smallcnn_with_smooth_activations_and_survives_fp32_conversion():
    from secure_ai_mnist.model import build_network, float32_model

    relu, silu = build_network("smallcnn"), build_network("smallcnn-silu")
    assert silu.name == "mnist_small_cnn_silu" and silu.count_params() == relu.count_params() == 312_202
    hidden = [layer.activation.__name__ for layer in silu.layers if hasattr(layer, "activation")][:-2]
    assert hidden == ["silu"] * 6 and "relu" not in hidden
    silu.set_weights(relu.get_weights())
    x = synthetic_digits(np.random.default_rng(3), 8)[0]
    assert not np.allclose(silu.predict_on_batch(x), relu.predict_on_batch(x))  # the activation reaches the layers
    back = float32_model(build_network("smallcnn-silu", precision="bf16"))
    assert back.name == "mnist_small_cnn_silu" and back.layers[1].activation.__name__ == "silu"
    x, y = synthetic_digits(np.random.default_rng(4), 96)
    recipe = dict(batch_size=32, robust_epochs=1, robust_ramp_epochs=0, robust_holdout=32, robust_pgd_epochs=1,
                  robust_pgd_steps=2, robust_guard="pgd10", robust_net="smallcnn-silu")
    model, record = defenses.train_per_batch_adversarial(x, y, config.Config(**recipe), "robust", "silu")
    assert model.name == "mnist_small_cnn_silu" and record["network"] == "smallcnn-silu"
    assert "SmallCNN with SiLU" in record["method"]
