"""Hardened inference: ``secure_ai_mnist_main.py predict IMAGE... [--model NAME|PATH]``.

Every input is validated before the model sees it (file size, decodability, 28x28 grayscale
or an explicit --resize, dtype, value range, NaN/inf, number of inputs), and a model is
loaded only after its SHA-256 matches the run's metrics JSON, with Keras ``safe_mode``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import NUM_CLASSES, UserError, import_tensorflow_quietly, one_line, sha256_file
from .summary_schema import SUMMARY_FILENAME

MAX_INPUTS = 64
MAX_FILE_BYTES = 2_000_000
MAX_DECODED_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
MODEL_NAMES = {"baseline": "baseline", "poisoned": "poisoned", "defense": "defense_fgsm",
               "poison-cleaned": "poison_cleaned", "defense-fgsm-rs": "defense_fgsm_rs", "defense-pgd": "defense_pgd",
               "defense-robust": "defense_robust"}


class InputError(UserError):
    """An input file the model must not see."""


def build_predict_parser() -> argparse.ArgumentParser:
    from .config import _OneLineParser

    parser = _OneLineParser(
        prog="secure_ai_mnist_main.py predict",
        description="Classify 28x28 grayscale digits (PNG/JPEG or .npy) with a model from a finished run.",
    )
    parser.add_argument("images", nargs="+", type=Path, help=f"input files (at most {MAX_INPUTS})")
    parser.add_argument("--model", default="defense",
                        help=f"{', '.join(MODEL_NAMES)} (defense = the seed's FGSM-trained model, the default; "
                             "the per-batch defenses exist when the run trained them), or a path to a .keras file")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of a --model PATH that the run's metrics JSON does not list")
    parser.add_argument("--output-dir", type=Path, default=Path("secure_ai_outputs"),
                        help="the run's output directory (models/ and the metrics JSON)")
    parser.add_argument("--resize", action="store_true",
                        help="convert other sizes and colour images to 28x28 grayscale instead of refusing them")
    parser.add_argument("--check-trigger", action="store_true",
                        help="warn when an input carries a trigger that the run's blind detector recovered from "
                             "the poisoned model (models/trigger_check.npz, SHA-256 checked); it is not told the "
                             "planted trigger")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    return parser


def _manifest(output_dir: Path) -> dict[str, Any]:
    path = output_dir / SUMMARY_FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{path} not found: run the pipeline first or pass --output-dir") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); rerun the pipeline") from exc


def resolve_model(choice: str, output_dir: Path, expected_sha256: str | None) -> tuple[Path, str]:
    """The model file and the SHA-256 it must have (from the run manifest or --sha256)."""
    if choice in MODEL_NAMES:
        entry = _manifest(output_dir).get("models", {}).get(MODEL_NAMES[choice], {}).get("model_file", {})
        if "path" not in entry or "sha256" not in entry:
            raise UserError(f"the metrics JSON in {output_dir} lists no {choice} model; rerun the pipeline")
        return output_dir / "models" / Path(entry["path"]).name, entry["sha256"]
    path = Path(choice)
    if expected_sha256 is None:
        raise UserError(f"--model {path}: give its expected hash with --sha256 (only run models are trusted as-is)")
    return path, expected_sha256.lower()


def load_verified_model(path: Path, expected_sha256: str) -> Any:
    """Load a .keras model with safe_mode after its SHA-256 matches; no pickle is involved."""
    if not path.is_file():
        raise UserError(f"model file {path} not found")
    if sha256_file(path) != expected_sha256:
        raise UserError(f"model file {path} fails its SHA-256 check (tampered or replaced); refusing to load it")
    import_tensorflow_quietly()
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a malformed archive
        raise UserError(f"model file {path} cannot be loaded safely ({type(exc).__name__})") from exc


def load_input(path: Path, resize: bool) -> np.ndarray:
    """One input as float32 (28, 28) in [0, 1], or InputError naming the problem."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{path}: {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
    image = _load_npy(path) if path.suffix.lower() == ".npy" else _load_picture(path, resize)
    if image.shape != (28, 28):
        raise InputError(f"{path}: shape {image.shape}, expected 28x28 (use --resize for pictures)")
    if not np.all(np.isfinite(image)):
        raise InputError(f"{path}: contains NaN or infinite values")
    if image.min() < 0.0 or image.max() > 1.0:
        raise InputError(f"{path}: values outside [0, 1] (floats) or [0, 255] (integers)")
    return image.astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a valid .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif":
        raise InputError(f"{path}: dtype {getattr(array, 'dtype', type(array))} is not numeric")
    array = np.squeeze(array) if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]) else array
    if array.dtype.kind in "ui":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{path}: integer values outside [0, 255]")
        return array.astype(np.float32) / 255.0
    return array.astype(np.float64)


