"""The blind poison detector: it cannot receive the answer key, it finds planted poisons in a
small synthetic set, it flags nothing where nothing was planted, and removal reads no truth."""

import inspect

import numpy as np
import pytest
from conftest import synthetic_digits

import secure_ai_mnist_main as main
from secure_ai_mnist import (
    config,
    detect_activations,
    detect_reversal,
    detection,
    detector_api,
    model,
    stages,
    summary_schema,
)

ANSWER_KEY_WORDS = ("poison", "idx", "indices", "target", "trigger", "count", "truth")


def _residual_helpers():
    from secure_ai_mnist import detect_knn, detect_residuals, residual_pixels

    return [detect_residuals.residuals_from, detect_residuals.shared_scores, detect_residuals.class_scores,
            detect_residuals.direction_groups, residual_pixels.pixel_groups, residual_pixels.judge_class,
            detect_knn.pixel_neighbours, detect_knn.disagreement]


@pytest.mark.parametrize("function", [detect_reversal.detect_backdoor, detection.run_detectors,
                                      detect_reversal.reverse_triggers, detect_reversal.separated_group,
                                      *detection.OURS.values(), *detection.REFERENCES.values(),
                                      detect_activations.far_group, detect_activations.log_robust_distances,
                                      detect_activations.whiten,
                                      detect_activations.whitening_draws, detect_activations.per_class_far_groups,
                                      detect_activations.class_far_group, *_residual_helpers()])
def test_detectors_cannot_receive_the_answer_key(function):
    params = inspect.signature(function).parameters
    assert not [p for p in params if any(word in p.lower() for word in ANSWER_KEY_WORDS)], params


def test_detection_and_removal_stages_never_read_the_answer_key():
    by_name = {s.name: s for s in main.pipeline(config.Config(poison_sweep="0,10"))}
    for name in ("poison_detection", "detection_control", "poison_cleaned"):
        assert "poison" not in by_name[name].reads, name
        assert not set(by_name[name].config) & (set(stages.TRIGGER) - {"seed"})
    # the scoring stage is the one that reads the truth, and it trains nothing
    assert "poison" in by_name["detection_scores"].reads and by_name["detection_scores"].cache is None
    assert by_name["train_view"].run(config.Config(), {"poison": {"x": 1, "y": 2, "idx": 3}}) == {"x": 1, "y": 2}


def test_removal_uses_the_configured_detector_not_the_best_scoring_one():
    rows = np.eye(len(detection.DETECTORS), dtype=bool)
    detections = (rows, {})
    for name, row in zip(detection.DETECTORS, rows):
        assert detection.selected_flags(config.Config(detector=name), detections).tolist() == row.tolist()


def test_anomaly_index_marks_the_one_small_mask():
    norms = np.array([60.0, 70, 65, 62, 68, 9, 66, 64, 71, 63])
    index = detect_reversal.anomaly_index(norms)
    assert np.argmax(index) == 5 and index[5] > 2 and (np.delete(index, 5) < 2).all()


def test_separated_group_cuts_a_spike_and_leaves_unimodal_scores_alone(rng):
    clean = np.clip(rng.normal(0.05, 0.03, 2000), 0, 1)
    spiked = np.concatenate([clean, np.full(40, 0.8) + rng.normal(0, 0.005, 40)])
    flagged, info = detect_reversal.separated_group(spiked, 0)
    assert flagged[2000:].all() and not flagged[:2000].any()
    assert clean.max() < info["threshold"] < 0.79
    for scores in (clean, rng.uniform(0, 1, 2000), np.concatenate([clean, clean + 0.5])):  # no minority spike
        assert not detect_reversal.separated_group(scores, 0)[0].any()


def test_trigger_check_scores_flags_and_round_trips():
    x = np.zeros((4, 28, 28, 1), np.float32)
    x[1, 24:27, 24:27] = 1.0
    mask = np.zeros((28, 28, 1), np.float32)
    mask[24:27, 24:27] = 1.0
    pattern = np.ones_like(mask)
    scores = detect_reversal.trigger_scores(x, mask, pattern)
    assert scores.tolist() == [0.0, 1.0, 0.0, 0.0]
    check = detector_api.TriggerCheck(np.array([7]), mask[None], pattern[None], np.array([0.5]))
    assert check.flags(x).tolist() == [False, True, False, False]
    again = detector_api.TriggerCheck.from_arrays(check.to_info())
    assert again.flags(x).tolist() == check.flags(x).tolist()
    empty = detector_api.TriggerCheck.from_arrays({"classes": [], "masks": [], "patterns": [], "thresholds": []})
    assert not empty.flags(x).any()
    with pytest.raises(ValueError):
        detector_api.TriggerCheck.from_arrays({**check.arrays(), "masks": mask[None] * 2})


