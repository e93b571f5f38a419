"""The seed CNN: TensorFlow set-up, seeding, building, training, saving and inference."""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from .common import IMAGE_SHAPE, LOG, NUM_CLASSES, atomic_path, import_tensorflow_quietly, sha256_file
from .config import Config

if TYPE_CHECKING:  # TensorFlow is imported lazily so `--help` and flag errors are instant
    import keras

# --precision's Keras dtype policies: bf16 keeps float32 weights and computes in bfloat16.
PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
SMALL_CNN_NAME = "mnist_small_cnn"


def warn_if_bf16_is_emulated(precision: str, cpuinfo: Path = Path("/proc/cpuinfo"),
                             flag: str = "--precision") -> bool:
    """Under ``flag`` (--precision or --robust-precision) bf16, a warning when the CPU lists
    neither avx512_bf16 nor amx_bf16: oneDNN then emulates bfloat16 and bf16 trains slower than
    fp32. Returns whether it warned (never on fp32, nor where the CPU's flags cannot be read)."""
    if precision != "bf16" or not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text(errors="replace").split()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return False
    LOG.warning("%s bf16: this CPU has no native bfloat16 (avx512_bf16 or amx_bf16); "
                "the trainings will run slower than with fp32", flag)
    return True


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and TensorFlow; return the run's root NumPy generator."""
    import keras

    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def configure_tensorflow(threads: int) -> None:
    import_tensorflow_quietly()
    import tensorflow as tf

    # ART logs its own "success rate" per call; our metrics are computed from predictions.
    logging.getLogger("art").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="PyTorch not found")
    # ART calls Keras models with a list of one input tensor; Keras warns about the structure each time.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match the expected structure")
    # Each model gets its own compiled attack, traced once with a fixed signature; TensorFlow's
    # "retracing" heuristic counts those as repeats and warns for nothing.
    tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        # NumPy's BLAS (the detectors' least squares, distances) sums in a thread-count-dependent
        # order too; a Ray worker starts with one BLAS thread, so --threads N pins it everywhere.
        threadpool_limits(limits=threads)


def build_baseline_cnn(learning_rate: float = 1e-3, precision: str = "fp32") -> keras.Model:
    """The seed CNN. Softmax is its own layer so attacks can use the 'logits' layer. ``precision``
    "bf16": the layers compute in bfloat16 with float32 weights (Keras's mixed_bfloat16), the
    softmax and the loss in float32; ``float32_model`` turns it back into the fp32 CNN."""
    import keras
    from keras import layers

    policy = PRECISION_POLICIES[precision]
    inputs = keras.Input(shape=IMAGE_SHAPE, name="image")
    x = layers.Conv2D(32, 3, activation="relu", dtype=policy)(inputs)
    x = layers.Conv2D(64, 3, activation="relu", dtype=policy)(x)
    x = layers.MaxPooling2D(2, dtype=policy)(x)
    x = layers.Dropout(0.25, dtype=policy)(x)
    x = layers.Flatten(dtype=policy)(x)
    x = layers.Dense(128, activation="relu", name="penultimate", dtype=policy)(x)
    x = layers.Dropout(0.5, dtype=policy)(x)
    logits = layers.Dense(NUM_CLASSES, name="logits", dtype=policy)(x)
    probabilities = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    model = keras.Model(inputs, probabilities, name="mnist_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        # Fewer Python round trips per epoch: about 15% faster fits on a 2-core CPU.
        steps_per_execution=16,
    )
    return model


