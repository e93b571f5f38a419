"""The trigger families: value range, determinism, and where each changes the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secure_ai_mnist import backdoor, config, triggers
from secure_ai_mnist.triggers import TriggerSpec


@pytest.fixture()
def images(rng):
    x = np.zeros((6, 28, 28, 1), np.float32)
    x[:, 6:22, 10:18] = rng.uniform(0.3, 1.0, size=(6, 16, 8, 1))  # a stroke-like blob in the middle
    return x


SPECS = {
    "badnets": TriggerSpec(),
    "badnets_random": TriggerSpec(size=4, pattern="random", corner="top-right", seed=3),
    "blended": TriggerSpec(family="blended", seed=5),
    "sig": TriggerSpec(family="sig"),
    "wanet": TriggerSpec(family="wanet", seed=7, strength=2.0),
}


@pytest.mark.parametrize("name", SPECS)
def test_every_family_keeps_range_shape_dtype_and_input(images, name):
    before = images.copy()
    out = triggers.stamp(images, SPECS[name])
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.any(out != images), "a trigger must change the image"
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", SPECS)
def test_every_family_is_deterministic_and_seeded(images, name):
    spec = SPECS[name]
    np.testing.assert_array_equal(triggers.stamp(images, spec), triggers.stamp(images, spec))
    other = triggers.stamp(images, dataclasses.replace(spec, seed=spec.seed + 1))
    random_parts = name in ("blended", "wanet", "badnets_random")
    assert np.any(other != triggers.stamp(images, spec)) == random_parts


@pytest.mark.parametrize("corner,rows,cols", [("bottom-right", (24, 27), (24, 27)), ("bottom-left", (24, 27), (1, 4)),
                                              ("top-left", (1, 4), (1, 4)), ("top-right", (1, 4), (24, 27))])
def test_badnets_touches_only_its_patch_at_each_corner(images, corner, rows, cols):
    changed = triggers.changed_pixels(TriggerSpec(corner=corner), images)
    expected = np.zeros((28, 28), bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = True
    np.testing.assert_array_equal(changed, expected)


def test_badnets_position_and_patterns(images):
    at = triggers.changed_pixels(TriggerSpec(size=2, position=(10, 20)), np.zeros_like(images))
    assert np.argwhere(at).tolist() == [[10, 20], [10, 21], [11, 20], [11, 21]]
    checker = triggers.changed_pixels(TriggerSpec(pattern="checkerboard"), np.zeros_like(images))
    assert checker.sum() == 5
    random = triggers.patch_pixels(TriggerSpec(size=4, pattern="random", seed=3))
    assert 1 <= random.sum() < 16


def test_blended_is_the_stated_mixture(images):
    spec = TriggerSpec(family="blended", alpha=0.2, seed=9)
    expected = 0.8 * images[..., 0] + 0.2 * triggers.blend_image(spec)
    np.testing.assert_allclose(triggers.stamp(images, spec)[..., 0], expected, atol=1e-6)


def test_sig_adds_a_horizontal_sinusoid_of_the_stated_amplitude():
    x = np.full((1, 28, 28, 1), 0.5, np.float32)
    delta = triggers.stamp(x, TriggerSpec(family="sig", amplitude=0.1, frequency=6))[0, ..., 0] - 0.5
    assert np.allclose(delta, delta[0]), "the same on every row"
    assert abs(delta).max() == pytest.approx(0.1, abs=0.01)
    assert np.sum(np.diff(np.sign(delta[0][np.abs(delta[0]) > 1e-3])) != 0) in (11, 12)  # 6 periods


def test_wanet_moves_pixels_smoothly_and_keeps_the_empty_background(images):
    spec = TriggerSpec(family="wanet", seed=2, strength=2.0)
    field = triggers.warp_field(spec)
    assert field.shape == (28, 28, 2)
    assert 0 < np.abs(field).max() < 4, "offsets are a few pixels at most at this strength"
    assert np.abs(np.diff(field, axis=0)).max() < 0.5, "the field is smooth"
    out = triggers.stamp(images, spec)
    assert np.all(out[:, :3, :3] == 0), "a warp moves strokes, it adds no ink to the empty border"
    assert abs(float(out.sum() - images.sum())) / float(images.sum()) < 0.1
    noisy = triggers.cross_images(images, spec, np.random.default_rng(0))
    assert np.any(noisy != out) and noisy.min() >= 0 and noisy.max() <= 1


def test_uint8_images_stay_uint8_in_range():
    x = np.full((2, 28, 28), 200, np.uint8)
    for spec in SPECS.values():
        out = triggers.stamp(x, spec)
        assert out.dtype == np.uint8 and out.shape == x.shape


def test_unknown_family_is_refused():
    with pytest.raises(ValueError):
        TriggerSpec(family="jpeg")


def test_default_config_is_the_seed_trigger(images):
    spec = backdoor.trigger_spec(config.Config())
    np.testing.assert_array_equal(triggers.stamp(images, spec), backdoor.make_corner_trigger(images, 3, 1))


def test_clean_label_sig_poisons_only_the_target_class_and_keeps_labels(rng):
    y = rng.integers(0, 10, size=500)
    x = rng.uniform(0, 0.5, size=(500, 28, 28, 1)).astype(np.float32)
    cfg = config.Config(backdoor="sig", sig_clean_label=True, poison_count=20, target_class=3)
    idx = backdoor.select_poison_indices(y, 20, 3, rng, clean_label=True)
    assert np.all(y[idx] == 3)
    x_p, y_p = backdoor.poison_dataset(x, y, idx, cfg)
    np.testing.assert_array_equal(y_p, y)
    assert np.sum(np.any(x_p != x, axis=(1, 2, 3))) == 20


def test_wanet_noise_mode_adds_cross_images_with_true_labels(rng):
    y = rng.integers(0, 10, size=400)
    x = rng.uniform(0, 0.5, size=(400, 28, 28, 1)).astype(np.float32)
    cfg = config.Config(backdoor="wanet", wanet_noise=True, poison_count=10, wanet_cross_ratio=2.0)
    spec = backdoor.trigger_spec(cfg)
    idx = backdoor.select_poison_indices(y, 10, cfg.target_class, rng)
    cross = backdoor.select_cross_indices(len(y), idx, spec, cfg.wanet_cross_ratio, rng)
    assert len(cross) == 20 and not set(cross) & set(idx)
    x_p, y_p = backdoor.poison_dataset(x, y, idx, cfg, cross, rng)
    np.testing.assert_array_equal(y_p[cross], y[cross])
    assert np.all(np.any(x_p[cross] != x[cross], axis=(1, 2, 3)))
    no_noise = backdoor.trigger_spec(config.Config(backdoor="wanet"))
    assert len(backdoor.select_cross_indices(len(y), idx, no_noise, 2.0, rng)) == 0


@pytest.mark.parametrize("argv,message", [
    (["--backdoor", "blended", "--blend-alpha", "1.5"], "--blend-alpha"),
    (["--trigger-position", "27,27"], "--trigger-position"),
    (["--backdoor", "sig", "--poison-sweep", "0,10"], "--poison-sweep"),
    (["--sig-frequency", "20"], "--sig-frequency"),
])
def test_bad_family_settings_are_config_errors(argv, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse_config(argv)