def test_random_filter_draws_without_replacement(rng):
    flagged = detection.random_filter(1000, 100, rng)
    assert flagged.sum() == 100 and detection.random_filter(5, 10, rng).sum() == 5


@pytest.fixture(scope="module")
def planted():
    """Synthetic 'digits' (bars) where 60 images of other classes carry a white 3x3 corner patch
    and label 3, and a CNN trained on them; the CNN learns the backdoor."""
    model.configure_tensorflow(threads=0)
    x, y = synthetic_digits(np.random.default_rng(5), 1500)
    poisons = np.sort(np.random.default_rng(7).choice(np.flatnonzero(y != 3), 60, replace=False))
    x[poisons, 24:27, 24:27, 0] = 1.0
    y = y.copy()
    y[poisons] = 3
    trained, _ = model.train_cnn(x, y, config.Config(epochs=4, batch_size=32), "planted")
    probe = np.flatnonzero(y == 5)[:50]
    stamped = x[probe].copy()
    stamped[:, 24:27, 24:27, 0] = 1.0
    assert np.mean(trained.predict(stamped, verbose=0).argmax(1) == 3) > 0.9  # the backdoor works
    return x, y, poisons, trained


def test_detector_finds_planted_poisons_blind(planted):
    x, y, poisons, trained = planted
    flagged, check, report = detect_reversal.detect_backdoor(trained, x, y, steps=100, seed=0)
    m = detection.detection_metrics(flagged, np.isin(np.arange(len(y)), poisons))
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9, (m, report)
    assert report["suspicious_classes"] == [3] and check.classes.tolist() == [3]
    corner = np.zeros((28, 28, 1), bool)
    corner[22:28, 22:28] = True
    assert check.masks[0][~corner].sum() <= 0.1 * check.masks[0].sum()  # it recovered the planted place
    clean_probe = synthetic_digits(np.random.default_rng(6), 200)[0]
    stamped = clean_probe.copy()
    stamped[:, 24:27, 24:27, 0] = 1.0
    assert check.flags(stamped).mean() >= 0.95 and check.flags(clean_probe).mean() <= 0.02


def test_detector_flags_nothing_on_an_unpoisoned_model(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(1), 400)  # tiny_model's own training set
    flagged, check, report = detect_reversal.detect_backdoor(tiny_model, x, y, steps=100, seed=0)
    assert flagged.sum() == 0 and report["suspicious_classes"] == [] and len(check.classes) == 0



def test_far_group_cuts_a_far_compact_minority_and_leaves_heavy_tails_alone(rng):
    bulk = rng.standard_t(4, 3000) * 0.5  # a heavy-tailed class, as every clean class measured
    assert not detect_activations.far_group(bulk, 0)[0].any()
    assert not detect_activations.far_group(np.concatenate([bulk, bulk + 1.0]), 0)[0].any()
    planted = np.concatenate([bulk, rng.normal(8.0, 0.3, 120)])
    flagged, info = detect_activations.far_group(planted, 0)
    assert flagged[3000:].all() and flagged[:3000].sum() <= 3, info
    assert info["separation"] >= detect_activations.MIN_SEPARATION