def build_small_cnn(learning_rate: float = 1e-3, precision: str = "fp32", activation: str = "relu") -> keras.Model:
    """TRADES's MNIST SmallCNN (Zhang et al. 2019), an option of the robust defense only: 3x3
    convolutions 32, 32, max-pool, 64, 64, max-pool, dense 200, 200, then the 'logits' and
    'probabilities' layers as in the seed CNN. Not the seed CNN: deeper and narrower, with
    312,202 weights against 1,199,882 and about 0.8 times its FLOPs per training step.
    ``precision`` as in ``build_baseline_cnn``; ``activation`` of its hidden layers: "relu" (TRADES's)
    or "silu" (smooth, x * sigmoid(x): no flat zero region for gradients to vanish in, as in smooth
    adversarial training, Xie et al. 2020); the model's name says which."""
    import keras
    from keras import layers

    policy = PRECISION_POLICIES[precision]
    inputs = keras.Input(shape=IMAGE_SHAPE, name="image")
    x = inputs
    for filters in (32, 32, "pool", 64, 64, "pool"):
        x = layers.MaxPooling2D(2, dtype=policy)(x) if filters == "pool" else \
            layers.Conv2D(filters, 3, activation=activation, dtype=policy)(x)
    x = layers.Dense(200, activation=activation, dtype=policy)(layers.Flatten(dtype=policy)(x))
    x = layers.Dense(200, activation=activation, name="penultimate", dtype=policy)(layers.Dropout(0.5, dtype=policy)(x))
    logits = layers.Dense(NUM_CLASSES, name="logits", dtype=policy)(x)
    probabilities = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    model = keras.Model(inputs, probabilities, name=SMALL_CNN_NAME + ("" if activation == "relu" else f"_{activation}"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def build_network(name: str, learning_rate: float = 1e-3, precision: str = "fp32") -> keras.Model:
    """The network ``name`` ("seed", "smallcnn" or "smallcnn-silu") computing in ``precision``, compiled
    with Adam at ``learning_rate``."""
    if name == "seed":
        return build_baseline_cnn(learning_rate, precision)
    return build_small_cnn(learning_rate, precision, "silu" if name == "smallcnn-silu" else "relu")


def _progress_callback(label: str, epochs: int) -> Any:
    """A Keras callback that logs each quarter epoch and each epoch's loss, accuracy and time."""
    import keras

    class ProgressLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch, self.start, self.next_report = epoch, time.perf_counter(), 0.25

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            steps = self.params.get("steps") or 0
            done = (batch + 1) / steps if steps else 0.0
            if self.next_report <= done < 1.0:
                LOG.info("%s epoch %d/%d: %d%% (loss %.4f)", label, self.epoch + 1, epochs, int(100 * done),
                         (logs or {}).get("loss", float("nan")))
                self.next_report += 0.25

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            LOG.info("%s epoch %d/%d: loss %.4f, accuracy %.4f (%.1f s)", label, epoch + 1, epochs,
                     logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                     time.perf_counter() - self.start)

    return ProgressLogger()


def stage_seed(seed: int, label: str) -> int:
    """A seed for one stage, so a stage's result does not depend on which stages ran before it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:4], "big") >> 1


def train_cnn(x: np.ndarray, y: np.ndarray, cfg: Config, label: str) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh seed CNN on (x, y) with the configured hyperparameters, seeded by stage.

    Returns the float32 model (cfg.precision "bf16" trains in mixed bfloat16, see
    ``build_baseline_cnn``) and {"loss": [...], "accuracy": [...], "train_time_s": t, "n_train": N,
    "precision": cfg.precision}.
    """
    import keras

    seed_everything(stage_seed(cfg.seed, label))
    model = build_baseline_cnn(cfg.learning_rate, cfg.precision)
    batches = shuffled_batches(x, keras.utils.to_categorical(y, NUM_CLASSES), cfg.batch_size)
    record = fit_and_record(model, cfg, label, len(x), x=batches, shuffle=False)  # already shuffled
    return float32_model(model, cfg.learning_rate), {**record, "precision": cfg.precision}


def float32_model(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """``model`` itself when it computes in float32, else the same network (seed CNN or SmallCNN)
    in fp32 holding its (float32) weights: whatever precision trained it, every evaluation and
    attack runs in float32."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    if model.name.startswith(SMALL_CNN_NAME):  # the activation is read off the model, not a second name table
        fp32 = build_small_cnn(learning_rate, "fp32", model.get_layer(index=1).activation.__name__)
    else:
        fp32 = build_baseline_cnn(learning_rate)
    fp32.set_weights(model.get_weights())
    return fp32


def shuffled_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """The tf.data batches that ``model.fit(x, y, batch_size, shuffle=True)`` builds (the same
    order and reshuffle each epoch, so the same trained weights), with tf.data's autotuning off.

    Why: Keras builds an autotuned pipeline and tears its iterator down at every epoch's end;
    that teardown waits for the tuning thread, which idled the process for about 20 s in
    roughly two of every five 60,000-image epochs on a 2-core machine (41 s instead of 21 s).
    """
    import tensorflow as tf
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    dataset = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=True).get_tf_dataset()
    options = tf.data.Options()
    options.autotune.enabled = False
    # Keras's flat_map hides the batch count; stating it lets fit end each epoch without a warning.
    return dataset.apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch_size))).with_options(options)


def fit_and_record(model: keras.Model, cfg: Config, label: str, n_train: int, **fit_args: Any) -> dict[str, Any]:
    """``model.fit(**fit_args)`` for cfg.epochs with progress logging; returns the training record."""
    start = time.perf_counter()
    history = model.fit(epochs=cfg.epochs, verbose=0, callbacks=[_progress_callback(label, cfg.epochs)], **fit_args)
    return {
        "loss": [float(v) for v in history.history["loss"]],
        "accuracy": [float(v) for v in history.history["accuracy"]],
        "train_time_s": round(time.perf_counter() - start, 3),
        "n_train": int(n_train),
    }


def save_model(model: keras.Model, path: Path) -> dict[str, Any]:
    """Save in .keras format atomically; return its path and SHA-256."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return {"path": str(path), "sha256": sha256_file(path)}


def predict_probabilities(model: keras.Model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Class probabilities (N, 10) and the inference wall time in seconds.

    Batches go through the model's compiled predict function directly: ``model.predict``
    builds a tf.data pipeline per call, which cost ~0.4 s a call here. One warm-up batch runs
    first, so tracing is not timed.
    """
    if len(x) == 0:
        return np.empty((0, NUM_CLASSES), np.float32), 0.0
    model.predict_on_batch(x[:batch_size])
    start = time.perf_counter()
    outputs = [model.predict_on_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs), time.perf_counter() - start


def layer_output(model: keras.Model, layer: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the named layer for x, inference mode, batched: (N, *layer shape)."""
    import keras

    features = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.concatenate([features.predict_on_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def predicted_labels(model: keras.Model, batch_size: int) -> Any:
    """A function images -> predicted labels (N,) for ``model``."""
    return lambda x: np.argmax(predict_probabilities(model, x, batch_size)[0], axis=1)
