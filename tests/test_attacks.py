from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_digits

from secure_ai_mnist import attacks, common, config, evaluation, model


def test_tiny_model_learns_the_synthetic_task(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(2), 200)
    probabilities, _ = model.predict_probabilities(tiny_model, x, 64)
    assert np.mean(probabilities.argmax(1) == y) > 0.9


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fgsm_respects_eps_and_range_and_hurts(tiny_model, eps):
    x, y = synthetic_digits(np.random.default_rng(3), 200)
    cfg = config.Config(fgsm_eps=eps, attack_batch_size=64)
    x_adv, info = attacks.generate_fgsm(tiny_model, x, y, cfg, "test", chunk=128)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert info["n"] == 200 and info["bound_check"]["max_linf"] <= eps + 1e-6
    # FGSM ascends the loss: the mean cross-entropy must rise at any eps.
    clean_loss = evaluation.cross_entropy(model.predict_probabilities(tiny_model, x, 64)[0], y)
    adv_loss = evaluation.cross_entropy(model.predict_probabilities(tiny_model, x_adv, 64)[0], y)
    assert adv_loss > clean_loss
    if eps == 0.3:
        # FGSM moves (almost) every pixel by the full budget unless clipped at 0 or 1.
        full_step = np.isclose(np.abs(x_adv - x), eps, atol=1e-5)
        clipped = (x_adv == 0.0) | (x_adv == 1.0)
        assert np.mean(full_step | clipped) > 0.9


def test_bound_check_flags_violations():
    x = np.full((2, 28, 28, 1), 0.5, np.float32)
    with pytest.raises(common.AttackBoundError, match="exceeds eps"):
        attacks.check_linf_bound(x + 0.31, x, 0.3)
    with pytest.raises(common.AttackBoundError, match=r"\[0, 1\]"):
        attacks.check_linf_bound(np.full_like(x, 1.1), np.full_like(x, 0.9), 0.3)
    assert attacks.check_linf_bound(x + 0.3, x, 0.3)["max_linf"] == pytest.approx(0.3)


def test_cross_entropy_matches_keras(rng):
    import keras

    logits = rng.normal(size=(50, 10)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 10, size=50)
    expected = float(keras.losses.categorical_crossentropy(keras.utils.to_categorical(y, 10), probs).numpy().mean())
    assert evaluation.cross_entropy(probs, y) == pytest.approx(expected, rel=1e-5)


def _accuracy(trained, x, y):
    return float(np.mean(model.predict_probabilities(trained, x, 128)[0].argmax(1) == y))


def test_compiled_fgsm_equals_art(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(4), 256)
    art_cfg = config.Config(fgsm_eps=0.2, attack_backend="art", attack_batch_size=64)
    ours_cfg = config.Config(fgsm_eps=0.2, attack_backend="compiled", attack_batch_size=64)
    x_art, _ = attacks.generate_fgsm(tiny_model, x, y, art_cfg, "art")
    x_ours, info = attacks.generate_fgsm(tiny_model, x, y, ours_cfg, "ours")
    assert info["backend"] == "compiled"
    assert np.mean(np.isclose(x_art, x_ours, atol=1e-6)) > 0.999
    assert _accuracy(tiny_model, x_art, y) == pytest.approx(_accuracy(tiny_model, x_ours, y), abs=1 / 256)


def test_compiled_pgd_equals_art_without_random_start(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(5), 128)
    art = attacks.build_art_pgd(tiny_model, eps=0.15, step=0.03, steps=10, restarts=0, batch_size=64)
    x_art = art.generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    x_ours, fooled = attacks.linf_attack(attacks.make_linf_attack(tiny_model), x, y, 0.15, 0.03, 10, batch_size=64)
    assert np.mean(np.isclose(x_art, x_ours, atol=1e-5)) > 0.995
    assert 1 - fooled.mean() == pytest.approx(_accuracy(tiny_model, x_ours, y))


def test_pgd_bound_strength_and_restarts(tiny_model):
    x, y = synthetic_digits(np.random.default_rng(6), 128)
    fn = attacks.make_linf_attack(tiny_model)
    eps = 0.3
    x_fgsm, fooled_fgsm = attacks.linf_attack(fn, x, y, eps, eps, 1, batch_size=100)
    # One batch, so both runs draw the same noise for their first start.
    x_pgd1, fooled1 = attacks.linf_attack(fn, x, y, eps, 0.02, 20, restarts=1, rng=np.random.default_rng(9),
                                          batch_size=128)
    _, fooled3 = attacks.linf_attack(fn, x, y, eps, 0.02, 20, restarts=3, rng=np.random.default_rng(9),
                                     batch_size=128)
    for x_adv in (x_fgsm, x_pgd1):
        attacks.check_linf_bound(x_adv, x, eps)
    # PGD-20 is at least as strong as FGSM; extra restarts (same first start) never un-fool a sample.
    assert fooled1.mean() >= fooled_fgsm.mean()
    assert np.all(fooled3[fooled1])
    assert fooled3.mean() >= fooled1.mean()
    # `fooled` must agree with what the model actually predicts on the returned images.
    np.testing.assert_array_equal(fooled1, model.predict_probabilities(tiny_model, x_pgd1, 128)[0].argmax(1) != y)
