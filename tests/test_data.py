from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import run_script

from secure_ai_mnist import common, data


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip(rng):
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(images), "x"), images)


def test_parse_idx_rejects_truncated_payload(rng):
    raw = idx_bytes(rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8))
    with pytest.raises(common.DataError, match="payload"):
        data.parse_idx(raw[:-10], "x")


@pytest.mark.parametrize("gz", [False, True])
def test_corrupted_file_is_rejected_by_hash(tmp_path, gz):
    fake = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    for name in data.MNIST_RAW_SHA256:
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(fake) if gz else fake)
    with pytest.raises(common.DataError, match="SHA-256 mismatch"):
        data.load_from_dir(tmp_path)


def test_partial_idx_set_is_an_error_not_a_fallthrough(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00" * 16)
    with pytest.raises(common.DataError, match="missing MNIST file"):
        data.load_from_dir(tmp_path)


def test_bad_gzip_is_a_data_error(tmp_path):
    for name in data.MNIST_RAW_SHA256:
        (tmp_path / f"{name}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(common.DataError, match="cannot be read"):
        data.load_from_dir(tmp_path)


def test_npz_with_wrong_hash_is_rejected(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(common.DataError, match="mnist.npz"):
        data.load_from_dir(tmp_path)


def test_offline_without_data_fails_cleanly(tmp_path):
    out = tmp_path / "out"
    proc = run_script("--offline", "--cache-dir", str(tmp_path / "empty"), "--output-dir", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "--offline" in errors[0]
    assert not (out / "metrics_summary_tasks5_6_7.json").exists()


def test_corrupt_data_dir_via_cli_names_the_file(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data_dir / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    proc = run_script("--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "SHA-256 mismatch" in errors[0] and str(data_dir) in errors[0]


def test_subset_sampling_is_without_replacement(rng):
    idx = data.sample_subset(1000, 300, rng)
    assert len(idx) == 300 == len(np.unique(idx))
    assert idx.min() >= 0 and idx.max() < 1000
    np.testing.assert_array_equal(data.sample_subset(10, 0, rng), np.arange(10))


def test_to_model_input_shape_and_range():
    x = data.to_model_input(np.array([[[0, 255] * 14] * 28], dtype=np.uint8))
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0


def test_gzipped_real_mnist_loads_and_matches_raw(mnist_dir, tmp_path):
    raw = data.load_from_dir(mnist_dir)
    for name in data.MNIST_RAW_SHA256:
        source = mnist_dir / name
        if not source.is_file():
            pytest.skip("the cache holds mnist.npz, not raw IDX files")
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(source.read_bytes(), compresslevel=1))
    gz = data.load_from_dir(tmp_path)
    assert gz.x_train.shape == (60000, 28, 28) and gz.x_test.shape == (10000, 28, 28)
    assert gz.x_train.dtype == np.uint8 and set(np.unique(gz.y_test)) == set(range(10))
    np.testing.assert_array_equal(gz.x_test, raw.x_test)
    np.testing.assert_array_equal(gz.y_train, raw.y_train)
