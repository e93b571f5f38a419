"""The blind poison detector: it cannot receive the answer key, it finds planted poisons in a
small synthetic set, it flags nothing where nothing was planted, and removal reads no truth."""

import inspect

import numpy as np
import pytest
from conftest import synthetic_digits

import secure_ai_mnist_main as main
from secure_ai_mnist import config, defenses, detection, model

ANSWER_KEY_WORDS = ("poison", "idx", "indices", "target", "trigger", "count", "truth")


@pytest.mark.parametrize("function", [detection.detect_backdoor, detection.run_detectors, detection.reverse_triggers,
                                      detection.separated_group, defenses.art_detectors])
def test_detectors_cannot_receive_the_answer_key(function):
    params = inspect.signature(function).parameters
    assert not [p for p in params if any(word in p.lower() for word in ANSWER_KEY_WORDS)], params


def test_detection_and_removal_stages_never_read_the_answer_key():
    stages = {s.name: s for s in main.pipeline(config.Config(poison_sweep="0,10"))}
    for name in ("poison_detection", "detection_control", "poison_cleaned"):
        assert "poison" not in stages[name].reads, name
        assert not set(stages[name].config) & {"poison_count", "target_class", "trigger_size", "trigger_margin"}
    # the scoring stage is the one that reads the truth, and it trains nothing
    assert "poison" in stages["detection_scores"].reads and stages["detection_scores"].cache is None
    assert stages["train_view"].run(config.Config(), {"poison": {"x": 1, "y": 2, "idx": 3}}) == {"x": 1, "y": 2}


def test_removal_uses_the_configured_detector_not_the_best_scoring_one():
    rows = np.array([[True, False, False], [False, True, False], [False, False, True]])
    detections = (rows, {})
    for name, row in zip(detection.DETECTORS, rows):
        assert main.selected_flags(config.Config(detector=name), detections).tolist() == row.tolist()


def test_anomaly_index_marks_the_one_small_mask():
    norms = np.array([60.0, 70, 65, 62, 68, 9, 66, 64, 71, 63])
    index = detection.anomaly_index(norms)
    assert np.argmax(index) == 5 and index[5] > 2 and (np.delete(index, 5) < 2).all()


def test_separated_group_cuts_a_spike_and_leaves_unimodal_scores_alone(rng):
    clean = np.clip(rng.normal(0.05, 0.03, 2000), 0, 1)
    spiked = np.concatenate([clean, np.full(40, 0.8) + rng.normal(0, 0.005, 40)])
    flagged, info = detection.separated_group(spiked, 0)
    assert flagged[2000:].all() and not flagged[:2000].any()
    assert clean.max() < info["threshold"] < 0.79
    for scores in (clean, rng.uniform(0, 1, 2000), np.concatenate([clean, clean + 0.5])):  # no minority spike
        assert not detection.separated_group(scores, 0)[0].any()


def test_trigger_check_scores_flags_and_round_trips():
    x = np.zeros((4, 28, 28, 1), np.float32)
    x[1, 24:27, 24:27] = 1.0
    mask = np.zeros((28, 28, 1), np.float32)
    mask[24:27, 24:27] = 1.0
    pattern = np.ones_like(mask)
    scores = detection.trigger_scores(x, mask, pattern)
    assert scores.tolist() == [0.0, 1.0, 0.0, 0.0]
    check = detection.TriggerCheck(np.array([7]), mask[None], pattern[None], np.array([0.5]))
    assert check.flags(x).tolist() == [False, True, False, False]
    again = detection.TriggerCheck.from_arrays(check.to_info())
    assert again.flags(x).tolist() == check.flags(x).tolist()
    empty = detection.TriggerCheck.from_arrays({"classes": [], "masks": [], "patterns": [], "thresholds": []})
    assert not empty.flags(x).any()
    with pytest.raises(ValueError):
        detection.TriggerCheck.from_arrays({**check.arrays(), "masks": mask[None] * 2})


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
    flagged, check, report = detection.detect_backdoor(trained, x, y, steps=200, seed=0)
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
    flagged, check, report = detection.detect_backdoor(tiny_model, x, y, steps=200, seed=0)
    assert flagged.sum() == 0 and report["suspicious_classes"] == [] and len(check.classes) == 0

