#!/usr/bin/env python3
"""Speed benchmark (run by hand, never collected by pytest): ours against plain Keras + ART.

    python tests/bench_pipeline.py                 # stages only, a few minutes on 2 cores
    python tests/bench_pipeline.py --pipeline      # also times --quick and a full default run, cold and cached

Prints one table: stage, our time, the naive Keras+ART time for the same work, the speed-up,
and the achieved GFLOP/s against this machine's measured TensorFlow float32 matmul peak.
Every time is the best of --repeats runs (this machine's timings vary by tens of percent).
Attack results are compared with ART's on the same model and inputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404 - times the project's own script
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Forward pass of the seed CNN: 11.99 M multiply-adds per image (conv2 dominates).
FORWARD_MACS = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 288 + 9216 * 128 + 128 * 10
FORWARD_FLOP = 2 * FORWARD_MACS
TRAIN_FLOP = 3 * FORWARD_FLOP  # forward + input and weight gradients
ATTACK_STEP_FLOP = 2 * FORWARD_FLOP  # forward + input gradient only


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_gflops(repeats: int) -> float:
    import tensorflow as tf

    a = tf.random.normal((2048, 2048))
    b = tf.random.normal((2048, 2048))

    @tf.function
    def run():
        acc = tf.zeros((2048, 2048))
        for _ in tf.range(10):
            acc += tf.matmul(a, b)
        return acc

    run().numpy()
    seconds = best_of(repeats, lambda: run().numpy())
    return 10 * 2 * 2048**3 / seconds / 1e9


def naive_cnn():
    """The seed's Keras model as a plain script writes it: Sequential, softmax output, default compile."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(), layers.Dense(128, activation="relu"),
        layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-n", type=int, default=15000, help="training images per timed epoch")
    parser.add_argument("--attack-n", type=int, default=10000, help="images for the FGSM comparison")
    parser.add_argument("--pgd-n", type=int, default=300, help="images for the PGD-40 comparison")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--pipeline", action="store_true", help="also time --quick and full default runs")
    args = parser.parse_args()

    import keras

    from secure_ai_mnist import attacks, config, data, model

    model.configure_tensorflow(0)
    model.seed_everything(0)
    mnist = data.load_mnist(config.Config())
    x = data.to_model_input(mnist.x_train[: args.train_n])
    y = mnist.y_train[: args.train_n]
    y_onehot = keras.utils.to_categorical(y, 10)
    x_test, y_test = data.to_model_input(mnist.x_test), mnist.y_test
    rows = []
    peak = matmul_peak_gflops(args.repeats)
    print(f"matmul peak: {peak:.1f} GFLOP/s", flush=True)

    def row(stage: str, ours: float, naive: float | None, flop: float | None, note: str = "") -> None:
        gflops = flop / ours / 1e9 if flop else None
        rows.append((stage, ours, naive, gflops, note))
        print(f"{stage}: ours {ours:.2f}s naive {naive if naive is None else round(naive, 2)}s {note}", flush=True)

    # Training: one epoch on train_n images, after a warm-up epoch that absorbs tracing.
    ours_model = model.build_baseline_cnn()
    ours_model.fit(x[:2048], y_onehot[:2048], batch_size=128, epochs=1, verbose=0)
    t_ours = best_of(args.repeats, lambda: ours_model.fit(x, y_onehot, batch_size=128, epochs=1, verbose=0))
    plain = naive_cnn()
    plain.fit(x[:2048], y_onehot[:2048], batch_size=128, epochs=1, verbose=0)
    t_naive = best_of(args.repeats, lambda: plain.fit(x, y_onehot, batch_size=128, epochs=1, verbose=0))
    row(f"train 1 epoch ({args.train_n} images)", t_ours, t_naive, TRAIN_FLOP * args.train_n)

    # Clean evaluation of the 10k test set.
    t_ours = best_of(args.repeats, lambda: model.predict_probabilities(ours_model, x_test, 64))
    t_naive = best_of(args.repeats, lambda: plain.evaluate(x_test, keras.utils.to_categorical(y_test, 10), verbose=0))
    row("evaluate 10,000 test images", t_ours, t_naive, FORWARD_FLOP * len(x_test))

    # FGSM, eps 0.3, true labels: compiled vs ART on the same trained model.
    xa, ya = x_test[: args.attack_n], y_test[: args.attack_n]
    cfg_ours = config.Config(attack_backend="compiled")
    cfg_art = config.Config(attack_backend="art", attack_batch_size=32)  # ART's default batch size
    attacks.generate_fgsm(ours_model, xa[:256], ya[:256], cfg_ours, "warm-up")
    t_ours = best_of(args.repeats, lambda: attacks.generate_fgsm(ours_model, xa, ya, cfg_ours, "bench"))
    t_art = best_of(args.repeats, lambda: attacks.generate_fgsm(ours_model, xa, ya, cfg_art, "bench"))
    x_o, _ = attacks.generate_fgsm(ours_model, xa, ya, cfg_ours, "bench")
    x_a, _ = attacks.generate_fgsm(ours_model, xa, ya, cfg_art, "bench")
    equal = float(np.mean(np.isclose(x_o, x_a, atol=1e-6)))
    row(f"FGSM ({args.attack_n} images)", t_ours, t_art, ATTACK_STEP_FLOP * args.attack_n,
        f"pixels equal to ART: {100 * equal:.3f}%")

    # PGD-40 without random start (deterministic, so results must match ART's).
    xp, yp = x_test[: args.pgd_n], y_test[: args.pgd_n]
    fn = attacks.make_linf_attack(ours_model)
    attacks.linf_attack(fn, xp[:64], yp[:64], 0.3, 0.01, 2, batch_size=64)
    t_ours = best_of(args.repeats, lambda: attacks.linf_attack(fn, xp, yp, 0.3, 0.01, 40, batch_size=64))
    art = attacks.build_art_pgd(ours_model, 0.3, 0.01, 40, 0, 32)  # ART's default batch size
    t_art = best_of(1, lambda: art.generate(x=xp, y=np.eye(10, dtype=np.float32)[yp]))
    x_o, fooled = attacks.linf_attack(fn, xp, yp, 0.3, 0.01, 40, batch_size=64)
    x_a = art.generate(x=xp, y=np.eye(10, dtype=np.float32)[yp])
    acc_art = float(np.mean(model.predict_probabilities(ours_model, x_a, 64)[0].argmax(1) == yp))
    row(f"PGD-40 ({args.pgd_n} images)", t_ours, t_art, 40 * ATTACK_STEP_FLOP * args.pgd_n,
        f"robust acc ours {1 - fooled.mean():.4f} / ART {acc_art:.4f}; "
        f"pixels equal {100 * np.mean(np.isclose(x_o, x_a, atol=1e-5)):.2f}%")

    if args.pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            for label, extra in (("quick mode, end to end", ["--quick", "--no-cache"]),
                                 ("full default run, cold cache", []),
                                 ("full default run, cached rerun", [])):
                cmd = [sys.executable, str(ROOT / "secure_ai_mnist_main.py"), "--output-dir", f"{tmp}/out",
                       "--data-dir", str(config.default_cache_dir()), "--cache-dir", f"{tmp}/cache", *extra]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)  # nosec B603 - our script, fixed args
                row(label, time.perf_counter() - start, None, None)

    print(f"\nmachine: {os.cpu_count()} cores; TensorFlow float32 matmul peak {peak:.1f} GFLOP/s\n")
    print("| stage | ours (s) | naive Keras+ART (s) | speed-up | ours GFLOP/s | % of matmul peak | note |")
    print("|---|---|---|---|---|---|---|")
    for stage, ours, naive, gflops, note in rows:
        naive_s = "-" if naive is None else f"{naive:.2f}"
        ratio = "-" if naive is None else f"{naive / ours:.1f}x"
        g = "-" if gflops is None else f"{gflops:.1f}"
        pct = "-" if gflops is None else f"{100 * gflops / peak:.0f}%"
        print(f"| {stage} | {ours:.2f} | {naive_s} | {ratio} | {g} | {pct} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
