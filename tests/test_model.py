"""The seed CNN's training input: our batches must train exactly as Keras's own fit on arrays."""

from __future__ import annotations

import numpy as np
from conftest import synthetic_digits

from secure_ai_mnist import config, model
from secure_ai_mnist.common import NUM_CLASSES


def test_shuffled_batches_train_exactly_as_keras_fit_on_arrays():
    import keras

    model.configure_tensorflow(threads=0)
    x, y = synthetic_digits(np.random.default_rng(3), 300)  # 300 = 9 batches of 32 + a partial one
    cfg = config.Config(epochs=2, batch_size=32, seed=5)
    model.seed_everything(model.stage_seed(cfg.seed, "same"))
    reference = model.build_baseline_cnn(cfg.learning_rate)
    history = reference.fit(x, keras.utils.to_categorical(y, NUM_CLASSES), batch_size=32, epochs=2, shuffle=True,
                            verbose=0)
    ours, record = model.train_cnn(x, y, cfg, "same")
    assert record["accuracy"] == history.history["accuracy"]
    for mine, theirs in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_shuffled_batches_have_autotuning_off_and_a_known_length():
    x, y = synthetic_digits(np.random.default_rng(4), 70)
    batches = model.shuffled_batches(x, np.eye(NUM_CLASSES, dtype=np.float32)[y], 32)
    assert batches.options().autotune.enabled is False
    assert int(batches.cardinality()) == 3
    shapes = [len(xb) for xb, _ in batches]
    assert shapes == [32, 32, 6]
