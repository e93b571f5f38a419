from __future__ import annotations

import numpy as np
import pytest

from secure_ai_mnist import backdoor, common, config
from secure_ai_mnist.triggers import TriggerSpec, stamp


@pytest.mark.parametrize("size,margin", [(3, 1), (4, 0), (1, 5)])
def test_trigger_touches_only_its_patch(rng, size, margin):
    x = rng.uniform(0, 0.5, size=(4, 28, 28, 1)).astype(np.float32)
    triggered = backdoor.make_corner_trigger(x, size, margin)
    changed = np.any(triggered != x, axis=(0, 3))
    expected = np.zeros((28, 28), dtype=bool)
    expected[28 - margin - size : 28 - margin, 28 - margin - size : 28 - margin] = True
    np.testing.assert_array_equal(changed, expected)
    assert np.all(triggered[:, expected, :] == 1.0)
    assert not np.shares_memory(triggered, x)


def test_trigger_on_uint8_is_255():
    x = np.zeros((1, 28, 28), dtype=np.uint8)
    assert backdoor.make_corner_trigger(x, 3, 1).max() == 255


def test_poison_count_labels_and_no_replacement(rng):
    y = rng.integers(0, 10, size=2000)
    x = rng.uniform(0, 0.5, size=(2000, 28, 28, 1)).astype(np.float32)
    cfg = config.Config(poison_count=150, target_class=7)
    idx = backdoor.select_poison_indices(y, cfg.poison_count, cfg.target_class, rng)
    assert len(idx) == 150 == len(np.unique(idx))
    assert np.all(y[idx] != 7), "poison must come from non-target classes"
    x_p, y_p = backdoor.poison_dataset(x, y, idx, cfg)
    assert np.all(y_p[idx] == 7)
    untouched = np.setdiff1d(np.arange(len(y)), idx)
    np.testing.assert_array_equal(y_p[untouched], y[untouched])
    np.testing.assert_array_equal(x_p[untouched], x[untouched])
    assert np.sum(np.any(x_p != x, axis=(1, 2, 3))) == 150
    assert np.all(x[idx, 24:27, 24:27] < 1.0), "inputs must not be modified in place"


def test_poison_count_larger_than_candidates_is_config_error(rng):
    y = np.array([7] * 10 + [1] * 5)
    with pytest.raises(common.ConfigError):
        backdoor.select_poison_indices(y, 6, 7, rng)


def test_attack_success_rate_ignores_target_class_samples():
    y = np.array([7, 7, 1, 2, 3, 4])
    pred = np.array([7, 7, 7, 7, 3, 1])
    assert backdoor.attack_success_rate(pred, y, 7) == pytest.approx(0.5)


def test_trigger_variants_touch_only_their_pixels(rng):
    x = rng.uniform(0, 0.5, size=(2, 28, 28, 1)).astype(np.float32)
    top_left = np.any(stamp(x, TriggerSpec(corner="top-left")) != x, axis=(0, 3))
    assert np.argwhere(top_left).tolist() == [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)]
    checker = np.any(stamp(x, TriggerSpec(pattern="checkerboard")) != x, axis=(0, 3))
    assert np.argwhere(checker).tolist() == [[24, 24], [24, 26], [25, 25], [26, 24], [26, 26]]
    with pytest.raises(ValueError):
        TriggerSpec(pattern="circle")


def test_trigger_controls_measure_each_variant():
    x = np.zeros((20, 28, 28, 1), np.float32)
    y = np.array([0, 1] * 10)
    cfg = config.Config(target_class=7)

    def only_square_bottom_right(images):  # a model whose backdoor fires on the exact trained trigger only
        fires = images[:, 24:27, 24:27, 0].min(axis=(1, 2)) == 1.0
        return np.where(fires, 7, 0)

    rates = backdoor.trigger_controls(only_square_bottom_right, x, y, cfg)
    assert rates == {"trained_trigger": 1.0, "other_place_top_left": 0.0, "other_shape_checker": 0.0}


def test_poison_sweep_shares_poisons_across_sizes_and_reports_every_point(rng):
    y = rng.integers(0, 10, size=300)
    x = rng.uniform(0, 0.5, size=(300, 28, 28, 1)).astype(np.float32)
    cfg = config.Config(poison_sweep="0,5,20", sweep_trigger_sizes="2,4", target_class=7)
    seen = {}

    def train(x_p, y_p, label):
        seen[label] = np.flatnonzero(np.any(x_p != x, axis=(1, 2, 3)))
        return lambda images: np.full(len(images), 7)  # predicts the target for everything

    def detect(x_p, y_p, label):  # finds three of the poisons (none when none were planted) and one clean sample
        flags = np.zeros(len(y_p), bool)
        flags[np.flatnonzero(np.any(x_p != x, axis=(1, 2, 3)))[:3]] = True
        flags[np.flatnonzero(np.all(x_p == x, axis=(1, 2, 3)))[0]] = True
        return flags

    seed = int(rng.integers(1 << 30))
    rows = backdoor.poison_sweep(x, y, x[:40], y[:40], cfg, np.random.default_rng(seed), train)
    assert [(r["poison_count"], r["trigger_size"]) for r in rows] == [(0, 2), (5, 2), (20, 2), (0, 4), (5, 4), (20, 4)]
    assert all(r["attack_success_rate"] == 1.0 for r in rows)
    assert len(seen["sweep_n20_s2"]) == 20 and len(seen["sweep_n0_s4"]) == 0
    np.testing.assert_array_equal(seen["sweep_n5_s2"], seen["sweep_n5_s4"])
    scored = {(r["poison_count"], r["trigger_size"]): d
              for r, d in zip(rows, backdoor.sweep_detection(x, y, cfg, np.random.default_rng(seed), detect))}
    assert scored[(20, 2)]["true_positives"] == 3 and scored[(20, 2)]["recall"] == 3 / 20
    assert scored[(5, 4)]["precision"] == 0.75 and scored[(0, 2)]["flagged"] == 1 and scored[(0, 2)]["f1"] == 0.0
    assert backdoor.parse_int_list("0, 10,") == (0, 10)


def test_sweep_flags_are_validated():
    with pytest.raises(common.ConfigError):
        config.Config(poison_sweep="10,-5")
    with pytest.raises(common.ConfigError):
        config.Config(sweep_trigger_sizes="")
