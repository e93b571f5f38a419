from __future__ import annotations

import numpy as np
import pytest

from secure_ai_mnist import backdoor, common, config


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