def _load_picture(path: Path, resize: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS
    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.format not in ("PNG", "JPEG"):
                raise InputError(f"{path}: {picture.format} images are not accepted (PNG or JPEG only)")
            if picture.mode != "L" or picture.size != (28, 28):
                if not resize:
                    raise InputError(f"{path}: {picture.size[0]}x{picture.size[1]} {picture.mode} image; "
                                     "expected 28x28 grayscale (or pass --resize)")
                picture = picture.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
            return np.asarray(picture, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a decodable PNG/JPEG image ({type(exc).__name__})") from exc


def load_trigger_check(output_dir: Path) -> Any:
    """The run's runtime trigger check (``TriggerCheck``), after its SHA-256 matches the metrics JSON."""
    from .detector_api import TriggerCheck

    runtime = _manifest(output_dir).get("backdoor", {}).get("runtime_check", {})
    entry = runtime.get("file")
    if runtime.get("trigger_recovered") is False:
        raise UserError(f"the run in {output_dir} recovered no trigger ({runtime.get('method')}), so there is nothing "
                        "to check inputs against")
    if not entry:
        raise UserError(f"{output_dir / SUMMARY_FILENAME} lists no trigger check: rerun the pipeline")
    path = output_dir / "models" / Path(entry["path"]).name
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        raise UserError(f"{path}: missing, or its SHA-256 does not match the run's metrics JSON")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return TriggerCheck.from_arrays({k: npz[k] for k in npz.files})
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a valid trigger check ({one_line(exc)})") from exc


def run_predict(argv: list[str]) -> int:
    """The `predict` command: validate every input, verify and load the model, print results."""
    import logging

    log = logging.getLogger("secure_ai_mnist")
    args = build_predict_parser().parse_args(argv)
    if len(args.images) > MAX_INPUTS:
        raise InputError(f"{len(args.images)} inputs given; at most {MAX_INPUTS} per call")
    images = np.stack([load_input(p, args.resize) for p in args.images])[..., np.newaxis]
    path, expected = resolve_model(args.model, args.output_dir, args.sha256)
    check = load_trigger_check(args.output_dir) if args.check_trigger else None
    model = load_verified_model(path, expected)
    probabilities = np.asarray(model.predict_on_batch(images), dtype=np.float64)
    if probabilities.shape != (len(images), NUM_CLASSES):
        raise UserError(f"model {path} does not output {NUM_CLASSES} class probabilities")
    results = []
    carries = check.flags(images) if check is not None else np.zeros(len(images), bool)
    for file, found, probs in zip(args.images, carries, probabilities):
        result = {"file": str(file), "label": int(probs.argmax()), "probabilities": [round(float(p), 6) for p in probs]}
        if args.check_trigger:
            result["trigger_detected"] = bool(found)
            if found:
                log.warning("%s carries a trigger recovered from the poisoned model; do not trust its label", file)
        results.append(result)
    if args.json:
        print(json.dumps({"model": str(path), "model_sha256": expected, "results": results}, indent=2))
    else:
        for result in results:
            print(f"{result['file']}: {result['label']} (p={max(result['probabilities']):.4f})")
    return 0


def build_evaluate_parser() -> argparse.ArgumentParser:
    from .config import _OneLineParser

    parser = _OneLineParser(
        prog="secure_ai_mnist_main.py evaluate",
        description="Score a verified model on a dataset file from datasets/ (or any .npz with float images 'x' "
                    "in [0, 1] and labels 'y'): accuracy, a confusion heatmap and a JSON record.")
    parser.add_argument("--model", default="defense",
                        help=f"{', '.join(MODEL_NAMES)}, or a path to a .keras file (with --sha256)")
    parser.add_argument("--dataset", type=Path, required=True, help="the .npz file to score the model on")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of a --model PATH")
    parser.add_argument("--output-dir", type=Path, default=Path("secure_ai_outputs"),
                        help="the run's output directory; results go to its evaluations/ folder")
    return parser


def run_evaluate(argv: list[str]) -> int:
    """The `evaluate` command: validate the dataset, verify and load the model, write a PNG and a JSON."""
    import logging

    from sklearn.metrics import confusion_matrix

    from .common import atomic_write_bytes
    from .datasets import load_images
    from .model import predict_probabilities
    from .plots import plot_confusion

    args = build_evaluate_parser().parse_args(argv)
    x, y, meta = load_images(args.dataset)
    path, expected = resolve_model(args.model, args.output_dir, args.sha256)
    model = load_verified_model(path, expected)
    probabilities = predict_probabilities(model, x, 256)[0]
    if probabilities.shape != (len(x), NUM_CLASSES):
        raise UserError(f"model {path} does not output {NUM_CLASSES} class probabilities")
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y, predictions, labels=list(range(NUM_CLASSES)))
    out = args.output_dir / "evaluations"
    name = f"{Path(path).stem.removeprefix('cnn_mnist_')}_on_{args.dataset.stem}"
    crafted_on = meta.get("model_sha256") or None
    record = {"model": str(path), "model_sha256": expected, "dataset": str(args.dataset),
              "dataset_sha256": sha256_file(args.dataset), "n": int(len(y)),
              "accuracy": float(np.mean(predictions == y)), "confusion_matrix": matrix.tolist(),
              "dataset_metadata": meta,
              "crafted_on_this_model": None if crafted_on is None else crafted_on == expected,
              "confusion_png": plot_confusion(matrix, f"{name} (n={len(y)})", out / f"{name}_confusion.png")}
    atomic_write_bytes(out / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    logging.getLogger("secure_ai_mnist").info("%s on %s: accuracy %.4f (n=%d); wrote %s", path.name,
                                              args.dataset.name, record["accuracy"], len(y), out / f"{name}.json")
    return 0