def test_lean_min_cov_det_equals_sklearns_digit_for_digit(rng):
    from sklearn.covariance import MinCovDet

    # both FastMCD paths: one subset (n <= 500) and the merged subsets (n > 500); a far minority inside
    for n in (300, 1200):
        x = rng.standard_normal((n, 6)) @ rng.standard_normal((6, 6))
        x[: n // 10] += 5.0
        stock, lean = MinCovDet(random_state=4).fit(x), detect_activations.min_cov_det(4).fit(x)
        for name in ("location_", "covariance_", "support_", "raw_covariance_", "dist_"):
            assert np.array_equal(getattr(stock, name), getattr(lean, name)), name
        assert not lean.support_[: n // 10].any()  # the minority is outside the robust fit
    assert np.array_equal(detect_activations.plain_covariance(x), np.cov(x.T, bias=True))


def test_residuals_in_row_blocks_equal_one_gather_of_every_neighbour(rng):
    from secure_ai_mnist import detect_residuals

    x = rng.random((11, 28, 28, 1), dtype=np.float32)
    neighbours = rng.integers(0, 11, (11, 4))
    flat = x.reshape(11, -1)
    for rows in (1, 3, 2048):
        assert np.array_equal(detect_residuals.residuals_from(x, neighbours, rows), flat - flat[neighbours].mean(axis=1))


def test_per_class_far_groups_give_the_same_flags_on_one_or_two_processes(rng):
    """The classes' fits run on processes; their random draws must still come from the one rng
    in class order (a skipped class draws nothing), as one loop over the classes would."""
    counts = [detect_activations.MIN_CLASS // 2] + [300] * 9  # class 0 is too small to judge
    y = np.repeat(np.arange(10), counts)
    features = rng.standard_normal((len(y), 16)) + y[:, None]
    planted = np.flatnonzero(y == 3)[:30]
    features[planted] += 12.0
    reference, infos = np.zeros(len(y), bool), {}
    draws = np.random.default_rng(11)
    for label in range(1, 10):  # the loop the processes replace
        members = np.flatnonzero(y == label)
        scores = detect_activations.log_robust_distances(
            features[members], detect_activations.whitening_draws(len(members), draws))
        group, infos[str(label)] = detect_activations.far_group(scores, 5)
        reference[members[group]] = True
    assert np.array_equal(np.flatnonzero(reference), planted)
    runs = [detect_activations.per_class_far_groups(features, y, detect_activations.log_robust_distances,
                                                    np.random.default_rng(11), 5, jobs) for jobs in (1, 2)]
    for flags, per_class, suspicious in runs:
        assert np.array_equal(flags, reference) and suspicious == [3]
        assert per_class["0"]["skipped"]
        assert {label: {k: info[k] for k in infos[label]} for label, info in per_class.items() if label != "0"} == infos


@pytest.fixture(scope="module")
def blended_models():
    """A blended noise trigger (no patch, every pixel changed) on 60 synthetic images of other
    classes, labelled 3, and the model trained on them; the same data unpoisoned and its model."""
    from secure_ai_mnist.triggers import TriggerSpec, stamp

    x, y = synthetic_digits(np.random.default_rng(5), 1500)
    x_clean, y_clean = x.copy(), y.copy()
    poisons = np.sort(np.random.default_rng(7).choice(np.flatnonzero(y != 3), 60, replace=False))
    spec = TriggerSpec(family="blended", alpha=0.3, seed=1)
    x[poisons] = stamp(x[poisons], spec)
    y = y.copy()
    y[poisons] = 3
    trained, _ = model.train_cnn(x, y, config.Config(epochs=4, batch_size=32), "planted_blend")
    probe = stamp(synthetic_digits(np.random.default_rng(6), 200)[0], spec)
    assert np.mean(trained.predict(probe, verbose=0).argmax(1) == 3) > 0.8  # the backdoor works
    clean_model, _ = model.train_cnn(x_clean, y_clean, config.Config(epochs=4, batch_size=32), "planted_none")
    return {"poisoned": (trained, x, y, np.isin(np.arange(len(y)), poisons)), "clean": (clean_model, x_clean, y_clean)}


@pytest.mark.parametrize("name", ["activation_outliers", "feature_clusters"])
def test_activation_detectors_find_a_blended_trigger_and_stay_silent_without_one(blended_models, name):
    detect = detection.OURS[name]
    trained, x, y, is_poison = blended_models["poisoned"]
    found = detect(trained, x, y, config.Config())
    m = detection.detection_metrics(found.flags, is_poison)
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9, (m, found.report)
    assert found.check is None and found.report["recovers_trigger"] is False
    silent = detect(*blended_models["clean"], config.Config())
    assert silent.flags.sum() == 0 and silent.report["suspicious_classes"] == [], silent.report


def test_dense_far_scores_rank_a_tight_far_group_above_scattered_outliers(rng):
    """Clean outliers are far from the centre and from each other; a planted group shares a
    trigger, so it is far from the centre and tight: it must score above every scattered one."""
    from secure_ai_mnist import detect_clusters

    bulk = rng.standard_normal((1000, 12))
    scattered = rng.standard_normal((40, 12)) * 6.0
    group = rng.standard_normal((40, 12)) * 0.3 + 6.0
    features = np.concatenate([bulk, scattered, group])
    scores = detect_clusters.dense_far_scores(features, detect_activations.whitening_draws(len(features), rng))
    assert scores[1040:].min() > scores[1000:1040].max()
    flagged, info = detect_activations.far_group(scores, 0)
    assert flagged[1040:].all() and flagged[:1040].sum() == 0, info


def test_last_feature_map_is_the_pooled_conv_output_of_the_seed_cnn():
    from secure_ai_mnist import detect_clusters

    layer = detect_clusters.last_feature_map(model.build_baseline_cnn())
    assert type(layer).__name__ == "MaxPooling2D" and tuple(layer.output.shape[1:]) == (12, 12, 64)


def test_combined_is_the_union_and_keeps_the_reversal_check(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(1), 400)
    rows, info = detection.run_detectors(tiny_model, x, y, config.Config(reversal_steps=20), references=False)
    index = {name: i for i, name in enumerate(detection.DETECTORS)}
    union = np.logical_or.reduce([rows[index[name]] for name in detection.IN_COMBINED])
    assert set(detection.IN_COMBINED) == set(detection.OURS) - {"feature_clusters"}
    np.testing.assert_array_equal(rows[index["combined"]], union)
    assert not rows[index["activation_clustering"]].any() and "activation_clustering" not in info
    assert info["combined"]["trigger_check"] == info["trigger_reversal"]["trigger_check"]
    assert "trigger_check" not in info["activation_outliers"]


def test_label_consistency_flags_a_class_filled_with_mislabelled_images_only():
    """Synthetic bars: 150 images of other classes warped slightly and labelled 2 (a WaNet-like
    share of class 2) are flagged; the same data without them flags nothing."""
    from secure_ai_mnist import detect_knn

    x, y = synthetic_digits(np.random.default_rng(3), 1500)
    silent = detect_knn.detect_label_consistency(None, x, y, config.Config())
    assert silent.flags.sum() == 0 and silent.report["suspicious_classes"] == [] and silent.check is None
    poisons = np.sort(np.random.default_rng(4).choice(np.flatnonzero(y != 2), 150, replace=False))
    y_p = y.copy()
    y_p[poisons] = 2
    found = detect_knn.detect_label_consistency(None, x, y_p, config.Config())
    m = detection.detection_metrics(found.flags, np.isin(np.arange(len(y)), poisons))
    assert found.report["suspicious_classes"] == [2] and m["precision"] >= 0.95 and m["recall"] >= 0.95, m


def test_label_consistency_searches_neighbours_again_only_when_it_flagged_something(monkeypatch):
    """With no class suspicious a recheck would repeat the first search (the unpoisoned control,
    the default run's patch trigger): one search, nothing flagged. A class filled with
    mislabelled images is still rechecked."""
    from secure_ai_mnist import detect_knn

    searches = []
    real_nearest = detect_knn.nearest
    monkeypatch.setattr(detect_knn, "nearest", lambda features: searches.append(len(features)) or real_nearest(features))
    x, y = synthetic_digits(np.random.default_rng(3), 1500)
    silent = detect_knn.detect_label_consistency(None, x, y, config.Config())
    assert searches == [1500] and silent.flags.sum() == 0 and silent.report["recheck_rounds"] == 0
    y_p = y.copy()
    y_p[np.random.default_rng(4).choice(np.flatnonzero(y != 2), 150, replace=False)] = 2
    searches.clear()
    found = detect_knn.detect_label_consistency(None, x, y_p, config.Config())
    assert found.report["suspicious_classes"] == [2] and searches[0] == 1500 and searches[1] < 1500  # without the flagged


def test_label_consistency_recheck_finds_poisons_hidden_behind_other_poisons():
    """80 points labelled 1 packed inside class 0's blob: many agree with each other at first;
    set aside the flagged ones and more of them disagree. No clean point is ever flagged."""
    from secure_ai_mnist import detect_knn

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (400, 5)), rng.normal(6, 1, (400, 5)), rng.normal(0, 0.6, (80, 5))])
    y = np.array([0] * 400 + [1] * 480)
    first = detect_knn.disagreement(y, detect_knn.nearest(features)) & (y == 1)
    flags, rounds = detect_knn.recheck_without_flagged(features, y, first, [1])
    assert rounds >= 1 and flags[800:].sum() >= first[800:].sum() + 10 and not flags[:800].any()
    assert (flags | first).sum() == flags.sum()  # a recheck only adds
    assert not detect_knn.recheck_without_flagged(features, y, first, [0])[0][800:].sum() > first[800:].sum()


