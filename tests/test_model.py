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


def test_bf16_trains_in_bfloat16_and_returns_the_same_weights_in_float32():
    """--precision bf16: training computes in bfloat16 (other weights than fp32's), and the
    returned model is the fp32 CNN holding exactly the trained weights."""
    model.configure_tensorflow(threads=0)
    x, y = synthetic_digits(np.random.default_rng(6), 200)
    cfg = config.Config(epochs=1, batch_size=32, seed=5, precision="bf16")
    mixed = model.build_baseline_cnn(cfg.learning_rate, "bf16")
    assert mixed.get_layer("penultimate").compute_dtype == "bfloat16"
    assert mixed.get_layer("probabilities").compute_dtype == "float32"
    fp32 = model.float32_model(mixed)
    assert {layer.dtype_policy.name for layer in fp32.layers} == {"float32"}
    for a, b in zip(fp32.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Same weights, bf16 compute: predictions agree to bfloat16's 8-bit mantissa, not bitwise.
    np.testing.assert_allclose(fp32.predict(x[:32], verbose=0), mixed.predict(x[:32], verbose=0), atol=0.03)
    assert model.float32_model(fp32) is fp32

    trained, record = model.train_cnn(x, y, cfg, "bf16")
    reference, _ = model.train_cnn(x, y, config.Config(epochs=1, batch_size=32, seed=5), "bf16")
    assert record["precision"] == "bf16" and {layer.dtype_policy.name for layer in trained.layers} == {"float32"}
    assert any(not np.array_equal(a, b) for a, b in zip(trained.get_weights(), reference.get_weights(), strict=True))
    again, _ = model.train_cnn(x, y, cfg, "bf16")
    for a, b in zip(trained.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic on one machine


def test_bf16_warns_only_where_the_cpu_lacks_native_bfloat16(tmp_path):
    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 fma\n")
    plain.write_text("flags\t\t: fpu avx2 avx512f fma\n")
    assert model.warn_if_bf16_is_emulated("bf16", plain)
    assert not model.warn_if_bf16_is_emulated("bf16", native)
    assert not model.warn_if_bf16_is_emulated("fp32", plain)
    assert not model.warn_if_bf16_is_emulated("bf16", tmp_path / "missing")
