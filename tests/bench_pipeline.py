#!/usr/bin/env python3
"""Speed benchmark (run by hand, never collected by pytest): ours against plain Keras + ART.

    python tests/bench_pipeline.py                 # stages only, a few minutes on 2 cores
    python tests/bench_pipeline.py --pipeline      # also times --quick and a full default run, cold and cached
    python tests/bench_pipeline.py --pipeline --precision bf16 --out F.json   # the same with bf16 trainings

Prints one table: stage, our time, the naive Keras+ART time for the same work, the speed-up,
and the achieved GFLOP/s against this machine's measured TensorFlow float32 matmul peak.
Every time is the best of --repeats runs (this machine's timings vary by tens of percent).
Attack results are compared with ART's on the same model and inputs.

Writes secure_ai_outputs/bench_pipeline.json (--out): the host and its CPU flags, the matmul peak,
the table, and with --pipeline each run's wall time, the cold full run's time per stage, its
trainings' throughput (images/s, GFLOP/s, share of the peak) and its training floor (the run's
training FLOPs at the peak) with the ratio wall / floor. The README's run times come from this
file; tests/test_readme_times.py fails when they drift apart by more than 25%.
"""

from __future__ import annotations

import argparse
import json
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
# CPU features that decide TensorFlow's kernels (oneDNN picks AVX-512 or AMX code paths at start).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict[str, object]:
    """The CPU's model name and which of KERNEL_FLAGS it has (Linux /proc/cpuinfo; empty elsewhere)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    model_name = fields.get("model name", "unknown")
    return {"model_name": model_name, "cores": os.cpu_count(), **{flag: flag in flags for flag in KERNEL_FLAGS}}


def training_record(summary: dict, peak: float) -> dict[str, object]:
    """Throughput of each training of a run (from its metrics JSON) and the run's training floor:
    its training FLOPs (forward and both gradients, every image of every epoch) at ``peak``."""
    epochs, trainings, total_flop = summary["config"]["epochs"], {}, 0.0
    for name, record in summary["models"].items():
        n, seconds = record["training"]["n_train"], record["training"]["train_time_s"]
        flop = TRAIN_FLOP * n * epochs
        total_flop += flop
        trainings[name] = {"images": n, "epochs": epochs, "seconds": seconds,
                           "images_per_s": round(n * epochs / seconds, 1),
                           "gflops": round(flop / seconds / 1e9, 1), "share_of_peak": round(flop / seconds / 1e9 / peak, 3)}
    return {"trainings": trainings, "training_tflop": round(total_flop / 1e12, 2),
            "training_floor_s": round(total_flop / (peak * 1e9), 1)}


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-n", type=int, default=15000, help="training images per timed epoch")
    parser.add_argument("--attack-n", type=int, default=10000, help="images for the FGSM comparison")
    parser.add_argument("--pgd-n", type=int, default=300, help="images for the PGD-40 comparison")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--pipeline", action="store_true", help="also time --quick and full default runs")
    from secure_ai_mnist.model import PRECISION_POLICIES  # light: TensorFlow is imported lazily

    parser.add_argument("--precision", choices=tuple(PRECISION_POLICIES), default="fp32",
                        help="the trainings' --precision, in the timed epoch and in every pipeline run")
    parser.add_argument("--out", type=Path, default=ROOT / "secure_ai_outputs" / "bench_pipeline.json")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    from secure_ai_mnist.provenance import git_state

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state = git_state()  # what runs
    code = {"commit": state["commit"], "tree_clean": state["dirty"] is False}

    from secure_ai_mnist import config, data, model
    from secure_ai_mnist.common import atomic_write_bytes

    model.configure_tensorflow(0)
    model.seed_everything(0)
    mnist = data.load_mnist(config.Config())
    rows = []
    peak = matmul_peak_gflops(args.repeats)
    print(f"matmul peak: {peak:.1f} GFLOP/s", flush=True)

    def row(stage: str, ours: float, naive: float | None, flop: float | None, note: str = "") -> None:
        gflops = flop / ours / 1e9 if flop else None
        rows.append((stage, ours, naive, gflops, note))
        print(f"{stage}: ours {ours:.2f}s naive {naive if naive is None else round(naive, 2)}s {note}", flush=True)

    x_test, y_test = data.to_model_input(mnist.x_test), mnist.y_test
    ours_model = bench_training(args, mnist, x_test, y_test, row)
    bench_attacks(args, ours_model, x_test, y_test, row)
    runs = time_pipeline(peak, ["--precision", args.precision] if args.precision != "fp32" else []) \
        if args.pipeline else {}
    for label, run in runs.items():
        row(label, run["wall_s"], None, None)
    print_table(rows, peak)
    record = {"command": " ".join(["python tests/bench_pipeline.py", *sys.argv[1:]]), "started_utc": started,
              **code,
              "cpu": cpu_flags(), "matmul_peak_gflops": round(peak, 1),
              "stages": [{"stage": s, "ours_s": round(o, 3), "naive_s": n and round(n, 3),
                          "gflops": g and round(g, 1), "note": note} for s, o, n, g, note in rows],
              "runs": runs}
    atomic_write_bytes(args.out, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


def bench_training(args: argparse.Namespace, mnist, x_test: np.ndarray, y_test: np.ndarray,
                   row: Callable[..., None]):
    """One training epoch on args.train_n images, ours against plain Keras (after a warm-up epoch
    that absorbs tracing), and clean evaluation of the test set; returns our model in float32."""
    import keras

    from secure_ai_mnist import data, model

    x = data.to_model_input(mnist.x_train[: args.train_n])
    y_onehot = keras.utils.to_categorical(mnist.y_train[: args.train_n], 10)
    ours_model = model.build_baseline_cnn(precision=args.precision)
    ours_model.fit(x[:2048], y_onehot[:2048], batch_size=128, epochs=1, verbose=0)
    t_ours = best_of(args.repeats, lambda: ours_model.fit(x, y_onehot, batch_size=128, epochs=1, verbose=0))
    plain = naive_cnn()
    plain.fit(x[:2048], y_onehot[:2048], batch_size=128, epochs=1, verbose=0)
    t_naive = best_of(args.repeats, lambda: plain.fit(x, y_onehot, batch_size=128, epochs=1, verbose=0))
    row(f"train 1 epoch ({args.train_n} images)" + (", bf16" if args.precision == "bf16" else ""), t_ours, t_naive,
        TRAIN_FLOP * args.train_n, "naive: fp32" if args.precision == "bf16" else "")
    ours_model = model.float32_model(ours_model)  # the attacks run in fp32, as in the pipeline
    t_ours = best_of(args.repeats, lambda: model.predict_probabilities(ours_model, x_test, 64))
    t_naive = best_of(args.repeats, lambda: plain.evaluate(x_test, keras.utils.to_categorical(y_test, 10), verbose=0))
    row("evaluate 10,000 test images", t_ours, t_naive, FORWARD_FLOP * len(x_test))
    return ours_model


def bench_attacks(args: argparse.Namespace, ours_model, x_test: np.ndarray, y_test: np.ndarray,
                  row: Callable[..., None]) -> None:
    """FGSM (eps 0.3, true labels) and PGD-40 without random start (deterministic, so the results
    must match ART's), compiled against ART on the same trained model."""
    from secure_ai_mnist import attacks, config, model

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


def print_table(rows: list[tuple], peak: float) -> None:
    print(f"\nmachine: {os.cpu_count()} cores; TensorFlow float32 matmul peak {peak:.1f} GFLOP/s\n")
    print("| stage | ours (s) | naive Keras+ART (s) | speed-up | ours GFLOP/s | % of matmul peak | note |")
    print("|---|---|---|---|---|---|---|")
    for stage, ours, naive, gflops, note in rows:
        naive_s = "-" if naive is None else f"{naive:.2f}"
        ratio = "-" if naive is None else f"{naive / ours:.1f}x"
        g = "-" if gflops is None else f"{gflops:.1f}"
        pct = "-" if gflops is None else f"{100 * gflops / peak:.0f}%"
        print(f"| {stage} | {ours:.2f} | {naive_s} | {ratio} | {g} | {pct} | {note} |")


def time_pipeline(peak: float, flags: list[str]) -> dict[str, dict[str, object]]:
    """Wall time of a cold --quick run, a cold full default run (with its stages and its trainings
    against the training floor) and a cached rerun of it, each a fresh interpreter with its own
    empty stage cache (MNIST read from the default cache), every run with ``flags`` added."""
    from secure_ai_mnist import config
    from secure_ai_mnist.summary_schema import SUMMARY_FILENAME

    runs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra, out, cache in (("quick", ["--quick", *flags], "quick", "quick"),
                                         ("full_cold", flags, "full", "full"), ("full_cached", flags, "full_again", "full")):
            cmd = [sys.executable, str(ROOT / "secure_ai_mnist_main.py"), "--output-dir", f"{tmp}/{out}",
                   "--data-dir", str(config.default_cache_dir()), "--cache-dir", f"{tmp}/cache_{cache}", *extra]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)  # nosec B603 - our script, fixed args
            wall = time.perf_counter() - start
            summary = json.loads((Path(tmp) / out / SUMMARY_FILENAME).read_text())
            runs[label] = {"command": "python secure_ai_mnist_main.py " + " ".join(extra), "wall_s": round(wall, 1),
                           "stages_s": summary["timings_s"], "results_table": summary["results_table"]}
            if label != "full_cached":
                floor = training_record(summary, peak)
                runs[label].update(floor, wall_over_floor=round(wall / floor["training_floor_s"], 2))
            print(f"{label}: {wall:.1f} s", flush=True)
    return runs


if __name__ == "__main__":
    sys.exit(main())
