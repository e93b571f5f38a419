"""AutoAttack pieces: APGD's schedule, our APGD held against ART's, the ensemble's order and
bounds, the confidence interval and the attack-failure indicators."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_digits

from secure_ai_mnist import autoattack
from secure_ai_mnist import checks as failure
from secure_ai_mnist.config import Config

EPS = 0.25  # the tiny model keeps part of its accuracy here, so the attacks can be compared


def test_checkpoints_follow_the_paper():
    assert autoattack.apgd_checkpoints(100).tolist() == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    spans = autoattack.apgd_schedule(100)
    assert spans.shape == (100,) and spans[21] == 22 and spans[40] == 19 and spans[98] == 6
    assert np.count_nonzero(spans) == 8


@pytest.fixture(scope="module")
def probe():
    x, y = synthetic_digits(np.random.default_rng(7), 200)
    return x, y


def test_ours_at_least_as_strong_as_art_apgd(tiny_model, probe):
    from art.attacks.evasion import AutoProjectedGradientDescent

    from secure_ai_mnist.attacks import art_classifier

    x, y = probe
    n_iter = 30
    ours, fooled = autoattack.run_apgd(tiny_model, x, y, y, "ce", EPS, n_iter, np.random.default_rng(0), 64)
    assert np.max(np.abs(ours - x)) <= EPS + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    art = AutoProjectedGradientDescent(art_classifier(tiny_model), norm=np.inf, eps=EPS, eps_step=2 * EPS,
                                       max_iter=n_iter, targeted=False, nb_random_init=1, batch_size=64,
                                       loss_type="cross_entropy", verbose=False)
    x_art = art.generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    art_acc = float(np.mean(autoattack.predicted(tiny_model, x_art, 64).argmax(1) == y))
    our_acc = float(np.mean(~fooled))
    # the flag agrees with the images returned
    assert our_acc == pytest.approx(np.mean(autoattack.predicted(tiny_model, ours, 64).argmax(1) == y))
    clean = float(np.mean(autoattack.predicted(tiny_model, x, 64).argmax(1) == y))
    assert 0.05 < art_acc < clean, "the comparison needs an eps where the attack half-works"
    # within sampling noise: two standard errors of a proportion on 200 points
    assert our_acc <= art_acc + 2 * np.sqrt(art_acc * (1 - art_acc) / len(y)), (our_acc, art_acc)


def test_square_window_schedule_follows_the_paper():
    sizes = autoattack.square_sizes(10000)
    # p = 0.8 of 784 pixels (side 25) halves after iterations 10, 50, 200, ..., 8000
    assert sizes[10] == 25 and sizes[11] == 18 and sizes[50] == 18 and sizes[51] == 13 and sizes[-1] == 1
    assert np.all(np.diff(sizes) <= 0) and sizes.dtype == np.int32
    assert autoattack.square_sizes(5000)[5] == 25 and autoattack.square_sizes(5000)[6] == 18


def test_our_square_at_least_as_strong_as_art_square(tiny_model, probe):
    from art.attacks.evasion import SquareAttack

    from secure_ai_mnist.attacks import art_classifier

    x, y = probe
    queries = 150
    ours, fooled = autoattack.run_square(tiny_model, x, y, EPS, queries, np.random.default_rng(0))
    assert np.max(np.abs(ours - x)) <= EPS + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    our_acc = float(np.mean(~fooled))
    assert our_acc == pytest.approx(np.mean(autoattack.predicted(tiny_model, ours, 64).argmax(1) == y))
    # A second run with the same seed, in chunks (for progress): the same attack, so the seed
    # repeats it and the chunking changes nothing.
    chunked = autoattack.run_square(tiny_model, x, y, EPS, queries, np.random.default_rng(0), chunk=7)[0]
    assert np.array_equal(ours, chunked), "the same seed, in chunks or in one go, must give the same attack"
    np.random.seed(0)  # nosec B311 - ART draws its squares from NumPy's global generator
    art = SquareAttack(estimator=art_classifier(tiny_model), norm=np.inf, eps=EPS, max_iter=queries, p_init=0.8,
                       nb_restarts=1, batch_size=len(x), verbose=False)
    x_art = art.generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    art_acc = float(np.mean(autoattack.predicted(tiny_model, x_art, 64).argmax(1) == y))
    clean = float(np.mean(autoattack.predicted(tiny_model, x, 64).argmax(1) == y))
    assert 0.05 < art_acc < clean, "the comparison needs an eps where the attack half-works"
    assert our_acc <= art_acc + 2 * np.sqrt(art_acc * (1 - art_acc) / len(y)), (our_acc, art_acc)


def test_ensemble_is_cumulative_and_worst_case(tiny_model, probe, monkeypatch):
    x, y = probe
    cfg = Config(pgd_eps=EPS, autoattack_iters=20, autoattack_targets=3, square_queries=50, square_limit=40,
                 stability_limit=30)
    built, make = [], autoattack.make_ensemble
    monkeypatch.setattr(autoattack, "make_ensemble", lambda model: built.append(make(model)) or built[-1])
    robust, info = autoattack.autoattack(tiny_model, x, y, cfg, np.random.default_rng(1), "tiny")
    # One compiled function per attack for the whole evaluation (every target round and the
    # stability rerun with twice the iterations), each traced once.
    assert len(built) == 1 and {name: fn.experimental_get_tracing_count() for name, fn in built[0].items()} == {
        "apgd_ce": 1, "apgd_t": 1, "fab_t": 1}
    after = info["per_attack"]
    assert list(after) == ["clean", "apgd_ce", "apgd_t", "fab_t", "square"]
    assert after["clean"] >= after["apgd_ce"] >= after["apgd_t"] >= after["fab_t"] >= after["square"]
    # The headline and every per-attack figure are on the same 40 images, where all four attacks ran.
    assert info["n"] == 40 and robust.shape == (40,)
    assert info["robust_accuracy"] == pytest.approx(robust.mean()) == after["square"]
    every = info["whitebox_all"]
    assert every["n"] == len(y) and "square" not in every["per_attack"]
    assert every["robust_accuracy"] == every["per_attack"]["fab_t"] <= every["per_attack"]["apgd_t"]
    low, high = info["ci95"]
    assert low <= info["robust_accuracy"] <= high
    stability = info["checks"]["stability"]
    assert stability["n"] == 30 and len(stability["accuracy"]) == 2
    assert 0.0 <= info["checks"]["zero_gradient_share"] < 0.01


def test_zero_gradient_share_sees_a_flat_model():
    import keras

    inputs = keras.Input((28, 28, 1))
    logits = keras.layers.Dense(10, kernel_initializer="zeros", name="logits")(keras.layers.Flatten()(inputs))
    flat = keras.Model(inputs, keras.layers.Softmax()(logits))
    x, y = synthetic_digits(np.random.default_rng(3), 20)
    assert autoattack.zero_gradient_share(flat, x, y, 8) == 1.0


def test_wilson_interval():
    low, high = autoattack.wilson_ci95(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert autoattack.wilson_ci95(0, 100)[0] == 0.0
    assert np.isnan(autoattack.wilson_ci95(0, 0)).all()


def test_failure_checks_flag_a_weaker_stronger_attack():
    transfer = {"fgsm": {"m": {"m": 0.5}}, "pgd": {"m": {"m": 0.6}}}  # PGD weaker than FGSM: a failed attack
    result = {"robust_accuracy": 0.3, "n": 100, "per_attack": {"apgd_ce": 0.45, "apgd_t": 0.42, "fab_t": 0.4,
                                                                "square": 0.3},
              "checks": {"zero_gradient_share": 0.2, "stability": {"n": 10, "accuracy": [0.4, 0.3]}}}
    checks = failure.attack_failure_checks("m", result, transfer)
    assert checks["attack_strength_order_m"]["passed"] is False
    assert checks["square_not_stronger_than_whitebox_m"]["passed"] is False
    assert checks["attack_converged_m"]["passed"] is False
    assert checks["no_zero_gradients_m"]["passed"] is False
    result["per_attack"].update(fab_t=0.0, square=0.0)
    assert failure.attack_failure_checks("m", result, transfer)["square_not_stronger_than_whitebox_m"]["passed"] is None


def test_square_limit_zero_means_every_image_and_no_upper_bound_is_split_off(tiny_model, probe):
    x, y = probe
    cfg = Config(pgd_eps=EPS, autoattack_iters=5, autoattack_targets=1, square_queries=20, square_limit=0,
                 stability_limit=0)
    robust, info = autoattack.autoattack(tiny_model, x[:60], y[:60], cfg, np.random.default_rng(1), "tiny")
    assert info["n"] == 60 and robust.shape == (60,) and "whitebox_all" not in info
    off = autoattack.autoattack(tiny_model, x[:60], y[:60], Config(pgd_eps=EPS, autoattack_iters=5, autoattack_targets=1,
                                square_queries=0, square_limit=10, stability_limit=0), np.random.default_rng(1), "t")[1]
    assert off["n"] == 60 and "square" not in off["per_attack"]  # no Square: nothing to split by


def test_apgd_ce_restarts_attack_only_the_survivors_and_keep_the_first_start(tiny_model, probe):
    """--autoattack-restarts: the first start is a single-start run's (same draws), each further
    start can only clear more points, and the mask after APGD-CE holds every start."""
    x, y = probe
    one = autoattack.whitebox_ensemble(tiny_model, x, y, EPS, 5, 1, np.random.default_rng(3), 64)
    three = autoattack.whitebox_ensemble(tiny_model, x, y, EPS, 5, 1, np.random.default_rng(3), 64, restarts=3)
    assert np.array_equal(one["clean"], three["clean"])
    assert not np.any(three["apgd_ce"] & ~one["apgd_ce"]), "a restart revived a point the first start fooled"
    assert three["apgd_ce"].sum() < one["apgd_ce"].sum(), "5-iteration APGD-CE from new starts should fool more"


def test_shards_measured_before_a_setting_existed_stay_valid(tmp_path):
    """A committed shard whose settings predate --autoattack-restarts was measured with 1 start:
    it is reused at 1 and redone at 5."""
    import json

    from bench_robust_shards import SETTINGS_BEFORE, load_shard

    settings = {"seed": 42, "autoattack_targets": 5, **SETTINGS_BEFORE}
    path = tmp_path / "shard_000.json"
    path.write_text(json.dumps({"weights_sha256": "ab", "settings": {"seed": 42, "autoattack_targets": 5}}))
    assert load_shard(path, "ab", settings) is not None
    assert load_shard(path, "ab", {**settings, "autoattack_restarts": 5}) is None
    assert load_shard(path, "cd", settings) is None


def test_sharded_evaluation_is_resumable_and_merges_exactly(tiny_model, probe, tmp_path):
    """bench_robust's shards: a shard redone in a later run gives the same result, a shard from
    other weights is redone, and the merged figures are the shards' counts over every image."""
    import json
    from types import SimpleNamespace

    from bench_robust_shards import run_shards, weights_sha256

    x, y = probe[0][:60], probe[1][:60]
    cfg = Config(pgd_eps=EPS, pgd_steps=5, pgd_step_size=0.05, autoattack_iters=5, autoattack_targets=1,
                 square_queries=20, stability_limit=10)
    args = SimpleNamespace(shard_dir=tmp_path / "shards", shard_size=25, max_minutes=0.0, shards=None,
                           out=tmp_path / "out.json")
    assert run_shards(tiny_model, {}, x, y, cfg, args, {"clean_accuracy": 1.0, "fgsm_whitebox_accuracy": 1.0}) == 0
    first = json.loads(args.out.read_text())
    shards = sorted(args.shard_dir.glob("shard_*.json"))
    assert [json.loads(p.read_text())["images"] for p in shards] == [[0, 25], [25, 50], [50, 60]]
    saved = json.loads(shards[1].read_text())
    shards[1].unlink()
    stale = json.loads(shards[2].read_text()) | {"weights_sha256": "0" * 64}
    shards[2].write_text(json.dumps(stale))
    args.out.unlink()
    args.shards = [1]  # a screen: only shard 1 is redone, the stale shard 2 is left, nothing is merged
    run_shards(tiny_model, {}, x, y, cfg, args, {"clean_accuracy": 1.0, "fgsm_whitebox_accuracy": 1.0})
    assert shards[1].exists() and json.loads(shards[2].read_text())["weights_sha256"] == "0" * 64
    assert not args.out.exists()
    args.shards = None
    run_shards(tiny_model, {}, x, y, cfg, args, {"clean_accuracy": 1.0, "fgsm_whitebox_accuracy": 1.0})
    again = json.loads(args.out.read_text())
    assert json.loads(shards[1].read_text())["counts"] == saved["counts"]
    assert json.loads(shards[2].read_text())["weights_sha256"] == weights_sha256(tiny_model)
    for key in ("autoattack", "pgd_whitebox"):  # every figure but the times
        assert {k: v for k, v in again[key].items() if k != "time_s"} == {k: v for k, v in first[key].items()
                                                                          if k != "time_s"}
    counts = [json.loads(p.read_text())["counts"] for p in shards]
    aa = first["autoattack"]
    assert aa["n"] == 60 and aa["robust_accuracy"] == sum(c["square"] for c in counts) / 60
    assert aa["per_attack"]["clean"] >= aa["per_attack"]["apgd_ce"] >= aa["per_attack"]["fab_t"] >= aa["robust_accuracy"]
    assert aa["checks"]["stability"]["n"] == 10  # shard 0 only
    square = first["checks"]["square_not_stronger_than_whitebox_defense_robust"]
    assert square["drop_points"] == pytest.approx(100 * (aa["per_attack"]["fab_t"] - aa["robust_accuracy"]))
    assert square["n"] == 60 and set(first["checks"]) >= {"attack_strength_order_defense_robust",
                                                          "attack_converged_defense_robust"}


def test_committed_complete_autoattack_is_the_merge_of_the_committed_shards():
    """The README's robust headline (complete_autoattack in bench_robust_profile.json) must be
    what the ten committed shard JSONs sum to, on one set of weights and settings."""
    import json

    from bench_robust_shards import merge_shards
    from conftest import ROOT

    outputs = ROOT / "secure_ai_outputs"
    shards = [json.loads(p.read_text()) for p in sorted((outputs / "bench_robust_shards").glob("shard_*.json"))]
    committed = json.loads((outputs / "bench_robust_profile.json").read_text())["complete_autoattack"]
    assert len({s["weights_sha256"] for s in shards}) == 1 == len({json.dumps(s["settings"]) for s in shards})
    assert shards[0]["weights_sha256"] == committed["weights_sha256"]
    merged = merge_shards(shards, 10_000)
    for key in ("robust_accuracy", "per_attack", "ci95", "n"):
        assert merged["autoattack"][key] == committed["autoattack"][key]
    assert merged["pgd_whitebox"]["robust_accuracy"] == committed["pgd_whitebox"]["robust_accuracy"]
