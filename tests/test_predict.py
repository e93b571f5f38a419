from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_script
from PIL import Image

from secure_ai_mnist import backdoor, data, inference


@pytest.fixture(scope="module")
def digits(mnist_dir):
    mnist = data.load_from_dir(mnist_dir)
    return mnist.x_test[:3], mnist.y_test[:3]


@pytest.fixture
def run_copy(quick_run, tmp_path):
    """A private copy of the quick run's outputs, safe to tamper with."""
    out = tmp_path / "run"
    shutil.copytree(quick_run["out"], out)
    return out


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_predict_png_and_npy_agree(run_copy, digits, tmp_path):
    images, _ = digits
    files = []
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(tmp_path / f"d{i}.png")
        np.save(tmp_path / f"d{i}.npy", image)
        files += [str(tmp_path / f"d{i}.png"), str(tmp_path / f"d{i}.npy")]
    proc = run_script("predict", *files, "--model", "baseline", "--output-dir", str(run_copy), "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 6
    for png, npy in zip(results[::2], results[1::2]):
        assert png["label"] == npy["label"] == int(np.argmax(png["probabilities"]))
        assert sum(png["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert png["probabilities"] == pytest.approx(npy["probabilities"], abs=1e-5)


def test_tampered_model_is_refused(run_copy, digits, tmp_path):
    np.save(tmp_path / "d.npy", digits[0][0])
    model_file = run_copy / "models" / "cnn_mnist_baseline.keras"
    raw = bytearray(model_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    line = one_error_line(run_script("predict", str(tmp_path / "d.npy"), "--model", "baseline",
                                     "--output-dir", str(run_copy)))
    assert "SHA-256" in line and "refusing" in line


def test_unlisted_model_path_needs_a_hash(run_copy, digits, tmp_path):
    np.save(tmp_path / "d.npy", digits[0][0])
    line = one_error_line(run_script("predict", str(tmp_path / "d.npy"), "--model", str(tmp_path / "x.keras"),
                                     "--output-dir", str(run_copy)))
    assert "--sha256" in line


def _bad_inputs(tmp_path):
    cases = {}
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    cases["garbage.png"] = "decodable"
    (tmp_path / "huge.npy").write_bytes(b"\0" * (inference.MAX_FILE_BYTES + 1))
    cases["huge.npy"] = "limit"
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan, np.float32))
    cases["nan.npy"] = "NaN"
    np.save(tmp_path / "shape.npy", np.zeros((32, 32), np.float32))
    cases["shape.npy"] = "shape"
    np.save(tmp_path / "range.npy", np.full((28, 28), 3.0, np.float32))
    cases["range.npy"] = "outside"
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["object.npy"] = "not a valid .npy"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    cases["rgb.png"] = "grayscale"
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(tmp_path / "gif.gif")
    cases["gif.gif"] = "not accepted"
    return cases


def test_each_malformed_input_is_one_line_error(run_copy, tmp_path):
    for name, expected in _bad_inputs(tmp_path).items():
        line = one_error_line(run_script("predict", str(tmp_path / name), "--output-dir", str(run_copy)))
        assert name in line and expected in line, line


def test_too_many_inputs_refused(run_copy, tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.float32))
    args = [str(tmp_path / "d.npy")] * (inference.MAX_INPUTS + 1)
    assert "at most" in one_error_line(run_script("predict", *args, "--output-dir", str(run_copy)))


def test_resize_accepts_colour_and_trigger_check_warns(run_copy, digits, tmp_path):
    big = np.repeat(np.repeat(digits[0][0], 2, axis=0), 2, axis=1)
    Image.fromarray(np.stack([big] * 3, axis=-1), mode="RGB").save(tmp_path / "big.png")
    triggered = backdoor.make_corner_trigger(digits[0][:1], 3, 1)[0]
    np.save(tmp_path / "trig.npy", triggered)
    proc = run_script("predict", str(tmp_path / "big.png"), str(tmp_path / "trig.npy"), "--resize",
                      "--check-trigger", "--json", "--output-dir", str(run_copy))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["trigger_detected"] for r in results] == [False, True]
    assert "trigger" in proc.stderr


def test_trigger_check_refuses_a_tampered_file(run_copy, digits, tmp_path):
    np.save(tmp_path / "d.npy", digits[0][0].astype(np.float32) / 255)
    check = run_copy / "models" / "trigger_check.npz"
    check.write_bytes(check.read_bytes() + b"x")
    proc = run_script("predict", str(tmp_path / "d.npy"), "--check-trigger", "--output-dir", str(run_copy))
    assert proc.returncode != 0 and "SHA-256" in one_error_line(proc)


def test_evaluate_scores_an_exported_dataset(run_copy, quick_run):
    summary = json.loads(quick_run["json"].read_text())
    dataset = run_copy / "datasets" / "fgsm_test_vs_baseline.npz"
    with np.load(dataset, allow_pickle=False) as npz:
        assert npz["x"].dtype == np.float32 and npz["x"].shape == (500, 28, 28, 1) and float(npz["eps"]) == 0.3
        assert str(npz["model_sha256"]) == summary["models"]["baseline"]["model_file"]["sha256"]
    proc = run_script("evaluate", "--model", "baseline", "--dataset", str(dataset), "--output-dir", str(run_copy))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_copy / "evaluations" / "baseline_on_fgsm_test_vs_baseline.json").read_text())
    # the same images, the same model: the run's own number for the seed's FGSM test set
    assert record["accuracy"] == pytest.approx(summary["models"]["baseline"]["eval"]["fgsm"]["accuracy"])
    assert record["crafted_on_this_model"] is True and record["n"] == 500
    assert (run_copy / "evaluations" / "baseline_on_fgsm_test_vs_baseline_confusion.png").is_file()
    with np.load(run_copy / "datasets" / "poisoned_train.npz", allow_pickle=False) as npz:
        assert len(npz["poison_indices"]) == summary["config"]["poison_count"]
        assert np.all(npz["new_labels"] == summary["config"]["target_class"])
        assert np.all(npz["original_labels"] != summary["config"]["target_class"])


@pytest.mark.parametrize("problem", ["missing", "pickled", "range", "labels"])
def test_evaluate_refuses_bad_datasets_in_one_line(run_copy, tmp_path, problem):
    bad = tmp_path / "bad.npz"
    x, y = np.zeros((4, 28, 28, 1), np.float32), np.arange(4)
    if problem == "pickled":
        np.savez(bad, x=np.array([object()] * 4, dtype=object), y=y)
    elif problem == "range":
        np.savez(bad, x=x + 2.0, y=y)
    elif problem == "labels":
        np.savez(bad, x=x, y=y + 9)
    proc = run_script("evaluate", "--model", "baseline", "--dataset", str(bad), "--output-dir", str(run_copy))
    assert str(bad) in one_error_line(proc)
    assert not (run_copy / "evaluations").exists()