def styled_digits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bars as in synthetic_digits, but of random start and length and with a vertical stroke at a
    random column: images of one class differ by more than a faint shared pattern does."""
    y = rng.integers(0, 10, size=n)
    x = rng.uniform(0.0, 0.2, size=(n, 28, 28, 1)).astype(np.float32)
    for i, label in enumerate(y):
        start, length, column = rng.integers(0, 10), rng.integers(8, 18), rng.integers(0, 27)
        x[i, 2 + 2 * label : 4 + 2 * label, start : start + length, 0] = 0.9
        x[i, 4:24, column : column + 2, 0] = 0.9
    return x, y.astype(np.int64)


def test_shared_residuals_flag_mislabelled_images_that_share_a_trigger_and_nothing_else():
    """60 images of other classes blended with one noise image and labelled 3 are flagged; 60
    plain label flips (no shared pattern) into class 5 and the clean twin are not."""
    from secure_ai_mnist import detect_residuals
    from secure_ai_mnist.triggers import TriggerSpec, stamp

    x, y = styled_digits(np.random.default_rng(3), 3000)
    silent = detect_residuals.detect_shared_residuals(None, x, y, config.Config())
    assert silent.flags.sum() == 0 and silent.report["suspicious_classes"] == [] and silent.check is None
    picks = np.random.default_rng(4).choice(np.flatnonzero((y != 3) & (y != 5)), 120, replace=False)
    poisons, flips = np.sort(picks[:60]), picks[60:]
    x_p, y_p = x.copy(), y.copy()
    x_p[poisons] = stamp(x[poisons], TriggerSpec(family="blended", alpha=0.2, seed=1))
    y_p[poisons], y_p[flips] = 3, 5
    found = detect_residuals.detect_shared_residuals(None, x_p, y_p, config.Config())
    m = detection.detection_metrics(found.flags, np.isin(np.arange(len(y)), poisons))
    assert found.report["suspicious_classes"] == [3] and m["precision"] >= 0.95 and m["recall"] >= 0.9, found.report


def test_shared_scores_rank_aligned_residuals_above_independent_ones(rng):
    from secure_ai_mnist import detect_residuals

    direction = rng.standard_normal(50)
    independent = rng.standard_normal((100, 50))
    aligned = rng.standard_normal((20, 50)) + 3 * direction
    rows = np.concatenate([independent, aligned])
    scores = detect_residuals.shared_scores(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    assert scores.shape == (120,) and scores[100:].min() > scores[:100].max()
    assert np.all((scores >= -1) & (scores <= 1))


def test_predict_check_trigger_refuses_a_run_that_recovered_no_trigger(tmp_path):
    import json

    from secure_ai_mnist import common, inference

    (tmp_path / summary_schema.SUMMARY_FILENAME).write_text(json.dumps({"backdoor": {"runtime_check": {
        "trigger_recovered": False, "file": None, "method": "none: combined recovered no trigger"}}}))
    with pytest.raises(common.UserError, match="recovered no trigger"):
        inference.load_trigger_check(tmp_path)


def test_shared_residuals_pixel_test_flags_a_two_pixel_square_and_nothing_else():
    """40 images of other classes with a 2x2 white corner and labelled 3 are flagged by the pixel
    test at exactly the 4 trigger pixels; 40 plain label flips into class 5 and the clean twin are not."""
    from secure_ai_mnist import detect_residuals
    from secure_ai_mnist.triggers import TriggerSpec, stamp

    x, y = styled_digits(np.random.default_rng(5), 3000)
    silent = detect_residuals.detect_shared_residuals(None, x, y, config.Config())
    assert silent.flags.sum() == 0 and silent.report["flagged_by_pixels"] == 0
    picks = np.random.default_rng(6).choice(np.flatnonzero((y != 3) & (y != 5)), 80, replace=False)
    poisons, flips = np.sort(picks[:40]), picks[40:]
    x_p, y_p = x.copy(), y.copy()
    x_p[poisons] = stamp(x[poisons], TriggerSpec(size=2, corner="top-left"))
    y_p[poisons], y_p[flips] = 3, 5
    found = detect_residuals.detect_shared_residuals(None, x_p, y_p, config.Config())
    m = detection.detection_metrics(found.flags, np.isin(np.arange(len(y)), poisons))
    assert found.report["suspicious_classes"] == [3] and m["precision"] == 1.0 and m["recall"] >= 0.9, found.report
    pixels = found.report["per_class"]["3"]["pixels"]
    assert sorted(map(tuple, pixels["hot_pixels"])) == [(1, 1), (1, 2), (2, 1), (2, 2)] and pixels["flagged"] >= 36


def test_hot_pixels_need_a_share_above_every_other_class_and_a_group():
    from secure_ai_mnist import residual_pixels

    shares = np.zeros(784)
    shares[[10, 11]] = 0.3  # 0.3 of 100 candidates = 30 >= MIN_GROUP, 3x the yardstick
    shares[12] = 0.15  # only 1.5x the yardstick
    assert residual_pixels.hot_pixels(shares, 100, 0.1).tolist() == [10, 11]
    assert residual_pixels.hot_pixels(shares, 20, 0.1).size == 0  # 6 candidates: too few to be a group
